/**
 * Crash consistency: `kill -9` at random points during a stream of applies, scales and
 * deletes, then restart and check that nothing acknowledged was lost.
 *
 * - sqlite: the real `carapace up` (API, controller and host agent in one process).
 * - etcd: a real etcd serving TLS with client certificates, `carapace server --store
 *   etcds://… --etcd-ca … --etcd-cert … --etcd-key …` and `carapace agent` with the same store
 *   flags; each round's victim is the server, sometimes the agent or the etcd member.
 *
 * Services run `host` containers (runc) from a busybox image in a local registry, so real
 * containers start and stop without VM boots. Workers each own some services (so writes to
 * one service are sequential) and record every acknowledged answer (2xx with its
 * resourceVersion). A call cut by the kill has an unknown outcome: after the restart the
 * service must be in the state before or after it. After each restart every service must show
 * its last acknowledged write with a version at least as high. After the last round, once
 * the system has converged: each service has exactly its replicas, each instance belongs to
 * a live owner, each instance runs in exactly one container, no container, network namespace
 * or VM is left that no object explains.
 */
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { LABELS } from '../../src/agent/container-id.js';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Instance, Service } from '../../src/model/objects.js';
import { startTlsEtcd } from '../../src/pki/testing/etcd-pki.js';
import type { EtcdProcess } from '../../src/store/testing/etcd.js';
import { Agent, containers, destroyAll, freePort, Server, tempDir } from '../e2e/helpers.js';
import { call, percentile, quiet, Random, sleep, Unsent, type Log, type Reply } from './harness.js';

export interface CrashOptions {
  store: 'sqlite' | 'etcd';
  rounds: number;
  /** Operations per round (one kill -9 somewhere in each round). */
  opsPerRound: number;
  /** Services the workers write (each owned by one worker). */
  services: number;
  workers: number;
  /** Operations per second offered in all. */
  rate: number;
  seed: number;
  /** How long the system may take to converge after the last round. */
  convergeTimeoutMs?: number;
  log?: Log;
}

export interface CrashResult {
  store: 'sqlite' | 'etcd';
  rounds: number;
  /** Operations sent (answered or cut by a kill). */
  ops: number;
  acked: number;
  /** Calls cut by a kill: outcome unknown until the next read. */
  unknown: number;
  /** Acknowledged writes missing after a restart, or unknown outcomes that resolved to neither side. */
  lostWrites: string[];
  /** A service whose version went backwards. */
  versionRegressions: string[];
  /** An instance running twice, or two instances for one replica. */
  duplicates: string[];
  /** A container, network namespace, VM or instance that no object explains. */
  orphans: string[];
  /** Answers the API may not give (500s, conflicts on writes that named no version, …). */
  unexpected: string[];
  kills: string[];
  /** After the last restart, until every check passed. */
  convergeMs: number;
  /** Latency of acknowledged writes (ms). */
  writeP50Ms: number;
  writeP99Ms: number;
}

/** What a service should be, as far as acknowledged answers tell. */
interface Known {
  exists: boolean;
  seq: number;
  replicas: number;
  version: string;
  /** Version of the last acknowledged write (0: never written or deleted). */
  rv: number;
}

const TENANTS = ['t0', 't1'];
const COMMAND = ['sh', '-c', "trap 'exit 0' TERM; sleep 3600 & wait"];

function tenantOf(i: number): string {
  return TENANTS[i % TENANTS.length] as string; // i % length is in range
}

function manifest(i: number, image: string, k: Known): unknown {
  return {
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name: `s${i}`, tenant: tenantOf(i), labels: { seq: String(k.seq) } },
    spec: { image, isolation: 'host', replicas: k.replicas, cpu: 0.05, memory: '16Mi', command: COMMAND, env: { VERSION: k.version } },
  };
}

const same = (a: Known, b: Known): boolean => a.exists === b.exists && (!a.exists || (a.seq === b.seq && a.replicas === b.replicas && a.version === b.version));
const show = (k: Known): string => (k.exists ? `seq ${k.seq}, ${k.replicas} replicas, ${k.version}, rv ${k.rv}` : 'absent');

