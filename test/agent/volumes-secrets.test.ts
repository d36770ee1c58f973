/**
 * Volumes, secrets and configs reach host-run containers (runc and runsc): the all-in-one in
 * this process (API, controller, host agent, SQLite, its secrets keyring), a real registry and
 * real runc/runsc containers, driven through the REST API. A service mounts a volume (an ext4
 * image on a loop device), a secret and a config as files and takes env values from both;
 * what its container sees is written into the volume and read back from the host. The data
 * outlives the container (a spec change re-creates it); a read-only mount refuses writes; a
 * changed secret reaches the running container's file;
 * deleting the service gives everything back (volume unmounted, secret files gone); the agent
 * reports a volume's used bytes and removes a deleted volume's storage; the secret's value
 * appears in no log line of the process.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAllInOne, type RunningAllInOne } from '../../src/allinone/allinone.js';
import { buildBusyboxImage, freePort, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import { buildDebianImage } from '../../src/image/testing/debian-image.js';
import type { Instance } from '../../src/model/objects.js';
import type { Volume } from '../../src/model/volumes.js';
import { run } from '../../src/proc/run.js';
import { createRuncDriver, createRunscDriver } from '../../src/runtime/index.js';
import { SecretFiles } from '../../src/storage/secret-files.js';
import { VolumeStore } from '../../src/storage/volume-store.js';
import { until } from '../../src/proc/until.js';
import { apiClient } from '../api-client.js';

const PASSWORD = 'pw-7f3c9a1e-never-in-a-log';
const PASSWORD2 = 'pw-2b8d0c44-rotated';
/** Every log line of the all-in-one, to look for the secret in. */
let logText = '';
const logger = pino({ level: 'debug' }, new Writable({ write: (chunk: Buffer, _e, cb) => ((logText += chunk.toString()), cb()) }));
let dir: string;
let stateDir: string;
let registry: RunningRegistry;
let image: string;
/** An image that runs as uid 1001 and declares /srv/data as its (1001-owned, 0750) data directory. */
let nonRootImage: string;
let aio: RunningAllInOne;
const savedConfigEnv = process.env['CARAPACE_CONFIG'];

const { api, put } = apiClient(() => aio);

const volumes = (): VolumeStore => new VolumeStore({ stateDir, logger: pino({ level: 'silent' }) });

async function mounted(path: string): Promise<boolean> {
  return (await run('mountpoint', ['-q', path])).code === 0;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-volsec-'));
  stateDir = join(dir, 'state');
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json');
  registry = await startRegistry({ dir: join(dir, 'registry') });
  image = (await buildBusyboxImage({ registry: registry.address, repository: 'volsec/busybox', tag: '1' })).reference;
  nonRootImage = (
    await buildDebianImage({
      registry: registry.address,
      repository: 'volsec/nonroot',
      tag: '1',
      users: [{ name: 'app', uid: 1001, gid: 1001, home: '/srv' }],
      dirs: [{ path: '/srv/data', uid: 1001, gid: 1001, mode: 0o750 }],
      user: 'app',
    })
  ).reference;
  process.env['CARAPACE_VOLUME_SWEEP_MS'] = '300';
  process.env['CARAPACE_FILES_REFRESH_MS'] = '300';
  aio = await startAllInOne({ stateDir, port: await freePort(), logger, hostName: 'volsec', network: false, stopGraceMs: 1_000 });
  await api('PUT', '/v1/tenants/acme', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } });
}, 120_000);

afterAll(async () => {
  await aio?.stop();
  for (const [runtime, make] of [
    ['runc', createRuncDriver],
    ['runsc', createRunscDriver],
  ] as const) {
    const d = make({ stateDir: join(stateDir, 'runtime', runtime), logger: pino({ level: 'silent' }) });
    for (const c of await d.recover().catch(() => [])) await d.destroy(c.id).catch(() => undefined);
  }
  const v = volumes();
  for (const x of await v.list().catch(() => [])) {
    await v.unmount(x.id).catch(() => undefined);
    await v.remove(x.id).catch(() => undefined);
  }
  await new SecretFiles({ runDir: join(stateDir, 'files'), logger: pino({ level: 'silent' }) }).teardown().catch(() => undefined);
  await registry?.stop();
  delete process.env['CARAPACE_VOLUME_SWEEP_MS'];
  delete process.env['CARAPACE_FILES_REFRESH_MS'];
  if (savedConfigEnv === undefined) delete process.env['CARAPACE_CONFIG'];
  else process.env['CARAPACE_CONFIG'] = savedConfigEnv;
  await rm(dir, { recursive: true, force: true });
}, 120_000);

