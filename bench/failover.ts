/**
 * `npm run bench -- failover [N]`: how fast Carapace notices a death and runs the work again.
 *  (a) cell, warm: kill -9 the QEMU of a cell holding N instances while a warm cell is Ready;
 *      detection = the agent's recorded loss time minus the kill; recovery = until all N run
 *      again (in the warm cell);
 *  (b) cell, cold: the same with no Ready warm cell (a new cell boots);
 *  (c) host: a real etcd, `carapace server` and two `carapace agent` processes; kill -9 one
 *      agent and its containers (the host dies); detection = until the host is NotReady,
 *      recovery = until its instance runs on the other host.
 * Final JSON line: {"bench":"failover","cell_detect_ms","cell_recover_warm_ms",
 * "cell_recover_cold_ms","host_detect_ms","host_recover_ms","accel"}.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { startAllInOne } from '../src/allinone/allinone.js';
import { buildBusyboxImage, freePort, startRegistry } from '../src/image/testing/index.js';
import type { Cell, Host, Instance } from '../src/model/objects.js';
import { createRuncDriver } from '../src/runtime/index.js';
import { startTlsEtcd } from '../src/pki/testing/etcd-pki.js';
import { apiFetch, trustStateDir } from '../test/api-fetch.js';
import { teardownHost } from '../src/agent/teardown.js';

const N = Number(process.argv[2] ?? 3);
const log = (s: string): boolean => process.stderr.write(`${s}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

type Api = <T>(method: string, path: string, body?: unknown) => Promise<T>;

function apiFor(url: string, token: string): Api {
  return async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const r = await apiFetch(`${url}${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : null });
    const text = await r.text();
    if (r.status >= 400) throw new Error(`${method} ${path}: ${text}`);
    return ((r.headers.get('content-type') ?? '').startsWith('application/json') ? JSON.parse(text) : text) as T;
  };
}

async function poll<T>(fn: () => Promise<T | undefined | false>, what: string, timeoutMs = 300_000, everyMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(everyMs);
  }
}

const service = (image: string, tenant: string, name: string, isolation: string, replicas: number): unknown => ({
  apiVersion: 'carapace/v1',
  kind: 'Service',
  metadata: { name, tenant },
  spec: { image, isolation, replicas, command: ['sleep', '3600'], cpu: 0.05, memory: '16Mi' },
});

/** Kills the QEMU of the cell holding `tenant/name`'s instances and times detection and recovery. */
async function killCell(api: Api, tenant: string, owner: string, n: number): Promise<{ detectMs: number; recoverMs: number }> {
  const insts = (await api<{ items: Instance[] }>('GET', `/v1/tenants/${tenant}/instances`)).items.filter((i) => i.spec.owner.name === owner);
  const cellName = insts[0]?.spec.cell ?? '';
  const cell = await api<Cell>('GET', `/v1/cells/${cellName}`);
  const killedAt = Date.now();
  process.kill(cell.status.pid ?? -1, 'SIGKILL');
  await poll(async () => {
    const now = (await api<{ items: Instance[] }>('GET', `/v1/tenants/${tenant}/instances`)).items.filter((i) => i.spec.owner.name === owner);
    return now.length === n && now.every((i) => i.status.phase === 'Running' && i.spec.cell !== cellName);
  }, 'instances running again');
  const recoverMs = Date.now() - killedAt;
  // The agent stamps when it noticed; the controller's audit record keeps it after the cell is gone.
  const audit = await api<string>('GET', `/v1/audit/records?tenant=${tenant}`);
  const lost = audit
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { action: string; target: { name: string }; detail?: { lostAt?: string } })
    .find((r) => r.action === 'cell.lost' && r.target.name === cellName);
  const detectMs = Date.parse(lost?.detail?.lostAt ?? '') - killedAt;
  return { detectMs, recoverMs };
}

async function cellPart(dir: string, image: string): Promise<{ detect: number; warm: number; cold: number; accel: string }> {
  const aio = await startAllInOne({ stateDir: join(dir, 'aio'), port: await freePort(), logger: pino({ level: 'warn' }), warmCells: 1, accel: 'auto' });
  const api = apiFor(aio.url, aio.adminToken);
  try {
    const accel = await aio.vms.accel();
    await api('PUT', '/v1/tenants/fo', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'fo' } });
    await api('PUT', '/v1/tenants/sink', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'sink' } });
    const readyWarm = async (): Promise<boolean> => (await api<{ items: Cell[] }>('GET', '/v1/cells')).items.some((c) => c.spec.tenant === '' && c.status.phase === 'Ready');
    await poll(readyWarm, 'a warm cell', 300_000, 200);
    await api('PUT', '/v1/tenants/fo/services/s', service(image, 'fo', 's', 'cell', N));
    await poll(async () => {
      const l = (await api<{ items: Instance[] }>('GET', '/v1/tenants/fo/instances')).items;
      return l.length === N && l.every((i) => i.status.phase === 'Running');
    }, 'service running', 300_000, 200);
    log('cell: service running; waiting for a Ready warm cell');
    await poll(readyWarm, 'the warm pool refilled', 300_000, 200);
    const warm = await killCell(api, 'fo', 's', N);
    log(`cell, warm: detected in ${warm.detectMs} ms, all ${N} running again after ${warm.recoverMs} ms`);
    // Cold: use up the refilled warm cell first, so the next loss needs a new cell.
    await poll(readyWarm, 'the warm pool refilled again', 300_000, 200);
    await api('PUT', '/v1/tenants/sink/services/s', service(image, 'sink', 's', 'cell', 1));
    await poll(async () => !(await readyWarm()), 'warm cell taken', 60_000, 50);
    const cold = await killCell(api, 'fo', 's', N);
    log(`cell, cold: detected in ${cold.detectMs} ms, all ${N} running again after ${cold.recoverMs} ms`);
    return { detect: Math.max(warm.detectMs, cold.detectMs), warm: warm.recoverMs, cold: cold.recoverMs, accel };
  } finally {
    for (const t of ['fo', 'sink']) await api('DELETE', `/v1/tenants/${t}/services/s`).catch(() => undefined);
    await aio.stop();
    // Containers, cells, and the tenant networks' bridges and dnsmasq: a dnsmasq left behind
    // holds the first tenant block's gateway address and no later all-in-one can serve it.
    await teardownHost(join(dir, 'aio'));
  }
}

