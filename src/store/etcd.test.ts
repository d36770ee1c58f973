import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { describeStoreContract } from './contract.js';
import { openEtcdStore, type EtcdStore } from './etcd.js';
import { CompactedError, StoreClosedError, StoreUnavailableError, type WatchEvent } from './store.js';
import { EtcdNotInstalledError, startEtcd, type EtcdProcess } from './testing/etcd.js';
import { newTestCa, newTestClientCert, startTlsEtcd } from '../pki/testing/etcd-pki.js';
import { Etcd3 } from 'etcd3';
import { request } from 'node:https';

// Real etcd members for the file, one in plain text on loopback and one serving TLS with
// client-certificate authentication; every store gets its own namespace, as clusters sharing
// an etcd would.
let etcd: EtcdProcess;
let etcdTls: EtcdProcess;
beforeAll(async () => {
  [etcd, etcdTls] = await Promise.all([startEtcd(), startTlsEtcd()]);
});
afterAll(async () => {
  await Promise.all([etcd?.stop(), etcdTls?.stop()]);
});

let nsCounter = 0;
function namespace(): string {
  return `carapace-test-${process.pid}-${++nsCounter}/`;
}

describeStoreContract('etcd', async () => {
  const store = await openEtcdStore({ endpoints: [etcd.endpoint], prefix: namespace() });
  return { store, compact: (revision) => store.compact(revision), cleanup: () => store.close() };
});

describeStoreContract('etcd over TLS with client certificates', async () => {
  const store = await openEtcdStore({ ...etcdTls.storeOptions, prefix: namespace() });
  return { store, compact: (revision) => store.compact(revision), cleanup: () => store.close() };
});

