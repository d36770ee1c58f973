/**
 * The etcd Store: the Store contract on an etcd v3 cluster (the `etcd3` client over gRPC), for
 * control planes with several hosts. etcd already has the contract's shape, so this is a thin
 * mapping: revision = etcd revision, version = mod_revision, txn = etcd Txn, watch = etcd Watch
 * (with prev_kv for deletes). An acknowledged write is committed by a raft quorum.
 *
 * Every key lives under a namespace prefix (default `carapace/`) so several clusters or test
 * runs can share one etcd; etcd's revision is cluster-wide, so their writes bump it too.
 *
 * Writes are never retried by the client: a write that fails with a transport error (timeout,
 * leader change, connection loss) may or may not have been applied, and a blind retry of a
 * compare-and-set would report a conflict against its own first attempt. Reads are retried a
 * few times. Watches reconnect by themselves, resuming after the last revision they delivered.
 */
import { circuitBreaker, ConsecutiveBreaker, handleWhen, isBrokenCircuitError, noop } from 'cockatiel';
import { castGrpcError, Etcd3, isRecoverableError, type ICompare, type IKeyValue, type IRequestOp, type IWatchResponse } from 'etcd3';
import type { Logger } from 'pino';
import { sleep } from '../proc/sleep.js';
import type { ElectorOptions, LeaderElector } from './election.js';
import { EtcdElector } from './etcd-election.js';
import {
  checkKey,
  checkPrefix,
  checkTxnOps,
  CompactedError,
  ConflictError,
  StoreClosedError,
  StoreUnavailableError,
  type Entry,
  type Expectation,
  type ListResult,
  type Store,
  type TxnOp,
  type TxnResult,
  type WatchEvent,
} from './store.js';

/** Options for {@link openEtcdStore}. */
export interface EtcdStoreOptions {
  /**
   * Client URLs of the etcd members, e.g. `['https://10.0.0.1:2379', 'https://10.0.0.2:2379']`:
   * all `https://` with `tls`, all `http://` without.
   */
  endpoints: string[];
  /**
   * Mutual TLS: the CA that signed the members' certificates, and this client's certificate
   * and key (PEM), e.g. from `loadEtcdClientTls`. The members' certificates must name the
   * host of each endpoint (SAN).
   */
  tls?: { ca: Buffer | string; cert: Buffer | string; key: Buffer | string };
  /** Namespace every key is stored under. Default `carapace/`. */
  prefix?: string;
  logger?: Logger;
  /** Deadline of each get, list and write, in ms. Default 10,000. Watches have none. */
  callTimeoutMs?: number;
}

/** The etcd store: a Store plus explicit compaction. */
export interface EtcdStore extends Store {
  /**
   * Compact etcd's history at `revision` (clamped to the current revision): watches resuming
   * from before it fail with CompactedError. Cluster-wide (etcd has one history for all
   * namespaces). Idempotent; a revision at or below the current compaction point does nothing.
   */
  compact(revision: number): Promise<void>;
}

/** How long an endpoint whose calls kept failing is skipped before one call tries it again. */
const ENDPOINT_RETRY_AFTER_MS = 1_000;
/** Read attempts on a transient error (each may go to another endpoint). */
const READ_ATTEMPTS = 3;
/** Bounds of the backoff between watch reconnects, in ms. */
const WATCH_BACKOFF_MIN_MS = 100;
const WATCH_BACKOFF_MAX_MS = 5_000;

/**
 * Connect to etcd and check that an endpoint answers. Rejects (and releases the client) when
 * none does. Close the store with `close()`.
 */
