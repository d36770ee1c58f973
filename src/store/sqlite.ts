/**
 * The embedded Store: one SQLite file (better-sqlite3) in WAL mode. An acknowledged write has
 * been fsynced to the WAL and survives `kill -9` and power loss, and watchers see a write only
 * once it is durable. The fsync runs off the event loop: SQLite commits with synchronous=NORMAL
 * (no fsync of its own on commit; it still syncs around checkpoints) and the store then
 * fdatasyncs the WAL file on libuv's thread pool before it answers the writer or wakes a
 * watcher; commits made while one sync runs share the next (group commit, as etcd's WAL).
 * better-sqlite3 is synchronous, so with synchronous=FULL every commit blocked the whole
 * process for its fsync (0.7 ms here): at a few hundred commits a second that queued every
 * request behind the disk. A reader (get, list) may see a write whose sync is still running
 * (committed, not yet acknowledged); only a power loss at that moment could take it back.
 *
 * Layout (see MIGRATIONS): `kv` holds the current value of every key, `meta` the global
 * revision and the compaction point, and `changes` a log of every write (revision, op index,
 * key, type, value) that `watch` replays from; the log keeps the last `historyLimit`
 * revisions. Watchers live in this process: after each commit the committed changes are
 * pushed to every matching watcher's in-memory queue. One process owns the file; a second
 * writer process would not wake this process's watchers.
 */
import { open as openFile, type FileHandle } from 'node:fs/promises';
import Database from 'better-sqlite3';
import type { Logger } from 'pino';
import {
  checkKey,
  checkPrefix,
  checkTxnOps,
  CompactedError,
  ConflictError,
  StoreClosedError,
  RAW_JSON,
  type Entry,
  type Expectation,
  type ListResult,
  type Store,
  type TxnOp,
  type TxnResult,
  type WatchEvent,
} from './store.js';

/** Options for {@link openSqliteStore}. */
export interface SqliteStoreOptions {
  /** The database file; created with its directory's permissions when missing. `:memory:` works for throwaway stores (no durability). */
  path: string;
  logger?: Logger;
  /** How many revisions of change history `watch` can resume from. Default 10,000. */
  historyLimit?: number;
  /**
   * How many undelivered events a watcher may hold before it is ended with a
   * WatchOverflowError (its consumer is too slow; it must re-list and watch again).
   * Default 10,000. Writers are never blocked by watchers.
   */
  watchBufferLimit?: number;
  /** How long a write waits for a lock held by another connection, in ms. Default 5,000. */
  busyTimeoutMs?: number;
}

/** The SQLite store: a Store plus explicit compaction (etcd's Compact). */
export interface SqliteStore extends Store {
  /** Always there: SQLite's disk sync overlaps the next write (see the module comment). */
  txnApplied(ops: TxnOp[]): Promise<TxnResult & { durable: Promise<void> }>;
  /**
   * Discard the change history at and below `revision` (clamped to the current revision);
   * watches asking to resume from before it then fail with CompactedError. Idempotent; a
   * revision below the current compaction point does nothing. History is also compacted
   * automatically to the last `historyLimit` revisions on every write.
   */
  compact(revision: number): Promise<void>;
}

/**
 * Thrown by a watch whose consumer fell more than `watchBufferLimit` events behind. The
 * watch has ended; the client must re-list (getting a fresh revision) and watch again.
 */
export class WatchOverflowError extends Error {
  constructor(readonly limit: number, readonly lastDeliveredRevision: number) {
    super(`watch fell more than ${limit} events behind after revision ${lastDeliveredRevision}; re-list and watch again`);
    this.name = 'WatchOverflowError';
  }
}

/** Defined with the contract now (every backend throws it); re-exported for existing importers. */
export { StoreClosedError } from './store.js';

/** Thrown when the file was written by a newer Carapace whose schema this build does not know. */
export class SchemaTooNewError extends Error {
  constructor(readonly found: number, readonly supported: number) {
    super(`database schema version ${found} is newer than this build supports (${supported}); upgrade Carapace or use a backup`);
    this.name = 'SchemaTooNewError';
  }
}

