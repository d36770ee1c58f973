/**
 * The shared watch over a real SQLite store: every client gets every change after it joined,
 * in order, from one store watch; a late client starts where the hub is; the store watch
 * stops when the last client leaves and starts again for the next; a failing watch ends
 * every client.
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { openSqliteStore } from '../store/sqlite.js';
import type { Store, WatchEvent } from '../store/store.js';
import { FrameCache, WatchHub } from './watch-hub.js';

const logger = pino({ level: 'silent' });

/** Counts the store's live watches by wrapping watch(). */
function counting(store: Store): { store: Store; live: () => number } {
  let live = 0;
  const wrapped = Object.create(store) as Store; // everything else is the real store's
  wrapped.watch = <T>(prefix: string, after: number, signal: AbortSignal) => {
    const inner = store.watch<T>(prefix, after, signal);
    return {
      async *[Symbol.asyncIterator]() {
        live++;
        try {
          yield* inner;
        } finally {
          live--;
        }
      },
    };
  };
  return { store: wrapped, live: () => live };
}

const until = async (f: () => boolean): Promise<void> => {
  for (let i = 0; i < 200 && !f(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(f()).toBe(true);
};

describe('WatchHub', () => {
  it('hands every change to every client from one store watch, and stops it with the last client', async () => {
    const raw = await openSqliteStore({ path: ':memory:' });
    const { store, live } = counting(raw);
    const hub = new WatchHub(store, 'k/', logger);
    const a: WatchEvent<unknown>[] = [];
    const b: WatchEvent<unknown>[] = [];
    const ja = await hub.join({ deliver: (e) => a.push(e), fail: () => undefined });
    await raw.put('k/1', 1);
    await raw.put('other', 0);
    await until(() => a.length === 1);
    const jb = await hub.join({ deliver: (e) => b.push(e), fail: () => undefined });
    expect(jb.from).toBe(a[0]?.revision); // b starts after what the hub already handed out
    await raw.put('k/2', 2);
    await raw.put('k/3', 3);
    await until(() => a.length === 3 && b.length === 2);
    expect(a.map((e) => e.key)).toEqual(['k/1', 'k/2', 'k/3']);
    expect(b.map((e) => e.key)).toEqual(['k/2', 'k/3']);
    expect(b[0]).toBe(a[1]); // the same event object: read once
    expect(live()).toBe(1);
    ja.leave();
    jb.leave();
    await until(() => live() === 0);
    expect(hub.size).toBe(0);
    // A new client starts a new watch from the current revision: nothing old is replayed.
    const c: WatchEvent<unknown>[] = [];
    const jc = await hub.join({ deliver: (e) => c.push(e), fail: () => undefined });
    await raw.put('k/4', 4);
    await until(() => c.length === 1);
    expect(c.map((e) => e.key)).toEqual(['k/4']);
    jc.leave();
    await raw.close();
  });

  it('ends every client when its watch fails', async () => {
    const raw = await openSqliteStore({ path: ':memory:', watchBufferLimit: 10 });
    const hub = new WatchHub(raw, '', logger);
    const failures: Error[] = [];
    await hub.join({ deliver: () => undefined, fail: (e) => failures.push(e) });
    await hub.join({ deliver: () => undefined, fail: (e) => failures.push(e) });
    await raw.close(); // running watches end with StoreClosedError
    await until(() => failures.length === 2);
    expect(failures.map((e) => e.name)).toEqual(['StoreClosedError', 'StoreClosedError']);
    expect(hub.size).toBe(0);
  });

  it('formats a shared event once', () => {
    let n = 0;
    const cache = new FrameCache((e) => `${e.key}:${++n}`);
    const e = { type: 'put' as const, key: 'k', value: 1, revision: 1 };
    expect([cache.frameOf(e), cache.frameOf(e), cache.frameOf({ ...e })]).toEqual(['k:1', 'k:1', 'k:2']);
  });
});
