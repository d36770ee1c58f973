/**
 * `npm run bench -- start [RUNS]`: time from the API call that creates a one-replica `host`
 * service to its instance reported Running (seen on the API's watch stream), side by side in
 * the same run with raw `runc run -d` of an equivalent bundle (Carapace's own config.json for
 * such a container, hardened the same way: caps, seccomp, masked paths, cgroup limits).
 * Runs alternate (carapace, raw, carapace, raw…) so machine noise hits both alike.
 *
 * The API is reached both ways an all-in-one serves it: plain HTTP (listening on loopback) and
 * HTTPS (listening on every address, certificate from the cluster CA, verified by the client
 * against it). One all-in-one over one state dir is restarted between blocks of BLOCK runs,
 * plain and TLS in turn, so both see the same store, the same growing number of containers and
 * the same machine noise; after each start one unmeasured create warms the new process up.
 * RUNS runs of each mode. Prints one line per run to stderr and a final JSON line to stdout.
 */
import { spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { teardownHost } from '../src/agent/teardown.js';
import { startAllInOne, type RunningAllInOne } from '../src/allinone/allinone.js';
import { buildBusyboxImage, freePort, startRegistry } from '../src/image/testing/index.js';
import { createImageStore } from '../src/image/local-store.js';
import type { Instance } from '../src/model/objects.js';
import { apiFetch, trustStateDir } from '../test/api-fetch.js';

const RUNS = Number(process.argv[2] ?? 30);
const BLOCK = 5;
type Mode = 'plain' | 'tls';

function run(cmd: string, args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: 'ignore' });
    const stderr = '';
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, stderr }));
  });
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

/** Follows the instances watch stream and resolves waiters when an instance turns Running. */
class RunningWatcher {
  private readonly waiters = new Map<string, (t: number) => void>();
  private readonly ac = new AbortController();

