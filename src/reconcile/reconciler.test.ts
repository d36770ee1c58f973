import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { Reconciler, watchOf } from './reconciler.js';

let dir: string;
let store: SqliteStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-reconciler-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

/** Resolves once `cond` holds, polling; fails after `ms`. */
async function until(cond: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('Reconciler', () => {
  it('reconciles the resync keys at start, the keys of watched changes, keys added from outside and on its timer, and stops on abort', async () => {
    const seen: string[] = [];
    let resyncs = 0;
    const loop = new Reconciler({
      name: 'test',
      store,
      logger: pino({ level: 'silent' }),
      reconcile: async (key) => {
        seen.push(key);
      },
      resync: {
        everyMs: 50,
        keys: () => {
          resyncs++;
          return ['all'];
        },
      },
      watches: [watchOf<{ name: string }>('things/', (e) => (e.type === 'put' ? [`thing/${e.value.name}`] : []))],
    });
    const ac = new AbortController();
    const running = loop.start(ac.signal);
    await until(() => seen.includes('all'));
    await store.put('things/a', { name: 'a' });
    await store.put('others/b', { name: 'b' });
    await until(() => seen.includes('thing/a'));
    loop.add('outside');
    loop.addAfter('later', 20);
    await until(() => seen.includes('outside') && seen.includes('later'));
    await until(() => resyncs >= 3);
    ac.abort();
    await running;
    expect(seen).not.toContain('thing/b');
  });

  it('retries a failing key with backoff until it succeeds', async () => {
    let attempts = 0;
    const loop = new Reconciler({
      name: 'flaky',
      store,
      logger: pino({ level: 'silent' }),
      reconcile: async () => {
        attempts++;
        if (attempts < 3) throw new Error('not yet');
      },
    });
    const ac = new AbortController();
    const running = loop.start(ac.signal);
    loop.add('k');
    await until(() => attempts >= 3);
    ac.abort();
    await running;
    expect(attempts).toBe(3);
  });
});
