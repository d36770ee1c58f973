/**
 * A sequential model of Carapace's object API and a linearizability checker for concurrent
 * histories of it. Pure: no I/O, no clock.
 *
 * The model is one object per key (`{value, resourceVersion}` or absent), as the API serves
 * Tenants: create (POST, create-only), apply (PUT, with or without a resourceVersion for
 * compare-and-set), delete (with or without a resourceVersion), get, and the projection of a
 * list onto one key. Resource versions are store revisions: the model cannot predict their
 * values, only that every write gives a key a version above every version it had before.
 *
 * A history is linearizable when its operations can be put in one order that respects real
 * time (an operation that returned before another was called comes first; overlapping ones
 * may go either way) and in which every result is what the model answers. Keys are
 * independent objects, so each key's sub-history is checked on its own (Herlihy and Wing's
 * locality; a list is checked as one read per key, which is weaker than checking it as one
 * atomic read of every key). Per key, the search is Wing and Gong's with Lowe's memoisation
 * of (set of linearized operations, model state), as in Knossos and Porcupine.
 *
 * Unknown outcomes: a call that failed with a network error, a timeout or a 5xx may or may
 * not have taken effect. It gets return time +infinity (so it may be linearized anywhere after
 * its call) and any outcome the model allows, including none; a write that took effect
 * without telling us its new version leaves the version unknown (above every earlier one)
 * until a later read shows it.
 */

/** What a client asked. `value` is the object's content (a Tenant's displayName). */
export type Call =
  | { f: 'create'; value: string }
  | { f: 'apply'; value: string; rv?: number }
  | { f: 'delete'; rv?: number }
  | { f: 'get' }
  /** One key's part of a list answer. */
  | { f: 'read' };

/** What the server answered. */
export type Outcome =
  /** The object as the answer shows it (create/apply/get, or present in a list). */
  | { type: 'ok'; value: string; rv: number }
  /** Get 404, or missing from a list. */
  | { type: 'absent' }
  | { type: 'deleted' }
  /** 409 CARAPACE_E_CONFLICT: a compare-and-set whose version did not match. */
  | { type: 'conflict' }
  /** 409 CARAPACE_E_ALREADY_EXISTS (a create, or an apply with resourceVersion 0, of an existing object). */
  | { type: 'exists' }
  /** 404 on delete. */
  | { type: 'notfound' }
  /** Network error, timeout or 5xx: it may or may not have taken effect. */
  | { type: 'unknown' };

/** One operation of a history: who, on which key, when it was called and when it returned. */
export interface Operation {
  id: number;
  client: number;
  key: string;
  call: Call;
  outcome: Outcome;
  /** Monotonic times (ms) at the call and at the return; `ret` is Infinity for unknown outcomes. */
  invokedAt: number;
  returnedAt: number;
}

/**
 * The model's state of one key. `rv` undefined: a write took effect with a version nobody
 * saw (it is above `floor`). `floor`: the highest version the key is known to have had, so
 * every later write must get a higher one.
 */
type State = { exists: false; floor: number } | { exists: true; value: string; rv: number | undefined; floor: number };

const ABSENT: State = { exists: false, floor: 0 };

function present(value: string, rv: number | undefined, floor: number): State {
  return { exists: true, value, rv, floor: rv !== undefined ? Math.max(floor, rv) : floor };
}

/** A new version an acknowledged write reports: it must be above every earlier one. */
function newVersion(s: State, rv: number): boolean {
  return rv > s.floor;
}

/** The current version, binding an unknown one to `rv` when that is possible. */
function versionIs(s: State & { exists: true }, rv: number): State | undefined {
  if (s.rv !== undefined) return s.rv === rv ? s : undefined;
  return rv > s.floor ? present(s.value, rv, s.floor) : undefined;
}

/** Can the current version differ from `rv`? (An unknown version can, unless nothing else is possible.) */
function versionIsNot(s: State & { exists: true }, rv: number): boolean {
  return s.rv === undefined || s.rv !== rv;
}

/**
 * Every state the key can be in after `call` answered `outcome` in state `s` (empty when the
 * answer is impossible there). Unknown outcomes allow "no effect" and every effect.
 */
