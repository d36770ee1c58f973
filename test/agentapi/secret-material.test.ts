/**
 * The agent API's material endpoint over real mutual TLS: a joined agent gets the decrypted
 * files and env of an instance placed on its own host, and is refused (403) for an instance
 * on another host and (404) for one that does not exist; secrets are not readable through
 * its store calls at all.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { joinCluster } from '../../src/agentapi/enroll.js';
import { RemoteStore } from '../../src/agentapi/remote-store.js';
import { Resources } from '../../src/core/resources.js';
import { newKeyLine, parseKeyring } from '../../src/keyring/keyring.js';
import { objectKey, sealedSecretKey } from '../../src/model/keys.js';
import type { Instance } from '../../src/model/objects.js';

const VALUE = 'material-secret-Qw81';
let dir: string;
let store: Store;
let server: RunningControlServer;
let remote: RemoteStore;

function instance(name: string, host: string): Instance {
  const now = new Date().toISOString();
  return {
    kind: 'Instance',
    metadata: { name, tenant: 'acme', uid: `uid-${name}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
    spec: {
      owner: { kind: 'Service', name: 'web', uid: 'svc' },
      index: 0,
      host,
      ownerGeneration: 1,
      restartPolicy: 'Always',
      maxRestarts: -1,
      container: { image: 'x', env: {}, cpu: 0.1, memory: 64, pids: 1024, readOnlyRootfs: false, isolation: 'host', group: 'default', ports: [], secrets: [{ secret: 'db', mountPath: '/run/secrets/db' }], envFrom: [{ name: 'PW', secret: 'db', key: 'password' }] },
    },
    status: { phase: 'Pending', restarts: 0, ready: false },
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-material-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  server = await startControlServer({ store, stateDir: join(dir, 'server'), port: 0, logger: pino({ level: 'silent' }), saveCliConfig: false, agentApi: { port: 0, listen: '127.0.0.1' }, keyring: parseKeyring(newKeyLine()) });
  const m = (kind: string, name: string, spec: unknown): never => ({ apiVersion: 'carapace/v1', kind, metadata: { name, ...(kind === 'Tenant' ? {} : { tenant: 'acme' }) }, spec }) as never; // valid manifests, parsed shapes
  await server.controlPlane.handle({ type: 'apply', manifest: m('Tenant', 'acme', {}) });
  await server.controlPlane.handle({ type: 'apply', manifest: m('Secret', 'db', { data: { password: VALUE }, onChange: 'update' }) });
  const r = new Resources(store);
  await r.write(instance('mine', 'h1'), 0);
  await r.write(instance('theirs', 'h2'), 0);
  const token = (await readFile(join(dir, 'server', 'join-token'), 'utf8')).trim();
  const h1 = await joinCluster({ server: server.agentApiUrl ?? '', token, host: 'h1', stateDir: join(dir, 'h1') });
  remote = new RemoteStore({ server: h1.server, ca: h1.ca, cert: h1.cert, key: h1.key });
}, 60_000);

afterAll(async () => {
  await remote?.close();
  await server?.close();
  await store?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('instance material through the agent API', () => {
  it("answers the decrypted files and env of an instance on the agent's own host", async () => {
    const m = await remote.instanceMaterial('acme', 'mine');
    expect(m.env).toEqual({ PW: VALUE });
    expect(m.mounts).toEqual([{ kind: 'secret', name: 'db', mountPath: '/run/secrets/db', onChange: 'update', version: expect.stringMatching(/:1$/) as unknown as string, files: { password: VALUE } }]);
    expect(m.version).toMatch(/^[0-9a-f]{16}$/);
  });

  it('refuses an instance on another host (403) and an unknown one (404), with codes', async () => {
    await expect(remote.instanceMaterial('acme', 'theirs')).rejects.toMatchObject({ status: 403, code: 'CARAPACE_E_FORBIDDEN' });
    await expect(remote.instanceMaterial('acme', 'ghost')).rejects.toMatchObject({ status: 404, code: 'CARAPACE_E_NOT_FOUND' });
    await expect(remote.instanceMaterial('ACME!', 'mine')).rejects.toMatchObject({ status: 400, code: 'CARAPACE_E_VALIDATION' });
  });

  it('keeps secrets out of the store calls, even for the host that runs their users', async () => {
    expect(await remote.get(objectKey('Secret', 'db', 'acme'))).toBeUndefined();
    expect(await remote.get(sealedSecretKey('acme', 'db'))).toBeUndefined();
    await expect(remote.list('sealed/')).rejects.toMatchObject({ status: 403 });
  });
});
