/**
 * `npm run bench -- rollout [STARTS] [EXECS]`: day-two operations against their raw baselines,
 * in one run on one all-in-one Carapace.
 *
 * - Rollout: a 10-replica host-tier service (busybox httpd, readiness probe on its port) rolled
 *   to a new template with maxSurge 1 / maxUnavailable 0: the time from the API call to the
 *   service reporting every replica updated and ready (RolloutComplete, what `carapace rollout
 *   status --watch` waits for; the last old replicas may still be draining), against 10 × the median time from
 *   creating a one-replica service of the same template to its replica ready (STARTS of them,
 *   measured in the same run). A client on the host requests the service address in a loop
 *   during the rollout (a new connection each time); `failed_requests` is what failed.
 * - Exec: the round trip of `exec -- true` through the API (WebSocket, handshake to exit status,
 *   as the CLI does it without Node's start) against raw `runc exec CONTAINER true` on the same
 *   container (host); in a cell, against the guest's own `runc exec` of the same command, as the
 *   guest timed it (the status frame's `guestMs`: the VM's clock, no channel or API in it).
 *
 * Prints one line per measure to stderr and the JSON line to stdout.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { WebSocket } from 'ws';
import { startAllInOne } from '../src/allinone/allinone.js';
import { CHANNEL, decodeFrame, execQuery, parseStatus, type ExecStatus } from '../src/exec/frames.js';
import { buildBusyboxImage, freePort, startRegistry } from '../src/image/testing/index.js';
import type { Instance, Service } from '../src/model/objects.js';
import { until } from '../src/proc/until.js';

const STARTS = Number(process.argv[2] ?? 9);
const EXECS = Number(process.argv[3] ?? 20);
const REPLICAS = 10;

const log = (s: string): boolean => process.stderr.write(`${s}\n`);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2; // safe: indices inside a non-empty array
}

/** Spawns and waits; resolves with the exit code. */
function spawnWait(cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: 'ignore' });
    p.on('error', reject);
    p.on('close', (code) => resolve(code ?? -1));
  });
}

