/**
 * A container that started is not killed because its Running status could not be written: the
 * host agent in this process (real runc, a real registry, a real SQLite store) starts a
 * service's container while the store refuses the status write once and, the next time,
 * applies it but loses the answer (what a timeout after the commit looks like). The container
 * keeps running, its status is written by the agent's next pass, no restart is counted, and
 * its exit is still followed (a crash afterwards restarts it, counted once).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostAgent } from '../../src/agent/agent.js';
import { WorkloadController } from '../../src/control/controller.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { createImageStore } from '../../src/image/local-store.js';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import { parseManifest } from '../../src/model/manifest.js';
import type { Instance } from '../../src/model/objects.js';
import { createRuncDriver } from '../../src/runtime/index.js';
import { openSqliteStore, type SqliteStore } from '../../src/store/sqlite.js';
import { StoreUnavailableError, type Store } from '../../src/store/store.js';

const logger = pino({ level: process.env['CARAPACE_TEST_LOG'] ?? 'silent' });
const env = { now: () => new Date().toISOString(), newId: (() => { let n = 0; return () => `st${process.pid}x${++n}`; })() };
let dir: string;
let registry: RunningRegistry;
let inner: SqliteStore;
const ac = new AbortController();
let agentDone: Promise<void> | undefined;
const runc = () => createRuncDriver({ stateDir: join(dir, 'runtime', 'runc'), logger });

/** How the next Running status writes of an instance fail: before the commit, or after it (answer lost). */
const failures: ('before' | 'after')[] = [];
const failed: string[] = [];

/** The store the agent and the control plane write through: fails Running status writes as told. */
function flaky(store: SqliteStore): Store {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const v: unknown = Reflect.get(target, prop, receiver);
      if (prop === 'put')
        return async (key: string, value: unknown, expect?: unknown): Promise<number> => {
          const running = key.startsWith('instances/') && (value as Instance).status?.phase === 'Running';
          const how = running ? failures.shift() : undefined;
          if (how === 'before') {
            failed.push(how);
            throw new StoreUnavailableError('the store is unavailable (test: before the commit)');
          }
          const rev = await target.put(key, value, expect as never);
          if (how === 'after') {
            failed.push(how);
            throw new StoreUnavailableError('the store is unavailable (test: the answer was lost after the commit)');
          }
          return rev;
        };
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-status-write-'));
  registry = await startRegistry({ dir: join(dir, 'registry') });
  inner = await openSqliteStore({ path: join(dir, 'store.db') });
});

afterAll(async () => {
  ac.abort();
  await agentDone?.catch(() => undefined);
  const driver = runc();
  for (const c of await driver.recover().catch(() => [])) await driver.destroy(c.id).catch(() => undefined);
  await inner?.close();
  await registry?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('host agent', () => {
  it('keeps a started container when its status write fails, writes the status on the next pass and still follows its exit', async () => {
    const image = (await buildBusyboxImage({ registry: registry.address, repository: 'status/busybox', tag: '1' })).reference;
    const resources = new Resources(flaky(inner));
    const driver = runc();
    const agent = new HostAgent({
      hostName: 'h1',
      resources,
      env,
      logger,
      drivers: { host: driver },
      images: createImageStore({ cacheDir: join(dir, 'images'), logger, insecureRegistries: [registry.address] }),
      stopGraceMs: 1_000,
    });
    agentDone = agent.start(ac.signal);
    await until('the host to register', async () => ((await resources.get('Host', 'h1'))?.status.state === 'Ready' ? true : undefined));

    const cp = new ControlPlane(resources, env);
    await cp.handle({ type: 'apply', manifest: parseManifest({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} }) });
    const svc = { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image, isolation: 'host', cpu: 0.05, memory: '16Mi', command: ['sleep', '100000'] } };
    failures.push('before', 'after');
    await cp.handle({ type: 'apply', manifest: parseManifest(svc) });
    await new WorkloadController({ resources, env, logger }).reconcile('Service/acme/web');

    const running = await until('web-0 to be Running', async () => {
      const i = await resources.get('Instance', 'web-0', 'acme');
      return i?.status.phase === 'Running' && failures.length === 0 ? i : undefined;
    });
    expect(failed).toEqual(['before', 'after']);
    const id = running.status.containerId ?? '';
    expect(running.status).toMatchObject({ reason: 'Started', restarts: 0, imageDigest: expect.stringMatching(/^sha256:/) });
    // The one container started is the one recorded, still running, with the recorded pid.
    const info = await driver.inspect(id);
    expect(info?.state).toMatchObject({ status: 'running', pid: running.status.pid });
    expect((await driver.recover()).map((c) => c.id)).toEqual([id]);

    // Its exit is followed: a crash is restarted and counted once.
    await driver.stop(id, 0);
    const restarted = await until('web-0 restarted after its crash', async () => {
      const i = await resources.get('Instance', 'web-0', 'acme');
      return i?.status.phase === 'Running' && i.status.restarts === 1 && i.status.pid !== running.status.pid ? i : undefined;
    });
    expect((await driver.inspect(restarted.status.containerId ?? ''))?.state.status).toBe('running');
  });
});
