/**
 * The Store contract suite: every Store implementation (SQLite and etcd) runs these
 * same tests, so callers can rely on the semantics documented in `store.ts` whichever
 * backend is configured. Call `describeStoreContract` from the implementation's test file.
 *
 * The suite never assumes the store starts empty or at revision 0: every test works under
 * a fresh random key namespace and compares revisions relative to what it observed first,
 * so a shared etcd can run it too (as long as nothing else writes during a test).
 */
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CompactedError, ConflictError, type Entry, type Expectation, type Store, type TxnOp, type WatchEvent } from './store.js';

/** What the contract needs from an implementation under test. */
export interface StoreHarness {
  store: Store;
  /** Release the store and everything it created (files, processes). */
  cleanup: () => Promise<void>;
  /**
   * Discard watch history at and below `revision` (etcd Compact; SqliteStore.compact), so
   * the suite can check that resuming from before it fails with CompactedError.
   */
  compact: (revision: number) => Promise<void>;
}

let nsCounter = 0;
/** A key namespace no other test (or earlier run against a shared backend) uses. */
function freshNamespace(): string {
  nsCounter++;
  return `contract-${process.pid}-${Date.now().toString(36)}-${nsCounter}/`;
}

/** Compare keys the way SQLite BINARY and etcd do: by UTF-8 bytes (= code points). */
function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * Read a watch until `done` holds for what was read, then stop it. Fails after `ms` when
 * `done` never holds (the watch is aborted so nothing leaks).
 */
async function watchUntil<T>(
  store: Store,
  prefix: string,
  after: number,
  done: (events: WatchEvent<T>[]) => boolean,
  ms = 10_000,
): Promise<WatchEvent<T>[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), ms);
  const out: WatchEvent<T>[] = [];
  try {
    if (done(out)) return out;
    for await (const ev of store.watch<T>(prefix, after, ac.signal)) {
      out.push(ev);
      if (done(out)) break;
    }
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  if (!done(out)) throw new Error(`watch ${prefix} after ${after} timed out with ${out.length} events: ${JSON.stringify(out)}`);
  return out;
}

/** Run `fn` and return the ConflictError it throws; fails the test if it throws anything else or nothing. */
async function conflictOf(fn: () => Promise<unknown>): Promise<ConflictError> {
  try {
    await fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConflictError);
    return e as ConflictError; // instanceof asserted just above
  }
  throw new Error('expected a ConflictError, but the write succeeded');
}

/**
 * Register the contract tests for one Store implementation. `open` is called before each
 * test and must return a working store; `cleanup` is called after it, even on failure.
 */