/** A service as read back from the API. */
function observed(r: Reply): Known | undefined {
  if (r.status === 404 && r.json?.error?.code === 'CARAPACE_E_NOT_FOUND') return { exists: false, seq: 0, replicas: 0, version: '', rv: 0 };
  if (r.status !== 200) return undefined;
  const s = r.json as Service;
  return { exists: true, seq: Number(s.metadata.labels['seq']), replicas: s.spec.replicas, version: s.spec.env['VERSION'] ?? '', rv: s.metadata.resourceVersion };
}

/** Runs the crash rounds against one store and checks everything. */
export async function runCrashConsistency(o: CrashOptions): Promise<CrashResult> {
  const log = o.log ?? quiet;
  const rnd = new Random(o.seed);
  const tmp = await tempDir(`carapace-crash-${o.store}-`);
  let registry: RunningRegistry | undefined;
  let etcd: EtcdProcess | undefined;
  let server: Server | undefined;
  let agent: Agent | undefined;
  const prefix = o.store === 'sqlite' ? 'cr1' : 'cr2';
  const hostDir = join(tmp.dir, o.store === 'sqlite' ? 'up' : 'agent');
  const env = { CARAPACE_LOG_LEVEL: 'warn' };
  try {
    registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
    const image = (await buildBusyboxImage({ registry: registry.address, repository: 'crash/busybox', tag: '1' })).reference;
    if (o.store === 'sqlite') {
      server = new Server(hostDir, await freePort(), ['--net-prefix', prefix], env, 'up');
    } else {
      etcd = await startTlsEtcd();
      server = new Server(join(tmp.dir, 'server'), await freePort(), [...etcd.storeArgs, '--no-agent-api'], env, 'server');
      agent = new Agent(hostDir, [...etcd.storeArgs, '--host-name', 'crash', '--net-prefix', prefix]); // info: its start is read from the log
    }
    await server.start();
    await agent?.start();
    const srv = server;
    const token = (await readFile(join(srv.stateDir, 'admin-token'), 'utf8')).trim();
    const api = (method: string, path: string, body?: unknown): Promise<Reply> => call(srv.url, token, method, path, body, 15_000);
    for (const t of TENANTS) {
      const r = await api('PUT', `/v1/tenants/${t}`, { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: t } });
      if (r.status >= 300) throw new Error(`tenant ${t}: ${r.status} ${JSON.stringify(r.json)}`);
    }

    const known: Known[] = Array.from({ length: o.services }, () => ({ exists: false, seq: 0, replicas: 0, version: 'v1', rv: 0 }));
    /** Per service: the write whose answer was lost (the state must be before or after it). */
    const pending = new Map<number, { before: Known; after: Known; what: string }>();
    const lostWrites: string[] = [];
    const versionRegressions: string[] = [];
    const unexpected: string[] = [];
    const kills: string[] = [];
    const latencies: number[] = [];
    let sent = 0;
    let acked = 0;
    let unknown = 0;
    let seq = 0;
    const total = o.rounds * o.opsPerRound;
    let gate: Promise<void> | undefined;
    const busy = new Set<number>();

    /** Reads a service until the API answers (it may be restarting). */
    const read = async (i: number): Promise<Known> => {
      for (let attempt = 0; ; attempt++) {
        try {
          const k = observed(await api('GET', `/v1/tenants/${tenantOf(i)}/services/s${i}`));
          if (k) return k;
        } catch {
          // restarting
        }
        if (attempt > 600) throw new Error(`service s${i} cannot be read`);
        await sleep(100);
      }
    };

    /** Checks a read against what was acknowledged (and the lost answer, if any); the read becomes the truth. */
    const reconcile = (i: number, got: Known, when: string): void => {
      const p = pending.get(i);
      const want = known[i] as Known; // i < services
      if (p) {
        if (!same(got, p.before) && !same(got, p.after)) lostWrites.push(`s${i} ${when}: ${show(got)}, neither ${show(p.before)} (before) nor ${show(p.after)} (the ${p.what} whose answer was lost)`);
        pending.delete(i);
      } else if (!same(got, want)) lostWrites.push(`s${i} ${when}: ${show(got)}, but the last acknowledged write was ${show(want)}`);
      if (got.exists && want.exists && got.rv < want.rv) versionRegressions.push(`s${i} ${when}: version ${got.rv} after ${want.rv} was acknowledged`);
      known[i] = got.exists ? { ...got, rv: Math.max(got.rv, want.rv) } : { ...got, version: want.version };
    };

    const worker = async (w: number): Promise<void> => {
      const mine = Array.from({ length: o.services }, (_, i) => i).filter((i) => i % o.workers === w);
      const r = new Random(o.seed * 100 + w);
      const interval = (1000 * o.workers) / o.rate;
      while (sent < total) {
        if (gate) await gate;
        if (sent >= total) break;
        sent++;
        const t0 = performance.now();
        const i = r.pick(mine);
        const cur = known[i] as Known; // i < services
        const roll = r.float();
        let next: Known;
        let method = 'PUT';
        let what: string;
        if (cur.exists && roll < 0.08) {
          next = { ...cur, exists: false };
          method = 'DELETE';
          what = 'delete';
        } else if (cur.exists && roll < 0.35) {
          next = { ...cur, seq: ++seq, replicas: (cur.replicas + 1 + r.int(3)) % 4 };
          what = `scale to ${next.replicas}`;
        } else if (cur.exists && roll < 0.42) {
          next = { ...cur, seq: ++seq, version: cur.version === 'v1' ? 'v2' : 'v1' };
          what = `update to ${next.version}`;
        } else {
          next = { exists: true, seq: ++seq, replicas: cur.exists ? cur.replicas : 1 + r.int(2), version: cur.version || 'v1', rv: cur.rv };
          what = cur.exists ? 'apply' : `create with ${next.replicas} replicas`;
        }
        busy.add(w);
        const path = `/v1/tenants/${tenantOf(i)}/services/s${i}`;
        let reply: Reply | undefined;
        try {
          reply = await api(method, path, method === 'PUT' ? manifest(i, image, next) : undefined);
        } catch (e) {
          if (e instanceof Unsent) {
            sent--; // never reached a server: no effect, try again later
            busy.delete(w);
            await sleep(50);
            continue;
          }
          unknown++;
          pending.set(i, { before: cur, after: next, what });
        } finally {
          busy.delete(w);
        }
        if (reply) {
          if (reply.status >= 200 && reply.status < 300) {
            acked++;
            latencies.push(performance.now() - t0);
            const rv = method === 'PUT' ? (reply.json as Service).metadata.resourceVersion : 0;
            if (method === 'PUT' && rv <= cur.rv) versionRegressions.push(`s${i}: ${what} acknowledged with version ${rv} after ${cur.rv}`);
            known[i] = { ...next, rv: method === 'PUT' ? rv : 0 };
          } else if (reply.status === 503) {
            unknown++; // the store was unavailable: the write may or may not have landed
            pending.set(i, { before: cur, after: next, what });
          } else {
            unexpected.push(`s${i} ${what}: ${reply.status} ${JSON.stringify(reply.json).slice(0, 300)}`);
          }
        }
        // Resolve a lost answer at once when the API is reachable (it may be down: then after the restart).
        if (pending.has(i) && !gate) reconcile(i, await read(i), `after an unanswered ${what}`);
        await sleep(Math.max(0, interval - (performance.now() - t0)));
      }
    };

    const victims = (round: number): string => (o.store === 'sqlite' ? 'up' : ['server', 'server', 'agent', 'etcd'][round % 4] ?? 'server');
    const killer = async (): Promise<void> => {
      for (let round = 0; round < o.rounds; round++) {
        const at = round * o.opsPerRound + rnd.between(Math.floor(o.opsPerRound * 0.2), Math.floor(o.opsPerRound * 0.9));
        while (sent < at) await sleep(2);
        let release = (): void => undefined;
        gate = new Promise<void>((r) => (release = r));
        const victim = victims(round);
        if (victim === 'up' || victim === 'server') await srv.kill9();
        else if (victim === 'agent') await agent?.kill9();
        else await etcd?.kill('SIGKILL');
        kills.push(`round ${round + 1}: kill -9 ${victim} after ${sent} operations`);
        log(`crash(${o.store}): ${kills[kills.length - 1]}`);
        while (busy.size > 0) await sleep(5);
        await sleep(rnd.between(0, 300));
        if (victim === 'up' || victim === 'server') await srv.start();
        else if (victim === 'agent') await agent?.start();
        else await etcd?.restart();
        // Everything acknowledged before the kill must be there, versions not behind.
        for (let i = 0; i < o.services; i++) reconcile(i, await read(i), `after round ${round + 1}'s restart`);
        gate = undefined;
        release();
      }
    };

    await Promise.all([killer(), ...Array.from({ length: o.workers }, (_, w) => worker(w))]);
    for (let i = 0; i < o.services; i++) reconcile(i, await read(i), 'at the end');
    log(`crash(${o.store}): ${sent} operations, ${acked} acknowledged, ${unknown} cut by kills; ${lostWrites.length} lost, ${versionRegressions.length} version regressions; converging`);

    // Convergence: what runs is exactly what the objects ask for.
    const t0 = performance.now();
    let last: { duplicates: string[]; orphans: string[]; other: string[] } = { duplicates: [], orphans: [], other: [] };
    const deadline = Date.now() + (o.convergeTimeoutMs ?? 180_000);
    for (;;) {
      last = await convergence(api, hostDir, known);
      if (last.duplicates.length + last.orphans.length + last.other.length === 0) break;
      if (Date.now() > deadline) break;
      await sleep(500);
    }
    const convergeMs = performance.now() - t0;
    // The audit log, appended by processes killed mid-write, still verifies.
    const verified = await api('GET', '/v1/audit/verify');
    if (verified.json?.ok !== true) unexpected.push(`audit log does not verify: ${JSON.stringify(verified.json).slice(0, 500)}`);
    const runningAtEnd = (await containers(hostDir)).filter((c) => c.state.status === 'running').length;
    if (last.other.length > 0) {
      unexpected.push(...last.other.map((p) => `not converged after ${Math.round(convergeMs / 1000)} s: ${p}`));
      // What the processes said, for the diagnosis (this run is hard to repeat).
      const hosts = await api('GET', '/v1/hosts');
      log(`crash(${o.store}): not converged; hosts: ${JSON.stringify(hosts.json).slice(0, 2000)}`);
      for (const [name, p] of [['server', server], ['agent', agent]] as const) if (p) log(`crash(${o.store}): ${name}'s last warnings:\n${warnings(p.log).slice(-60).join('\n')}`);
    }
    const sorted = [...latencies].sort((a, b) => a - b);
    log(`crash(${o.store}): converged in ${(convergeMs / 1000).toFixed(1)} s (${runningAtEnd} containers running): ${last.duplicates.length} duplicates, ${last.orphans.length} orphans, ${last.other.length} other problems; audit log ${verified.json?.ok === true ? 'verifies' : 'does NOT verify'}`);
    return {
      store: o.store,
      rounds: o.rounds,
      ops: sent,
      acked,
      unknown,
      lostWrites,
      versionRegressions,
      duplicates: last.duplicates,
      orphans: last.orphans,
      unexpected,
      kills,
      convergeMs,
      writeP50Ms: percentile(sorted, 50),
      writeP99Ms: percentile(sorted, 99),
    };
  } finally {
    await agent?.stop();
    await server?.stop();
    await destroyAll(hostDir, { prefix });
    await etcd?.stop();
    await registry?.stop();
    await tmp.cleanup();
  }
}

