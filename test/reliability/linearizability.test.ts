/**
 * The history checker itself: hand-made histories it must accept and ones it must reject
 * (lost and stale writes, two winners of one compare-and-set, versions going backwards, a
 * blind apply refused with a conflict, values nobody wrote), and generated histories of a
 * reference store that is linearizable by construction (every operation takes effect at one
 * instant inside its interval): all accepted, and rejected once an answer is falsified.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkHistory, checkKey, checkRevisionOrder, type Call, type Operation, type Outcome } from './linearizability.js';

let nextId = 0;
function op(client: number, call: Call, outcome: Outcome, invokedAt: number, returnedAt: number, key = 'k'): Operation {
  return { id: nextId++, client, key, call, outcome, invokedAt, returnedAt: outcome.type === 'unknown' ? Infinity : returnedAt };
}
const ok = (value: string, rv: number): Outcome => ({ type: 'ok', value, rv });

describe('hand-made histories', () => {
  it('accepts a sequential history and overlapping operations in either order', () => {
    const seq = [
      op(1, { f: 'create', value: 'a' }, ok('a', 5), 0, 1),
      op(1, { f: 'get' }, ok('a', 5), 2, 3),
      op(1, { f: 'apply', value: 'b', rv: 5 }, ok('b', 7), 4, 5),
      op(1, { f: 'apply', value: 'b' }, ok('b', 7), 6, 7), // unchanged: same version
      op(1, { f: 'delete' }, { type: 'deleted' }, 8, 9),
      op(1, { f: 'get' }, { type: 'absent' }, 10, 11),
      op(1, { f: 'delete', rv: 3 }, { type: 'notfound' }, 12, 13),
      op(1, { f: 'apply', value: 'c', rv: 0 }, ok('c', 20), 14, 15),
      op(1, { f: 'apply', value: 'd', rv: 0 }, { type: 'exists' }, 16, 17), // version 0: must not exist
      op(1, { f: 'apply', value: 'c', rv: 0 }, { type: 'conflict' }, 18, 19),
    ];
    expect(checkKey(seq).linearizable).toBe(true);
    // A read overlapping a write may see either side of it.
    for (const seen of [ok('x', 3), ok('y', 4)]) {
      const h = [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(1, { f: 'apply', value: 'y' }, ok('y', 4), 2, 6), op(2, { f: 'get' }, seen, 3, 5)];
      expect(checkKey(h).linearizable).toBe(true);
    }
    // Two overlapping compare-and-sets on one version: one wins, the other conflicts.
    const cas = [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(1, { f: 'apply', value: 'p', rv: 3 }, { type: 'conflict' }, 2, 6), op(2, { f: 'apply', value: 'q', rv: 3 }, ok('q', 9), 3, 5)];
    expect(checkKey(cas).linearizable).toBe(true);
  });

  it('rejects a lost acknowledged write and a stale read', () => {
    const lost = [op(1, { f: 'create', value: 'a' }, ok('a', 5), 0, 1), op(1, { f: 'apply', value: 'b' }, ok('b', 6), 2, 3), op(2, { f: 'get' }, ok('a', 5), 4, 5)];
    const v = checkKey(lost);
    expect(v.linearizable).toBe(false);
    expect(v.explanation).toMatch(/could be linearized/);
    const gone = [op(1, { f: 'create', value: 'a' }, ok('a', 5), 0, 1), op(2, { f: 'get' }, { type: 'absent' }, 2, 3)];
    expect(checkKey(gone).linearizable).toBe(false);
    const resurrected = [op(1, { f: 'create', value: 'a' }, ok('a', 5), 0, 1), op(1, { f: 'delete' }, { type: 'deleted' }, 2, 3), op(2, { f: 'get' }, ok('a', 5), 4, 5)];
    expect(checkKey(resurrected).linearizable).toBe(false);
  });

  it('rejects two winners of one compare-and-set, and a version going backwards', () => {
    const twoWinners = [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(1, { f: 'apply', value: 'p', rv: 3 }, ok('p', 8), 2, 6), op(2, { f: 'apply', value: 'q', rv: 3 }, ok('q', 9), 3, 5)];
    expect(checkKey(twoWinners).linearizable).toBe(false);
    const backwards = [op(1, { f: 'create', value: 'x' }, ok('x', 7), 0, 1), op(1, { f: 'apply', value: 'y' }, ok('y', 6), 2, 3)];
    expect(checkKey(backwards).linearizable).toBe(false);
    const recreatedLower = [op(1, { f: 'create', value: 'x' }, ok('x', 7), 0, 1), op(1, { f: 'delete' }, { type: 'deleted' }, 2, 3), op(1, { f: 'create', value: 'z' }, ok('z', 7), 4, 5)];
    expect(checkKey(recreatedLower).linearizable).toBe(false);
  });

  it('rejects a blind apply answered with a conflict, a value nobody wrote, and a create of an existing object', () => {
    const blindConflict = [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(2, { f: 'apply', value: 'y' }, { type: 'conflict' }, 2, 3)];
    expect(checkKey(blindConflict).linearizable).toBe(false);
    const invented = [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(2, { f: 'read' }, ok('nobody', 3), 2, 3)];
    expect(checkKey(invented).linearizable).toBe(false);
    const doubleCreate = [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(2, { f: 'create', value: 'y' }, ok('y', 4), 2, 3)];
    expect(checkKey(doubleCreate).linearizable).toBe(false);
    const staleCas = [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(1, { f: 'apply', value: 'y', rv: 3 }, ok('y', 4), 2, 3), op(2, { f: 'apply', value: 'z', rv: 3 }, ok('z', 5), 4, 5)];
    expect(checkKey(staleCas).linearizable).toBe(false);
  });

  it('lets an unknown outcome take effect or not, but not take effect twice or before its call', () => {
    const maybe = (seen: Outcome) => [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(1, { f: 'apply', value: 'y' }, { type: 'unknown' }, 2, 0), op(2, { f: 'get' }, seen, 10, 11)];
    expect(checkKey(maybe(ok('y', 12))).linearizable).toBe(true); // took effect, version learnt later
    expect(checkKey(maybe(ok('x', 3))).linearizable).toBe(true); // did not (or not yet)
    expect(checkKey(maybe(ok('y', 2))).linearizable).toBe(false); // its version cannot be below an earlier one
    // A read before the unknown write was even called cannot see it.
    const early = [op(1, { f: 'create', value: 'x' }, ok('x', 3), 0, 1), op(2, { f: 'get' }, ok('y', 12), 2, 3), op(1, { f: 'apply', value: 'y' }, { type: 'unknown' }, 4, 0)];
    expect(checkKey(early).linearizable).toBe(false);
    // Once seen, it stays: a later read cannot go back to the old value.
    const flapping = [...maybe(ok('y', 12)), op(2, { f: 'get' }, ok('x', 3), 12, 13)];
    expect(checkKey(flapping).linearizable).toBe(false);
    // A compare-and-set on the version it got wins; one on the older version conflicts.
    const cas = [...maybe(ok('y', 12)), op(2, { f: 'apply', value: 'z', rv: 3 }, ok('z', 14), 12, 13)];
    expect(checkKey(cas).linearizable).toBe(false);
  });

  it('checks revision order across keys', () => {
    const h = [op(1, { f: 'create', value: 'a' }, ok('a', 10), 0, 1, 'k1'), op(2, { f: 'create', value: 'b' }, ok('b', 9), 2, 3, 'k2')];
    expect(checkRevisionOrder(h)).toHaveLength(1);
    expect(checkHistory(h).violations).toHaveLength(1);
    const overlapping = [op(1, { f: 'create', value: 'a' }, ok('a', 10), 0, 3, 'k1'), op(2, { f: 'create', value: 'b' }, ok('b', 9), 2, 4, 'k2')];
    expect(checkHistory(overlapping).violations).toEqual([]);
  });
});

/** A store that is linearizable by construction: one map, one revision counter, atomic steps. */
class ReferenceStore {
  rev = 0;
  readonly m = new Map<string, { value: string; rv: number }>();
  run(key: string, c: Call): Outcome {
    const cur = this.m.get(key);
    const write = (value: string): Outcome => {
      const rv = ++this.rev;
      this.m.set(key, { value, rv });
      return { type: 'ok', value, rv };
    };
    switch (c.f) {
      case 'get':
      case 'read':
        return cur ? { type: 'ok', ...cur } : { type: 'absent' };
      case 'create':
        return cur ? { type: 'exists' } : write(c.value);
      case 'apply':
        if (c.rv !== undefined && (cur ? cur.rv !== c.rv : c.rv !== 0)) return { type: 'conflict' };
        if (cur && cur.value === c.value) return { type: 'ok', ...cur };
        return write(c.value);
      case 'delete':
        if (!cur) return { type: 'notfound' };
        if (c.rv !== undefined && c.rv !== cur.rv) return { type: 'conflict' };
        this.m.delete(key);
        this.rev++;
        return { type: 'deleted' };
    }
  }
}

