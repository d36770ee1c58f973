/**
 * The control server over the embedded SQLite store (what `carapace up` runs): the one
 * process owns the store, so it leads at once, runs the controller, and says so in
 * /healthz and the `carapace_leader` gauge; on shutdown it stops leading.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseManifest } from '../model/manifest.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { startControlServer, type RunningControlServer } from './server.js';

let dir = '';
let store: SqliteStore;
let server: RunningControlServer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-server-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  server = await startControlServer({ store, stateDir: dir, port: 0, logger: pino({ level: 'silent' }), saveCliConfig: false, serverId: 'solo' });
});

afterAll(async () => {
  await server?.close();
  await store?.close();
  await rm(dir, { recursive: true, force: true });
});

async function until<T>(what: string, fn: () => Promise<T | undefined | false>): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const v = await fn();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('control server on SQLite', () => {
  it('leads as soon as it runs, reconciles, and stops leading at shutdown', async () => {
    const health = async (): Promise<{ ok: boolean; leader: boolean }> => (await (await fetch(`${server.url}/healthz`)).json()) as { ok: boolean; leader: boolean };
    const gauge = async (): Promise<string | undefined> =>
      (await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${server.adminToken}` } })).text()).split('\n').find((l) => l.startsWith('carapace_leader{server="solo"}'));
    expect(await health()).toEqual({ ok: true, leader: false }); // listening, loops not started yet
    expect(server.adminTokenCreated).toBe(true);

    const ac = new AbortController();
    const running = server.run(ac.signal);
    await until('leader', async () => (await health()).leader);
    expect(server.leadership.term).toBe(1);
    expect(await gauge()).toBe('carapace_leader{server="solo"} 1');

    // The controller runs: a service gets its instances.
    const { controlPlane, resources } = server;
    await controlPlane.handle({ type: 'apply', manifest: parseManifest({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} }) });
    await controlPlane.handle({
      type: 'apply',
      manifest: parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'example.com/web:1', isolation: 'host', replicas: 2 } }),
    });
    const names = await until('instances', async () => {
      const items = (await resources.list('Instance', 'acme')).items;
      return items.length === 2 ? items.map((i) => i.metadata.name).sort() : undefined;
    });
    expect(names).toEqual(['web-0', 'web-1']);

    ac.abort();
    await running;
    expect(server.leadership.leading).toBe(false);
    expect(await health()).toEqual({ ok: true, leader: false });
    expect(await gauge()).toBe('carapace_leader{server="solo"} 0');
  });
});