/** One numbered schema migration; applied in order, each in its own transaction. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * The schema history. Append only: never edit or renumber a released migration, a
 * database records which versions it has applied. Exported for tests and tooling.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'kv, meta and change log',
    sql: `
      CREATE TABLE kv (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL,
        version INTEGER NOT NULL,
        create_revision INTEGER NOT NULL
      ) WITHOUT ROWID;
      CREATE TABLE meta (
        name TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
      ) WITHOUT ROWID;
      INSERT INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
      CREATE TABLE changes (
        revision INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        key TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('put', 'delete')),
        value TEXT NOT NULL,
        PRIMARY KEY (revision, idx)
      ) WITHOUT ROWID;
    `,
  },
  {
    version: 2,
    name: 'kv values must be JSON',
    // Separate so the migration runner is exercised with more than one step from day one.
    sql: `
      CREATE TRIGGER kv_value_json_insert BEFORE INSERT ON kv
        WHEN json_valid(NEW.value) = 0 BEGIN SELECT RAISE(ABORT, 'kv.value must be JSON'); END;
      CREATE TRIGGER kv_value_json_update BEFORE UPDATE OF value ON kv
        WHEN json_valid(NEW.value) = 0 BEGIN SELECT RAISE(ABORT, 'kv.value must be JSON'); END;
    `,
  },
];

/** The newest schema version this build writes. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;

/** Revisions per replay page; a watch yields to the event loop between pages. */
const REPLAY_PAGE_REVISIONS = 512;

interface KvRow {
  value: string;
  version: number;
  create_revision: number;
}

interface ChangeRow {
  revision: number;
  key: string;
  type: 'put' | 'delete';
  value: string;
}

/**
 * Open (creating or migrating as needed) the SQLite store at `path`. Call once per process
 * per file; close it with `close()`. Rejects with SchemaTooNewError when the file comes from
 * a newer schema.
 */
export async function openSqliteStore(opts: SqliteStoreOptions): Promise<SqliteStore> {
  const db = new Database(opts.path);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma(`busy_timeout = ${Math.max(0, Math.floor(opts.busyTimeoutMs ?? 5000))}`);
    db.pragma('foreign_keys = ON');
    migrate(db, opts.logger);
    // The WAL exists once the database is in WAL mode and written (the migrations table at
    // least). Without it (`:memory:`, or a file it cannot open) commits stay synchronous=FULL.
    const wal = opts.path === ':memory:' ? undefined : await openFile(`${opts.path}-wal`, 'r').catch(() => undefined);
    if (wal) db.pragma('synchronous = NORMAL');
    return new SqliteStoreImpl(db, opts, wal);
  } catch (e) {
    db.close();
    throw e;
  }
}

function migrate(db: Database.Database, logger: Logger | undefined): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL)');
  const row = db.prepare('SELECT max(version) AS v FROM schema_migrations').get() as { v: number | null }; // max() always yields one row
  const current = row.v ?? 0;
  if (current > SCHEMA_VERSION) throw new SchemaTooNewError(current, SCHEMA_VERSION);
  const record = db.prepare('INSERT INTO schema_migrations (version, name) VALUES (?, ?)');
  for (const m of MIGRATIONS) {
    if (m.version <= current) continue;
    db.transaction(() => {
      db.exec(m.sql);
      record.run(m.version, m.name);
    }).immediate();
    logger?.info({ version: m.version, migration: m.name }, 'store schema migrated');
  }
}

/** A committed change as kept in memory for live watchers (value stays JSON text until delivered). */
interface Change {
  revision: number;
  key: string;
  type: 'put' | 'delete';
  value: string;
}

function toEvent<T>(c: Change): WatchEvent<T> {
  // The value was produced by JSON.stringify of the caller's T; parsing gives a fresh copy.
  // It is parsed on first read: a consumer that filters by key (the event stream of a server
  // with many clients), or forwards the stored text (RAW_JSON), never pays for it.
  let parsed: { v: T } | undefined;
  const ev = { type: c.type, key: c.key, revision: c.revision } as WatchEvent<T>;
  Object.defineProperty(ev, 'value', {
    enumerable: true,
    configurable: true,
    get: () => (parsed ??= { v: JSON.parse(c.value) as T }).v,
    set: (v: T) => {
      parsed = { v };
    },
  });
  Object.defineProperty(ev, RAW_JSON, { value: c.value, enumerable: false });
  return ev;
}

/** The in-memory queue of one live watcher. */
class WatchQueue {
  private readonly items: Change[] = [];
  private head = 0;
  private waiter: { resolve: (c: Change | undefined) => void; reject: (e: Error) => void } | undefined;
  private ended = false;
  private error: Error | undefined;
  private lastDelivered: number;

  constructor(
    readonly prefix: string,
    /** Only changes after this revision are queued (dedupe against the replay). */
    readonly after: number,
    private readonly limit: number,
    private readonly logger: Logger | undefined,
  ) {
    this.lastDelivered = after;
  }

