/**
 * The audit log over a Store. Records live at `audit/<seq, 12 digits>`, the chain head at
 * `audit/head`, signed checkpoints at `audit/checkpoints/<seq>`. Every append is one store
 * txn that creates the record (expect absent) and CAS-updates the head (expect the version
 * read), so concurrent writers can never fork the chain: one wins, the others get a
 * ConflictError on an audit key and retry from the new head. `prepare()` hands those ops to
 * a caller that adds them to its own mutation's txn, so the mutation and its audit record
 * commit together or not at all.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import { ConflictError, type Store, type TxnOp } from '../store/store.js';
import { type ExportOptions, exportLines as formatLines, formatExport } from './export.js';
import { type AuditKeyPair, keyIdOf, loadOrCreateKeyPair, toPublicKey } from './keys.js';
import type { Keyring } from '../keyring/keyring.js';
import { type AuditEntry, type AuditHead, type AuditRecord, buildRecord } from './record.js';
import { AUDIT_PREFIX, CHECKPOINT_PREFIX, HEAD_KEY, SIGNING_KEYS_PREFIX, checkpointKey, recordKey, seqOfRecordKey, signingKeyKey } from '../model/keys.js';
import { type AuditCheckpoint, type VerifyResult, isAuditRecord, signCheckpoint, verifyLog } from './verify.js';
import { AuditCopyWriter } from './copy.js';

/** Options for AuditLog.open. */
export interface AuditLogOptions {
  store: Store;
  /** Directory holding the Ed25519 signing key (created 0700, private key 0600). */
  keyDir: string;
  /** Write a signed checkpoint in the same txn as every record whose seq is a multiple of this. Default 100; 0 turns automatic checkpoints off. */
  checkpointEvery?: number;
  /** How many times commit/append retry after losing a race for the head. Default 50. */
  maxAttempts?: number;
  logger?: Logger;
  /**
   * The cluster keyring: the private key file is sealed with it (servers always give it). Without
   * it the key is kept in clear (tests and tools).
   */
  keyring?: Keyring;
  /** Files every checkpoint this log signs is also appended to (off-store copies, copy.ts). */
  copies?: readonly string[];
  /** The time written on a copy's key line when a copy is begun (default: now). */
  now?: () => string;
}

/** The ops to add to the caller's txn, and what they will write. */
export interface PreparedAudit {
  /** Append these to the same `store.txn` as the mutation (after its own ops). */
  ops: TxnOp[];
  record: AuditRecord;
  /** The automatic checkpoint written with this record, if its seq is due one. */
  checkpoint?: AuditCheckpoint;
}

/** Like PreparedAudit, for several records chained in one txn. */
export interface PreparedAuditBatch {
  ops: TxnOp[];
  records: AuditRecord[];
  checkpoints: AuditCheckpoint[];
}

/** A consistent read of the whole log (one store revision). */
export interface AuditSnapshot {
  /** Record values in key (= seq) order, as stored; may be tampered. */
  records: unknown[];
  recordKeys: string[];
  checkpoints: unknown[];
  head: unknown;
  /** The signing keys registered in the store (`audit/keys/<keyId>`), as stored. */
  keys: unknown[];
  revision: number;
}

/** A server's checkpoint-signing public key as registered in the store. */
export interface RegisteredKey {
  keyId: string;
  /** SPKI PEM. */
  publicKey: string;
}

/** The mutation half of `commit`: fixed ops, or a function rebuilding them for each attempt (re-read your state there). */
export type MutationOps = readonly TxnOp[] | (() => readonly TxnOp[] | Promise<readonly TxnOp[]>);

/**
 * True when `e` is a ConflictError on an audit key: the head moved under us (another append
 * won). Retry: prepare again (and rebuild the mutation if it depends on what was read). A
 * ConflictError on any other key is the mutation's own and must go to the user.
 */
export function isAuditConflict(e: unknown): boolean {
  return e instanceof ConflictError && e.key.startsWith(AUDIT_PREFIX);
}