describe('etcd with mutual TLS', () => {
  /** The error an etcd3 client with these credentials (or none) gets for one read, within 5 s. */
  async function readError(endpoint: string, credentials?: { rootCertificate: Buffer; certChain?: Buffer; privateKey?: Buffer }): Promise<string> {
    const client = new Etcd3({ hosts: [endpoint], ...(credentials ? { credentials } : {}), defaultCallOptions: () => ({ deadline: Date.now() + 5_000 }) });
    try {
      await client.get('any').string();
      return 'read succeeded';
    } catch (e) {
      return e instanceof Error ? e.message : String(e);
    } finally {
      client.close();
    }
  }

  it('serves a client with a certificate from its CA', async () => {
    const store = await openEtcdStore({ ...etcdTls.storeOptions, prefix: namespace() });
    try {
      const v = await store.put('k', 'v');
      expect(await store.get('k')).toMatchObject({ value: 'v', version: v });
    } finally {
      await store.close();
    }
  });

  it('refuses a client without a certificate, with one from another CA, and in plain text', async () => {
    const tls = etcdTls.clientTls!; // started with tls: true
    const ca = Buffer.from(tls.ca);
    // No certificate: the handshake fails (etcd asks for one, --client-cert-auth).
    expect(await readError(etcdTls.endpoint, { rootCertificate: ca })).toMatch(/UNAVAILABLE.*(bad certificate|certificate required|handshake)/s);
    // A certificate etcd's CA did not sign.
    const other = await newTestCa('an attacker CA');
    const foreign = await newTestClientCert(other, 'carapace');
    expect(await readError(etcdTls.endpoint, { rootCertificate: ca, certChain: Buffer.from(foreign.certPem), privateKey: Buffer.from(foreign.keyPem) })).toMatch(/UNAVAILABLE.*bad certificate/s);
    await expect(openEtcdStore({ endpoints: [etcdTls.endpoint], tls: { ca, cert: foreign.certPem, key: foreign.keyPem }, callTimeoutMs: 5_000 })).rejects.toThrow(/cannot reach etcd at https:\/\/127\.0\.0\.1:\d+: .*bad certificate.*\(etcd refused this client's certificate: it must be signed by a CA in etcd's --trusted-ca-file/s);
    // Plain text to the TLS port.
    expect(await readError(etcdTls.endpoint.replace(/^https:/, 'http:'))).toMatch(/UNAVAILABLE/);
    // The HTTP gateway too: no certificate, no answer.
    const gateway = await new Promise<string>((resolve) => {
      const req = request(`${etcdTls.endpoint}/v3/kv/range`, { method: 'POST', ca: tls.ca, timeout: 5_000 }, (res) => resolve(`answered ${res.statusCode}`));
      req.on('error', (e) => resolve(e.message));
      req.end(JSON.stringify({ key: Buffer.from('carapace/').toString('base64') }));
    });
    expect(gateway).toMatch(/certificate required|bad certificate|socket hang up|ECONNRESET/);
  });

  it('a client refuses a member whose certificate its CA did not sign', async () => {
    const tls = etcdTls.clientTls!; // started with tls: true
    const other = await newTestCa('not the etcd CA');
    await expect(openEtcdStore({ endpoints: [etcdTls.endpoint], tls: { ...tls, ca: other.certPem }, callTimeoutMs: 5_000 })).rejects.toThrow(/cannot reach etcd.*unable to verify the first certificate.*\(etcd's certificate did not verify: it must be signed by the CA given as --etcd-ca/s);
  });

  it('openEtcdStore refuses endpoints whose scheme does not match the TLS options', async () => {
    await expect(openEtcdStore({ endpoints: [etcdTls.endpoint] })).rejects.toThrow(/does not start with http:\/\//);
    await expect(openEtcdStore({ endpoints: [etcd.endpoint], tls: etcdTls.clientTls! })).rejects.toThrow(/does not start with https:\/\//); // started with tls: true
  });
});

/** Read `n` events from a watch, then stop it; fails after 10 s. */
async function take<T>(store: EtcdStore, prefix: string, after: number, n: number): Promise<WatchEvent<T>[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 10_000);
  const out: WatchEvent<T>[] = [];
  try {
    for await (const ev of store.watch<T>(prefix, after, ac.signal)) {
      out.push(ev);
      if (out.length === n) break;
    }
  } finally {
    clearTimeout(timer);
  }
  expect(out).toHaveLength(n);
  return out;
}

describe('etcd store specifics', () => {
  const open: EtcdStore[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.close()));
  });
  async function fresh(prefix = namespace()): Promise<EtcdStore> {
    const store = await openEtcdStore({ endpoints: [etcd.endpoint], prefix });
    open.push(store);
    return store;
  }

  it('keeps namespaces apart: same keys, separate lists and watches, one shared revision', async () => {
    const [a, b] = [await fresh(), await fresh()];
    const va = await a.put('k', 'a');
    const vb = await b.put('k', 'b');
    expect(vb).toBe(va + 1); // etcd's revision is cluster-wide
    expect(await a.get('k')).toMatchObject({ key: 'k', value: 'a', version: va });
    expect((await b.list('')).items).toEqual([{ key: 'k', value: 'b', version: vb, createRevision: vb }]);
    expect(await a.revision()).toBe(vb);
    expect(await take(a, '', va - 1, 1)).toEqual([{ type: 'put', key: 'k', value: 'a', revision: va }]);
    // b's watch from before a's write sees only b's own key.
    const seen = await take(b, '', va - 1, 1);
    expect(seen.map((e) => e.value)).toEqual(['b']);
  });

  it('an empty namespace works over the whole keyspace (the other tests write under their own)', async () => {
    const whole = await fresh('');
    const scoped = await fresh();
    await scoped.put('x', 1);
    const listed = await whole.list<unknown>('');
    expect(listed.items.some((e) => e.key.endsWith('/x'))).toBe(true);
    expect(listed.items.every((e, i) => i === 0 || Buffer.compare(Buffer.from(listed.items[i - 1]!.key), Buffer.from(e.key)) < 0)).toBe(true);
  });

  it('rejects bad keys, values and expectations without writing', async () => {
    const store = await fresh();
    const r = await store.revision();
    await expect(store.put('', 1)).rejects.toBeInstanceOf(TypeError);
    await expect(store.put('a\uD800b', 1)).rejects.toThrow(/well-formed/);
    await expect(store.put('k', undefined)).rejects.toThrow(/JSON/);
    await expect(store.put('k', 1, { version: -1 })).rejects.toThrow(/expectation/);
    await expect(store.txn([{ op: 'put', key: 'ok', value: 1 }, { op: 'put', key: 'k', value: () => 1 }])).rejects.toThrow(/JSON/);
    expect(await store.revision()).toBe(r);
    expect(await store.get('ok')).toBeUndefined();
  });

  it('compaction clamps to the current revision and is idempotent', async () => {
    const store = await fresh();
    const v = await store.put('k', 1);
    await store.compact(v + 1000); // clamped to v
    await store.compact(v); // already there
    await store.compact(1); // below the compaction point
    await expect(take(store, '', v - 1, 1)).rejects.toBeInstanceOf(CompactedError);
    const v2 = await store.put('k', 2);
    expect(await take(store, '', v, 1)).toEqual([{ type: 'put', key: 'k', value: 2, revision: v2 }]);
  });

  it('rejects calls after close and fails running watches', async () => {
    const store = await openEtcdStore({ endpoints: [etcd.endpoint], prefix: namespace() });
    const v = await store.put('k', 1);
    const ac = new AbortController();
    const it = store.watch('', v, ac.signal)[Symbol.asyncIterator]();
    const pending = it.next();
    await new Promise((r) => setTimeout(r, 50)); // let the watch stream open
    await store.close();
    await expect(pending).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.get('k')).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.put('k', 2)).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.list('')).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.revision()).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.watch('', 0, ac.signal)[Symbol.asyncIterator]().next()).rejects.toBeInstanceOf(StoreClosedError);
    await store.close(); // idempotent
  });

  it('the test helper says how to install etcd when the binary is missing', async () => {
    const p = startEtcd({ binary: '/nonexistent/etcd' });
    await expect(p).rejects.toBeInstanceOf(EtcdNotInstalledError);
    await expect(p).rejects.toThrow(/apt-get install -y etcd-server/);
  });

  it('fails to open, clearly, when no endpoint answers', async () => {
    const dead = `http://127.0.0.1:1`; // nothing listens on port 1
    await expect(openEtcdStore({ endpoints: [dead], prefix: namespace(), callTimeoutMs: 2000 })).rejects.toThrow(/cannot reach etcd at http:\/\/127\.0\.0\.1:1/);
  });

  it('aborting many watches at once does not disturb other calls', async () => {
    const store = await fresh();
    const r = await store.revision();
    const ac = new AbortController();
    const pending = Array.from({ length: 6 }, () => store.watch('', r, ac.signal)[Symbol.asyncIterator]().next());
    await new Promise((res) => setTimeout(res, 100)); // let the streams open
    ac.abort();
    for (const p of pending) expect(await p).toMatchObject({ done: true });
    expect(await store.put('k', 1)).toBeGreaterThan(r);
  });

  it('a watch that is not read holds no other call up, and later delivers everything in order', async () => {
    const store = await fresh();
    const r0 = await store.revision();
    const ac = new AbortController();
    const it = store.watch<{ i: number }>('', r0, ac.signal)[Symbol.asyncIterator]();
    const first = it.next();
    const pad = 'x'.repeat(50_000);
    // 8 MB of events (over gRPC's default 4 MiB message limit) while nobody reads the watch.
    for (let j = 0; j < 16; j++) await store.txn(Array.from({ length: 10 }, (_, i) => ({ op: 'put' as const, key: `k/${j}/${i}`, value: { i: j * 10 + i, pad } })));
    expect((await store.list('k/')).items).toHaveLength(160);
    const got = [(await first).value!.value.i];
    while (got.length < 160) got.push((await it.next()).value!.value.i);
    expect(got).toEqual(Array.from({ length: 160 }, (_, i) => i));
    ac.abort();
  });

  it('measures put throughput (single puts and txns of 100)', async () => {
    const store = await fresh();
    const singles = 300;
    let t = performance.now();
    for (let i = 0; i < singles; i++) await store.put(`single/${i}`, { i, pad: 'x'.repeat(200) });
    const singleRate = singles / ((performance.now() - t) / 1000);
    const txns = 30;
    t = performance.now();
    for (let j = 0; j < txns; j++) {
      await store.txn(Array.from({ length: 100 }, (_, i) => ({ op: 'put' as const, key: `batch/${j}/${i}`, value: { i, pad: 'x'.repeat(200) } })));
    }
    const batchRate = (txns * 100) / ((performance.now() - t) / 1000);
    console.log(`etcd store throughput: ${singleRate.toFixed(0)} single puts/s, ${batchRate.toFixed(0)} puts/s in txns of 100`);
    expect((await store.list('single/')).items).toHaveLength(singles);
    expect((await store.list('batch/')).items).toHaveLength(txns * 100);
  });
});