  /** Called synchronously by the writer after a commit; never blocks. */
  push(c: Change): void {
    if (this.ended || c.revision <= this.after || !c.key.startsWith(this.prefix)) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      this.lastDelivered = c.revision;
      w.resolve(c);
      return;
    }
    if (this.items.length - this.head >= this.limit) {
      this.logger?.warn({ prefix: this.prefix, limit: this.limit }, 'store watcher overflowed; ending it');
      this.fail(new WatchOverflowError(this.limit, this.lastDelivered));
      return;
    }
    this.items.push(c);
  }

  /** The next change, or undefined once ended; rejects when failed. */
  next(): Promise<Change | undefined> {
    if (this.head < this.items.length) {
      const c = this.items[this.head]!; // bounds checked above
      this.items[this.head] = undefined as unknown as Change; // release memory; slot is never read again
      this.head++;
      this.lastDelivered = c.revision;
      if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items.splice(0, this.head);
        this.head = 0;
      }
      return Promise.resolve(c);
    }
    if (this.error) return Promise.reject(this.error);
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Ends the watch cleanly (abort): queued changes are dropped. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.items.length = 0;
    this.head = 0;
    const w = this.waiter;
    this.waiter = undefined;
    w?.resolve(undefined);
  }

  /** Ends the watch with an error delivered on the next read. */
  fail(e: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.error = e;
    this.items.length = 0;
    this.head = 0;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(e);
  }
}

/**
 * The smallest string greater than every string starting with `prefix`, in SQLite's BINARY
 * (UTF-8 byte = code point) order, or undefined when there is none. Makes prefix scans a
 * plain index range that is correct for any characters (no LIKE, no escaping).
 */
export function prefixEnd(prefix: string): string | undefined {
  const cps = Array.from(prefix, (ch) => ch.codePointAt(0)!); // Array.from over a string yields non-empty code points
  while (cps.length > 0) {
    const last = cps.pop()!; // length checked by the loop
    if (last < 0x10ffff) {
      cps.push(last + 1 === 0xd800 ? 0xe000 : last + 1);
      return String.fromCodePoint(...cps);
    }
  }
  return undefined;
}

class SqliteStoreImpl implements SqliteStore {
  private closed = false;
  private readonly watchers = new Set<WatchQueue>();
  private readonly historyLimit: number;
  private readonly watchBufferLimit: number;
  private readonly logger: Logger | undefined;

  private readonly stGet: Database.Statement<[string], KvRow>;
  private readonly stListRange: Database.Statement<[string, string], KvRow & { key: string }>;
  private readonly stListFrom: Database.Statement<[string], KvRow & { key: string }>;
  private readonly stMeta: Database.Statement<[string], { value: number }>;
  private readonly stSetMeta: Database.Statement<[number, string]>;
  private readonly stUpsert: Database.Statement<[string, string, number, number]>;
  private readonly stDelete: Database.Statement<[string]>;
  private readonly stChange: Database.Statement<[number, number, string, string, string]>;
  private readonly stCompact: Database.Statement<[number]>;
  private readonly stReplayRange: Database.Statement<[number, number, string, string], ChangeRow>;
  private readonly stReplayFrom: Database.Statement<[number, number, string], ChangeRow>;

  /** The fdatasync of the WAL in flight, and the one queued after it (commits made meanwhile). */
  private syncing: Promise<void> | undefined;
  private nextSync: Promise<void> | undefined;

  constructor(
    private readonly db: Database.Database,
    opts: SqliteStoreOptions,
    /** The WAL file, synced before a commit is acknowledged; undefined: SQLite syncs (FULL). */
    private readonly wal?: FileHandle,
  ) {
    this.historyLimit = Math.max(1, Math.floor(opts.historyLimit ?? 10_000));
    this.watchBufferLimit = Math.max(1, Math.floor(opts.watchBufferLimit ?? 10_000));
    this.logger = opts.logger;
    this.stGet = db.prepare('SELECT value, version, create_revision FROM kv WHERE key = ?');
    this.stListRange = db.prepare('SELECT key, value, version, create_revision FROM kv WHERE key >= ? AND key < ? ORDER BY key');
    this.stListFrom = db.prepare('SELECT key, value, version, create_revision FROM kv WHERE key >= ? ORDER BY key');
    this.stMeta = db.prepare('SELECT value FROM meta WHERE name = ?');
    this.stSetMeta = db.prepare('UPDATE meta SET value = ? WHERE name = ?');
    this.stUpsert = db.prepare(
      'INSERT INTO kv (key, value, version, create_revision) VALUES (?, ?, ?, ?) ' +
        'ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version',
    );
    this.stDelete = db.prepare('DELETE FROM kv WHERE key = ?');
    this.stChange = db.prepare('INSERT INTO changes (revision, idx, key, type, value) VALUES (?, ?, ?, ?, ?)');
    this.stCompact = db.prepare('DELETE FROM changes WHERE revision <= ?');
    this.stReplayRange = db.prepare(
      'SELECT revision, key, type, value FROM changes WHERE revision > ? AND revision <= ? AND key >= ? AND key < ? ORDER BY revision, idx',
    );
    this.stReplayFrom = db.prepare(
      'SELECT revision, key, type, value FROM changes WHERE revision > ? AND revision <= ? AND key >= ? ORDER BY revision, idx',
    );
  }