  async start(url: string, token: string): Promise<void> {
    const res = await apiFetch(`${url}/v1/watch/instances?tenant=bench`, { signal: this.ac.signal, headers: { authorization: `Bearer ${token}` } });
    const reader = res.body!.getReader(); // a streaming response always has a body
    const dec = new TextDecoder();
    let buf = '';
    void (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          const t = performance.now();
          buf += dec.decode(value, { stream: true });
          let i: number;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const ev = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const data = ev.split('\n').find((l) => l.startsWith('data: '));
            if (!data) continue;
            const inst = JSON.parse(data.slice(6)) as Instance;
            if (inst.status?.phase === 'Running') {
              this.waiters.get(inst.metadata.name)?.(t);
              this.waiters.delete(inst.metadata.name);
            }
          }
        }
      } catch {
        // aborted at the end
      }
    })();
  }

  running(name: string): Promise<number> {
    return new Promise((resolve) => this.waiters.set(name, resolve));
  }

  stop(): void {
    this.ac.abort();
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-bench-start-'));
  // The first admin token's CLI config goes here, not over the user's.
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json');
  const log = (s: string): boolean => process.stderr.write(`${s}\n`);
  const registry = await startRegistry({ dir: join(dir, 'registry') });
  const image = await buildBusyboxImage({ registry: registry.address, repository: 'bench/busybox', tag: '1' });
  const stateDir = join(dir, 'state');
  const ports: Record<Mode, number> = { plain: await freePort(), tls: await freePort() };
  let aio: RunningAllInOne | undefined;
  let watcher = new RunningWatcher();
  let warmups = 0;
  const api = async (method: string, path: string, body?: unknown): Promise<unknown> => {
    if (!aio) throw new Error('no all-in-one running');
    const r = await apiFetch(`${aio.url}${path}`, { method, headers: { authorization: `Bearer ${aio.adminToken}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : null });
    const j = (await r.json()) as unknown;
    if (r.status >= 400) throw new Error(`${method} ${path}: ${JSON.stringify(j)}`);
    return j;
  };
  const svc = (name: string): unknown => ({
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name, tenant: 'bench' },
    // `sleep` as PID 1 ignores SIGTERM: a short grace lets the cleanup stop ~70 of them quickly.
    spec: { image: image.reference, isolation: 'host', command: ['sleep', '3600'], cpu: 0.05, memory: '32Mi', stopGracePeriodSeconds: 1 },
  });
  const created: string[] = [];
  const createAndWait = async (name: string): Promise<number> => {
    const seen = watcher.running(`${name}-0`);
    const t0 = performance.now();
    created.push(name);
    await api('PUT', `/v1/tenants/bench/services/${name}`, svc(name));
    return (await seen) - t0;
  };
  /** (Re)starts the all-in-one over the one state dir, serving `mode`, and warms it up. */
  const startIn = async (mode: Mode): Promise<void> => {
    watcher.stop();
    await aio?.stop();
    const t0 = performance.now();
    aio = await startAllInOne({ stateDir, port: ports[mode], listen: mode === 'plain' ? '127.0.0.1' : '0.0.0.0', logger: pino({ level: 'warn' }) });
    const scheme = new URL(aio.url).protocol;
    if (scheme !== (mode === 'plain' ? 'http:' : 'https:')) throw new Error(`a ${mode} all-in-one serves ${scheme}`);
    // The client verifies the server against the CA the all-in-one wrote, as the CLI does.
    if (mode === 'tls' && !(await trustStateDir(aio.url, stateDir))) throw new Error('the TLS all-in-one wrote no api-ca.crt');
    // An apply: the first start makes the tenant, later ones change nothing.
    await api('PUT', '/v1/tenants/bench', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'bench' } });
    watcher = new RunningWatcher();
    await watcher.start(aio.url, aio.adminToken);
    const warm = await createAndWait(`warm${warmups++}`);
    log(`${mode} all-in-one up in ${(performance.now() - t0).toFixed(0)} ms; warm-up create ${warm.toFixed(1)} ms`);
  };
  const rawIds: string[] = [];
  const runcRoot = join(dir, 'raw-runc-root');
  try {
    await startIn('plain');
    // The first warm-up also pulled the image into the cache (the benchmark is about start).

    // The equivalent raw bundle: Carapace's own config for the warm-up container, with the
    // image rootfs (read-only) instead of the per-container overlay and no network namespace
    // path (runc makes a fresh one).
    const insts = (await api('GET', '/v1/tenants/bench/instances')) as { items: Instance[] };
    const warm = insts.items.find((i) => i.metadata.name === 'warm0-0');
    const cid = warm?.status.containerId ?? '';
    const bundleDir = join(stateDir, 'runtime', 'runc', 'containers', cid);
    const config = JSON.parse(await readFile(join(bundleDir, 'config.json'), 'utf8')) as {
      root: { path: string; readonly?: boolean };
      linux: { namespaces: { type: string; path?: string }[]; cgroupsPath?: string };
      mounts: { destination: string; source: string }[];
    };
    // The same unpacked image the container runs (cached: no network).
    const rootfs = (await createImageStore({ cacheDir: join(stateDir, 'images'), logger: pino({ level: 'silent' }) }).ensure(image.reference)).rootfs;
    const rawBundle = join(dir, 'raw-bundle');
    await mkdir(rawBundle, { recursive: true });
    for (const f of ['hosts', 'hostname', 'resolv.conf']) await cp(join(bundleDir, f), join(rawBundle, f)).catch(() => undefined);
    config.root = { path: rootfs, readonly: true };
    config.linux.namespaces = config.linux.namespaces.map((n) => (n.type === 'network' ? { type: 'network' } : n));
    for (const m of config.mounts) if (m.source.startsWith(bundleDir)) m.source = m.source.replace(bundleDir, rawBundle);
    const rawRun = async (i: number): Promise<number> => {
      const id = `raw-bench-${i}`;
      const c = { ...config, linux: { ...config.linux, cgroupsPath: `/carapace-bench/${id}` } };
      await writeFile(join(rawBundle, 'config.json'), JSON.stringify(c));
      const t0 = performance.now();
      // runc's own errors go to its --log file: the detached container inherits our stdio,
      // so a pipe would never close.
      const r = await run('runc', ['--root', runcRoot, '--log', join(dir, 'raw-runc.log'), 'run', '-d', '--bundle', rawBundle, id]);
      const ms = performance.now() - t0;
      if (r.code !== 0) throw new Error(`raw runc run failed: ${await readFile(join(dir, 'raw-runc.log'), 'utf8').catch(() => '')}`);
      rawIds.push(id);
      return ms;
    };

    const carapace: Record<Mode, number[]> = { plain: [], tls: [] };
    const raw: number[] = [];
    let i = 0;
    for (let block = 0; carapace.plain.length < RUNS || carapace.tls.length < RUNS; block++) {
      const mode: Mode = block % 2 === 0 ? 'plain' : 'tls';
      if (block > 0) await startIn(mode);
      for (let k = 0; k < BLOCK && carapace[mode].length < RUNS; k++, i++) {
        const a = await createAndWait(`s${i}`);
        const b = await rawRun(i);
        carapace[mode].push(a);
        raw.push(b);
        log(`run ${i + 1}/${2 * RUNS} (${mode}): carapace ${a.toFixed(1)} ms, raw runc ${b.toFixed(1)} ms`);
      }
    }
    const ratio = (xs: number[]): number => pct(xs, 50) / pct(raw, 50);
    const result = {
      bench: 'start',
      runs: RUNS,
      carapace_p50_ms: Number(pct(carapace.plain, 50).toFixed(1)),
      carapace_p90_ms: Number(pct(carapace.plain, 90).toFixed(1)),
      carapace_tls_p50_ms: Number(pct(carapace.tls, 50).toFixed(1)),
      carapace_tls_p90_ms: Number(pct(carapace.tls, 90).toFixed(1)),
      runc_p50_ms: Number(pct(raw, 50).toFixed(1)),
      runc_p90_ms: Number(pct(raw, 90).toFixed(1)),
      ratio_p50: Number(ratio(carapace.plain).toFixed(2)),
      ratio_p50_tls: Number(ratio(carapace.tls).toFixed(2)),
      tls_ratio_delta: Number((ratio(carapace.tls) - ratio(carapace.plain)).toFixed(3)),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    watcher.stop();
    log('cleaning up');
    for (const id of rawIds) await run('runc', ['--root', runcRoot, 'delete', '--force', id]);
    for (const n of created) await api('DELETE', `/v1/tenants/bench/services/${n}`).catch(() => undefined);
    for (let k = 0; k < 3000 && aio; k++) {
      const left = (await api('GET', '/v1/tenants/bench/instances').catch(() => ({ items: [] }))) as { items: unknown[] };
      if (left.items.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await aio?.stop();
    // The tenant network's bridge and dnsmasq too (a dnsmasq left behind blocks the next all-in-one).
    await teardownHost(stateDir);
    await registry.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
