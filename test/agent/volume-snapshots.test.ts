/**
 * Volume snapshots and restores end to end: the all-in-one in this process (API, controller,
 * host agent with its snapshot loop, SQLite), a real registry, real runc containers and ext4
 * volumes on loop devices, driven through the real CLI (`carapace volume snapshot|restore`,
 * `get snapshots`, `describe`, `delete`). A service writes data into its volume; a snapshot
 * is taken while it runs (the mounted filesystem frozen for the copy); the data changes; the
 * snapshot is restored into a new volume, which another service mounts and finds the old data
 * in, while the original volume keeps the new data; deleting the snapshot removes its copy
 * from the host. Refusals come back with their codes: a snapshot of a volume never used, a
 * restore smaller than the original.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAllInOne, type RunningAllInOne } from '../../src/allinone/allinone.js';
import { buildBusyboxImage, freePort, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Instance } from '../../src/model/objects.js';
import type { VolumeSnapshot } from '../../src/model/volume-snapshots.js';
import type { Volume } from '../../src/model/volumes.js';
import { run } from '../../src/proc/run.js';
import { createRuncDriver } from '../../src/runtime/index.js';
import { VolumeStore } from '../../src/storage/volume-store.js';
import { loopsUnder, mountsUnder } from '../storage/helpers.js';
import { until } from '../../src/proc/until.js';
import { apiClient } from '../api-client.js';

const CLI = fileURLToPath(new URL('../../dist/src/cli/main.js', import.meta.url));
const logger = pino({ level: process.env.CARAPACE_TEST_LOG ?? 'silent' });
let dir: string;
let stateDir: string;
let registry: RunningRegistry;
let image: string;
let aio: RunningAllInOne;
const savedConfigEnv = process.env['CARAPACE_CONFIG'];

const { api, put } = apiClient(() => aio);

/** The real CLI against the all-in-one, with its admin token. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await run(process.execPath, [CLI, ...args], { env: { CARAPACE_SERVER: aio.url, CARAPACE_TOKEN: aio.adminToken, CARAPACE_CONFIG: join(dir, 'no-config.json') }, timeoutMs: 120_000 });
  return { code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const volumes = (): VolumeStore => new VolumeStore({ stateDir, logger: pino({ level: 'silent' }) });

/** A host-run service mounting `volume` at /data, running `script` then sleeping. */
function service(volume: string, script: string): object {
  return { image, isolation: 'host', cpu: 0.1, memory: 64, command: ['sh', '-c', `set -e\n${script}\nexec sleep 100000`], volumes: [{ volume, mountPath: '/data' }] };
}

async function running(name: string): Promise<Instance> {
  return until(`${name} running`, async () => {
    const i = await api<Instance>('GET', `/v1/tenants/acme/instances/${name}`);
    return i.status.phase === 'Running' ? i : undefined;
  });
}

async function gone(svc: string): Promise<void> {
  await api('DELETE', `/v1/tenants/acme/services/${svc}`);
  await until(`${svc} gone`, async () => ((await api<{ items: Instance[] }>('GET', '/v1/tenants/acme/instances')).items.some((i) => i.spec.owner.name === svc) ? undefined : true));
}

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  dir = await mkdtemp(join(tmpdir(), 'carapace-snapshots-'));
  stateDir = join(dir, 'state');
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json');
  registry = await startRegistry({ dir: join(dir, 'registry') });
  image = (await buildBusyboxImage({ registry: registry.address, repository: 'snap/busybox', tag: '1' })).reference;
  process.env['CARAPACE_VOLUME_SWEEP_MS'] = '300';
  aio = await startAllInOne({ stateDir, port: await freePort(), logger, hostName: 'snaphost', network: false, stopGraceMs: 1_000 });
  await api('PUT', '/v1/tenants/acme', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } });
}, 120_000);

afterAll(async () => {
  await aio?.stop();
  const d = createRuncDriver({ stateDir: join(stateDir, 'runtime', 'runc'), logger: pino({ level: 'silent' }) });
  for (const c of await d.recover().catch(() => [])) await d.destroy(c.id).catch(() => undefined);
  const v = volumes();
  for (const x of await v.list().catch(() => [])) {
    await v.unmount(x.id).catch(() => undefined);
    await v.remove(x.id).catch(() => undefined);
  }
  // Nothing of this test is left in the kernel: no loop device on its images, no mount under it.
  if (dir) {
    expect(await loopsUnder(dir)).toEqual([]);
    expect(await mountsUnder(dir)).toEqual([]);
  }
  await registry?.stop();
  delete process.env['CARAPACE_VOLUME_SWEEP_MS'];
  if (savedConfigEnv === undefined) delete process.env['CARAPACE_CONFIG'];
  else process.env['CARAPACE_CONFIG'] = savedConfigEnv;
  if (dir) await rm(dir, { recursive: true, force: true });
}, 120_000);