/** The warning and error lines of a process's JSON log, shortened, repeats folded. */
function warnings(log: string): string[] {
  const out: string[] = [];
  let previous = '';
  for (const line of log.split('\n')) {
    let j: { level?: number; time?: number; msg?: string; loop?: string; key?: string; err?: { message?: string } };
    try {
      j = JSON.parse(line) as typeof j;
    } catch {
      if (line.trim() !== '') out.push(line.slice(0, 300));
      continue;
    }
    if ((j.level ?? 0) < 40) continue;
    const text = `${j.loop ?? ''} ${j.key ?? ''} ${j.msg ?? ''} ${(j.err?.message ?? '').slice(0, 160)}`;
    if (text !== previous) out.push(`${new Date(j.time ?? 0).toISOString().slice(11, 23)} ${text}`);
    previous = text;
  }
  return out;
}

/** What is wrong now (all empty once converged). */
async function convergence(api: (method: string, path: string) => Promise<Reply>, hostDir: string, known: Known[]): Promise<{ duplicates: string[]; orphans: string[]; other: string[] }> {
  const duplicates: string[] = [];
  const orphans: string[] = [];
  const other: string[] = [];
  let services: Service[];
  let instances: Instance[];
  try {
    services = ((await api('GET', '/v1/services')).json as { items: Service[] }).items;
    instances = ((await api('GET', '/v1/instances')).json as { items: Instance[] }).items;
  } catch (e) {
    return { duplicates, orphans, other: [`the API did not answer: ${String(e)}`] };
  }
  // Objects: each service has exactly its replicas, each once, all running; no instance without its owner.
  known.forEach((k, i) => {
    const svc = services.find((s) => s.metadata.name === `s${i}`);
    if (k.exists !== (svc !== undefined)) other.push(`s${i} should ${k.exists ? '' : 'not '}exist`);
  });
  for (const svc of services) {
    const mine = instances.filter((x) => x.metadata.tenant === svc.metadata.tenant && x.spec.owner.name === svc.metadata.name);
    const byIndex = new Map<number, number>();
    for (const x of mine) byIndex.set(x.spec.index, (byIndex.get(x.spec.index) ?? 0) + 1);
    for (const [index, n] of byIndex) if (n > 1) duplicates.push(`${svc.metadata.name}: ${n} instances for replica ${index}`);
    // Replica names are the service's with an ordinal; a rolling update's replacement takes the
    // lowest free one, so they may skip numbers (duplicates of an ordinal are caught above).
    const have = mine.map((x) => x.metadata.name).sort();
    const named = have.every((n) => n.startsWith(`${svc.metadata.name}-`) && /^\d+$/.test(n.slice(svc.metadata.name.length + 1)));
    if (have.length !== svc.spec.replicas || !named) other.push(`${svc.metadata.tenant}/${svc.metadata.name}: instances ${have.join(',') || 'none'}, want ${svc.spec.replicas} named ${svc.metadata.name}-N`);
    for (const x of mine) {
      if (x.spec.owner.uid !== svc.metadata.uid) other.push(`${x.metadata.name} belongs to an earlier ${svc.metadata.name} (uid ${x.spec.owner.uid})`);
      else if (x.status.phase !== 'Running' || x.spec.ownerGeneration !== svc.metadata.generation)
        other.push(`${x.metadata.name}: ${x.status.phase} on ${x.spec.host || 'no host'} (${x.status.reason ?? ''}: ${x.status.message ?? ''}), generation ${x.spec.ownerGeneration} of ${svc.metadata.generation}`);
    }
  }
  for (const x of instances) {
    if (!services.some((s) => s.metadata.tenant === x.metadata.tenant && s.metadata.name === x.spec.owner.name && s.metadata.uid === x.spec.owner.uid)) orphans.push(`instance ${x.metadata.tenant}/${x.metadata.name} has no owner (${x.spec.owner.name} uid ${x.spec.owner.uid})`);
  }
  // What runs on the host: each running instance in exactly one container, nothing else.
  const running = (await containers(hostDir)).filter((c) => c.state.status === 'running');
  const byUid = new Map<string, string[]>();
  for (const c of running) byUid.set(c.labels[LABELS.uid] ?? '?', [...(byUid.get(c.labels[LABELS.uid] ?? '?') ?? []), c.id]);
  for (const [uid, ids] of byUid) {
    const x = instances.find((i) => i.metadata.uid === uid);
    if (!x) orphans.push(`container ${ids.join(', ')} runs for instance uid ${uid}, which no object explains`);
    else if (ids.length > 1) duplicates.push(`instance ${x.metadata.name} runs in ${ids.length} containers: ${ids.join(', ')}`);
  }
  for (const x of instances) if (x.status.phase === 'Running' && !byUid.has(x.metadata.uid)) other.push(`${x.metadata.name} is Running but no container runs it`);
  // Networks: one per running container.
  const netFile = join(hostDir, 'network', 'network.json');
  if (existsSync(netFile)) {
    const recorded = Object.keys((JSON.parse(await readFile(netFile, 'utf8')) as { containers?: Record<string, unknown> }).containers ?? {});
    const live = new Set(running.map((c) => c.id));
    for (const id of recorded) if (!live.has(id)) orphans.push(`network of container ${id}, which does not run`);
  }
  // No VM was asked for, so none may exist.
  const vms = join(hostDir, 'vms', 'vms');
  if (existsSync(vms)) for (const v of await readdir(vms)) orphans.push(`VM ${v}, which no cell or machine asked for`);
  return { duplicates, orphans, other };
}
