/**
 * The host monitor over a real SQLite store: a lease that stands still past the TTL makes its
 * host NotReady, one that moves again makes it Ready; a period in which the monitor could not
 * read the store is no evidence against any host.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Resources } from '../core/resources.js';
import { HOST_LEASE_SETTINGS_KEY, hostLeaseKey } from '../model/keys.js';
import type { HostLeaseSettings } from '../model/fencing.js';
import type { Host, HostLease } from '../model/objects.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { StoreUnavailableError } from '../store/store.js';
import { HostMonitor } from './host-monitor.js';

const TTL_MS = 150;
const env = { now: () => new Date().toISOString(), newId: () => 'id' };
let dir: string;
let store: SqliteStore;
let resources: Resources;
/** While true, the monitor's reads fail as they do while etcd restarts. */
let storeDown = false;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-host-monitor-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  storeDown = false;
  // The monitor reads through this view; the test writes through `store` itself.
  const flaky = new Proxy(store, {
    get(target, prop, receiver) {
      const v: unknown = Reflect.get(target, prop, receiver);
      if (prop === 'list' && typeof v === 'function')
        return (...args: unknown[]) => (storeDown ? Promise.reject(new StoreUnavailableError('etcd is unavailable: test')) : (v as (...a: unknown[]) => unknown).apply(target, args));
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  resources = new Resources(flaky);
  const host: Host = {
    kind: 'Host',
    metadata: { name: 'h1', uid: 'h1', labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() },
    spec: { labels: {}, unschedulable: false, overcommit: { cpu: 4, memory: 1 } },
    status: { state: 'Ready', lastHeartbeatAt: env.now(), isolation: ['host'], capacity: { cpu: 2, memoryMiB: 2048 }, agentVersion: 'test' },
  };
  await resources.write(host, 0);
  await renew();
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

async function renew(): Promise<void> {
  const lease: HostLease = { host: 'h1', renewedAt: env.now(), holder: 'test' };
  await store.put(hostLeaseKey('h1'), lease);
}

async function state(): Promise<string> {
  return (await resources.mustGet('Host', 'h1')).status.state;
}

/** Waits until more than the TTL has passed since `t0` (the monitor judges by its own clock). */
async function pastTtl(t0: number): Promise<void> {
  while (Date.now() - t0 <= TTL_MS + 20) await sleep(10);
}

describe('host monitor', () => {
  it('declares a host NotReady when its lease stands still past the TTL, and Ready when it moves again', async () => {
    const m = new HostMonitor({ resources, env, logger: pino({ level: 'silent' }), ttlMs: TTL_MS });
    await m.check();
    const t0 = Date.now();
    await pastTtl(t0);
    await m.check();
    expect(await resources.mustGet('Host', 'h1')).toMatchObject({ status: { state: 'NotReady', reason: 'LeaseExpired' } });
    await renew();
    await m.check();
    expect((await resources.mustGet('Host', 'h1')).status).toMatchObject({ state: 'Ready', message: 'lease renewed' });
  });

  it('gives every host a full TTL again after it could not read the store, then judges as usual', async () => {
    const m = new HostMonitor({ resources, env, logger: pino({ level: 'silent' }), ttlMs: TTL_MS });
    await m.check();
    storeDown = true;
    const t0 = Date.now();
    await expect(m.check()).rejects.toThrow(StoreUnavailableError);
    await pastTtl(t0);
    storeDown = false;
    // Back: the lease has not moved (its agent was cut off by the same outage), but the
    // monitor saw nothing for a while: no verdict yet.
    await m.check();
    expect(await state()).toBe('Ready');
    // A full TTL after it could see again, a lease still standing still is a lost host.
    const t1 = Date.now();
    await pastTtl(t1);
    await m.check();
    expect(await state()).toBe('NotReady');
  });

  it('marks a lost host fenced once its lease was silent for the fence wait W, and clears it when the lease moves', async () => {
    const waitMs = 3 * TTL_MS;
    const m = new HostMonitor({ resources, env, logger: pino({ level: 'silent' }), ttlMs: TTL_MS, fenceWaitMs: waitMs });
    await m.check();
    // The agents learn the TTL and the fence timings from the store.
    expect((await store.get<HostLeaseSettings>(HOST_LEASE_SETTINGS_KEY))?.value).toEqual({ ttlMs: TTL_MS, graceMs: TTL_MS, waitMs });
    const t0 = Date.now();
    await pastTtl(t0);
    await m.check();
    const lost = await resources.mustGet('Host', 'h1');
    expect(lost.status).toMatchObject({ state: 'NotReady', reason: 'LeaseExpired' });
    expect(lost.status.fencedAt).toBeUndefined();
    while (Date.now() - t0 <= waitMs + 20) await sleep(10);
    await m.check();
    expect((await resources.mustGet('Host', 'h1')).status.fencedAt).toBeDefined();
    await renew();
    await m.check();
    const back = await resources.mustGet('Host', 'h1');
    expect(back.status.state).toBe('Ready');
    expect(back.status.fencedAt).toBeUndefined();
  });

  it('counts the fence wait again from the end of a blind period', async () => {
    const waitMs = 3 * TTL_MS;
    const m = new HostMonitor({ resources, env, logger: pino({ level: 'silent' }), ttlMs: TTL_MS, fenceWaitMs: waitMs });
    await m.check();
    await pastTtl(Date.now());
    await m.check();
    expect(await state()).toBe('NotReady');
    storeDown = true;
    await expect(m.check()).rejects.toThrow(StoreUnavailableError);
    const blindFor = Date.now();
    while (Date.now() - blindFor <= waitMs + 20) await sleep(10);
    storeDown = false;
    const t1 = Date.now();
    await m.check();
    expect((await resources.mustGet('Host', 'h1')).status.fencedAt).toBeUndefined();
    while (Date.now() - t1 <= waitMs + 20) await sleep(10);
    await m.check();
    expect((await resources.mustGet('Host', 'h1')).status.fencedAt).toBeDefined();
  });
});