export async function openEtcdStore(opts: EtcdStoreOptions): Promise<EtcdStore> {
  if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) throw new TypeError('etcd store needs at least one endpoint');
  const prefix = opts.prefix ?? 'carapace/';
  checkPrefix(prefix);
  const timeout = opts.callTimeoutMs ?? 10_000;
  const scheme = opts.tls ? 'https://' : 'http://';
  const odd = opts.endpoints.find((e) => !e.startsWith(scheme));
  // The client would otherwise speak TLS (or plain text) to every endpoint by the options alone.
  if (odd !== undefined) throw new TypeError(`etcd endpoint ${odd} does not start with ${scheme} (${opts.tls ? 'TLS options given' : 'no TLS options'})`);
  const tls = opts.tls;
  const client = new Etcd3({
    hosts: opts.endpoints,
    ...(tls ? { credentials: { rootCertificate: Buffer.from(tls.ca), certChain: Buffer.from(tls.cert), privateKey: Buffer.from(tls.key) } } : {}),
    // No client-wide retries: they would repeat writes (see the module comment). A per-host
    // circuit breaker stays, so calls skip an endpoint that keeps failing, but it tries the
    // endpoint again after 1 s, not the client's default 5 s: with one endpoint (or all of
    // them restarting) the breaker is all that stands between etcd being back and the calls
    // reaching it, and an agent whose lease renewals are held back 5 s past an etcd restart
    // looks lost to a control plane whose breaker happened to close sooner.
    faultHandling: { global: noop, host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: ENDPOINT_RETRY_AFTER_MS, breaker: new ConsecutiveBreaker(3) }) },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + timeout }),
    grpcOptions: {
      // gRPC's 4 MiB default is too small for a large list or a watch catching up (etcd
      // batches up to 1,000 revisions per watch response).
      'grpc.max_receive_message_length': -1,
      // Notice a dead connection (host gone without a reset) so a watch can move on.
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
    },
  });
  const store = new EtcdStoreImpl(client, Buffer.from(prefix, 'utf8'), opts.logger);
  try {
    await store.revision();
  } catch (e) {
    await store.close();
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(`cannot reach etcd at ${opts.endpoints.join(', ')}: ${why}${opts.tls ? tlsHint(why) : ''}`, { cause: e });
  }
  return store;
}

/**
 * What a TLS failure in a gRPC error message means for the operator: gRPC reports a refused
 * handshake as a plain UNAVAILABLE, with OpenSSL's words inside.
 */
function tlsHint(message: string): string {
  if (/alert (bad certificate|certificate required|unknown ca|certificate unknown)/i.test(message)) {
    return " (etcd refused this client's certificate: it must be signed by a CA in etcd's --trusted-ca-file and have extended key usage clientAuth)";
  }
  if (/unable to verify|self[- ]signed|certificate has expired|does not match certificate's altnames|not in the cert's list/i.test(message)) {
    return " (etcd's certificate did not verify: it must be signed by the CA given as --etcd-ca, be valid now, and name the endpoint's host)";
  }
  return '';
}

/** etcd's range end for "every key starting with `start`": its last byte below 0xff plus one. */
function rangeEnd(start: Buffer): Buffer {
  for (let i = start.length - 1; i >= 0; i--) {
    const b = start[i]!; // i is in range
    if (b < 0xff) {
      const end = Buffer.from(start.subarray(0, i + 1));
      end[i] = b + 1;
      return end;
    }
  }
  return Buffer.from([0]); // "\0" as range end means "no upper bound"
}

/** The mod_revision an expectation requires; etcd compares absent keys as mod_revision 0. */
function expectedRevision(ex: NonNullable<Expectation>): number {
  return 'absent' in ex ? 0 : ex.version;
}

function holds(ex: Expectation, actual: number): boolean {
  return ex === undefined || expectedRevision(ex) === actual;
}

/** True for errors worth another attempt: transport trouble, or an endpoint's open circuit. */
function transient(e: unknown): boolean {
  return e instanceof Error && (isBrokenCircuitError(e) || isRecoverableError(castGrpcError(e)));
}

