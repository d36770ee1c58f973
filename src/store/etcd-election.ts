/**
 * Leader election on etcd (the recipe of etcd's own `concurrency` package, with the lease
 * kept by hand so that the leader can fence itself on time):
 *
 * 1. Grant a lease (TTL `ttlSeconds`), noting when the grant was *sent*; renew it every
 *    quarter TTL over a keepalive stream, one renewal in flight at a time, noting when each
 *    successful one was sent.
 * 2. Create `election/<name>/<lease id, 16 hex digits>` attached to the lease. The candidate
 *    whose key has the smallest create revision leads; the others watch the prefix and look
 *    again whenever a key is deleted (a lease expired or was revoked).
 * 3. Fencing: etcd resets a lease's expiry to `now + TTL` when it *processes* a renewal,
 *    which is after the renewal was sent. So the lease cannot expire before
 *    `sent + TTL`, and no rival can be elected before then. The leader ends its term (aborts
 *    the term's signal) at `sent + TTL - FENCE_MARGIN_MS` of its last successful renewal
 *    unless a newer renewal succeeded: it always stops at least the margin before anyone can
 *    replace it. It also ends the term at once when etcd answers that the lease is gone, or
 *    when its key is deleted.
 * 4. A term that ends for any reason revokes its lease (best effort, short deadline), so a
 *    rival takes over without waiting for the TTL; the candidate then campaigns again with a
 *    fresh lease.
 *
 * The bound holds while this process is not paused (a stopped or swapped-out process cannot
 * run its timer; no lease scheme without fencing tokens in every write can do better) and
 * assumes clocks tick at the same rate here and on the etcd leader (not that they agree).
 * What the term's loops already sent before the abort may still land afterwards: callers
 * keep such writes compare-and-set on deterministic keys, so a late one conflicts instead
 * of duplicating (see src/server/README.md).
 */
import { performance } from 'node:perf_hooks';
import type { Etcd3, IDuplexStream, ILeaseKeepAliveRequest, ILeaseKeepAliveResponse } from 'etcd3';
import type { ElectorOptions, LeaderElector, LeaderTerm } from './election.js';
import type { Store } from './store.js';
import { ELECTION_PREFIX } from '../model/keys.js';
import { sleep } from '../proc/sleep.js';

/** How long before the earliest possible lease expiry the leader ends its term. */
export const FENCE_MARGIN_MS = 300;
/** Smallest TTL accepted: etcd's floor with default timing is 1.5 s, rounded up. */
const MIN_TTL_SECONDS = 2;
/** Deadline of a revoke when a term ends: the lease expires by itself if it does not arrive. */
const REVOKE_DEADLINE_MS = 1_000;
/** Bounds of the backoff between failed campaigns (etcd unreachable). */
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2_000;

/** What the elector needs from the etcd store that creates it. */
export interface EtcdElectionDeps {
  client: Etcd3;
  /** The store, for lists and watches of the election prefix (keys relative to the namespace). */
  store: Pick<Store, 'list' | 'watch'>;
  /** The namespaced etcd key of a store key. */
  etcdKey: (key: string) => Buffer;
}

/** The value of a candidate's key. */
interface CandidateValue {
  candidate: string;
}

/** The key suffix of a lease: its id as 16 hex digits (fixed width, so a key is also an exact prefix). */
function leaseHex(id: string): string {
  return BigInt(id).toString(16).padStart(16, '0');
}

/**
 * A granted lease, renewed until `release()`. `lost` aborts (with a reason string) when the
 * holder must consider it gone: no successful renewal for `TTL - margin` since the last one
 * was sent, or etcd says it no longer exists.
 */
class KeptLease {
  readonly lost = new AbortController();
  private stream: IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse> | undefined;
  private pending: { resolve: (ttl: number) => void; reject: (e: Error) => void } | undefined;
  private fence: NodeJS.Timeout | undefined;
  private released = false;
  private readonly stopLoop = new AbortController();

  private constructor(
    private readonly client: Etcd3,
    readonly id: string,
    private readonly ttlMs: number,
  ) {}

  /** Grants a lease and starts renewing it. */
  static async grant(client: Etcd3, ttlSeconds: number): Promise<KeptLease> {
    const sentAt = performance.now();
    // A grant slower than the TTL is useless anyway; fail it and campaign again.
    const res = await client.leaseClient.leaseGrant({ TTL: ttlSeconds }, { deadline: Date.now() + ttlSeconds * 1000 });
    const ttlMs = Number(res.TTL) * 1000; // etcd may raise a TTL below its minimum
    const lease = new KeptLease(client, res.ID, ttlMs);
    lease.renewed(sentAt, ttlMs);
    void lease.renewLoop();
    return lease;
  }