/**
 * A tamper-evident audit log bound to a store and a signing key. Open one per process with
 * AuditLog.open; several instances (processes) may append to one store concurrently.
 */
export class AuditLog {
  private readonly store: Store;
  private readonly keys: AuditKeyPair;
  private readonly every: number;
  private readonly maxAttempts: number;
  private readonly logger: Logger | undefined;
  /** Serializes this instance's own commits so they do not race each other for the head. */
  private tail: Promise<unknown> = Promise.resolve();
  private readonly copies: readonly AuditCopyWriter[];

  private constructor(opts: AuditLogOptions, keys: AuditKeyPair, copies: readonly AuditCopyWriter[]) {
    this.copies = copies;
    this.store = opts.store;
    this.keys = keys;
    this.every = Math.max(0, Math.floor(opts.checkpointEvery ?? 100));
    this.maxAttempts = Math.max(1, Math.floor(opts.maxAttempts ?? 50));
    this.logger = opts.logger;
  }

  /**
   * Load (or create on first use) the signing key, register its public key in the store
   * (`audit/keys/<keyId>`, so that `verify` on any server trusts checkpoints this one signs)
   * and bind the log to `store`. Call at startup.
   */
  static async open(opts: AuditLogOptions): Promise<AuditLog> {
    const keys = await loadOrCreateKeyPair(opts.keyDir, opts.logger, opts.keyring);
    await registerKey(opts.store, keys, opts.logger);
    const now = opts.now?.() ?? new Date().toISOString();
    const copies: AuditCopyWriter[] = [];
    try {
      for (const path of opts.copies ?? []) copies.push(await AuditCopyWriter.open(path, keys, now));
    } catch (e) {
      await Promise.all(copies.map((c) => c.close()));
      throw e;
    }
    return new AuditLog(opts, keys, copies);
  }

  /** The off-store copy files this log appends to. */
  get copyPaths(): string[] {
    return this.copies.map((c) => c.path);
  }

  /** Closes the copy files (after the last checkpoint was appended). */
  async close(): Promise<void> {
    await Promise.all(this.copies.map((c) => c.close()));
  }

  /**
   * Appends checkpoints this log signed to every copy. A copy that cannot be written does not
   * undo or fail the mutation (it is in the store, audited): the failure is logged as an error
   * and the next checkpoint is tried again; the copy's chain stays intact.
   */
  private async copyOut(cps: readonly AuditCheckpoint[]): Promise<void> {
    for (const cp of cps) {
      for (const c of this.copies) await c.append(cp).catch((err: unknown) => this.logger?.error({ err, path: c.path, seq: cp.seq }, 'audit checkpoint could not be appended to the off-store copy'));
    }
  }

  /** The public key verifiers need, as SPKI PEM; publish it (or copy it off the host). */
  get publicKeyPem(): string {
    return this.keys.publicKeyPem;
  }

  /** The public key as a KeyObject. */
  get publicKey(): KeyObject {
    return this.keys.publicKey;
  }

  /** The id checkpoints carry for this key. */
  get keyId(): string {
    return this.keys.keyId;
  }

  /** The current head (seq and hash of the last record), or undefined for an empty log. */
  async head(): Promise<AuditHead | undefined> {
    return (await this.store.get<AuditHead>(HEAD_KEY))?.value;
  }

  /**
   * Read the head and build the next record plus the ops that write it. Put the ops in the
   * SAME txn as the mutation they describe; if the txn fails with isAuditConflict, another
   * record took this seq: call prepare again and retry. Nothing is written here.
   */
  async prepare(entry: AuditEntry): Promise<PreparedAudit> {
    const b = await this.prepareBatch([entry]);
    const record = b.records[0]!; // one entry in, one record out
    return { ops: b.ops, record, ...(b.checkpoints[0] ? { checkpoint: b.checkpoints[0] } : {}) };
  }

