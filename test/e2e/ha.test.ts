/**
 * Several control-plane servers over one etcd (issue 7; TLS with client certificates, issue 18): three real `carapace server`
 * processes, each with its own state directory (so its own audit signing key), no agents.
 * All serve the API; exactly one leads (runs the scheduler and reconcilers). A stream of
 * applies goes round-robin to all three while the leader is killed with SIGKILL: another
 * takes over, every acknowledged write is there with its last acknowledged content, versions
 * never go backwards, the controller never makes an instance twice (each template change
 * replaces replicas under their names with new uids, never an old one), leadership terms
 * never overlap, and the audit log written and signed by several servers verifies.
 *
 * Services use host isolation with no agent anywhere: their instances are planned and stay
 * Pending (Unschedulable), which is what the controller's exactly-once creation needs.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Instance, Service } from '../../src/model/objects.js';
import { kindPrefix } from '../../src/model/keys.js';
import { openEtcdStore, type EtcdStore } from '../../src/store/etcd.js';
import { startTlsEtcd } from '../../src/pki/testing/etcd-pki.js';
import type { EtcdProcess } from '../../src/store/testing/etcd.js';
import { apiFetch, cli, eventually, freePort, Server, tempDir, tokens } from './helpers.js';
import { newKeyLine } from '../../src/keyring/keyring.js';

/** The one keyring every server of the store is given (CARAPACE_KEYRING): the CA key in etcd is sealed with it. */
const KEYRING = newKeyLine();

let tmp: { dir: string; cleanup: () => Promise<void> };
let etcd: EtcdProcess;
let store: EtcdStore; // the test's own view of the cluster's store, for watches and raw reads
const servers: Server[] = [];
let token = '';
/** Stops the test's background watch and health sampling (also when a test fails midway). */
const background = new AbortController();

const TENANTS = ['t0', 't1', 't2', 't3'];
const WORKERS = 8;
/** Applies in all; every 32 of them create 8 new services, so services keep appearing before, during and after the failover. */
const APPLIES = 320;
const SERVICES = APPLIES / 4;
/** The leader is killed once this many applies were acknowledged (about 2 s into the stream). */
const KILL_AFTER = 80;
/** The service apply number `seq` writes: worker `seq % 8` owns services `i % 8 == seq % 8`, each written 4 times. */
const serviceOf = (seq: number): number => (seq % WORKERS) + WORKERS * Math.floor(seq / (4 * WORKERS));
/** Each worker sends one apply per this many ms: about 40 writes/s in all. */
const PACE_MS = 200;
const replicasOf = (i: number): number => 1 + (i % 3);

function newServer(name: string, port: number): Server {
  return new Server(join(tmp.dir, name), port, etcd.storeArgs, { CARAPACE_AUDIT_CHECKPOINT_MS: '500', CARAPACE_KEYRING: KEYRING }, 'server');
}

async function call(server: Server, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const r = await apiFetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body !== undefined ? JSON.stringify(body) : null,
    signal: AbortSignal.timeout(15_000),
  });
  const text = await r.text();
  return { status: r.status, json: text.startsWith('{') ? JSON.parse(text) : text };
}

async function health(s: Server): Promise<{ ok: boolean; leader: boolean } | undefined> {
  try {
    const r = await apiFetch(`${s.url}/healthz`, { signal: AbortSignal.timeout(2_000) });
    return (await r.json()) as { ok: boolean; leader: boolean };
  } catch {
    return undefined; // down
  }
}

async function leaders(): Promise<Server[]> {
  const hs = await Promise.all(servers.map(health));
  return servers.filter((_, i) => hs[i]?.leader === true);
}

const service = (i: number, seq: number): unknown => ({
  apiVersion: 'carapace/v1',
  kind: 'Service',
  metadata: { name: `s${i}`, tenant: TENANTS[i % TENANTS.length] },
  spec: { image: '127.0.0.1:5999/ha/none:1', isolation: 'host', replicas: replicasOf(i), command: ['sleep', '3600'], cpu: 0.01, memory: '8Mi', env: { SEQ: String(seq) } },
});
const servicePath = (i: number): string => `/v1/tenants/${TENANTS[i % TENANTS.length]}/services/s${i}`;

/** A leadership term read from a server's log: [start, end] in wall-clock ms. */
interface Term {
  server: string;
  start: number;
  end: number;
}