export function describeStoreContract(name: string, open: () => Promise<StoreHarness>): void {
  describe(`Store contract: ${name}`, () => {
    let h: StoreHarness;
    let store: Store;
    let ns: string;

    beforeEach(async () => {
      h = await open();
      store = h.store;
      ns = freshNamespace();
    });
    afterEach(async () => {
      await h.cleanup();
    });

    it('get of a missing key is undefined; put returns a new version that get reports', async () => {
      const r0 = await store.revision();
      expect(await store.get(`${ns}k`)).toBeUndefined();
      const v = await store.put(`${ns}k`, { a: 1 });
      expect(v).toBeGreaterThan(r0);
      expect(await store.revision()).toBe(v);
      expect(await store.get(`${ns}k`)).toEqual({ key: `${ns}k`, value: { a: 1 }, version: v, createRevision: v });
    });

    it('updates bump the version and keep the create revision; revisions only grow', async () => {
      const v1 = await store.put(`${ns}k`, 'one');
      const v2 = await store.put(`${ns}k`, 'two');
      const v3 = await store.put(`${ns}other`, 'x');
      const v4 = await store.put(`${ns}k`, 'two'); // same value still writes
      expect(v2).toBeGreaterThan(v1);
      expect(v3).toBeGreaterThan(v2);
      expect(v4).toBeGreaterThan(v3);
      expect(await store.get(`${ns}k`)).toEqual({ key: `${ns}k`, value: 'two', version: v4, createRevision: v1 });
      expect(await store.revision()).toBe(v4);
    });

    it('stores any JSON value: objects, arrays, strings, numbers, booleans, null', async () => {
      const values: unknown[] = [{ nested: { list: [1, 'two', null, true] } }, [1, 2], 'text "quoted" ☃', 42.5, -7, false, null];
      for (const [i, value] of values.entries()) {
        await store.put(`${ns}v${i}`, value);
        expect((await store.get(`${ns}v${i}`))?.value).toEqual(value);
      }
    });

    it('delete returns its revision, removes the key, and a re-create starts a new create revision', async () => {
      const v1 = await store.put(`${ns}k`, 1);
      const d = await store.delete(`${ns}k`);
      expect(d).toBeGreaterThan(v1);
      expect(await store.revision()).toBe(d);
      expect(await store.get(`${ns}k`)).toBeUndefined();
      const v2 = await store.put(`${ns}k`, 2);
      expect(v2).toBeGreaterThan(d!); // d is a number: asserted greater than v1 above
      expect((await store.get(`${ns}k`))?.createRevision).toBe(v2);
    });

    it('delete of a missing key without expectation is a no-op returning undefined', async () => {
      await store.put(`${ns}x`, 1);
      const r = await store.revision();
      expect(await store.delete(`${ns}missing`)).toBeUndefined();
      expect(await store.revision()).toBe(r);
    });

    it('list returns the keys under a prefix in byte order, consistent with its revision', async () => {
      const keys = ['b', 'a', 'a/b', 'ab', 'a%', 'a_', '_x', '%y', 'é', 'ﬀ', '😀', 'a\u0000z'];
      for (const k of keys) await store.put(`${ns}${k}`, { k });
      const all = await store.list<{ k: string }>(ns);
      expect(all.items.map((e) => e.key)).toEqual(keys.map((k) => `${ns}${k}`).sort(byteOrder));
      expect(all.revision).toBe(await store.revision());
      for (const e of all.items) {
        expect(e.version).toBeLessThanOrEqual(all.revision);
        expect(e.value.k).toBe(e.key.slice(ns.length));
      }
      const sub = (p: string) => store.list(`${ns}${p}`).then((l) => l.items.map((e) => e.key.slice(ns.length)));
      expect(await sub('a/')).toEqual(['a/b']); // not "ab", not "a"
      expect(await sub('a%')).toEqual(['a%']); // % is not a wildcard
      expect(await sub('a_')).toEqual(['a_']); // _ is not a wildcard
      expect(await sub('_')).toEqual(['_x']);
      expect(await sub('a')).toEqual(['a', 'a\u0000z', 'a%', 'a/b', 'a_', 'ab']);
      expect(await sub('😀')).toEqual(['😀']);
      expect(await sub('zzz')).toEqual([]);
    });

    it('put with {absent: true} creates only when missing', async () => {
      const v = await store.put(`${ns}k`, 1, { absent: true });
      const r = await store.revision();
      const c = await conflictOf(() => store.put(`${ns}k`, 2, { absent: true }));
      expect(c.key).toBe(`${ns}k`);
      expect(c.actualVersion).toBe(v);
      expect(await store.revision()).toBe(r);
      expect((await store.get(`${ns}k`))?.value).toBe(1);
    });

    it('put with {version} succeeds only on the stored version', async () => {
      const v1 = await store.put(`${ns}k`, 1);
      const v2 = await store.put(`${ns}k`, 2, { version: v1 });
      const r = await store.revision();
      const c = await conflictOf(() => store.put(`${ns}k`, 3, { version: v1 }));
      expect([c.key, c.actualVersion]).toEqual([`${ns}k`, v2]);
      const missing = await conflictOf(() => store.put(`${ns}missing`, 3, { version: v1 }));
      expect([missing.key, missing.actualVersion]).toEqual([`${ns}missing`, 0]);
      expect(await store.revision()).toBe(r);
      expect(await store.get(`${ns}k`)).toMatchObject({ value: 2, version: v2 });
      expect(await store.get(`${ns}missing`)).toBeUndefined();
    });

    it('delete with expectations: {version} must match, {absent} conflicts with a present key', async () => {
      const v1 = await store.put(`${ns}k`, 1);
      const v2 = await store.put(`${ns}k`, 2);
      const r = await store.revision();
      const stale = await conflictOf(() => store.delete(`${ns}k`, { version: v1 }));
      expect([stale.key, stale.actualVersion]).toEqual([`${ns}k`, v2]);
      const present = await conflictOf(() => store.delete(`${ns}k`, { absent: true }));
      expect(present.actualVersion).toBe(v2);
      const missing = await conflictOf(() => store.delete(`${ns}missing`, { version: v1 }));
      expect(missing.actualVersion).toBe(0);
      expect(await store.revision()).toBe(r);
      expect(await store.delete(`${ns}missing`, { absent: true })).toBeUndefined();
      expect(await store.revision()).toBe(r);
      const d = await store.delete(`${ns}k`, { version: v2 });
      expect(d).toBe(r + 1);
      expect(await store.get(`${ns}k`)).toBeUndefined();
    });

    it('txn: all writes land at one new revision', async () => {
      const v0 = await store.put(`${ns}old`, 'gone soon');
      const keep = await store.put(`${ns}keep`, 'k');
      const { revision } = await store.txn([
        { op: 'put', key: `${ns}a`, value: 1, expect: { absent: true } },
        { op: 'put', key: `${ns}keep`, value: 'k2', expect: { version: keep } },
        { op: 'delete', key: `${ns}old`, expect: { version: v0 } },
        { op: 'put', key: `${ns}b`, value: 2 },
      ]);
      expect(revision).toBe(keep + 1);
      expect(await store.revision()).toBe(revision);
      expect(await store.get(`${ns}a`)).toMatchObject({ value: 1, version: revision, createRevision: revision });
      expect(await store.get(`${ns}b`)).toMatchObject({ value: 2, version: revision });
      expect(await store.get(`${ns}keep`)).toMatchObject({ value: 'k2', version: revision, createRevision: keep });
      expect(await store.get(`${ns}old`)).toBeUndefined();
    });

    it('txn: one failing precondition writes nothing and names the first failing key', async () => {
      const va = await store.put(`${ns}a`, 'a');
      const vb = await store.put(`${ns}b`, 'b');
      const r = await store.revision();
      const c = await conflictOf(() =>
        store.txn([
          { op: 'put', key: `${ns}new`, value: 1, expect: { absent: true } },
          { op: 'put', key: `${ns}a`, value: 'A', expect: { version: va } },
          { op: 'delete', key: `${ns}b`, expect: { version: va } }, // fails: b is at vb
          { op: 'put', key: `${ns}a2`, value: 1, expect: { version: 1 } }, // would fail too
        ]),
      );
      expect([c.key, c.actualVersion]).toEqual([`${ns}b`, vb]);
      expect(await store.revision()).toBe(r);
      expect(await store.get(`${ns}new`)).toBeUndefined();
      expect(await store.get(`${ns}a`)).toMatchObject({ value: 'a', version: va });
      expect(await store.get(`${ns}b`)).toMatchObject({ value: 'b', version: vb });
      const absent = await conflictOf(() => store.txn([{ op: 'put', key: `${ns}a`, value: 0, expect: { absent: true } }]));
      expect([absent.key, absent.actualVersion]).toEqual([`${ns}a`, va]);
    });

    it('txn that changes nothing keeps the revision; a txn naming a key twice is rejected', async () => {
      await store.put(`${ns}x`, 1);
      const r = await store.revision();
      expect((await store.txn([])).revision).toBe(r);
      expect((await store.txn([{ op: 'delete', key: `${ns}missing` }])).revision).toBe(r);
      await expect(
        store.txn([
          { op: 'put', key: `${ns}d`, value: 1 },
          { op: 'put', key: `${ns}d`, value: 2 },
        ]),
      ).rejects.toThrow();
      expect(await store.get(`${ns}d`)).toBeUndefined();
      expect(await store.revision()).toBe(r);
    });

    it('returned values are copies: mutating inputs or outputs does not change the store', async () => {
      const input = { list: [1], inner: { n: 1 } };
      const v = await store.put(`${ns}k`, input);
      input.list.push(2);
      input.inner.n = 99;
      const got = await store.get<typeof input>(`${ns}k`);
      expect(got?.value).toEqual({ list: [1], inner: { n: 1 } });
      got!.value.inner.n = 5; // got was just asserted defined
      const listed = await store.list<typeof input>(ns);
      expect(listed.items[0]?.value).toEqual({ list: [1], inner: { n: 1 } });
      listed.items[0]!.value.list.push(7); // asserted present above
      const evs = await watchUntil<typeof input>(store, ns, v - 1, (e) => e.length === 1);
      expect(evs[0]?.value).toEqual({ list: [1], inner: { n: 1 } });
      evs[0]!.value.inner.n = 6; // length checked by watchUntil
      expect((await store.get(`${ns}k`))?.value).toEqual({ list: [1], inner: { n: 1 } });
      const again = await watchUntil<typeof input>(store, ns, v - 1, (e) => e.length === 1);
      expect(again[0]?.value).toEqual({ list: [1], inner: { n: 1 } });
    });

    it('watch replays history in revision order, including deletes with their last value', async () => {
      const r0 = await store.revision();
      const v1 = await store.put(`${ns}a`, 1);
      const v2 = await store.put(`${ns}b`, 2);
      const v3 = await store.put(`${ns}a`, 3);
      const v4 = (await store.delete(`${ns}b`))!; // b exists, so delete returns a revision
      const t = await store.txn([
        { op: 'put', key: `${ns}c`, value: 'c' },
        { op: 'delete', key: `${ns}a` },
      ]);
      const evs = await watchUntil(store, ns, r0, (e) => e.length === 6);
      expect(evs).toEqual([
        { type: 'put', key: `${ns}a`, value: 1, revision: v1 },
        { type: 'put', key: `${ns}b`, value: 2, revision: v2 },
        { type: 'put', key: `${ns}a`, value: 3, revision: v3 },
        { type: 'delete', key: `${ns}b`, value: 2, revision: v4 },
        { type: 'put', key: `${ns}c`, value: 'c', revision: t.revision },
        { type: 'delete', key: `${ns}a`, value: 3, revision: t.revision },
      ]);
    });

    it('watch delivers live changes after the replay, then ends cleanly on abort', async () => {
      const v1 = await store.put(`${ns}a`, 1);
      const ac = new AbortController();
      const seen: WatchEvent[] = [];
      const it = store.watch(ns, v1 - 1, ac.signal)[Symbol.asyncIterator]();
      const first = await it.next();
      expect(first.value).toMatchObject({ key: `${ns}a`, revision: v1 });
      const pending = it.next(); // waits for a live event
      const v2 = await store.put(`${ns}b`, 2);
      const second = await pending;
      expect(second).toEqual({ done: false, value: { type: 'put', key: `${ns}b`, value: 2, revision: v2 } });
      seen.push(second.value as WatchEvent); // done is false, so value is an event
      const waiting = it.next();
      ac.abort();
      expect(await waiting).toMatchObject({ done: true });
      expect(seen).toHaveLength(1);
    });

    it('watch delivers every write of a live txn, in op order, at the txn revision', async () => {
      const r = await store.revision();
      await store.put(`${ns}b`, 'b0');
      const done = watchUntil(store, ns, r + 1, (e) => e.length === 3);
      await new Promise((res) => setTimeout(res, 20)); // let the watch go live first
      const { revision } = await store.txn([
        { op: 'put', key: `${ns}c`, value: 'c' },
        { op: 'delete', key: `${ns}b` },
        { op: 'put', key: `${ns}a`, value: 'a' },
      ]);
      expect(await done).toEqual([
        { type: 'put', key: `${ns}c`, value: 'c', revision },
        { type: 'delete', key: `${ns}b`, value: 'b0', revision },
        { type: 'put', key: `${ns}a`, value: 'a', revision },
      ]);
    });

    it('watch from a future revision only yields what comes after it', async () => {
      const r = await store.revision();
      const vs: number[] = [];
      const done = watchUntil(store, ns, r + 2, (e) => e.length === 2);
      for (let i = 0; i < 4; i++) vs.push(await store.put(`${ns}k${i}`, i));
      const evs = await done;
      expect(evs.map((e) => e.revision)).toEqual([r + 3, r + 4]);
    });

    it('watch on a prefix does not see siblings sharing the characters (a/ vs ab/)', async () => {
      const r = await store.revision();
      const done = watchUntil(store, `${ns}a/`, r, (e) => e.some((x) => x.key.endsWith('/end')));
      await store.put(`${ns}ab/x`, 1);
      await store.put(`${ns}a/x`, 2);
      await store.put(`${ns}a`, 3);
      await store.put(`${ns}a%/x`, 4);
      await store.put(`${ns}a/end`, 5);
      const evs = await done;
      expect(evs.map((e) => e.key.slice(ns.length))).toEqual(['a/x', 'a/end']);
    });

    it('watch resumes from the last revision a client saw, with no gap and no duplicate', async () => {
      const r0 = await store.revision();
      for (let i = 0; i < 5; i++) await store.put(`${ns}k${i}`, i);
      const firstTwo = await watchUntil(store, ns, r0, (e) => e.length === 2);
      const last = firstTwo[1]!.revision; // length is 2
      await store.put(`${ns}k5`, 5);
      const rest = await watchUntil(store, ns, last, (e) => e.length === 4);
      expect([...firstTwo, ...rest].map((e) => e.value)).toEqual([0, 1, 2, 3, 4, 5]);
    });

    it('watch from a list revision under concurrent writes rebuilds exactly the final state', async () => {
      const keys = Array.from({ length: 8 }, (_, i) => `${ns}k${i}`);
      let stop = false;
      let writes = 0;
      const writer = (async () => {
        for (let i = 0; i < 150 && !stop; i++) {
          const k = keys[i % keys.length]!; // index is in range
          if (i % 7 === 3) await store.delete(k);
          else if (i % 11 === 5) await store.txn([{ op: 'put', key: k, value: { i } }, { op: 'put', key: keys[(i + 1) % keys.length]!, value: { i, t: true } }]); // index in range
          else await store.put(k, { i });
          writes++;
          if (i % 10 === 0) await new Promise((r) => setImmediate(r));
        }
      })();
      try {
        while (writes < 40) await new Promise((r) => setTimeout(r, 1));
        const snap = await store.list(ns);
        const state = new Map<string, unknown>(snap.items.map((e) => [e.key, e.value]));
        const ac = new AbortController();
        const events: WatchEvent[] = [];
        const reader = (async () => {
          for await (const ev of store.watch(ns, snap.revision, ac.signal)) events.push(ev);
        })();
        await writer;
        const final = await store.revision();
        const deadline = Date.now() + 10_000;
        while ((events.at(-1)?.revision ?? snap.revision) < final && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
        ac.abort();
        await reader;
        expect(events.at(-1)?.revision).toBe(final);
        const ids = events.map((e) => `${e.revision}:${e.key}`);
        expect(new Set(ids).size).toBe(ids.length);
        for (let i = 1; i < events.length; i++) expect(events[i]!.revision).toBeGreaterThanOrEqual(events[i - 1]!.revision); // i in range
        expect(events[0]!.revision).toBe(snap.revision + 1); // every write here is under ns and changes something
        for (const ev of events) {
          if (ev.type === 'put') state.set(ev.key, ev.value);
          else state.delete(ev.key);
        }
        const now = await store.list(ns);
        expect(Object.fromEntries(state)).toEqual(Object.fromEntries(now.items.map((e) => [e.key, e.value])));
        // What the live watcher saw must be exactly what a later replay of the history says.
        const replayed = await watchUntil(store, ns, snap.revision, (e) => e.at(-1)?.revision === final);
        expect(events).toEqual(replayed);
      } finally {
        stop = true;
        await writer;
      }
    });

    it('watch from a compacted revision fails with CompactedError; from the compaction point it works', async () => {
      const r0 = await store.revision();
      for (let i = 0; i < 5; i++) await store.put(`${ns}k`, i);
      const cut = r0 + 3;
      await h.compact(cut);
      await expect(watchUntil(store, ns, r0, (e) => e.length > 0, 2000)).rejects.toBeInstanceOf(CompactedError);
      const evs = await watchUntil(store, ns, cut, (e) => e.length === 2);
      expect(evs.map((e) => e.value)).toEqual([3, 4]);
    });

    it('property: random operations give the same results as a simple in-memory model', async () => {
      const suffixes = ['a', 'a/b', 'ab', 'a%', 'a_', '_', 'é', 'ﬀ', '😀', 'a/😀'];
      type ExSpec = 'none' | 'absent' | 'current' | 'stale';
      const exSpec = fc.constantFrom<ExSpec>('none', 'absent', 'current', 'stale', 'current');
      const key = fc.constantFrom(...suffixes);
      const value = fc.oneof(fc.integer(), fc.string(), fc.record({ n: fc.integer(), l: fc.array(fc.boolean(), { maxLength: 3 }) }), fc.constant(null));
      const opArb = fc.oneof(
        fc.record({ op: fc.constant('put' as const), key, value, ex: exSpec }),
        fc.record({ op: fc.constant('delete' as const), key, ex: exSpec }),
      );
      const cmd = fc.oneof(
        { arbitrary: opArb, weight: 4 },
        { arbitrary: fc.record({ op: fc.constant('txn' as const), ops: fc.uniqueArray(opArb, { selector: (o) => o.key, maxLength: 4 }) }), weight: 2 },
        { arbitrary: fc.record({ op: fc.constant('get' as const), key }), weight: 1 },
        { arbitrary: fc.record({ op: fc.constant('list' as const), prefix: fc.constantFrom('', 'a', 'a/', 'a%', '_', '😀') }), weight: 1 },
      );

      await fc.assert(
        fc.asyncProperty(fc.array(cmd, { maxLength: 25 }), async (cmds) => {
          const p = freshNamespace();
          let rev = await store.revision();
          const model = new Map<string, Entry>();
          const resolve = (k: string, s: ExSpec): Expectation => {
            const cur = model.get(k)?.version ?? 0;
            if (s === 'none') return undefined;
            if (s === 'absent') return { absent: true };
            if (s === 'stale') return { version: cur + 1 };
            return cur === 0 ? { absent: true } : { version: cur };
          };
          /** The model's txn: returns [revision, changed] or the conflict. */
          const apply = (ops: TxnOp[]): { revision: number; changed: boolean } | ConflictError => {
            for (const o of ops) {
              const actual = model.get(o.key)?.version ?? 0;
              const ex = o.expect;
              if (ex && ('absent' in ex ? actual !== 0 : ex.version !== actual)) return new ConflictError(o.key, actual);
            }
            const next = rev + 1;
            let changed = false;
            for (const o of ops) {
              const old = model.get(o.key);
              if (o.op === 'put') {
                model.set(o.key, { key: o.key, value: o.value, version: next, createRevision: old?.createRevision ?? next });
                changed = true;
              } else if (old) {
                model.delete(o.key);
                changed = true;
              }
            }
            if (changed) rev = next;
            return { revision: rev, changed };
          };
          const outcome = async (f: () => Promise<unknown>): Promise<unknown> => {
            try {
              return { ok: await f() };
            } catch (e) {
              if (e instanceof ConflictError) return { conflict: [e.key, e.actualVersion] };
              throw e;
            }
          };
          const expected = (m: ReturnType<typeof apply>, ok: (r: { revision: number; changed: boolean }) => unknown): unknown =>
            m instanceof ConflictError ? { conflict: [m.key, m.actualVersion] } : { ok: ok(m) };

          for (const c of cmds) {
            if (c.op === 'put') {
              const k = p + c.key;
              const ex = resolve(k, c.ex);
              const got = await outcome(() => store.put(k, c.value, ex));
              expect(got).toEqual(expected(apply([{ op: 'put', key: k, value: c.value, expect: ex }]), (r) => r.revision));
            } else if (c.op === 'delete') {
              const k = p + c.key;
              const ex = resolve(k, c.ex);
              const got = await outcome(() => store.delete(k, ex));
              expect(got).toEqual(expected(apply([{ op: 'delete', key: k, expect: ex }]), (r) => (r.changed ? r.revision : undefined)));
            } else if (c.op === 'txn') {
              const ops: TxnOp[] = c.ops.map((o) => {
                const k = p + o.key;
                const ex = resolve(k, o.ex);
                return o.op === 'put' ? { op: 'put', key: k, value: o.value, expect: ex } : { op: 'delete', key: k, expect: ex };
              });
              const got = await outcome(() => store.txn(ops));
              expect(got).toEqual(expected(apply(ops), (r) => ({ revision: r.revision })));
            } else if (c.op === 'get') {
              expect(await store.get(p + c.key)).toEqual(model.get(p + c.key));
            } else {
              const l = await store.list(p + c.prefix);
              const want = [...model.values()].filter((e) => e.key.startsWith(p + c.prefix)).sort((a, b) => byteOrder(a.key, b.key));
              expect(l).toEqual({ items: want, revision: rev });
            }
            expect(await store.revision()).toBe(rev);
          }
        }),
        { numRuns: 40 },
      );
    });
  });
}