  /** Like prepare for several entries: they get consecutive seqs, all written by one txn. */
  async prepareBatch(entries: readonly AuditEntry[]): Promise<PreparedAuditBatch> {
    if (entries.length === 0) throw new TypeError('prepareBatch needs at least one entry');
    const headEntry = await this.store.get<AuditHead>(HEAD_KEY);
    let prev = headEntry?.value;
    if (headEntry && !validHead(prev)) {
      // Extending a corrupt head would fork or break the chain: refuse every mutation until
      // an operator repairs the log (verify says what is wrong).
      throw new CarapaceError('CARAPACE_E_UNAVAILABLE', 'the audit log head is corrupt; mutations are refused until it is repaired (carapace audit verify)');
    }
    const ops: TxnOp[] = [];
    const records: AuditRecord[] = [];
    const checkpoints: AuditCheckpoint[] = [];
    for (const entry of entries) {
      const record = buildRecord(prev, entry);
      records.push(record);
      ops.push({ op: 'put', key: recordKey(record.seq), value: record, expect: { absent: true } });
      prev = { seq: record.seq, hash: record.hash };
      if (this.every > 0 && record.seq % this.every === 0) {
        const cp = signCheckpoint(prev, record.time, this.keys.privateKey, this.keys.publicKey);
        checkpoints.push(cp);
        ops.push({ op: 'put', key: checkpointKey(cp.seq), value: cp, expect: { absent: true } });
      }
    }
    // prev is set: at least one record was built above.
    const newHead: AuditHead = { seq: prev!.seq, hash: prev!.hash };
    ops.unshift({ op: 'put', key: HEAD_KEY, value: newHead, expect: headEntry ? { version: headEntry.version } : { absent: true } });
    return { ops, records, checkpoints };
  }

  /**
   * Commit `mutation` together with the audit record for it, retrying when another writer
   * moved the head. Returns the record and the txn revision. A ConflictError on a mutation
   * key, a closed store or any other failure is thrown: the mutation did not happen and must
   * not be acknowledged. After `maxAttempts` lost races throws CARAPACE_E_UNAVAILABLE.
   * `mutation` must not write audit keys, nor call this log (this instance serializes commits).
   */
  async commit(entry: AuditEntry, mutation: MutationOps = []): Promise<{ record: AuditRecord; revision: number }> {
    const r = await this.commitBatch([entry], mutation);
    return { record: r.records[0]!, revision: r.revision }; // one entry in, one record out
  }

  /**
   * Like commit, for a mutation that several records describe (a plan that creates a cell and
   * places instances into it): the records get consecutive seqs and land in the mutation's own
   * txn, all or nothing.
   */
  async commitBatch(entries: readonly AuditEntry[], mutation: MutationOps = []): Promise<{ records: AuditRecord[]; revision: number }> {
    // The chain is extended one write at a time, but a write's disk sync is waited for
    // outside the chain: the next write is applied while this one syncs (see Store.txnApplied).
    const { durable, checkpoints, ...r } = await this.serial(async () => {
      for (let attempt = 1; ; attempt++) {
        const ops = typeof mutation === 'function' ? await mutation() : mutation;
        for (const op of ops) {
          if (op.key.startsWith(AUDIT_PREFIX)) throw new TypeError(`a mutation may not write the audit key ${op.key}`);
        }
        const p = await this.prepareBatch(entries);
        try {
          const { revision, durable } = await this.txnApplied([...ops, ...p.ops]);
          for (const cp of p.checkpoints) this.logger?.debug({ seq: cp.seq }, 'audit checkpoint written');
          return { records: p.records, revision, durable, checkpoints: p.checkpoints };
        } catch (e) {
          if (!isAuditConflict(e)) throw e;
          if (attempt >= this.maxAttempts) {
            this.logger?.error({ attempts: attempt }, 'audit append kept losing the race for the head');
            throw new CarapaceError('CARAPACE_E_UNAVAILABLE', `the audit log could not be written after ${attempt} attempts; retry later`);
          }
          await backoff(attempt);
        }
      }
    });
    await durable;
    if (checkpoints.length > 0 && this.copies.length > 0) await this.copyOut(checkpoints);
    return r;
  }

