/**
 * `npm run bench -- ha [ROUNDS] [SECONDS]`: several control-plane servers over one etcd.
 * A real etcd and two `carapace server` processes (own state directories), no agents.
 *
 *  (a) write latency: `PUT` applies of 50 services (host isolation, each write a new env
 *      value, so the controller updates the instances too) at a fixed 50 writes/s for SECONDS
 *      (default 30), alternating between the two servers, open loop (the k-th write is sent at
 *      start + k x 20 ms whatever happened before, so a slow answer cannot hide later ones).
 *      Latency = request sent to response received; p50/p99/max over acknowledged writes.
 *  (b) failover, ROUNDS times (default 5): kill -9 the leader; at once apply a new service
 *      through the other server (its API never stopped) and poll that server every 10 ms for
 *      the service's instance. **leader_failover_ms** = SIGKILL to that instance existing:
 *      a new leader is elected (the dead one's lease expired: TTL 2 s after its last renewal,
 *      plus etcd's lease check every 500 ms) and its controller has started and acted on a
 *      write made after the kill. Also `leader_elected_ms`: SIGKILL to the survivor's
 *      `/healthz` saying `leader: true`. The killed server is restarted (a follower) before
 *      the next round, so leadership alternates.
 *
 * Final JSON line: {"bench":"ha","leader_failover_ms","leader_failover_max_ms",
 * "leader_elected_ms","write_p50_ms","write_p99_ms","write_max_ms","writes","write_errors",
 * "writes_per_s","rounds","load_1m"}. Targets (issue 7): failover within 5 s, write p99 within 100 ms.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../src/image/testing/index.js';
import { startTlsEtcd } from '../src/pki/testing/etcd-pki.js';
import { newKeyLine } from '../src/keyring/keyring.js';
import { apiFetch, trustStateDir } from '../test/api-fetch.js';

/** The one keyring all servers of the run share (the CA key in etcd is sealed with it). */
const KEYRING = newKeyLine();

const ROUNDS = Number(process.argv[2] ?? 5);
const SECONDS = Number(process.argv[3] ?? 30);
const RATE = 50;
const SERVICES = 50;
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const log = (s: string): boolean => process.stderr.write(`${s}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One `carapace server` child process, restartable on the same state dir and port. */
class ServerProc {
  proc: ChildProcess | undefined;
  constructor(
    readonly stateDir: string,
    readonly port: number,
    readonly storeArgs: string[],
  ) {}

  get url(): string {
    return `https://127.0.0.1:${this.port}`; // the API is HTTPS, verified against STATE_DIR/api-ca.crt
  }

  async start(): Promise<void> {
    this.proc = spawn(process.execPath, [CLI, 'server', ...this.storeArgs, '--state-dir', this.stateDir, '--port', String(this.port), '--agent-port', '0'], {
      env: { ...process.env, CARAPACE_LOG_LEVEL: 'warn', CARAPACE_CONFIG: join(this.stateDir, 'cli-config.json'), CARAPACE_KEYRING: KEYRING },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    for (let i = 0; i < 300 && !(await this.health()); i++) await sleep(100);
    if (!(await this.health())) throw new Error(`server ${this.url} did not come up`);
  }

  async health(): Promise<{ ok: boolean; leader: boolean } | undefined> {
    try {
      if (!(await trustStateDir(this.url, this.stateDir))) return undefined; // written before the API listens
      return (await (await apiFetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(1_000) })).json()) as { ok: boolean; leader: boolean };
    } catch {
      return undefined;
    }
  }

  async kill(signal: NodeJS.Signals): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await gone;
  }
}

function api(token: string) {
  return async (url: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> => {
    const r = await apiFetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : null,
      signal: AbortSignal.timeout(30_000),
    });
    const text = await r.text();
    return { status: r.status, json: text.startsWith('{') ? JSON.parse(text) : text };
  };
}