export function step(s: State, call: Call, outcome: Outcome): State[] {
  const o = outcome;
  const unknown = o.type === 'unknown';
  const out: State[] = [];
  const add = (x: State | undefined): void => {
    if (x) out.push(x);
  };
  if (unknown) out.push(s); // no effect (never happened, or refused)
  switch (call.f) {
    case 'get':
    case 'read':
      if (unknown) return out;
      if (!s.exists) return o.type === 'absent' ? [s] : [];
      if (o.type !== 'ok' || o.value !== s.value) return [];
      add(versionIs(s, o.rv));
      return out;
    case 'create':
      if (!s.exists) {
        if (unknown) add(present(call.value, undefined, s.floor));
        else if (o.type === 'ok' && o.value === call.value && newVersion(s, o.rv)) add(present(call.value, o.rv, s.floor));
      } else if (o.type === 'exists') add(s);
      return out;
    case 'delete': {
      if (!s.exists) {
        if (o.type === 'notfound') add(s);
        return out;
      }
      const gone: State = { exists: false, floor: s.floor };
      if (call.rv === undefined) {
        if (unknown || o.type === 'deleted') add(gone);
        return out;
      }
      const matched = versionIs(s, call.rv);
      if (matched && (unknown || o.type === 'deleted')) add({ exists: false, floor: Math.max(s.floor, call.rv) });
      if (o.type === 'conflict' && versionIsNot(s, call.rv)) add(s);
      return out;
    }
    case 'apply': {
      const { value, rv } = call;
      if (!s.exists) {
        // A version given for an absent object must be 0 ("must not exist").
        if (rv !== undefined && rv !== 0) {
          if (o.type === 'conflict') add(s);
          return out;
        }
        if (unknown) add(present(value, undefined, s.floor));
        else if (o.type === 'ok' && o.value === value && newVersion(s, o.rv)) add(present(value, o.rv, s.floor));
        return out;
      }
      if (rv !== undefined) {
        // Compare-and-set: the stored version must be rv (an unchanged value is answered as is).
        const matched = versionIs(s, rv);
        if (matched && matched.exists) {
          if (value === matched.value) {
            if (unknown || (o.type === 'ok' && o.value === value && o.rv === rv)) add(matched);
          } else if (unknown) add(present(value, undefined, matched.floor));
          else if (o.type === 'ok' && o.value === value && newVersion(matched, o.rv)) add(present(value, o.rv, matched.floor));
        }
        if (o.type === 'conflict' && versionIsNot(s, rv)) add(s);
        // Version 0 means "must not exist": an existing object may also be answered ALREADY_EXISTS.
        if (o.type === 'exists' && rv === 0) add(s);
        return out;
      }
      // Without a version: last writer wins; an unchanged value is not written again.
      if (value === s.value) {
        if (unknown) return out;
        if (o.type === 'ok' && o.value === value) add(versionIs(s, o.rv));
        return out;
      }
      if (unknown) add(present(value, undefined, s.floor));
      else if (o.type === 'ok' && o.value === value && newVersion(s, o.rv)) add(present(value, o.rv, s.floor));
      return out;
    }
  }
}

/** The result of checking one key. */
export interface KeyVerdict {
  key: string;
  ops: number;
  linearizable: boolean;
  /** When not linearizable: the longest prefix the search could explain, and the op it stuck on. */
  explanation?: string;
}

interface Entry {
  op: Operation;
  isCall: boolean;
  time: number;
  prev: Entry | undefined;
  next: Entry | undefined;
  match: Entry | undefined;
}

const stateKey = (states: State[]): string =>
  states
    .map((s) => JSON.stringify(s))
    .sort()
    .join('|');

function dedupe(states: State[]): State[] {
  const seen = new Map<string, State>();
  for (const s of states) seen.set(JSON.stringify(s), s);
  return [...seen.values()];
}

/**
 * Checks one key's operations (all with the same key). Exhaustive with memoisation; `budget`
 * bounds the search steps (an exhausted budget throws rather than guessing).
 */
export function checkKey(ops: Operation[], budget = 5_000_000): KeyVerdict {
  const key = ops[0]?.key ?? '';
  if (ops.length === 0) return { key, ops: 0, linearizable: true };
  // Call and return events in time order; at equal times calls first (equal means overlapping).
  const events: Entry[] = [];
  for (const op of ops) {
    const call: Entry = { op, isCall: true, time: op.invokedAt, prev: undefined, next: undefined, match: undefined };
    const ret: Entry = { op, isCall: false, time: op.returnedAt, prev: undefined, next: undefined, match: undefined };
    call.match = ret;
    events.push(call, ret);
  }
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.op.id - b.op.id : a.isCall ? -1 : 1));
  const head: Entry = { op: ops[0] as Operation, isCall: false, time: -Infinity, prev: undefined, next: undefined, match: undefined };
  let last = head;
  for (const e of events) {
    last.next = e;
    e.prev = last;
    last = e;
  }
  const index = new Map<number, number>();
  ops.forEach((op, i) => index.set(op.id, i));
  const bit = (op: Operation): bigint => 1n << BigInt(index.get(op.id) ?? 0);
  const lift = (e: Entry): void => {
    // Unlink the call and its return.
    (e.prev as Entry).next = e.next;
    if (e.next) e.next.prev = e.prev;
    const m = e.match as Entry;
    (m.prev as Entry).next = m.next;
    if (m.next) m.next.prev = m.prev;
  };
  const unlift = (e: Entry): void => {
    const m = e.match as Entry;
    (m.prev as Entry).next = m;
    if (m.next) m.next.prev = m;
    (e.prev as Entry).next = e;
    if (e.next) e.next.prev = e;
  };
  let states: State[] = [ABSENT];
  let linearized = 0n;
  const cache = new Map<bigint, Set<string>>();
  const stack: { entry: Entry; states: State[] }[] = [];
  let best = 0;
  let stuck: Operation | undefined;
  let steps = 0;
  let entry: Entry | undefined = head.next;
  while (head.next) {
    if (++steps > budget) throw new Error(`linearizability check of key ${key} exceeded ${budget} steps (${ops.length} ops): make histories smaller`);
    if (!entry) throw new Error('internal: ran off the event list'); // a return entry always precedes the end
    if (entry.isCall) {
      const next = dedupe(states.flatMap((s) => step(s, entry!.op.call, entry!.op.outcome))); // entry is set in this branch
      if (next.length > 0) {
        const lin = linearized | bit(entry.op);
        const sk = stateKey(next);
        let seen = cache.get(lin);
        if (!seen) cache.set(lin, (seen = new Set()));
        if (!seen.has(sk)) {
          seen.add(sk);
          stack.push({ entry, states });
          states = next;
          linearized = lin;
          lift(entry);
          if (stack.length > best) {
            best = stack.length;
            stuck = undefined;
          }
          entry = head.next;
          continue;
        }
      }
      entry = entry.next;
    } else {
      // A return was reached: something called before it could not be placed. Backtrack.
      if (stack.length === best && !stuck) stuck = entry.op;
      const top = stack.pop();
      if (!top) {
        return { key, ops: ops.length, linearizable: false, explanation: explain(ops, best, stuck) };
      }
      unlift(top.entry);
      states = top.states;
      linearized &= ~bit(top.entry.op);
      entry = top.entry.next;
    }
  }
  return { key, ops: ops.length, linearizable: true };
}