  /** A renewal sent at `sentAt` (monotonic ms) succeeded with `ttlMs` left: move the fencing deadline. */
  private renewed(sentAt: number, ttlMs: number): void {
    if (this.released || this.lost.signal.aborted) return;
    clearTimeout(this.fence);
    const wait = sentAt + ttlMs - FENCE_MARGIN_MS - performance.now();
    this.fence = setTimeout(() => this.lose(`no lease renewal succeeded for ${ttlMs - FENCE_MARGIN_MS} ms (lease TTL ${ttlMs} ms)`), Math.max(0, wait));
  }

  private lose(reason: string): void {
    if (this.lost.signal.aborted) return;
    clearTimeout(this.fence);
    this.lost.abort(reason);
  }

  private async renewLoop(): Promise<void> {
    const every = this.ttlMs / 4;
    while (!this.released && !this.lost.signal.aborted) {
      await sleep(every, this.stopLoop.signal);
      if (this.released || this.lost.signal.aborted) return;
      const sentAt = performance.now();
      try {
        const ttl = await this.keepaliveOnce(every * 2);
        if (ttl <= 0) this.lose('etcd reports the lease expired');
        else this.renewed(sentAt, ttl * 1000);
      } catch {
        // Transport trouble: a fresh stream next time; the fencing timer decides when it is too late.
        this.resetStream();
      }
    }
  }

  /** One renewal over the (lazily opened) keepalive stream; resolves with the TTL etcd granted. */
  private async keepaliveOnce(timeoutMs: number): Promise<number> {
    const stream = this.stream ?? (await this.openStream());
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`lease renewal unanswered after ${timeoutMs} ms`)), timeoutMs);
      const fail = (e: Error): void => {
        clearTimeout(timer);
        this.pending = undefined;
        reject(e);
      };
      this.pending = {
        resolve: (ttl) => {
          clearTimeout(timer);
          this.pending = undefined;
          resolve(ttl);
        },
        reject: fail,
      };
      try {
        stream.write({ ID: this.id });
      } catch (e) {
        fail(e instanceof Error ? e : new Error(String(e)));
      }
    });
  }

  private async openStream(): Promise<IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>> {
    const stream = await this.client.leaseClient.leaseKeepAlive();
    const gone = (e: Error): void => {
      if (this.stream !== stream) return;
      this.stream = undefined;
      this.pending?.reject(e);
    };
    stream.on('data', (res) => {
      if (this.stream === stream) this.pending?.resolve(Number(res.TTL));
    });
    stream.on('error', (e) => gone(e));
    stream.on('end', () => gone(new Error('lease keepalive stream ended')));
    if (this.released) {
      stream.end();
      stream.cancel();
      throw new Error('lease released');
    }
    this.stream = stream;
    return stream;
  }

  private resetStream(): void {
    const s = this.stream;
    this.stream = undefined;
    if (!s) return;
    // end() before cancel(): the client library counts a cancelled writable stream as a
    // failure of its endpoint (see etcd.ts).
    s.end();
    s.cancel();
  }

  /** Stops renewing and revokes the lease (best effort: unrevoked, it expires after its TTL). */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearTimeout(this.fence);
    this.stopLoop.abort();
    this.resetStream();
    if (!this.lost.signal.aborted) this.lost.abort('released');
    await this.client.leaseClient.leaseRevoke({ ID: this.id }, { deadline: Date.now() + REVOKE_DEADLINE_MS }).catch(() => undefined);
  }
}

/** An elector for `name` on etcd; one candidate per call of `run`. */
export class EtcdElector implements LeaderElector {
  private readonly prefix: string;
  private readonly ttlSeconds: number;

  constructor(
    private readonly deps: EtcdElectionDeps,
    name: string,
    private readonly candidate: string,
    private readonly opts: ElectorOptions = {},
  ) {
    if (!/^[a-z0-9][a-z0-9-]*$/.test(name)) throw new TypeError(`election name must be lowercase letters, digits and dashes, got "${name}"`);
    this.prefix = `${ELECTION_PREFIX}${name}/`;
    const ttl = opts.ttlSeconds ?? MIN_TTL_SECONDS;
    if (!Number.isInteger(ttl) || ttl < MIN_TTL_SECONDS) throw new TypeError(`election TTL must be a whole number of seconds >= ${MIN_TTL_SECONDS}, got ${ttl}`);
    this.ttlSeconds = ttl;
  }