/** The terms a server's log shows; a term still open ends at `openUntil` (now, or when it was killed). */
function termsOf(log: string, openUntil: number): Term[] {
  const out: Term[] = [];
  let open: Term | undefined;
  for (const line of log.split('\n')) {
    if (!line.startsWith('{')) continue;
    let rec: { msg?: string; time?: number; server?: string };
    try {
      rec = JSON.parse(line) as typeof rec;
    } catch {
      continue;
    }
    if (rec.msg === 'became leader') open = { server: rec.server ?? '?', start: rec.time ?? 0, end: Infinity };
    else if (rec.msg === 'stopped leading' && open) {
      open.end = rec.time ?? 0;
      out.push(open);
      open = undefined;
    }
  }
  if (open) out.push({ ...open, end: openUntil });
  return out;
}

beforeAll(async () => {
  tmp = await tempDir('carapace-ha-');
  etcd = await startTlsEtcd(); // TLS with client certificates, as on a network
  store = await openEtcdStore(etcd.storeOptions);
  for (const name of ['a', 'b', 'c']) {
    const s = newServer(name, await freePort());
    await s.start();
    servers.push(s);
  }
  token = tokens.get(servers[0]!.url) ?? '';
}, 120_000);

afterAll(async () => {
  background.abort();
  for (const s of servers) await s.stop();
  await store?.close();
  await etcd?.stop();
  await tmp?.cleanup();
}, 60_000);