/** One exec session over the API's WebSocket: resolves with its status once the server closes it. */
function execOnce(url: string, token: string, path: string, command: string[]): Promise<ExecStatus & { guestMs?: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}${path}/exec?${execQuery({ command, tty: false, stdin: false })}`, { headers: { authorization: `Bearer ${token}` } });
    let status: (ExecStatus & { guestMs?: number }) | undefined;
    ws.on('message', (data, isBinary) => {
      const f = isBinary ? decodeFrame(data as Buffer) : undefined; // ws's default binary type is Buffer
      if (f?.channel === CHANNEL.status) status = parseStatus(f.payload) as ExecStatus & { guestMs?: number };
    });
    ws.once('unexpected-response', (_req, res) => reject(new Error(`exec refused: HTTP ${res.statusCode ?? '?'}`)));
    ws.once('error', reject);
    ws.once('close', () => (status ? resolve(status) : reject(new Error('exec ended without a status'))));
  });
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-bench-rollout-'));
  // The all-in-one saves its admin token for the CLI: into this run's directory, not the user's config.
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json');
  const registry = await startRegistry({ dir: join(dir, 'registry') });
  const image = await buildBusyboxImage({ registry: registry.address, repository: 'bench/busybox', tag: '1' });
  const stateDir = join(dir, 'state');
  const aio = await startAllInOne({ stateDir, port: await freePort(), logger: pino({ level: 'warn' }), warmCells: 0, accel: 'auto' });
  // Everything the run made goes, also when it is interrupted (Ctrl-C, kill): its containers,
  // cells, networks and dnsmasq would otherwise outlive it and hold the tenant's addresses.
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      await aio.stop();
      const { teardownHost } = await import('../src/agent/teardown.js');
      await teardownHost(stateDir, {});
      await registry.stop();
      await rm(dir, { recursive: true, force: true });
    })());
  const interrupted = (): void => {
    log('interrupted: removing what the run made');
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const r = await fetch(`${aio.url}${path}`, { method, headers: { authorization: `Bearer ${aio.adminToken}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : null });
    const j = (await r.json()) as T;
    if (r.status >= 400) throw new Error(`${method} ${path}: ${JSON.stringify(j)}`);
    return j;
  };
  const instances = async (): Promise<Instance[]> => (await api<{ items: Instance[] }>('GET', '/v1/tenants/bench/instances')).items;
  const web = (name: string, replicas: number, version: string, isolation: 'host' | 'cell' = 'host'): unknown => ({
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name, tenant: 'bench' },
    spec: {
      image: image.reference,
      isolation,
      replicas,
      // A server that ends on SIGTERM (busybox httpd as PID 1 would ignore it and wait out the stop grace).
      command: ['sh', '-c', 'mkdir -p /www && echo "$VERSION" > /www/index.html && httpd -f -p 8080 -h /www & trap "kill $!; exit 0" TERM; wait'],
      env: { VERSION: version },
      ports: [{ containerPort: 8080 }],
      readinessProbe: { httpGet: { path: '/', port: 8080 }, periodSeconds: 1 },
      rollout: { maxSurge: 1, maxUnavailable: 0 },
      cpu: 0.05,
      memory: '32Mi',
    },
  });
  const readyCount = async (service: string): Promise<number> => (await instances()).filter((i) => i.spec.owner.kind === 'Service' && i.spec.owner.name === service).filter((i) => i.status.phase === 'Running' && i.status.ready === true).length;
  try {
    await api('PUT', '/v1/tenants/bench', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'bench' } });
    // Warm-up: the image pull and the tenant's network are not what is measured.
    await api('PUT', '/v1/tenants/bench/services/warm', web('warm', 1, 'warm'));
    await until('the warm-up replica ready', async () => ((await readyCount('warm')) === 1 ? true : undefined), 180_000);

    // Baseline: one replica of the template, created to ready, STARTS times.
    const starts: number[] = [];
    for (let i = 0; i < STARTS; i++) {
      const name = `one${i}`;
      const t0 = performance.now();
      await api('PUT', `/v1/tenants/bench/services/${name}`, web(name, 1, 'v1'));
      await until(`${name} ready`, async () => ((await readyCount(name)) === 1 ? true : undefined), 120_000, 50);
      starts.push(performance.now() - t0);
      log(`single-replica start ${i + 1}/${STARTS}: ${starts.at(-1)?.toFixed(0)} ms`);
      await api('DELETE', `/v1/tenants/bench/services/${name}`);
    }
    await until('the single replicas gone', async () => ((await instances()).some((i) => i.metadata.name.startsWith('one')) ? undefined : true), 120_000);

    // The service, then a client on the host asking its service address in a loop (the host
    // reaches every tenant's services: network/nft-rules.ts host_services), a fresh connection
    // per request, 2 s to answer.
    await api('PUT', '/v1/tenants/bench/services/web', web('web', REPLICAS, 'v1'));
    await until(`${REPLICAS} replicas ready`, async () => ((await readyCount('web')) === REPLICAS ? true : undefined), 600_000, 200);
    const vip = (await api<Service>('GET', '/v1/tenants/bench/services/web')).status.address;
    if (!vip) throw new Error('the service has no address');
    const outcomes = { ok: 0, failed: 0, errors: new Map<string, number>() };
    let looping = true;
    const loop = (async () => {
      while (looping) {
        try {
          const r = await fetch(`http://${vip}:8080/`, { signal: AbortSignal.timeout(2_000), headers: { connection: 'close' } });
          await r.text();
          if (r.ok) outcomes.ok++;
          else throw new Error(`HTTP ${r.status}`);
        } catch (e) {
          outcomes.failed++;
          const why = String((e as Error & { cause?: { code?: string } }).cause?.code ?? (e as Error).message);
          outcomes.errors.set(why, (outcomes.errors.get(why) ?? 0) + 1);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await until('the client reaching web', async () => (outcomes.ok >= 5 ? true : undefined), 120_000);
    const before = { ...outcomes };

    const t0 = performance.now();
    const updated = await api<Service>('PUT', '/v1/tenants/bench/services/web', web('web', REPLICAS, 'v2'));
    // Complete as `carapace rollout status` says it: every replica updated and ready, no old one
    // left alive (the last old ones may still be draining: out of the endpoints, on their way out).
    const done = await until(
      'the rollout complete',
      async () => {
        const s = await api<Service>('GET', '/v1/tenants/bench/services/web');
        const complete = s.status.observedGeneration === updated.metadata.generation && s.status.updatedReplicas === REPLICAS && s.status.readyReplicas === REPLICAS && s.status.conditions?.some((c) => c.reason === 'RolloutComplete');
        return complete ? performance.now() : undefined;
      },
      900_000,
      50,
    );
    const gone = await until('the old replicas gone', async () => ((await instances()).filter((i) => i.spec.owner.name === 'web').length === REPLICAS ? performance.now() : undefined), 120_000, 50);
    log(`old replicas all gone ${(gone - t0).toFixed(0)} ms after the update`);
    const rolloutMs = done - t0;
    looping = false;
    await loop;
    const failed = outcomes.failed - before.failed;
    log(`rollout of ${REPLICAS} replicas: ${rolloutMs.toFixed(0)} ms; 10 x median start ${(10 * median(starts)).toFixed(0)} ms; requests during it: ${outcomes.ok - before.ok} ok, ${failed} failed ${JSON.stringify([...outcomes.errors])}`);

    // Exec, host tier: the API round trip against raw runc exec of the same container.
    const target = (await instances()).find((i) => i.spec.owner.name === 'web');
    const cid = target?.status.containerId ?? '';
    const runcRoot = join(stateDir, 'runtime', 'runc', 'runtime'); // the runc driver's --root (runtime/oci-driver.ts)
    const viaApi: number[] = [];
    const raw: number[] = [];
    for (let i = 0; i < EXECS; i++) {
      let t = performance.now();
      const s = await execOnce(aio.url, aio.adminToken, `/v1/tenants/bench/instances/${target?.metadata.name ?? 'web-0'}`, ['true']);
      if (!('exitCode' in s) || s.exitCode !== 0) throw new Error(`exec -- true: ${JSON.stringify(s)}`);
      viaApi.push(performance.now() - t);
      t = performance.now();
      const code = await spawnWait('runc', ['--root', runcRoot, 'exec', cid, 'true']);
      if (code !== 0) throw new Error(`raw runc exec exited ${code}`);
      raw.push(performance.now() - t);
    }
    const execHost = median(viaApi) / median(raw);
    log(`exec -- true, host: API ${median(viaApi).toFixed(1)} ms, raw runc exec ${median(raw).toFixed(1)} ms (medians of ${EXECS})`);

    // Exec, cell tier: the API round trip against the guest's own runc exec (timed in the guest).
    await api('PUT', '/v1/tenants/bench/services/incell', web('incell', 1, 'v1', 'cell'));
    await until('the cell replica ready', async () => ((await readyCount('incell')) === 1 ? true : undefined), 900_000, 500);
    const cellApi: number[] = [];
    const guest: number[] = [];
    for (let i = 0; i < EXECS; i++) {
      const t = performance.now();
      const s = await execOnce(aio.url, aio.adminToken, '/v1/tenants/bench/instances/incell-0', ['true']);
      if (!('exitCode' in s) || s.exitCode !== 0 || s.guestMs === undefined) throw new Error(`exec -- true in a cell: ${JSON.stringify(s)}`);
      cellApi.push(performance.now() - t);
      guest.push(s.guestMs);
    }
    const execCell = median(cellApi) / median(guest);
    log(`exec -- true, cell: API ${median(cellApi).toFixed(1)} ms, guest runc exec ${median(guest).toFixed(1)} ms (medians of ${EXECS})`);

    const round = (x: number): number => Math.round(x * 1000) / 1000;
    console.log(JSON.stringify({ bench: 'rollout', rollout_ratio: round(rolloutMs / (10 * median(starts))), failed_requests: failed, exec_host_ratio: round(execHost), exec_cell_ratio: round(execCell) }));
  } finally {
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
    await cleanup();
  }
}

await main();