/** A transport failure as the contract's StoreUnavailableError (the library's error is its cause). */
function unavailable(e: unknown): StoreUnavailableError {
  return new StoreUnavailableError(`etcd is unavailable: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}

class EtcdStoreImpl implements EtcdStore {
  private closed = false;
  /** Cancels every live watch stream; run by close(). */
  private readonly liveWatches = new Set<() => void>();

  constructor(
    private readonly client: Etcd3,
    /** The namespace prefix as bytes; every etcd key this store touches starts with it. */
    private readonly ns: Buffer,
    private readonly logger: Logger | undefined,
  ) {}

  private assertOpen(): void {
    if (this.closed) throw new StoreClosedError();
  }

  private etcdKey(key: string): Buffer {
    return Buffer.concat([this.ns, Buffer.from(key, 'utf8')]);
  }

  /** The etcd key range of a store prefix (the whole etcd when namespace and prefix are empty). */
  private etcdRange(prefix: string): { key: Buffer; range_end: Buffer } {
    const key = this.etcdKey(prefix);
    return key.length === 0 ? { key: Buffer.from([0]), range_end: Buffer.from([0]) } : { key, range_end: rangeEnd(key) };
  }

  private entry<T>(kv: IKeyValue): Entry<T> {
    const key = kv.key.subarray(this.ns.length).toString('utf8');
    // Values under our namespace were written by encodeValue() from a T; parsing gives a fresh copy.
    return { key, value: JSON.parse(kv.value.toString('utf8')) as T, version: Number(kv.mod_revision), createRevision: Number(kv.create_revision) };
  }

  /** Run an idempotent read, retrying transient failures (the pool picks an endpoint each time). */
  private async read<R>(fn: () => Promise<R>): Promise<R> {
    for (let attempt = 1; ; attempt++) {
      this.assertOpen();
      try {
        return await fn();
      } catch (e) {
        if (this.closed) throw new StoreClosedError();
        if (!transient(e)) throw e;
        if (attempt >= READ_ATTEMPTS) throw unavailable(e);
        await sleep(50 * attempt);
      }
    }
  }

  async get<T>(key: string): Promise<Entry<T> | undefined> {
    this.assertOpen();
    checkKey(key);
    const res = await this.read(() => this.client.kv.range({ key: this.etcdKey(key) }));
    const kv = res.kvs[0];
    return kv ? this.entry<T>(kv) : undefined;
  }

  async list<T>(prefix: string): Promise<ListResult<T>> {
    this.assertOpen();
    checkPrefix(prefix);
    // One range is one snapshot; etcd returns keys in byte order and the snapshot's revision.
    const res = await this.read(() => this.client.kv.range(this.etcdRange(prefix)));
    return { items: res.kvs.map((kv) => this.entry<T>(kv)), revision: Number(res.header.revision) };
  }

  async revision(): Promise<number> {
    // Any linearizable read reports the current revision in its header; a point lookup is cheapest.
    const res = await this.read(() => this.client.kv.range({ key: this.etcdKey('\u0000'), count_only: true }));
    return Number(res.header.revision);
  }

  async put(key: string, value: unknown, expect?: Expectation): Promise<number> {
    return (await this.commit([{ op: 'put', key, value, expect }])).revision;
  }

  async delete(key: string, expect?: Expectation): Promise<number | undefined> {
    const r = await this.commit([{ op: 'delete', key, expect }]);
    return r.changed ? r.revision : undefined;
  }

  async txn(ops: TxnOp[]): Promise<TxnResult> {
    return { revision: (await this.commit(ops)).revision };
  }

  /**
   * One etcd Txn: compare the mod_revision of every key with an expectation; on success apply
   * every op (one new revision, or none when nothing changed); on failure read the guarded
   * keys in the same Txn, so the reported conflict is exactly what failed at that revision.
   */
  private async commit(ops: TxnOp[]): Promise<{ revision: number; changed: boolean }> {
    this.assertOpen();
    const encoded = checkTxnOps(ops);
    const keys = ops.map((op) => this.etcdKey(op.key));
    const guarded = ops.flatMap((op, i) => (op.expect === undefined ? [] : [{ op, key: keys[i]!, expect: op.expect }])); // i indexes keys
    const compare: ICompare[] = guarded.map((g) => ({ key: g.key, target: 'Mod', result: 'Equal', mod_revision: expectedRevision(g.expect) }));
    const success: IRequestOp[] = ops.map((op, i) =>
      op.op === 'put'
        ? { request_put: { key: keys[i]!, value: Buffer.from(encoded[i]!, 'utf8') } } // checkTxnOps encodes every put
        : { request_delete_range: { key: keys[i]! } },
    );
    const failure: IRequestOp[] = guarded.map((g) => ({ request_range: { key: g.key, keys_only: true } }));
    const res = await this.client.kv.txn({ compare, success, failure }).catch((e: unknown) => {
      if (this.closed) throw new StoreClosedError();
      // Never retried here: the write may have been applied (see the module comment).
      throw transient(e) ? unavailable(e) : e;
    });
    if (!res.succeeded) {
      guarded.forEach((g, j) => {
        const actual = Number(res.responses[j]?.response_range?.kvs[0]?.mod_revision ?? 0);
        if (!holds(g.expect, actual)) throw new ConflictError(g.op.key, actual);
      });
      throw new Error('etcd rejected a txn whose preconditions all hold at its revision');
    }
    const changed = ops.some((op, i) => op.op === 'put' || Number(res.responses[i]?.response_delete_range?.deleted ?? 0) > 0);
    return { revision: Number(res.header.revision), changed };
  }

  elector(name: string, candidate: string, opts?: ElectorOptions): LeaderElector {
    this.assertOpen();
    return new EtcdElector({ client: this.client, store: this, etcdKey: (k) => this.etcdKey(k) }, name, candidate, opts);
  }

  async compact(revision: number): Promise<void> {
    const target = Math.min(Math.floor(revision), await this.revision());
    if (target < 1) return;
    try {
      await this.client.kv.compact({ revision: target });
    } catch (e) {
      if (e instanceof Error && e.message.includes('required revision has been compacted')) return; // already at or past it
      throw e;
    }
  }

  watch<T>(prefix: string, afterRevision: number, signal: AbortSignal): AsyncIterable<WatchEvent<T>> {
    checkPrefix(prefix);
    if (!Number.isSafeInteger(afterRevision) || afterRevision < 0) throw new TypeError('afterRevision must be a non-negative integer');
    return { [Symbol.asyncIterator]: () => this.runWatch<T>(prefix, afterRevision, signal) };
  }

  /** Follow one etcd watch after another: reconnect after transient failures, resuming after the last delivered revision. */
  private async *runWatch<T>(prefix: string, afterRevision: number, signal: AbortSignal): AsyncGenerator<WatchEvent<T>> {
    let cursor = afterRevision; // every change up to here has been delivered
    let backoff = WATCH_BACKOFF_MIN_MS;
    for (;;) {
      if (signal.aborted) return;
      this.assertOpen();
      try {
        for await (const batch of this.watchStream<T>(prefix, cursor, signal)) {
          for (const ev of batch) yield ev;
          cursor = batch[batch.length - 1]!.revision; // batches are never empty
          backoff = WATCH_BACKOFF_MIN_MS;
        }
      } catch (e) {
        if (signal.aborted) return;
        if (this.closed) throw new StoreClosedError();
        if (!transient(e)) throw e;
        this.logger?.warn({ prefix, after: cursor, err: e, retryInMs: backoff }, 'etcd watch interrupted; reconnecting');
      }
      if (signal.aborted) return;
      // The stream failed or ended without being asked to: wait, then resume from `cursor`.
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, WATCH_BACKOFF_MAX_MS);
    }
  }

  /**
   * One etcd watch stream, yielding the store events of each response. Starts at `after`
   * itself rather than after it and drops that revision's events: etcd refuses a start
   * revision *below* its compaction point, so this makes "after a compacted revision" fail
   * exactly as the contract says (resuming from the compaction point itself works).
   */
  private async *watchStream<T>(prefix: string, after: number, signal: AbortSignal): AsyncGenerator<WatchEvent<T>[]> {
    const stream = await this.client.watchClient.watch();
    // end() first: the client library counts a cancelled *writable* stream as a failure of
    // its endpoint, and a few of those in a row would open the endpoint's circuit breaker.
    let cancelled = false;
    const cancel = (): void => {
      if (cancelled) return;
      cancelled = true;
      stream.end();
      stream.cancel();
    };
    this.liveWatches.add(cancel);
    signal.addEventListener('abort', cancel);
    try {
      if (signal.aborted || this.closed) return;
      // start_revision 0 would mean "from now": history starts at revision 1.
      stream.write({ create_request: { ...this.etcdRange(prefix), start_revision: Math.max(after, 1), prev_kv: true } });
      // grpc-js streams are Node Duplex streams: async-iterable, and reading pulls (a slow
      // consumer leaves events in etcd instead of in this process's memory).
      for await (const res of stream as unknown as AsyncIterable<IWatchResponse>) {
        if (res.compact_revision !== '0') throw new CompactedError(after, Number(res.compact_revision) + 1);
        if (res.canceled) throw new Error(`etcd cancelled the watch: ${res.cancel_reason || 'no reason given'}`);
        const batch: WatchEvent<T>[] = [];
        for (const ev of res.events) {
          const revision = Number(ev.kv.mod_revision);
          if (revision <= after) continue;
          const key = ev.kv.key.subarray(this.ns.length).toString('utf8');
          // The typings say 'Put'; the wire (proto enum name) says 'PUT'. Compare case-blind.
          if (ev.type.toLowerCase() === 'put') {
            batch.push({ type: 'put', key, value: this.entry<T>(ev.kv).value, revision });
          } else {
            // etcd reads prev_kv at revision-1; it is missing only when that was compacted
            // while this watch lagged, so the history this watch needs is gone.
            if (!ev.prev_kv) throw new CompactedError(after, revision);
            batch.push({ type: 'delete', key, value: this.entry<T>(ev.prev_kv).value, revision });
          }
        }
        if (batch.length > 0) yield batch;
      }
    } finally {
      signal.removeEventListener('abort', cancel);
      this.liveWatches.delete(cancel);
      cancel();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Running watches see their stream cancelled and end with StoreClosedError.
    for (const cancel of this.liveWatches) cancel();
    this.liveWatches.clear();
    this.client.close();
  }
}
