/**
 * The Store contract: a versioned key-value store of JSON documents, shaped like etcd so the
 * embedded SQLite implementation and a later etcd one pass the same contract suite
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
   * Changes under `prefix` with revision > `afterRevision`, until `signal` aborts.
   * Throws CompactedError when `afterRevision` is older than the retained history.
   */
  watch<T>(prefix: string, afterRevision: number, signal: AbortSignal): AsyncIterable<WatchEvent<T>>;
  /** The current revision. */
  revision(): Promise<number>;
  close(): Promise<void>;
}