  private assertOpen(): void {
    if (this.closed) throw new StoreClosedError();
  }

  private meta(name: 'revision' | 'compacted'): number {
    const row = this.stMeta.get(name);
    if (!row) throw new Error(`store meta row ${name} is missing; the database is damaged`);
    return row.value;
  }

  private entry<T>(key: string, row: KvRow): Entry<T> {
    // Stored text was written by encode() from a T; parsing yields a fresh copy per call.
    return { key, value: JSON.parse(row.value) as T, version: row.version, createRevision: row.create_revision };
  }

  async get<T>(key: string): Promise<Entry<T> | undefined> {
    this.assertOpen();
    checkKey(key);
    const row = this.stGet.get(key);
    return row ? this.entry<T>(key, row) : undefined;
  }

  async list<T>(prefix: string): Promise<ListResult<T>> {
    this.assertOpen();
    checkPrefix(prefix);
    const end = prefixEnd(prefix);
    // One read transaction: the rows and the revision are one snapshot.
    return this.db.transaction(() => {
      const rows = end === undefined ? this.stListFrom.all(prefix) : this.stListRange.all(prefix, end);
      return { items: rows.map((r) => this.entry<T>(r.key, r)), revision: this.meta('revision') };
    })();
  }

  async revision(): Promise<number> {
    this.assertOpen();
    return this.meta('revision');
  }

  async put(key: string, value: unknown, expect?: Expectation): Promise<number> {
    return (await this.commit([{ op: 'put', key, value, expect }])).revision;
  }

  async delete(key: string, expect?: Expectation): Promise<number | undefined> {
    const r = await this.commit([{ op: 'delete', key, expect }]);
    // Nothing changed means the key was absent (and the expectation, if any, allowed that).
    return r.changed ? r.revision : undefined;
  }

  async txn(ops: TxnOp[]): Promise<TxnResult> {
    return { revision: (await this.commit(ops)).revision };
  }

  async txnApplied(ops: TxnOp[]): Promise<TxnResult & { durable: Promise<void> }> {
    const r = this.apply(ops);
    return { revision: r.revision, durable: r.durable };
  }

  /**
   * Resolves once everything committed so far is on disk: joins the sync queued behind the
   * one in flight (which may have started before the latest commit), or starts one.
   */
  private durable(): Promise<void> {
    const wal = this.wal;
    if (!wal) return Promise.resolve();
    // A sync queued but not started yet covers this commit too.
    if (this.nextSync) return this.nextSync;
    if (this.syncing) {
      const start = (): Promise<void> => this.startSync(wal);
      this.nextSync = this.syncing.then(start, start);
      return this.nextSync;
    }
    return this.startSync(wal);
  }

  private startSync(wal: FileHandle): Promise<void> {
    this.nextSync = undefined; // this is it: commits from now on queue another
    if (this.closed) return Promise.resolve(); // see close()
    const p = wal.datasync().finally(() => {
      if (this.syncing === p) this.syncing = undefined;
    });
    this.syncing = p;
    return p;
  }

  /**
   * Check every precondition, then write all ops at one new revision, or throw and write
   * nothing; answers (and wakes watchers) once the write is durable.
   */
  private async commit(ops: TxnOp[]): Promise<{ revision: number; changed: boolean }> {
    const r = this.apply(ops);
    await r.durable;
    return { revision: r.revision, changed: r.changed };
  }