describe('volume snapshots through the CLI, on a host-run (runc) service', () => {
  it('snapshot while the writer runs, change the data, restore into a new volume another service reads the old data from; deleting the snapshot removes its copy', async () => {
    await put('Volume', 'data', { size: '64Mi' });
    await put('Service', 'writer', service('data', 'echo v1 > /data/f\nsync'));
    const writer = await running('writer-0');
    const data = await api<Volume>('GET', '/v1/tenants/acme/volumes/data');
    expect(data.status).toMatchObject({ phase: 'Bound', host: 'snaphost' });
    const dataDir = volumes().mountDir(data.metadata.uid);
    await until('v1 written', async () => ((await readFile(join(dataDir, 'f'), 'utf8').catch(() => '')) === 'v1\n' ? true : undefined));

    // Taken while the container runs with the volume mounted: frozen for the copy.
    const snap = await cli('volume', 'snapshot', 'acme/data', '--name', 'before', '--wait', '--timeout', '120');
    expect(snap.code, snap.stderr).toBe(0);
    expect(snap.stdout).toContain('volumesnapshot/acme/before created (volume data on host snaphost)');
    expect(snap.stdout).toMatch(/volumesnapshot\/acme\/before: ready \(64Mi taken at /);
    const before = await api<VolumeSnapshot>('GET', '/v1/tenants/acme/volumesnapshots/before');
    expect(before.status).toMatchObject({ phase: 'Ready', reason: 'Taken', host: 'snaphost', volumeUid: data.metadata.uid, sizeBytes: 64 * 1024 * 1024 });
    const copy = join(stateDir, 'volumes', 'snapshots', data.metadata.uid, `${before.metadata.uid}.img`);
    expect(existsSync(copy)).toBe(true);

    // The writer changes the data (inside its container); the volume is not left frozen.
    const runc = createRuncDriver({ stateDir: join(stateDir, 'runtime', 'runc'), logger: pino({ level: 'silent' }) });
    const changed = await runc.check(writer.status.containerId ?? '', { exec: { command: ['sh', '-c', 'echo v2 > /data/f && sync'] } }, 10_000);
    expect(changed.ok, changed.message).toBe(true);
    expect(await readFile(join(dataDir, 'f'), 'utf8')).toBe('v2\n');

    // A default name: <volume>-<UTC yyyymmddhhmmss>.
    const named = await cli('volume', 'snapshot', 'data', '--tenant', 'acme');
    expect(named.code, named.stderr).toBe(0);
    expect(named.stdout).toMatch(/^volumesnapshot\/acme\/data-\d{14} created/);

    const table = await cli('get', 'snapshots', '-t', 'acme');
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^TENANT\s+NAME\s+VOLUME\s+PHASE\s+SIZE\s+AGE\n/);
    expect(table.stdout).toMatch(/\nacme\s+before\s+data\s+Ready\s+64Mi\s+\S+\n/);
    const described = await cli('describe', 'volumesnapshot', 'acme/before');
    expect(described.stdout).toMatch(/\nVolume:\s+data\nPhase:\s+Ready\nHost:\s+snaphost\nSize:\s+64Mi /);

    // Refusals come back with their codes: smaller than the original; a volume never used.
    const small = await cli('volume', 'restore', 'acme/before', '--to', 'tiny', '--size', '32Mi');
    expect(small.code).toBe(1);
    expect(small.stderr).toContain('error CARAPACE_E_VOLUME_TOO_SMALL');
    expect(small.stderr).toContain("spec.size: must be at least 64Mi (the size of the snapshot's volume)");
    await put('Volume', 'unused', { size: '16Mi' });
    const unbound = await cli('volume', 'snapshot', 'acme/unused', '--name', 'empty', '--wait');
    expect(unbound.code).toBe(1);
    expect(unbound.stderr).toMatch(/volumesnapshot\/acme\/empty failed: VolumeNotBound: volume "unused" was never used/);

    // Restore into a new volume: made on the snapshot's host from its copy.
    const restore = await cli('volume', 'restore', 'acme/before', '--to', 'data-restored', '--wait', '--timeout', '120');
    expect(restore.code, restore.stderr).toBe(0);
    expect(restore.stdout).toContain('volume/acme/data-restored created from snapshot before (64Mi, host snaphost)');
    expect(restore.stdout).toMatch(/volume\/acme\/data-restored: restored \(\d+Mi used\)/);
    const restored = await api<Volume>('GET', '/v1/tenants/acme/volumes/data-restored');
    expect(restored.status.restoredFrom).toEqual({ snapshot: 'before', snapshotUid: before.metadata.uid, volumeUid: data.metadata.uid });

    // Another service mounts it and finds the data as it was when the snapshot was taken.
    await put('Service', 'reader', service('data-restored', 'cat /data/f > /data/seen.tmp\nsync\nmv /data/seen.tmp /data/seen'));
    await running('reader-0');
    const restoredDir = volumes().mountDir(restored.metadata.uid);
    // Renamed into place once whole: a file seen is the reader's whole copy.
    expect(await until('the reader to copy what it sees', async () => readFile(join(restoredDir, 'seen'), 'utf8').catch(() => undefined))).toBe('v1\n');
    // The original volume was not touched.
    expect(await readFile(join(dataDir, 'f'), 'utf8')).toBe('v2\n');

    // Deleting the snapshot removes its copy from the host; the restored volume does not need it.
    const del = await cli('delete', 'snapshot', 'acme/before');
    expect(del.code, del.stderr).toBe(0);
    await until('the snapshot\'s copy removed', async () => (existsSync(copy) ? undefined : true), 30_000);
    expect(await readFile(join(restoredDir, 'seen'), 'utf8')).toBe('v1\n');

    // Cleanup through the API: the volume with a snapshot left waits for it.
    await gone('writer');
    await gone('reader');
    for (const s of (await api<{ items: VolumeSnapshot[] }>('GET', '/v1/tenants/acme/volumesnapshots')).items) await api('DELETE', `/v1/tenants/acme/volumesnapshots/${s.metadata.name}`);
    for (const v of ['data', 'data-restored', 'unused']) await until(`volume ${v} deleted`, async () => (await api('DELETE', `/v1/tenants/acme/volumes/${v}`), true));
    await until('the deleted volumes\' storage removed', async () => ((await volumes().list()).length === 0 ? true : undefined));
    expect(await volumes().allSnapshots()).toEqual([]);
  }, 240_000);
});
