/**
 * The Store contract: a versioned key-value store of JSON documents, shaped like etcd so the
 * embedded SQLite implementation and the etcd one pass the same contract suite
 * (`contract.ts`).
 *
 * - Every successful write bumps a single global revision; the written key's `version`
 *   (its resourceVersion) is that revision. Revisions never go backwards.
 * - Writes are compare-and-set: `expect` says what the caller believes is stored
 *   (`{version: N}`, `{absent: true}`, or nothing for an unconditional write).
 * - `txn` applies several operations atomically: all preconditions hold and all writes land
 *   at one revision, or nothing changes (etcd Txn; one SQLite transaction).
 * - `watch` yields every change under a prefix after a revision, in revision order, and can
 *   resume from a revision a client saw before (until compacted).
 * - The store never makes ids or timestamps: callers pass them in inside the values.
 * - An acknowledged write is durable (SQLite: WAL + synchronous=FULL; etcd: raft quorum).
 */
import type { ElectorOptions, LeaderElector } from './election.js';

/** A stored value with its revision metadata. */
export interface Entry<T = unknown> {
  key: string;
  value: T;
  /** Revision of the last write to this key (its resourceVersion). */
  version: number;
  /** Revision at which the key was created. */
  createRevision: number;
}

/** What the caller believes is stored; a write fails with a ConflictError when it is not. */
export type Expectation = { version: number } | { absent: true } | undefined;

export type TxnOp =
  | { op: 'put'; key: string; value: unknown; expect?: Expectation }
  | { op: 'delete'; key: string; expect?: Expectation };

export interface TxnResult {
  /** The revision all the writes landed at. */
  revision: number;
}

export interface WatchEvent<T = unknown> {
  type: 'put' | 'delete';
  key: string;
  /** The new value (put) or the last value before deletion (delete). */
  value: T;
  revision: number;
}

/**
 * The stored JSON text of a watch event's value, attached (not enumerable) by stores that
 * have it at hand (SQLite). A server forwarding values as JSON can send it as is instead of
 * parsing and serialising each event once per client. It is the value as stored: changes a
 * consumer makes to `value` are not in it.
 */
export const RAW_JSON: unique symbol = Symbol('carapace.store.rawJson');

/** The stored JSON text of an event's value, when the store attached it. */
export function rawJsonOf(e: WatchEvent<unknown>): string | undefined {
  return (e as WatchEvent<unknown> & { [RAW_JSON]?: string })[RAW_JSON];
}

export interface ListResult<T = unknown> {
  items: Entry<T>[];
  /** The store revision the list is consistent with; watch from here to follow changes. */
  revision: number;
}

/** Thrown when a precondition does not hold. `key` names the first failing key. */
export class ConflictError extends Error {
  constructor(
    readonly key: string,
    /** The version actually stored; 0 when the key is absent. */
    readonly actualVersion: number,
  ) {
    super(`conflict on ${key}: stored version is ${actualVersion}`);
    this.name = 'ConflictError';
  }
}

/** Thrown by `watch` when asked to resume from a revision that was compacted away. */
export class CompactedError extends Error {
  constructor(readonly requested: number, readonly compactedTo: number) {
    super(`revision ${requested} was compacted (oldest kept is ${compactedTo})`);
    this.name = 'CompactedError';
  }
}

/**
 * The store cannot be reached right now (etcd down or without a leader, a deadline passed,
 * every endpoint's circuit open). A read can simply be tried again later; a write that
 * fails with it may or may not have been applied: re-read before deciding. The API answers
 * it with 503 CARAPACE_E_UNAVAILABLE.
 */
export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/** Thrown by every call made after `close()`, and by watches still running at close. */
export class StoreClosedError extends Error {
  constructor() {
    super('the store is closed');
    this.name = 'StoreClosedError';
  }
}

// Input checks shared by the implementations, so every backend rejects the same inputs
// (with a TypeError, before touching storage).

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** True when `s` is well-formed Unicode (no lone surrogate), as every key and prefix must be. */
export function isWellFormed(s: string): boolean {
  return !LONE_SURROGATE.test(s);
}