  /** Writes `ops` now (see commit); `durable` resolves once they are on disk and watchers were woken. */
  private apply(ops: TxnOp[]): { revision: number; changed: boolean; durable: Promise<void> } {
    this.assertOpen();
    const encoded = checkTxnOps(ops);
    const changes: Change[] = [];
    const revision = this.db
      .transaction((): number => {
        const current = this.meta('revision');
        const rows = ops.map((op) => this.stGet.get(op.key));
        // Check every precondition before writing anything; the first failure wins.
        ops.forEach((op, i) => {
          const actual = rows[i]?.version ?? 0;
          const ex = op.expect;
          if (ex === undefined) return;
          if ('absent' in ex ? actual !== 0 : ex.version !== actual) throw new ConflictError(op.key, actual);
        });
        const next = current + 1;
        let idx = 0;
        ops.forEach((op, i) => {
          const row = rows[i];
          if (op.op === 'put') {
            const text = encoded[i]!; // filled for every put above
            this.stUpsert.run(op.key, text, next, row?.create_revision ?? next);
            this.stChange.run(next, idx++, op.key, 'put', text);
            changes.push({ revision: next, key: op.key, type: 'put', value: text });
          } else if (row) {
            this.stDelete.run(op.key);
            this.stChange.run(next, idx++, op.key, 'delete', row.value);
            changes.push({ revision: next, key: op.key, type: 'delete', value: row.value });
          }
        });
        if (idx === 0) return current; // nothing changed: no new revision (as etcd)
        this.stSetMeta.run(next, 'revision');
        const floor = next - this.historyLimit;
        if (floor > this.meta('compacted')) {
          this.stCompact.run(floor);
          this.stSetMeta.run(floor, 'compacted');
        }
        return next;
      })
      .immediate();
    if (changes.length === 0) return { revision, changed: false, durable: Promise.resolve() };
    // Durable first, then wake live watchers, in commit order (syncs complete in order and
    // their reactions run in the order they were registered: commit order). A failed sync
    // ends every watcher: what they were told may not be on disk; they re-list.
    const durable = this.durable().then(
      () => {
        for (const w of this.watchers) for (const c of changes) w.push(c);
      },
      (e: unknown) => {
        this.logger?.error({ err: e }, 'syncing the store WAL failed');
        for (const w of this.watchers) w.fail(e instanceof Error ? e : new Error(String(e)));
        this.watchers.clear();
        throw e;
      },
    );
    durable.catch(() => undefined); // the writer awaits it (maybe a little later): not unhandled
    return { revision, changed: true, durable };
  }

  async compact(revision: number): Promise<void> {
    this.assertOpen();
    this.db
      .transaction(() => {
        const floor = Math.min(Math.floor(revision), this.meta('revision'));
        if (floor <= this.meta('compacted')) return;
        this.stCompact.run(floor);
        this.stSetMeta.run(floor, 'compacted');
      })
      .immediate();
  }

  watch<T>(prefix: string, afterRevision: number, signal: AbortSignal): AsyncIterable<WatchEvent<T>> {
    checkPrefix(prefix);
    if (!Number.isInteger(afterRevision) || afterRevision < 0) throw new TypeError('afterRevision must be a non-negative integer');
    return { [Symbol.asyncIterator]: () => this.runWatch<T>(prefix, afterRevision, signal) };
  }

  private async *runWatch<T>(prefix: string, afterRevision: number, signal: AbortSignal): AsyncGenerator<WatchEvent<T>> {
    this.assertOpen();
    const end = prefixEnd(prefix);
    let cursor = afterRevision; // every change up to here has been replayed
    let queue: WatchQueue | undefined;
    const onAbort = (): void => queue?.end();
    signal.addEventListener('abort', onAbort);
    try {
      // Replay from the change log, a page of revisions at a time. Better-sqlite3 is
      // synchronous, so "the log has nothing after `cursor`" and "subscribe" happen in the
      // same tick with no commit in between: no gap, and `after` drops any duplicate.
      for (;;) {
        if (signal.aborted) return;
        this.assertOpen();
        const compacted = this.meta('compacted');
        if (cursor < compacted) throw new CompactedError(cursor, compacted + 1);
        const current = this.meta('revision');
        if (cursor >= current) {
          queue = new WatchQueue(prefix, cursor, this.watchBufferLimit, this.logger);
          this.watchers.add(queue);
          break;
        }
        const upto = Math.min(current, cursor + REPLAY_PAGE_REVISIONS);
        const rows = end === undefined ? this.stReplayFrom.all(cursor, upto, prefix) : this.stReplayRange.all(cursor, upto, prefix, end);
        cursor = upto;
        for (const row of rows) {
          if (signal.aborted) return;
          yield toEvent<T>(row);
        }
      }
      for (;;) {
        const c = await queue.next();
        if (c === undefined) return;
        yield toEvent<T>(c);
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      if (queue) {
        queue.end();
        this.watchers.delete(queue);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.watchers) w.fail(new StoreClosedError());
    this.watchers.clear();
    this.db.close();
    // The handle closes once a sync in flight ends (FileHandle.close waits for it); a sync
    // queued behind it has nothing left to do: closing checkpointed and synced the database.
    void this.wal?.close().catch(() => undefined);
  }
}