describe('several servers over one etcd', () => {
  it('all serve the API, exactly one leads, and only the first mints the admin token', async () => {
    // The first server minted the cluster-admin token; the others started without one.
    expect(token).toMatch(/^cpt_/);
    expect(servers[0]!.log).toContain('First cluster-admin token');
    for (const s of servers.slice(1)) {
      expect(s.log).not.toContain('First cluster-admin token');
      expect(tokens.has(s.url)).toBe(false);
    }
    const leader = await eventually(async () => {
      const l = await leaders();
      return l.length === 1 ? l[0] : undefined;
    }, 15_000, 'one leader');
    // Stays exactly one over several lease TTLs.
    for (let i = 0; i < 15; i++) {
      expect((await leaders()).map((s) => s.url)).toEqual([leader.url]);
      await new Promise((r) => setTimeout(r, 200));
    }
    // Every server serves reads and writes of the shared store; the gauge says who leads.
    const put = await call(servers[1]!, 'PUT', '/v1/tenants/t0', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 't0' }, spec: {} });
    expect(put.status, JSON.stringify(put.json)).toBe(201);
    for (const s of servers) {
      const got = await call(s, 'GET', '/v1/tenants/t0');
      expect(got.status).toBe(200);
      expect(got.json.metadata.resourceVersion).toBe(put.json.metadata.resourceVersion);
      const metrics = (await call(s, 'GET', '/metrics')).json as string;
      expect(metrics).toMatch(new RegExp(`carapace_leader\\{server="[^"]+:${s.port}"\\} ${s === leader ? 1 : 0}`));
    }
  });

  it('survives kill -9 of the leader during a stream of applies: no acknowledged write lost, no duplicate instance, one leader at a time', async () => {
    for (const t of TENANTS) expect((await call(servers[TENANTS.indexOf(t) % 3]!, 'PUT', `/v1/tenants/${t}`, { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: t }, spec: {} })).status).toBeLessThan(300);

    // Watch every instance write from before the first service exists: who was created when.
    const created = new Map<string, string[]>(); // instance key -> uids it was created with
    const createdAt: number[] = [];
    const deleted: string[] = [];
    const live = new Set<string>();
    const from = await store.revision();
    const watchAc = new AbortController();
    const watchSignal = AbortSignal.any([watchAc.signal, background.signal]);
    let watchError: unknown;
    const watching = (async () => {
      for await (const ev of store.watch<Instance>(kindPrefix('Instance'), from, watchSignal)) {
        if (ev.type === 'delete') {
          deleted.push(ev.key);
          live.delete(ev.key);
        } else if (!live.has(ev.key)) {
          live.add(ev.key);
          createdAt.push(Date.now());
          created.set(ev.key, [...(created.get(ev.key) ?? []), ev.value.metadata.uid]);
        }
      }
    })().catch((e: unknown) => {
      watchError = e;
    });

    // Health of every server every 50 ms: when did a new leader show up.
    const samples: { at: number; leaders: string[] }[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling && !background.signal.aborted) {
        const at = Date.now();
        samples.push({ at, leaders: (await leaders()).map((s) => s.url) });
        await new Promise((r) => setTimeout(r, 50));
      }
    })();

    const leader = (await leaders())[0]!;
    const survivors = servers.filter((s) => s !== leader);
    let killedAt = 0;
    let killedLog = '';
    let acked = 0;
    let unacked = 0;
    let conflicts = 0;
    let unavailable = 0;
    const last = new Map<number, { seq: number; rv: number }>(); // per service: last acknowledged write
    const rvsBackwards: string[] = [];
    const staleReads: string[] = [];
    let rr = 0;

    /** Sends one apply, round-robin over all three servers (dead or not); retries the same content until acknowledged. */
    async function apply(i: number, seq: number): Promise<void> {
      for (let attempt = 1; ; attempt++) {
        const s = servers[rr++ % servers.length]!;
        let r: { status: number; json: any } | undefined;
        try {
          r = await call(s, 'PUT', servicePath(i), service(i, seq));
        } catch {
          r = undefined; // connection refused or reset: outcome unknown, not acknowledged
        }
        if (r && r.status < 300) {
          acked++;
          const rv = r.json.metadata.resourceVersion as number;
          const prev = last.get(i);
          if (prev && rv <= prev.rv) rvsBackwards.push(`s${i}: ${prev.rv} then ${rv}`);
          last.set(i, { seq, rv });
          // Read your write on another server: never older than what was acknowledged.
          if (seq % 4 === 0) {
            const other = survivors[seq % survivors.length]!;
            const got = await call(other, 'GET', servicePath(i)).catch(() => undefined);
            if (got && got.status === 200 && (got.json.metadata.resourceVersion as number) < rv) staleReads.push(`s${i} on ${other.url}: ${got.json.metadata.resourceVersion} < ${rv}`);
          }
          return;
        }
        unacked++;
        if (r?.status === 409) conflicts++; // raced a controller status write: not acknowledged, send again
        else if (r?.status === 503) unavailable++; // refused (e.g. the audit head stayed contended): not acknowledged, send again
        else if (r) throw new Error(`apply s${i} #${seq} answered ${r.status}: ${JSON.stringify(r.json)}`);
        if (attempt > 50) throw new Error(`apply s${i} #${seq} never acknowledged`);
        await new Promise((res) => setTimeout(res, 20));
      }
    }

    const started = Date.now();
    await Promise.all(
      Array.from({ length: WORKERS }, async (_, w) => {
        // Worker w owns the services i with i % WORKERS == w, so writes to one service are sequential.
        for (let seq = w; seq < APPLIES; seq += WORKERS) {
          const t0 = Date.now();
          if (killedAt === 0 && acked >= KILL_AFTER) {
            killedAt = Date.now();
            await leader.kill9();
            killedLog = leader.log;
          }
          await apply(serviceOf(seq), seq);
          await new Promise((res) => setTimeout(res, Math.max(0, PACE_MS - (Date.now() - t0))));
        }
      }),
    );
    const streamMs = Date.now() - started;
    expect(killedAt).toBeGreaterThan(0);
    const newLeader = await eventually(async () => {
      const l = await leaders();
      return l.length === 1 ? l[0] : undefined;
    }, 15_000, 'a new leader');
    sampling = false;
    await sampler;
    expect(newLeader).not.toBe(leader);
    const firstSeen = samples.find((s) => s.at > killedAt && s.leaders.length > 0);
    const takeoverMs = (firstSeen?.at ?? Infinity) - killedAt;
    console.log(`ha: ${acked} acknowledged applies in ${streamMs} ms (${unacked} not acknowledged: ${conflicts} conflicts with status writes, ${unavailable} unavailable, the rest sent to the dead server); leader killed after ${KILL_AFTER}; new leader seen after ${takeoverMs} ms`);
    expect(takeoverMs).toBeLessThan(5_000);
    for (const s of samples) expect(s.leaders.length, `leaders at ${s.at}`).toBeLessThanOrEqual(1);
    const takeoverAt = killedAt + takeoverMs;

    // Every acknowledged write is there with its last acknowledged content; versions only moved forward.
    expect(acked).toBe(APPLIES);
    expect(rvsBackwards).toEqual([]);
    expect(staleReads).toEqual([]);
    for (let i = 0; i < SERVICES; i++) {
      const got = await call(newLeader, 'GET', servicePath(i));
      expect(got.status).toBe(200);
      const svc = got.json as Service;
      const want = last.get(i)!;
      expect(svc.spec.env['SEQ'], `s${i}`).toBe(String(want.seq));
      expect(svc.metadata.resourceVersion).toBeGreaterThanOrEqual(want.rv);
    }

    // The new leader reconciles everything: each service has exactly its replicas, at the last
    // acknowledged spec, each instance created exactly once (no duplicate names or uids).
    const wantInstances = Array.from({ length: SERVICES }, (_, i) => replicasOf(i)).reduce((a, b) => a + b, 0);
    await eventually(async () => {
      const items = ((await call(newLeader, 'GET', '/v1/instances')).json as { items: Instance[] }).items;
      if (items.length !== wantInstances) return false;
      return items.every((inst) => inst.spec.container.env['SEQ'] === String(last.get(Number(inst.spec.owner.name.slice(1)))!.seq));
    }, 60_000, 'instances converged to the last acknowledged specs');
    const items = ((await call(newLeader, 'GET', '/v1/instances')).json as { items: Instance[] }).items;
    for (let i = 0; i < SERVICES; i++) {
      const mine = items.filter((x) => x.spec.owner.name === `s${i}`);
      expect(mine.map((x) => x.metadata.name).sort()).toEqual(Array.from({ length: replicasOf(i) }, (_, k) => `s${i}-${k}`));
      expect(mine.every((x) => x.status.phase === 'Pending')).toBe(true);
    }
    expect(new Set(items.map((x) => x.metadata.uid)).size).toBe(wantInstances);
    watchAc.abort();
    await watching;
    expect(watchError).toBeUndefined();
    // A template change replaces replicas (a rolling update: the old instance deleted, a new one
    // made under the lowest ordinal no record holds; a surge replica above the count for a
    // while): keys come and go, but
    // only replica names of their service, and a name made again never gets back an old uid
    // (a resurrected instance would be a lost delete).
    const replicaName = /^instances\/(t\d)\/s(\d+)-(\d+)$/;
    for (const key of [...created.keys(), ...deleted]) {
      const m = replicaName.exec(key);
      // Ordinals below 2 x replicas + 1: at most replicas + the surge of 1 alive, plus old ones on their way out.
      expect(m && Number(m[3]) < 2 * replicasOf(Number(m[2])) + 1, key).toBe(true);
    }
    for (const [key, uids] of created) expect(new Set(uids).size, `${key}: ${uids.join(', ')}`).toBe(uids.length);
    expect(live.size).toBe(wantInstances);
    // Both leaders created instances: the old one before the kill, the new one after taking over.
    expect(createdAt.filter((t) => t < killedAt).length).toBeGreaterThan(0);
    expect(createdAt.filter((t) => t > takeoverAt).length).toBeGreaterThan(0);
    // What the watch saw live at the end is what the API lists: the same uids.
    expect(new Set([...live].map((k) => created.get(k)?.at(-1)))).toEqual(new Set(items.map((x) => x.metadata.uid)));

    // Leadership terms, from the servers' own logs, never overlapped (the killed one's ended at the kill).
    const terms = [...termsOf(killedLog, killedAt), ...survivors.flatMap((s) => termsOf(s.log, Date.now()))].sort((a, b) => a.start - b.start);
    expect(terms.length).toBeGreaterThanOrEqual(2);
    for (let k = 1; k < terms.length; k++) expect(terms[k]!.start, `${terms[k]!.server} began leading before ${terms[k - 1]!.server} stopped`).toBeGreaterThanOrEqual(terms[k - 1]!.end);

    // The audit log, appended by three servers and checkpointed with two or more keys, verifies (on any server).
    const checkpoints = (await store.list<{ keyId: string }>('audit/checkpoints/')).items;
    expect(new Set(checkpoints.map((c) => c.value.keyId)).size).toBeGreaterThanOrEqual(2);
    expect((await store.list('audit/keys/')).items).toHaveLength(3);
    tokens.set(survivors[0]!.url, token);
    const verified = await cli(survivors[0]!.url, ['audit', 'verify']);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
    expect(verified.stdout).toMatch(/^audit log OK/);
    const records = (await cli(survivors[0]!.url, ['audit', 'export'])).stdout.trim().split('\n').map((l) => JSON.parse(l) as { action: string; target: { kind: string }; outcome: string });
    expect(records.filter((r) => r.target.kind === 'Service' && r.outcome === 'success' && (r.action === 'create' || r.action === 'update')).length).toBeGreaterThanOrEqual(APPLIES);

    // The killed server comes back (start waits until it answers) as a follower; still exactly
    // one leader, sampled over several lease TTLs while it campaigns.
    await leader.start();
    for (let i = 0; i < 15; i++) {
      expect((await leaders()).map((s) => s.url)).toEqual([newLeader.url]);
      expect(await health(leader)).toEqual({ ok: true, leader: false });
      await new Promise((r) => setTimeout(r, 200));
    }
  }, 240_000);
});