function describe(op: Operation): string {
  const c = op.call;
  const args = c.f === 'create' || c.f === 'apply' ? `(${JSON.stringify(c.value)}${'rv' in c && c.rv !== undefined ? `, rv ${c.rv}` : ''})` : c.f === 'delete' && c.rv !== undefined ? `(rv ${c.rv})` : '()';
  const o = op.outcome;
  const res = o.type === 'ok' ? `ok ${JSON.stringify(o.value)} rv ${o.rv}` : o.type;
  const ret = Number.isFinite(op.returnedAt) ? op.returnedAt.toFixed(1) : 'never';
  return `#${op.id} client ${op.client} ${c.f}${args} -> ${res} [${op.invokedAt.toFixed(1)}, ${ret}]`;
}

function explain(ops: Operation[], best: number, stuck: Operation | undefined): string {
  const around = stuck ? ops.filter((o) => o.returnedAt >= stuck.invokedAt - 50 && o.invokedAt <= stuck.returnedAt + 50).slice(0, 12) : [];
  return `at most ${best} of ${ops.length} operations could be linearized; stuck before the return of ${stuck ? describe(stuck) : '?'}; operations around it:\n  ${around.map(describe).join('\n  ')}`;
}

/**
 * Across keys: revisions are one global counter, so a write acknowledged with a new version
 * after another operation returned has a higher version than anything that operation showed.
 * New versions are known for creates and for applies of a value no earlier call carried (an
 * apply of an unchanged value answers the stored, possibly older, version).
 */
export function checkRevisionOrder(ops: Operation[]): string[] {
  const seen = ops.filter((o) => o.outcome.type === 'ok').sort((a, b) => a.returnedAt - b.returnedAt);
  const firstUse = new Map<string, number>();
  for (const o of [...ops].sort((a, b) => a.invokedAt - b.invokedAt)) {
    if ((o.call.f === 'create' || o.call.f === 'apply') && !firstUse.has(o.call.value)) firstUse.set(o.call.value, o.id);
  }
  const fresh = (o: Operation): boolean => o.outcome.type === 'ok' && (o.call.f === 'create' || (o.call.f === 'apply' && firstUse.get(o.call.value) === o.id));
  const writes = ops.filter(fresh).sort((a, b) => a.invokedAt - b.invokedAt);
  const problems: string[] = [];
  let i = 0;
  let max = 0;
  let maxOp: Operation | undefined;
  for (const w of writes) {
    while (i < seen.length && (seen[i] as Operation).returnedAt < w.invokedAt) {
      const s = seen[i] as Operation; // i < seen.length
      const rv = (s.outcome as { rv: number }).rv; // seen holds ok outcomes only
      if (rv > max) {
        max = rv;
        maxOp = s;
      }
      i++;
    }
    const rv = (w.outcome as { rv: number }).rv; // fresh writes are ok outcomes
    if (rv <= max) problems.push(`${describe(w)} on ${w.key} got version ${rv}, not above ${max} shown earlier by ${maxOp ? describe(maxOp) : '?'} on ${maxOp?.key ?? '?'}`);
  }
  return problems;
}

/** Splits a history by key and checks every key, plus the global revision order. */
export function checkHistory(ops: Operation[]): { keys: KeyVerdict[]; violations: string[] } {
  const byKey = new Map<string, Operation[]>();
  for (const op of ops) byKey.set(op.key, [...(byKey.get(op.key) ?? []), op]);
  const keys = [...byKey.values()].map((k) => checkKey(k));
  const violations = [...keys.filter((k) => !k.linearizable).map((k) => `key ${k.key} is not linearizable: ${k.explanation ?? ''}`), ...checkRevisionOrder(ops)];
  return { keys, violations };
}