/** Keys are non-empty, well-formed Unicode (a lone surrogate has no UTF-8 form, so no byte order). */
export function checkKey(key: unknown): asserts key is string {
  if (typeof key !== 'string' || key.length === 0) throw new TypeError('store key must be a non-empty string');
  if (LONE_SURROGATE.test(key)) throw new TypeError('store key must be well-formed Unicode');
}

/** Prefixes are like keys but may be empty (everything). */
export function checkPrefix(prefix: unknown): asserts prefix is string {
  if (typeof prefix !== 'string') throw new TypeError('store prefix must be a string');
  if (LONE_SURROGATE.test(prefix)) throw new TypeError('store prefix must be well-formed Unicode');
}

/** The stored form of a value: its JSON text. */
export function encodeValue(value: unknown): string {
  const s = JSON.stringify(value);
  if (s === undefined) throw new TypeError('store value must be JSON-serializable (got undefined or a function)');
  return s;
}

/**
 * Check a txn before running it: an array of put/delete ops on valid, distinct keys with
 * well-formed expectations. Returns each op's JSON text (undefined for deletes).
 */
export function checkTxnOps(ops: unknown): (string | undefined)[] {
  if (!Array.isArray(ops)) throw new TypeError('txn ops must be an array');
  const seen = new Set<string>();
  return ops.map((op: TxnOp) => {
    checkKey(op.key);
    if (seen.has(op.key)) throw new TypeError(`txn names key ${op.key} more than once`);
    seen.add(op.key);
    if (op.op !== 'put' && op.op !== 'delete') throw new TypeError(`txn op must be put or delete`);
    const ex: unknown = op.expect;
    const wellFormed =
      ex === undefined ||
      (typeof ex === 'object' && ex !== null && ('absent' in ex ? ex.absent === true : 'version' in ex && Number.isSafeInteger(ex.version) && (ex.version as number) >= 0));
    if (!wellFormed) throw new TypeError(`expectation for ${op.key} must be {version: N} (an integer >= 0), {absent: true} or undefined`);
    return op.op === 'put' ? encodeValue(op.value) : undefined;
  });
}

export interface Store {
  get<T>(key: string): Promise<Entry<T> | undefined>;
  /** Every key starting with `prefix`, in key order. */
  list<T>(prefix: string): Promise<ListResult<T>>;
  /** Compare-and-set put; returns the new version. */
  put(key: string, value: unknown, expect?: Expectation): Promise<number>;
  /** Compare-and-set delete; returns the revision of the deletion, or undefined when absent and no expectation was given. */
  delete(key: string, expect?: Expectation): Promise<number | undefined>;
  /** Atomic multi-key write. */
  txn(ops: TxnOp[]): Promise<TxnResult>;
  /**
   * Optional (stores whose durability step can overlap the next write): like txn, but
   * resolves once the write is applied (ordered after every earlier write, visible to reads),
   * with `durable` resolving once it is on disk, when txn would have resolved. Lets a writer
   * that serializes its writes (the audit log's hash chain) start the next one while this one
   * is being synced, so one disk sync covers several writes. Watchers see the write when it
   * is durable. Nothing may be acknowledged to a client before `durable`.
   */
  txnApplied?(ops: TxnOp[]): Promise<TxnResult & { durable: Promise<void> }>;
  /**
   * Changes under `prefix` with revision > `afterRevision`, until `signal` aborts.
   * Throws CompactedError when `afterRevision` is older than the retained history.
   */
  watch<T>(prefix: string, afterRevision: number, signal: AbortSignal): AsyncIterable<WatchEvent<T>>;
  /** The current revision. */
  revision(): Promise<number>;
  /**
   * An elector for the leadership `name` (lowercase letters, digits, dashes) with this
   * process as `candidate`, for stores several processes share (etcd). Absent on a store
   * that one process owns (SQLite): that process is the only candidate, so it always leads
   * (use `soleLeader()` from election.ts).
   */
  elector?(name: string, candidate: string, opts?: ElectorOptions): LeaderElector;
  close(): Promise<void>;
}
