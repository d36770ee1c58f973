import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { TokenCache } from './cache.js';
import { authenticate } from './tokens.js';
import { bootstrapToken, issueToken, revokeToken } from '../core/api-tokens.js';
import { contextFor } from '../core/audit-context.js';
import { Resources } from '../core/resources.js';

const NOW = '2025-01-01T00:00:00.000Z';
let dir: string;
let store: SqliteStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-auth-cache-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
});
afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

async function until(cond: () => Promise<boolean>, ms = 2000): Promise<number> {
  const t0 = performance.now();
  while (!(await cond())) {
    if (performance.now() - t0 > ms) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 1));
  }
  return performance.now() - t0;
}

it('answers from the watched view and sees new tokens and revocations', async () => {
  const root = (await bootstrapToken(new Resources(store), { id: 'root', name: 'root', now: NOW }))!;
  const admin = (await authenticate(store, root.token))!;
  const cache = new TokenCache(store);
  expect(await cache.authenticate(root.token)).toEqual(admin); // not started: falls back to the store
  const ac = new AbortController();
  const running = cache.start(ac.signal);
  try {
    await until(async () => cache.isSynced);
    expect(await cache.authenticate(root.token)).toEqual(admin);
    // One character changed (never the same one: a token ending in 'A' would be unchanged).
    expect(await cache.authenticate(root.token.slice(0, -1) + (root.token.endsWith('A') ? 'B' : 'A'))).toBeUndefined();
    expect(await cache.authenticate('nonsense')).toBeUndefined();

    const dev = await issueToken(new Resources(store), contextFor(admin), { id: 'dev', name: 'dev', role: 'tenant-viewer', tenant: 'acme', now: NOW });
    await until(async () => (await cache.authenticate(dev.token)) !== undefined);
    await revokeToken(new Resources(store), contextFor(admin), 'dev', NOW);
    const ms = await until(async () => (await cache.authenticate(dev.token)) === undefined);
    expect(ms).toBeLessThan(500);
    // The store itself changed under the view: a direct delete is seen too.
    await store.delete('tokens/root');
    await until(async () => (await cache.authenticate(root.token)) === undefined);
  } finally {
    ac.abort();
    await running;
  }
  expect(cache.isSynced).toBe(false);
});