  async run(signal: AbortSignal, lead: (term: LeaderTerm) => Promise<void>): Promise<void> {
    let backoff = RETRY_MIN_MS;
    while (!signal.aborted) {
      let lease: KeptLease | undefined;
      let leadFailure: { error: unknown } | undefined;
      try {
        lease = await KeptLease.grant(this.deps.client, this.ttlSeconds);
        const key = `${this.prefix}${leaseHex(lease.id)}`;
        const term = await this.register(key, lease);
        const alive = AbortSignal.any([signal, lease.lost.signal]);
        if (await this.waitTurn(key, term, alive)) {
          backoff = RETRY_MIN_MS;
          leadFailure = await this.serve(key, term, lease, signal, lead);
        }
      } catch (e) {
        if (signal.aborted) break;
        this.opts.onEvent?.({ type: 'error', error: e });
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, RETRY_MAX_MS);
      } finally {
        await lease?.release();
      }
      if (leadFailure) throw leadFailure.error;
    }
  }

  /** Creates this candidate's key on its lease; returns its create revision (the term number). */
  private async register(key: string, lease: KeptLease): Promise<number> {
    const k = this.deps.etcdKey(key);
    const value: CandidateValue = { candidate: this.candidate };
    const res = await this.deps.client.kv.txn({
      compare: [{ key: k, target: 'Create', result: 'Equal', create_revision: 0 }],
      success: [{ request_put: { key: k, value: Buffer.from(JSON.stringify(value), 'utf8'), lease: lease.id } }],
      failure: [],
    });
    if (!res.succeeded) throw new Error(`election key ${key} already exists for a fresh lease`);
    return Number(res.header.revision);
  }

  /** Resolves true once this candidate's key is the oldest; false when `alive` aborts or the key disappears first. */
  private async waitTurn(key: string, createRevision: number, alive: AbortSignal): Promise<boolean> {
    while (!alive.aborted) {
      const { items, revision } = await this.deps.store.list<CandidateValue>(this.prefix);
      if (!items.some((e) => e.key === key)) return false; // our lease is gone already
      if (!items.some((e) => e.createRevision < createRevision)) return true;
      // Someone older holds or awaits leadership: look again after any key under the prefix goes.
      for await (const ev of this.deps.store.watch<CandidateValue>(this.prefix, revision, alive)) {
        if (ev.type === 'delete') break;
      }
    }
    return false;
  }

  /** Leads one term: runs `lead` until the lease is lost, the key deleted, or `signal` aborts. */
  private async serve(key: string, term: number, lease: KeptLease, signal: AbortSignal, lead: (term: LeaderTerm) => Promise<void>): Promise<{ error: unknown } | undefined> {
    const ac = new AbortController();
    const end = (reason: string): void => {
      if (!ac.signal.aborted) ac.abort(reason);
    };
    const onLost = (): void => end(String(lease.lost.signal.reason));
    const onStop = (): void => end('resigned');
    lease.lost.signal.addEventListener('abort', onLost);
    signal.addEventListener('abort', onStop);
    if (lease.lost.signal.aborted) onLost();
    if (signal.aborted) onStop();
    // Someone deleting our key by hand would let a rival win while our lease lives: end the term too.
    const watching = this.watchOwnKey(key, ac.signal).then(
      (r) => {
        if (r === 'deleted') end('the election key was deleted');
      },
      (e: unknown) => {
        // Without the guard a rival could win while we lead: end the term rather than lead unguarded.
        end(`the election key could not be watched: ${e instanceof Error ? e.message : String(e)}`);
      },
    );
    this.opts.onEvent?.({ type: 'elected', term });
    let failure: { error: unknown } | undefined;
    try {
      await lead({ signal: ac.signal, term });
    } catch (e) {
      failure = { error: e };
    }
    end(failure ? 'the leader loops failed' : 'the leader loops ended');
    lease.lost.signal.removeEventListener('abort', onLost);
    signal.removeEventListener('abort', onStop);
    // The term is over and its reason fixed (the first abort's): say so now. Closing the key's
    // watch may wait on a connection that is gone (a partitioned leader), long after a rival leads.
    const reason = String(ac.signal.reason);
    if (reason === 'resigned') this.opts.onEvent?.({ type: 'resigned', term });
    else this.opts.onEvent?.({ type: 'lost', term, reason });
    await watching;
    return failure;
  }

  /** Resolves `deleted` when `key` is deleted (or already gone), `ended` when `signal` aborts first. */
  private async watchOwnKey(key: string, signal: AbortSignal): Promise<'deleted' | 'ended'> {
    const { items, revision } = await this.deps.store.list<CandidateValue>(key);
    if (signal.aborted) return 'ended';
    if (!items.some((e) => e.key === key)) return 'deleted';
    for await (const ev of this.deps.store.watch<CandidateValue>(key, revision, signal)) {
      if (ev.type === 'delete' && ev.key === key) return 'deleted';
    }
    return 'ended';
  }
}