describe('etcd store durability under kill -9 of etcd', () => {
  const open: EtcdStore[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.close()));
  });

  /** Retry `fn` until it succeeds (the client's circuit breaker may hold calls for a few seconds after a restart). */
  async function eventually<R>(fn: () => Promise<R>, ms = 20_000): Promise<R> {
    const deadline = Date.now() + ms;
    for (;;) {
      try {
        return await fn();
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  it('while etcd is down, calls fail with StoreUnavailableError (not a transport error of the client library); they work again after the restart', async () => {
    const store = await openEtcdStore({ endpoints: [etcd.endpoint], prefix: namespace(), callTimeoutMs: 2_000 });
    open.push(store);
    await store.put('k', 1);
    await etcd.kill('SIGKILL');
    try {
      for (const attempt of [() => store.get('k'), () => store.list(''), () => store.revision(), () => store.put('k', 2), () => store.txn([{ op: 'delete', key: 'k' }])]) {
        const e = await attempt().then(() => undefined, (err: unknown) => err);
        expect(e).toBeInstanceOf(StoreUnavailableError);
        expect((e as Error).message).toMatch(/etcd/);
      }
    } finally {
      await etcd.restart();
    }
    await eventually(() => store.put('k', 3));
    expect((await store.get('k'))?.value).toBe(3);
  }, 60_000);

  it('every acknowledged write survives SIGKILL at a random point; clients and watches carry on after the restart', async () => {
    const prefix = namespace();
    const writer = await openEtcdStore({ endpoints: [etcd.endpoint], prefix });
    open.push(writer);
    const r0 = await writer.revision();
    // A watch that lives through every crash: it must see exactly the history, no gap, no duplicate.
    const ac = new AbortController();
    const live: WatchEvent[] = [];
    const watching = (async () => {
      for await (const ev of writer.watch('', r0, ac.signal)) live.push(ev);
    })();
    const acked: { kind: 'put' | 'txn' | 'del'; i: number; v: number }[] = [];
    let i = 0;
    for (let round = 0; round < 3; round++) {
      const target = acked.length + 20 + Math.floor(Math.random() * 150);
      // Write until `target` acks, then kill etcd a random few ms into the writes that follow
      // (usually while one is in flight); stop at the first failed write.
      let killed: Promise<void> | undefined;
      for (; ; i++) {
        if (acked.length >= target && !killed) killed = new Promise((r) => setTimeout(r, Math.random() * 5)).then(() => etcd.kill('SIGKILL'));
        try {
          if (i % 7 === 6) {
            await writer.put(`d/${i}`, { i });
            const d = await writer.delete(`d/${i}`);
            acked.push({ kind: 'del', i, v: d! }); // d/i exists, so delete returns its revision
          } else if (i % 5 === 4) {
            const { revision } = await writer.txn([{ op: 'put', key: `k/${i}`, value: { i } }, { op: 'put', key: `t/${i}`, value: { i } }]);
            acked.push({ kind: 'txn', i, v: revision });
          } else {
            acked.push({ kind: 'put', i, v: await writer.put(`k/${i}`, { i }) });
          }
        } catch {
          if (!killed) throw new Error(`write ${i} failed before etcd was killed`);
          break;
        }
      }
      await killed;
      i++;
      await etcd.restart();
      // A new client reads back every acknowledged write.
      const reader = await openEtcdStore({ endpoints: [etcd.endpoint], prefix });
      open.push(reader);
      const maxAck = Math.max(...acked.map((a) => a.v));
      expect(await reader.revision()).toBeGreaterThanOrEqual(maxAck);
      const state = new Map((await reader.list('')).items.map((e) => [e.key, e]));
      for (const a of acked) {
        if (a.kind === 'del') {
          expect(state.has(`d/${a.i}`)).toBe(false);
        } else {
          expect(state.get(`k/${a.i}`)).toMatchObject({ value: { i: a.i }, version: a.v });
          if (a.kind === 'txn') expect(state.get(`t/${a.i}`)).toMatchObject({ value: { i: a.i }, version: a.v });
        }
      }
      // The writer's client reconnects by itself.
      await eventually(() => writer.revision());
    }
    // The watch reconnected after each crash and has delivered exactly the recorded history.
    const final = await writer.revision();
    const deadline = Date.now() + 20_000;
    while ((live.at(-1)?.revision ?? r0) < final && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    ac.abort();
    await watching;
    const replayed = await take(writer, '', r0, live.length);
    expect(live).toEqual(replayed);
    expect(live.at(-1)?.revision).toBe(final);
    for (const a of acked) expect(live.some((e) => e.revision === a.v)).toBe(true);
  });
});