  /** The store's txnApplied, or its txn (then durable once it resolves). */
  private async txnApplied(ops: TxnOp[]): Promise<{ revision: number; durable: Promise<void> }> {
    if (this.store.txnApplied) return this.store.txnApplied(ops);
    return { ...(await this.store.txn(ops)), durable: Promise.resolve() };
  }

  /** Append one record on its own (control-plane events with no mutation of their own). */
  async append(entry: AuditEntry): Promise<AuditRecord> {
    return (await this.commit(entry)).record;
  }

  /** Append several records in one txn (consecutive seqs), retrying like commit. */
  async appendBatch(entries: readonly AuditEntry[]): Promise<AuditRecord[]> {
    const { records, durable, checkpoints } = await this.serial(async () => {
      for (let attempt = 1; ; attempt++) {
        const p = await this.prepareBatch(entries);
        try {
          const { durable } = await this.txnApplied(p.ops);
          return { records: p.records, durable, checkpoints: p.checkpoints };
        } catch (e) {
          if (!isAuditConflict(e) || attempt >= this.maxAttempts) throw e;
          await backoff(attempt);
        }
      }
    });
    await durable;
    if (checkpoints.length > 0 && this.copies.length > 0) await this.copyOut(checkpoints);
    return records;
  }

  /**
   * Signs a checkpoint of the head every `everyMs` until `signal` aborts (besides the one
   * every `checkpointEvery` records), so a quiet log is still sealed within that time: a
   * truncation of its tail is then caught even when few records were written since.
   */
  async runCheckpoints(signal: AbortSignal, everyMs: number, now: () => string): Promise<void> {
    while (!signal.aborted) {
      await delay(everyMs, undefined, { signal }).catch(() => undefined); // aborted: the loop ends
      if (signal.aborted) return;
      await this.checkpoint(now()).catch((err: unknown) => this.logger?.warn({ err }, 'timed audit checkpoint failed'));
    }
  }

  /**
   * Sign a checkpoint for the current head now (e.g. on a timer, or before a backup), at the
   * caller's `time`. Returns the existing checkpoint when the head already has one, undefined
   * for an empty log. Records never change once written, so a checkpoint of a head that has
   * since moved on stays valid: no CAS on the head is needed.
   */
  async checkpoint(time: string): Promise<AuditCheckpoint | undefined> {
    const head = await this.head();
    if (!head) return undefined;
    const key = checkpointKey(head.seq);
    const existing = await this.store.get<AuditCheckpoint>(key);
    if (existing) return existing.value;
    const cp = signCheckpoint(head, time, this.keys.privateKey, this.keys.publicKey);
    try {
      await this.store.put(key, cp, { absent: true });
      await this.copyOut([cp]);
      return cp;
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e;
      const won = await this.store.get<AuditCheckpoint>(key); // someone signed this seq first; theirs is as good
      if (!won) throw e;
      return won.value;
    }
  }

  /** Read the whole log in one consistent list (records, checkpoints, head). */
  async read(): Promise<AuditSnapshot> {
    const { items, revision } = await this.store.list<unknown>(AUDIT_PREFIX);
    const snap: AuditSnapshot = { records: [], recordKeys: [], checkpoints: [], head: undefined, keys: [], revision };
    for (const it of items) {
      if (it.key === HEAD_KEY) snap.head = it.value;
      else if (it.key.startsWith(CHECKPOINT_PREFIX)) snap.checkpoints.push(it.value);
      else if (it.key.startsWith(SIGNING_KEYS_PREFIX)) snap.keys.push(it.value);
      else if (seqOfRecordKey(it.key) !== undefined) {
        snap.records.push(it.value);
        snap.recordKeys.push(it.key);
      }
    }
    return snap;
  }