describe('volumes, secrets and configs in host-run containers', () => {
  for (const isolation of ['host', 'sandbox'] as const) {
    it(`${isolation}: the container sees its volume, secret and config; data outlives it; deleting gives everything back`, async () => {
      const svc = `app-${isolation}`;
      await put('Volume', `data-${isolation}`, { size: '64Mi' });
      await put('Secret', 'db', { data: { password: PASSWORD } });
      await put('Config', 'app', { data: { mode: 'production', 'app.ini': '[server]\nport = 80\n' } });
      await put('Volume', `seed-${isolation}`, { size: '16Mi' });
      // What the container sees goes into its volume, one file each; every start appends a line.
      const script = [
        'set -e',
        'echo "$GEN" >> /data/starts',
        // gVisor may keep writes in its own cache: sync puts them on the volume, where the host sees them.
        'head -c 3145728 /dev/zero > /data/blob && sync',
        'cat /run/secrets/db/password > /data/secret-file',
        'printf %s "$DB_PASSWORD" > /data/secret-env',
        'printf %s "$MODE" > /data/config-env',
        'cat /etc/app/app.ini > /data/config-file',
        'if touch /seed/x 2>/dev/null; then echo writable > /data/seed; else echo read-only > /data/seed; fi',
        // And again for what came after the blob (seen in CI: the host read /data/seed empty).
        'sync',
        'exec sleep 100000',
      ].join('\n');
      const spec = (gen: string): object => ({
        image,
        isolation,
        cpu: 0.1,
        memory: 64,
        command: ['sh', '-c', script],
        env: { GEN: gen },
        volumes: [
          { volume: `data-${isolation}`, mountPath: '/data' },
          { volume: `seed-${isolation}`, mountPath: '/seed', readOnly: true },
        ],
        secrets: [{ secret: 'db' }],
        configs: [{ config: 'app', mountPath: '/etc/app' }],
        envFrom: [
          { name: 'DB_PASSWORD', secret: 'db', key: 'password' },
          { name: 'MODE', config: 'app', key: 'mode' },
        ],
      });
      await put('Service', svc, spec('1'));
      const running = await until(`${svc}-0 running`, async () => {
        const i = await api<Instance>('GET', `/v1/tenants/acme/instances/${svc}-0`);
        return i.status.phase === 'Running' ? i : undefined;
      });
      const vol = await api<Volume>('GET', `/v1/tenants/acme/volumes/data-${isolation}`);
      expect(vol.status).toMatchObject({ phase: 'Bound', host: 'volsec' });
      const dataDir = volumes().mountDir(vol.metadata.uid);
      const seen = async (f: string): Promise<string | undefined> => readFile(join(dataDir, f), 'utf8').catch(() => undefined);
      // `echo … > seed` creates the file before it writes the line: wait for the whole line.
      await until('the container to write what it sees', async () => ((await seen('seed'))?.endsWith('\n') ? true : undefined));
      expect(await seen('secret-file')).toBe(PASSWORD);
      expect(await seen('secret-env')).toBe(PASSWORD);
      expect(await seen('config-env')).toBe('production');
      expect(await seen('config-file')).toBe('[server]\nport = 80\n');
      expect((await seen('seed'))?.trim()).toBe('read-only');
      expect(await seen('starts')).toBe('1\n');
      // The agent reports what the volume holds (the 3 MiB blob and more).
      await until('usedBytes reported', async () => {
        const v = await api<Volume>('GET', `/v1/tenants/acme/volumes/data-${isolation}`);
        return (v.status.usedBytes ?? 0) >= 3 * 1024 * 1024 ? true : undefined;
      });
      // A changed secret (onChange: update, the default) reaches the running container's file
      // (within the agent's refresh period), whole.
      await put('Secret', 'db', { data: { password: PASSWORD2 } });
      const driver = isolation === 'sandbox' ? createRunscDriver({ stateDir: join(stateDir, 'runtime', 'runsc'), logger: pino({ level: 'silent' }) }) : createRuncDriver({ stateDir: join(stateDir, 'runtime', 'runc'), logger: pino({ level: 'silent' }) });
      await until('the updated secret inside the container', async () => {
        const r = await driver.check(running.status.containerId ?? '', { exec: { command: ['sh', '-c', `[ "$(cat /run/secrets/db/password)" = "${PASSWORD2}" ]`] } }, 10_000);
        return r.ok ? true : undefined;
      });
      await put('Secret', 'db', { data: { password: PASSWORD } });
      // The files live on a tmpfs, never on the host's disk.
      const filesDir = join(stateDir, 'files', running.metadata.uid);
      expect(existsSync(filesDir)).toBe(true);
      expect((await run('stat', ['-f', '-c', '%T', join(stateDir, 'files')])).stdout.trim()).toBe('tmpfs');

      // A spec change re-creates the container: the volume's data is still there.
      await put('Service', svc, spec('2'));
      await until('the re-created container to start on the same data', async () => ((await seen('starts')) === '1\n2\n' ? true : undefined));
      const after = await api<Instance>('GET', `/v1/tenants/acme/instances/${svc}-0`);
      expect(after.status.containerId).not.toBe(running.status.containerId);
      expect(after.status.restarts).toBe(0);

      // Deleting the service gives the volume back to the host (unmounted; the Volume and its
      // data stay) and removes the secret files.
      await api('DELETE', `/v1/tenants/acme/services/${svc}`);
      await until(`${svc} gone`, async () => ((await api<{ items: Instance[] }>('GET', '/v1/tenants/acme/instances')).items.some((i) => i.spec.owner.name === svc) ? undefined : true));
      await until('the volume unmounted from the host', async () => ((await mounted(dataDir)) ? undefined : true));
      expect(existsSync(join(stateDir, 'files', after.metadata.uid))).toBe(false);
      const v = volumes();
      await v.mount(vol.metadata.uid);
      expect(await readFile(join(dataDir, 'starts'), 'utf8')).toBe('1\n2\n');
      await v.unmount(vol.metadata.uid);
      // Deleting the Volume removes its storage from the host; one re-created under the same
      // name is another volume (another uid), empty.
      // (Refused while the controller still counts the gone instance as a user: retried.)
      await until('the volume deleted', async () => (await api('DELETE', `/v1/tenants/acme/volumes/data-${isolation}`), true));
      await until('the deleted volume\'s storage removed', async () => ((await v.list()).some((x) => x.id === vol.metadata.uid) ? undefined : true));
      expect(existsSync(v.imageFile(vol.metadata.uid))).toBe(false);
      await put('Volume', `data-${isolation}`, { size: '64Mi' });
      const again = await api<Volume>('GET', `/v1/tenants/acme/volumes/data-${isolation}`);
      expect(again.metadata.uid).not.toBe(vol.metadata.uid);
      await api('DELETE', `/v1/tenants/acme/volumes/data-${isolation}`);
      // The secret's value is in no log line (debug level included).
      expect(logText.length).toBeGreaterThan(0);
      expect(logText.includes(PASSWORD)).toBe(false);
      expect(logText.includes(PASSWORD2)).toBe(false);
    }, 180_000);

    it(`${isolation}: an image that runs as a non-root user writes to a fresh volume (it takes the image directory's owner)`, async () => {
      const svc = `nonroot-${isolation}`;
      await put('Volume', `own-${isolation}`, { size: '16Mi' });
      await put('Service', svc, { image: nonRootImage, isolation, cpu: 0.1, memory: 32, command: ['sh', '-c', 'id -u > /srv/data/who.tmp && sync && mv /srv/data/who.tmp /srv/data/who; exec sleep 100000'], volumes: [{ volume: `own-${isolation}`, mountPath: '/srv/data' }] });
      const vol = await until('the volume bound', async () => {
        const v = await api<Volume>('GET', `/v1/tenants/acme/volumes/own-${isolation}`);
        return v.status.phase === 'Bound' ? v : undefined;
      });
      const dataDir = volumes().mountDir(vol.metadata.uid);
      // Written to a temporary name, synced, then renamed: the host sees the file only whole
      // (a sandbox's writes reach the host file after its creation, so '' was seen once).
      expect(await until('the container to write as uid 1001', async () => readFile(join(dataDir, 'who'), 'utf8').then((s) => s || undefined, () => undefined))).toBe('1001\n');
      const root = await stat(dataDir);
      expect([root.uid, root.gid, (root.mode & 0o7777).toString(8)]).toEqual([1001, 1001, '750']);
      await api('DELETE', `/v1/tenants/acme/services/${svc}`);
      await until('the volume unmounted from the host', async () => ((await mounted(dataDir)) ? undefined : true));
      await until('the volume deleted', async () => (await api('DELETE', `/v1/tenants/acme/volumes/own-${isolation}`), true));
    }, 120_000);
  }
});