const service = (name: string, seq: number): unknown => ({
  apiVersion: 'carapace/v1',
  kind: 'Service',
  metadata: { name, tenant: 'bench' },
  spec: { image: '127.0.0.1:5999/bench/none:1', isolation: 'host', replicas: 1, command: ['sleep', '3600'], cpu: 0.01, memory: '8Mi', env: { SEQ: String(seq) } },
});

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-bench-ha-'));
  const etcd = await startTlsEtcd(); // TLS with client certificates, as on a network
  const servers = [new ServerProc(join(dir, 'a'), await freePort(), etcd.storeArgs), new ServerProc(join(dir, 'b'), await freePort(), etcd.storeArgs)];
  try {
    for (const s of servers) await s.start();
    const call = api((await readFile(join(servers[0]!.stateDir, 'admin-token'), 'utf8')).trim());
    const leaderOf = async (): Promise<ServerProc | undefined> => {
      const hs = await Promise.all(servers.map((s) => s.health()));
      const l = servers.filter((_, i) => hs[i]?.leader);
      return l.length === 1 ? l[0] : undefined;
    };
    for (let i = 0; i < 100 && !(await leaderOf()); i++) await sleep(100);
    await call(servers[0]!.url, 'PUT', '/v1/tenants/bench', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'bench' } });
    for (let i = 0; i < SERVICES; i++) await call(servers[i % 2]!.url, 'PUT', `/v1/tenants/bench/services/w${i}`, service(`w${i}`, 0));

    // (a) write latency at a fixed rate across both servers.
    const loadBefore = loadavg()[0]!; // loadavg() always has three entries
    log(`ha: ${RATE} writes/s for ${SECONDS} s across two servers (load average ${loadBefore.toFixed(2)} on ${availableParallelism()} cores)`);
    const total = RATE * SECONDS;
    const latencies: number[] = [];
    let errors = 0;
    const errorCodes = new Map<string, number>();
    const t0 = performance.now();
    const sent: Promise<void>[] = [];
    for (let k = 0; k < total; k++) {
      const due = t0 + (k * 1000) / RATE;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      sent.push(
        (async () => {
          const start = performance.now();
          const r = await call(servers[k % 2]!.url, 'PUT', `/v1/tenants/bench/services/w${k % SERVICES}`, service(`w${k % SERVICES}`, k + 1)).catch((e: unknown) => ({ status: 0, json: { error: { code: String(e) } } }));
          const ms = performance.now() - start;
          if (r.status >= 200 && r.status < 300) latencies.push(ms);
          else {
            errors++;
            const code = (r.json as { error?: { code?: string } }).error?.code ?? String(r.status);
            errorCodes.set(code, (errorCodes.get(code) ?? 0) + 1);
          }
        })(),
      );
    }
    await Promise.all(sent);
    const elapsed = (performance.now() - t0) / 1000;
    latencies.sort((a, b) => a - b);
    const p50 = pct(latencies, 50);
    const p99 = pct(latencies, 99);
    const max = latencies[latencies.length - 1] ?? NaN;
    log(`ha: ${latencies.length} acknowledged writes in ${elapsed.toFixed(1)} s (${(total / elapsed).toFixed(1)}/s offered): p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${max.toFixed(1)} ms; ${errors} refused ${JSON.stringify(Object.fromEntries(errorCodes))}`);

    // (b) failover rounds.
    const failovers: number[] = [];
    const elections: number[] = [];
    for (let r = 1; r <= ROUNDS; r++) {
      const leader = await leaderOf();
      if (!leader) throw new Error('no single leader before the kill');
      const other = servers.find((s) => s !== leader)!; // two servers, one leads
      await sleep(1_000); // a renewal or two into the term, as in steady state
      const killedAt = performance.now();
      await leader.kill('SIGKILL');
      let electedAt = 0;
      const watchElection = (async () => {
        while (electedAt === 0 && performance.now() - killedAt < 30_000) {
          if ((await other.health())?.leader) electedAt = performance.now();
          else await sleep(10);
        }
      })();
      const name = `probe${r}`;
      const put = await call(other.url, 'PUT', `/v1/tenants/bench/services/${name}`, service(name, 0));
      if (put.status >= 300) throw new Error(`apply after the kill answered ${put.status}: ${JSON.stringify(put.json)}`);
      for (;;) {
        const got = await call(other.url, 'GET', `/v1/tenants/bench/instances/${name}-0`);
        if (got.status === 200) break;
        if (performance.now() - killedAt > 60_000) throw new Error('no instance a minute after the kill');
        await sleep(10);
      }
      const failoverMs = performance.now() - killedAt;
      await watchElection;
      failovers.push(failoverMs);
      elections.push(electedAt - killedAt);
      log(`ha: round ${r}: leader ${leader.url} killed; ${other.url} elected after ${(electedAt - killedAt).toFixed(0)} ms, serving writes (instance of a service applied after the kill exists) after ${failoverMs.toFixed(0)} ms`);
      await leader.start(); // back as a follower
    }
    const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)] ?? NaN;
    const result = {
      bench: 'ha',
      leader_failover_ms: Math.round(med(failovers)),
      leader_failover_max_ms: Math.round(Math.max(...failovers)),
      leader_elected_ms: Math.round(med(elections)),
      write_p50_ms: Number(p50.toFixed(1)),
      write_p99_ms: Number(p99.toFixed(1)),
      write_max_ms: Number(max.toFixed(1)),
      writes: latencies.length,
      write_errors: errors,
      writes_per_s: Number((total / elapsed).toFixed(1)),
      rounds: ROUNDS,
      /** The machine's 1-minute load average when the write phase began: other work on shared cores shows in the tail. */
      load_1m: Number(loadBefore.toFixed(2)),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    for (const s of servers) await s.kill('SIGTERM');
    await etcd.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
