/**
 * Leader election on a real etcd. A candidate that must lose its connection reaches etcd
 * through a TCP proxy the test can black-hole (nothing passes: calls hang until their
 * deadlines, as in a partition) and heal; from etcd's side a black-holed candidate is a dead
 * process: no more renewals, no revoke.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { soleLeader, type ElectionEvent } from './election.js';
import { FENCE_MARGIN_MS } from './etcd-election.js';
import { openEtcdStore, type EtcdStore } from './etcd.js';
import { startEtcd, type EtcdProcess } from './testing/etcd.js';

let etcd: EtcdProcess;
beforeAll(async () => {
  etcd = await startEtcd();
});
afterAll(async () => {
  await etcd?.stop();
});

/** A TCP proxy in front of etcd that can drop every packet (`blackhole`) and be healed. */
class TcpProxy {
  private server: Server | undefined;
  private readonly pairs = new Set<[Socket, Socket]>();
  private blocked = false;
  port = 0;

  constructor(private readonly target: URL) {}

  async start(): Promise<string> {
    this.server = createServer((client) => {
      if (this.blocked) {
        client.pause(); // accepted, never answered: a black hole
        client.on('error', () => undefined);
        this.pairs.add([client, client]);
        return;
      }
      const upstream = createConnection(Number(this.target.port), this.target.hostname);
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      client.pipe(upstream);
      upstream.pipe(client);
      const close = (): void => {
        client.destroy();
        upstream.destroy();
        this.pairs.delete(pair);
      };
      client.on('error', close).on('close', close);
      upstream.on('error', close).on('close', close);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.server!.address() as { port: number }).port; // a TCP listen yields an AddressInfo
    return `http://127.0.0.1:${this.port}`;
  }

  /** From now on nothing passes in either direction; open connections stay open but silent. */
  blackhole(): void {
    this.blocked = true;
    for (const [a, b] of this.pairs) {
      a.unpipe();
      b.unpipe();
      a.pause();
      b.pause();
    }
  }

  /** New connections pass again (the silent ones are closed, as a healed network's peers would time them out). */
  heal(): void {
    this.blocked = false;
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  async stop(): Promise<void> {
    this.heal();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

interface Term {
  term: number;
  start: number;
  end?: number;
}

/** A candidate that records its terms (monotonic ms) and events. */
class Candidate {
  readonly terms: Term[] = [];
  readonly events: (ElectionEvent & { at: number })[] = [];
  readonly ac = new AbortController();
  done: Promise<void> | undefined;

  constructor(
    readonly store: EtcdStore,
    readonly id: string,
    private readonly leadHook?: (term: Term) => Promise<void>,
  ) {}

  run(name: string): this {
    if (!this.store.elector) throw new Error('an etcd store elects leaders');
    const elector = this.store.elector(name, this.id, { ttlSeconds: 2, onEvent: (e) => this.events.push({ ...e, at: performance.now() }) });
    this.done = elector.run(this.ac.signal, async ({ signal, term }) => {
      const t: Term = { term, start: performance.now() };
      this.terms.push(t);
      try {
        if (this.leadHook) await this.leadHook(t);
        await new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
      } finally {
        t.end = performance.now();
      }
    });
    return this;
  }

  get leading(): boolean {
    const last = this.terms[this.terms.length - 1];
    return last !== undefined && last.end === undefined;
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.done;
  }
}

async function until(what: string, fn: () => boolean, timeoutMs = 10_000): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  while (!fn()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return performance.now();
}

/** No two terms of different candidates overlap in time. */
function expectNoOverlap(cands: Candidate[]): void {
  const all = cands.flatMap((c) => c.terms.map((t) => ({ ...t, who: c.id, end: t.end ?? Infinity })));
  all.sort((a, b) => a.start - b.start);
  for (let i = 1; i < all.length; i++) expect(all[i]!.start, `${all[i]!.who} started before ${all[i - 1]!.who} ended`).toBeGreaterThanOrEqual(all[i - 1]!.end);
}

let nsCounter = 0;
describe('etcd leader election', () => {
  const stores: EtcdStore[] = [];
  const proxies: TcpProxy[] = [];
  const candidates: Candidate[] = [];
  let ns = '';
  afterEach(async () => {
    await Promise.all(candidates.splice(0).map((c) => c.stop().catch(() => undefined)));
    await Promise.all(proxies.splice(0).map((p) => p.stop()));
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });
  async function store(endpoint = etcd.endpoint): Promise<EtcdStore> {
    const s = await openEtcdStore({ endpoints: [endpoint], prefix: ns, callTimeoutMs: 2_000 });
    stores.push(s);
    return s;
  }
  async function viaProxy(): Promise<{ store: EtcdStore; proxy: TcpProxy }> {
    const proxy = new TcpProxy(new URL(etcd.endpoint));
    proxies.push(proxy);
    return { store: await store(await proxy.start()), proxy };
  }
  function candidate(s: EtcdStore, id: string, hook?: (t: Term) => Promise<void>): Candidate {
    const c = new Candidate(s, id, hook).run('control');
    candidates.push(c);
    return c;
  }
  const fresh = (): void => {
    ns = `election-test-${process.pid}-${++nsCounter}/`;
  };
  /** Waits until `n` candidates have a key in the election: they are campaigning (not still starting up). */
  async function campaigning(n: number): Promise<void> {
    const s = await store();
    await expect.poll(async () => (await s.list('election/control/')).items.length, { timeout: 10_000, interval: 20 }).toBe(n);
  }

  it('elects exactly one of two candidates; when the leader resigns the other takes over at once', async () => {
    fresh();
    const a = candidate(await store(), 'a');
    await until('a leads', () => a.leading);
    const b = candidate(await store(), 'b');
    await campaigning(2);
    await new Promise((r) => setTimeout(r, 3_000)); // several TTLs: b must keep waiting behind a live leader, all along
    expect(b.terms).toHaveLength(0);
    expect(a.terms).toHaveLength(1);
    const resignedAt = performance.now();
    await a.stop();
    const took = (await until('b leads', () => b.leading)) - resignedAt;
    expect(took).toBeLessThan(1_000); // revoked, not expired
    expect(a.events.map((e) => e.type)).toEqual(['elected', 'resigned']);
    expect(b.terms[0]!.term).toBeGreaterThan(a.terms[0]!.term);
    expectNoOverlap([a, b]);
  });

  it('replaces a leader cut off from etcd after its lease expires, and the cut-off leader stops first', async () => {
    fresh();
    const { store: sa, proxy } = await viaProxy();
    const a = candidate(sa, 'a');
    await until('a leads', () => a.leading);
    const b = candidate(await store(), 'b');
    await campaigning(2);
    expect(b.leading).toBe(false);

    const cutAt = performance.now();
    proxy.blackhole(); // from etcd's side a is dead: no renewals, no revoke
    const bLeadsAt = await until('b leads', () => b.leading, 10_000);
    const aTerm = a.terms[0]!;
    // a fenced itself: its term ended before b's began, at most TTL - margin after its last renewal (<= cut).
    expect(aTerm.end).toBeDefined();
    expect(aTerm.end!).toBeLessThan(bLeadsAt);
    expect(aTerm.end! - cutAt).toBeLessThanOrEqual(2_000 - FENCE_MARGIN_MS + 250);
    // b waited for the lease to expire: at least TTL after a's last renewal, which came before the cut.
    expect(bLeadsAt - cutAt).toBeGreaterThan(2_000 - 2_000 / 4 - 100);
    expect(bLeadsAt - cutAt).toBeLessThan(4_000);
    expect(a.events.find((e) => e.type === 'lost')).toMatchObject({ type: 'lost', reason: expect.stringMatching(/no lease renewal succeeded/) });

    // The network heals: a campaigns again and waits behind b, and leads again when b resigns.
    proxy.heal();
    await campaigning(2); // a's expired key is gone; it has a new one
    expect(a.leading).toBe(false);
    expect(b.leading).toBe(true);
    await b.stop();
    await until('a leads again', () => a.leading, 10_000);
    expectNoOverlap([a, b]);
  });

  it('a leader whose etcd stops answering stops leading within the TTL, and one candidate leads when etcd is back', async () => {
    fresh();
    const a = candidate(await store(), 'a');
    await until('a leads', () => a.leading);
    const b = candidate(await store(), 'b');
    await campaigning(2);
    const stoppedAt = performance.now();
    process.kill(etcd.pid, 'SIGSTOP');
    try {
      const endedAt = await until('a stops leading', () => !a.leading, 5_000);
      expect(endedAt - stoppedAt).toBeLessThanOrEqual(2_000 - FENCE_MARGIN_MS + 250);
      expect(b.leading).toBe(false);
    } finally {
      process.kill(etcd.pid, 'SIGCONT');
    }
    await until('a leader again', () => a.leading || b.leading, 15_000);
    await new Promise((r) => setTimeout(r, 2_500));
    expect([a.leading, b.leading].filter(Boolean)).toHaveLength(1);
    expectNoOverlap([a, b]);
  });

  it('gives leadership up and rejects when the leader loops fail', async () => {
    fresh();
    const boom = new Error('loop crashed');
    let crash: () => void = () => undefined;
    const crashed = new Promise<void>((resolve) => (crash = resolve));
    const a = candidate(await store(), 'a', async () => {
      await crashed;
      throw boom;
    });
    await until('a leads', () => a.leading);
    const b = candidate(await store(), 'b');
    await campaigning(2); // b waits behind a
    crash();
    await expect(a.done).rejects.toBe(boom);
    const failedAt = performance.now();
    await until('b leads', () => b.leading, 2_000);
    expect(performance.now() - failedAt).toBeLessThan(1_000); // revoked on the way out
    expect(a.events.find((e) => e.type === 'lost')).toMatchObject({ reason: 'the leader loops failed' });
  });

  it('ends the term when the leader key is deleted behind its back', async () => {
    fresh();
    const s = await store();
    const a = candidate(s, 'a');
    await until('a leads', () => a.leading);
    const [key] = (await s.list('election/control/')).items;
    await s.delete(key!.key);
    // The first term ends (a campaigns again at once, so poll the term, not `leading`).
    await until('the first term ends', () => a.terms[0]!.end !== undefined, 2_000);
    expect(a.events.find((e) => e.type === 'lost')).toMatchObject({ reason: 'the election key was deleted' });
    await until('a leads again (fresh key)', () => a.terms.length === 2 && a.leading, 5_000);
    expect(a.terms[1]!.term).toBeGreaterThan(a.terms[0]!.term);
  });
});

describe('sole leader (a store one process owns)', () => {
  it('leads at once until its signal aborts', async () => {
    const events: string[] = [];
    const ac = new AbortController();
    let term = 0;
    const done = soleLeader({ onEvent: (e) => events.push(e.type) }).run(ac.signal, async (t) => {
      term = t.term;
      await new Promise<void>((resolve) => t.signal.addEventListener('abort', () => resolve()));
    });
    await expect.poll(() => term, { timeout: 5_000, interval: 5 }).toBe(1);
    ac.abort();
    await done;
    expect(events).toEqual(['elected', 'resigned']);
  });

  it('leads again (a new term) when its loops end on their own, and rejects when they fail', async () => {
    const ac = new AbortController();
    const terms: number[] = [];
    const boom = new Error('crashed');
    const done = soleLeader().run(ac.signal, async (t) => {
      terms.push(t.term);
      if (t.term === 2) throw boom;
    });
    await expect(done).rejects.toBe(boom);
    expect(terms).toEqual([1, 2]);
  });
});