function start(args: string[]): { proc: ChildProcess; log: () => string } {
  let out = '';
  // The server's first start saves the admin token for the CLI: into a file of the bench's own,
  // not the user's ~/.config/carapace/config.json (which would then point at a dead bench server).
  const config = join(tmpdir(), `carapace-bench-failover-${process.pid}-cli.json`);
  const proc = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, CARAPACE_LOG_LEVEL: 'warn', CARAPACE_CONFIG: config }, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  return { proc, log: () => out };
}

async function hostPart(dir: string, image: string): Promise<{ detect: number; recover: number }> {
  const etcd = await startTlsEtcd(); // TLS with client certificates, as on a network
  const store = etcd.storeArgs;
  const port = await freePort();
  const server = start(['server', ...store, '--state-dir', join(dir, 'server'), '--port', String(port), '--agent-port', '0']);
  /** Each agent's prefix for its kernel network objects (two agents on one machine must not share one). */
  const hosts = { b1: 'fob1', b2: 'fob2' } as const;
  const agents = new Map<string, ChildProcess>();
  const url = `https://127.0.0.1:${port}`; // `carapace server`'s API is HTTPS
  try {
    await poll(async () => (await trustStateDir(url, join(dir, 'server'))) && (await apiFetch(`${url}/healthz`)).ok, 'server up', 30_000, 100);
    const api = apiFor(url, (await readFile(join(dir, 'server', 'admin-token'), 'utf8')).trim());
    for (const [h, prefix] of Object.entries(hosts)) {
      // Agents on the store are given the servers' keyring (issue 18), as an operator would.
      agents.set(h, start(['agent', ...store, '--keyring', join(dir, 'server', 'keyring'), '--state-dir', join(dir, h), '--host-name', h, '--net-prefix', prefix]).proc);
    }
    await poll(async () => (await api<{ items: Host[] }>('GET', '/v1/hosts')).items.filter((x) => x.status.state === 'Ready').length === 2, 'two hosts', 60_000, 100);
    await api('PUT', '/v1/tenants/ho', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'ho' } });
    await api('PUT', '/v1/tenants/ho/services/s', service(image, 'ho', 's', 'host', 2));
    const placed = await poll(async () => {
      const l = (await api<{ items: Instance[] }>('GET', '/v1/tenants/ho/instances')).items;
      return l.length === 2 && l.every((i) => i.status.phase === 'Running') ? l : undefined;
    }, 'service running', 120_000, 100);
    const victim = placed.find((i) => i.spec.host === 'b1') ?? placed[0]!; // two instances exist
    const dead = victim.spec.host;
    // The host dies: its agent and every container on it.
    const runc = createRuncDriver({ stateDir: join(dir, dead, 'runtime', 'runc'), logger: pino({ level: 'silent' }) });
    const doomed = await runc.recover();
    const killedAt = Date.now();
    agents.get(dead)?.kill('SIGKILL');
    for (const c of doomed) if (c.state.status === 'running') process.kill(c.state.pid, 'SIGKILL');
    await poll(async () => (await api<Host>('GET', `/v1/hosts/${dead}`)).status.state === 'NotReady', 'host NotReady', 60_000, 20);
    const detect = Date.now() - killedAt;
    await poll(async () => {
      const i = await api<Instance>('GET', `/v1/tenants/ho/instances/${victim.metadata.name}`);
      return i.metadata.uid !== victim.metadata.uid && i.status.phase === 'Running';
    }, 'replacement running', 120_000, 20);
    const recover = Date.now() - killedAt;
    log(`host: detected in ${detect} ms, its instance running elsewhere after ${recover} ms`);
    return { detect, recover };
  } finally {
    for (const a of agents.values()) a.kill('SIGTERM');
    server.proc.kill('SIGTERM');
    await sleep(1000);
    for (const [h, prefix] of Object.entries(hosts)) await teardownHost(join(dir, h), { prefix }).catch((e: unknown) => log(`cleanup of ${h} failed: ${String(e)}`));
    await etcd.stop();
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-bench-failover-'));
  // The all-in-one saves its admin token for the CLI: into this run's directory, not the user's config.
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json');
  const registry = await startRegistry({ dir: join(dir, 'registry') });
  try {
    const image = (await buildBusyboxImage({ registry: registry.address, repository: 'bench/busybox', tag: '1' })).reference;
    const host = await hostPart(dir, image);
    const cell = await cellPart(dir, image);
    const result = {
      bench: 'failover',
      instances: N,
      cell_detect_ms: cell.detect,
      cell_recover_warm_ms: cell.warm,
      cell_recover_cold_ms: cell.cold,
      host_detect_ms: host.detect,
      host_recover_ms: host.recover,
      accel: cell.accel,
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    await registry.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