  /**
   * Verify the log as stored. Checkpoints are checked against this log's own key and every
   * key registered in the store (the servers that append to it), unless `publicKey` names the
   * trusted key(s). A registered key whose id does not match its key is not trusted (its
   * checkpoints then fail). `extraCheckpoints` are checkpoints kept outside the store (they
   * catch a tail cut together with its head and checkpoints). Never throws for tampering;
   * reports problems.
   */
  async verify(opts: { publicKey?: KeyObject | string | readonly (KeyObject | string)[]; extraCheckpoints?: readonly unknown[]; extraKeys?: readonly (KeyObject | string)[] } = {}): Promise<VerifyResult> {
    const snap = await this.read();
    const trusted = opts.publicKey ?? [this.keys.publicKey, ...registeredKeys(snap.keys).filter((k) => keyIdOf(k) !== this.keys.keyId)];
    const result = verifyLog({
      records: snap.records,
      recordKeys: snap.recordKeys,
      checkpoints: [...snap.checkpoints, ...(opts.extraCheckpoints ?? [])],
      head: snap.head,
      // Keys an off-store copy names are trusted too: a store writer may have removed the
      // registration of the key that signed the checkpoints the copy holds.
      publicKey: [...(Array.isArray(trusted) ? (trusted as readonly (KeyObject | string)[]) : [trusted as KeyObject | string]), ...(opts.extraKeys ?? [])],
    });
    if (!result.ok) this.logger?.error({ problems: result.problems.length, first: result.problems[0] }, 'audit log verification failed');
    return result;
  }

  /** Export matching records as one string (JSONL or CSV). Records that are not record-shaped are skipped; run verify for integrity. */
  async export(opts: ExportOptions): Promise<string> {
    const snap = await this.read();
    return formatExport(snap.records.filter(isAuditRecord), opts);
  }

  /** Export as an async iterable of lines (each with its line ending), for streaming to an HTTP response. */
  async *exportLines(opts: ExportOptions): AsyncGenerator<string> {
    const snap = await this.read();
    yield* formatLines(snap.records.filter(isAuditRecord), opts);
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined); // the chain must go on after a failure; the caller sees it via `run`
    return run;
  }
}

/**
 * Publishes this server's public key at `audit/keys/<keyId>` (once; rewritten if what is
 * stored there differs, which only tampering or a corrupted write can cause).
 */
async function registerKey(store: Store, keys: AuditKeyPair, logger: Logger | undefined): Promise<void> {
  const key = signingKeyKey(keys.keyId);
  const value: RegisteredKey = { keyId: keys.keyId, publicKey: keys.publicKeyPem };
  for (;;) {
    const existing = await store.get<RegisteredKey>(key);
    if (existing && existing.value?.keyId === value.keyId && existing.value.publicKey === value.publicKey) return;
    if (existing) logger?.warn({ keyId: keys.keyId }, 'the registered audit signing key differs from this server\'s key; registering it again');
    try {
      await store.put(key, value, existing ? { version: existing.version } : { absent: true });
      logger?.info({ keyId: keys.keyId }, 'audit signing key registered');
      return;
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e; // another start of this server raced us: look again
    }
  }
}

/** The usable keys among registered ones: well-formed Ed25519 keys stored under their own id. */
function registeredKeys(stored: readonly unknown[]): KeyObject[] {
  const out: KeyObject[] = [];
  for (const v of stored) {
    if (typeof v !== 'object' || v === null) continue;
    const r = v as Partial<RegisteredKey>; // checked field by field below
    if (typeof r.publicKey !== 'string' || typeof r.keyId !== 'string') continue;
    try {
      const k = toPublicKey(r.publicKey);
      if (keyIdOf(k) === r.keyId) out.push(k);
    } catch {
      // not an Ed25519 key: not trusted
    }
  }
  return out;
}

function backoff(attempt: number): Promise<void> {
  // Jitter spreads competing writers apart; capped so a retry never waits long.
  const ms = Math.random() * Math.min(20, 2 ** attempt);
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A head is `{seq: positive integer, hash: 64 hex digits}`. */
function validHead(h: unknown): h is AuditHead {
  if (typeof h !== 'object' || h === null) return false;
  const o = h as Record<string, unknown>; // checked to be an object
  return Number.isSafeInteger(o['seq']) && (o['seq'] as number) > 0 && typeof o['hash'] === 'string' && /^[0-9a-f]{64}$/.test(o['hash']);
}