interface Planned {
  client: number;
  key: string;
  kind: 'create' | 'apply' | 'cas' | 'delete' | 'cdelete' | 'get';
  start: number;
  end: number;
  at: number;
  unknown: boolean;
}

const plannedArb = fc.array(
  fc.record({
    client: fc.integer({ min: 0, max: 4 }),
    key: fc.constantFrom('a', 'b'),
    kind: fc.constantFrom('create', 'apply', 'cas', 'delete', 'cdelete', 'get'),
    gap: fc.integer({ min: 0, max: 5 }),
    len: fc.integer({ min: 1, max: 20 }),
    frac: fc.double({ min: 0, max: 1, noNaN: true }),
    unknown: fc.boolean(),
  }),
  { minLength: 1, maxLength: 40 },
);

/** Runs the planned operations against the reference store in the order of their instants. */
function execute(plan: ReturnType<typeof plannedArb.generate>['value'], withUnknown: boolean): Operation[] {
  const clock = new Map<number, number>();
  const ops: Planned[] = plan.map((p) => {
    const start = (clock.get(p.client) ?? 0) + p.gap;
    const end = start + p.len;
    clock.set(p.client, end);
    return { client: p.client, key: p.key, kind: p.kind, start, end, at: start + p.frac * p.len, unknown: withUnknown && p.unknown && p.kind !== 'get' };
  });
  const store = new ReferenceStore();
  const lastSeen = new Map<string, number>();
  const out: Operation[] = [];
  let n = 0;
  for (const [i, p] of [...ops.entries()].sort((x, y) => x[1].at - y[1].at)) {
    const value = `v${i}`;
    const seenRv = lastSeen.get(p.key) ?? 0;
    const call: Call =
      p.kind === 'create' ? { f: 'create', value } : p.kind === 'apply' ? { f: 'apply', value } : p.kind === 'cas' ? { f: 'apply', value, rv: seenRv } : p.kind === 'delete' ? { f: 'delete' } : p.kind === 'cdelete' ? { f: 'delete', rv: seenRv } : { f: 'get' };
    const outcome = store.run(p.key, call);
    if (outcome.type === 'ok') lastSeen.set(p.key, outcome.rv);
    out.push({ id: n++, client: p.client, key: p.key, call, outcome: p.unknown ? { type: 'unknown' } : outcome, invokedAt: p.start, returnedAt: p.unknown ? Infinity : p.end });
  }
  // A final read of every key after everything.
  const end = Math.max(...ops.map((p) => p.end)) + 1;
  for (const key of ['a', 'b']) out.push({ id: n++, client: 99, key, call: { f: 'get' }, outcome: store.run(key, { f: 'get' }), invokedAt: end, returnedAt: end + 1 });
  return out;
}

describe('generated histories of a linearizable store', () => {
  it('are all accepted, with and without unknown outcomes', () => {
    fc.assert(
      fc.property(plannedArb, fc.boolean(), (plan, withUnknown) => {
        const h = execute(plan, withUnknown);
        expect(checkHistory(h).violations).toEqual([]);
      }),
      { numRuns: 1500 },
    );
  });

  it('are rejected once one read is falsified (a value or a version nobody wrote)', () => {
    fc.assert(
      fc.property(plannedArb, fc.nat(), fc.boolean(), (plan, pick, falsifyValue) => {
        const h = execute(plan, false);
        const reads = h.filter((o) => o.outcome.type === 'ok' && (o.call.f === 'get' || o.call.f === 'read'));
        fc.pre(reads.length > 0);
        const victim = reads[pick % reads.length]!;
        const o = victim.outcome as { type: 'ok'; value: string; rv: number };
        victim.outcome = falsifyValue ? { ...o, value: 'never-written' } : { ...o, rv: o.rv + 1000 };
        expect(checkKey(h.filter((x) => x.key === victim.key)).linearizable).toBe(false);
      }),
      { numRuns: 1000 },
    );
  });
});
