/**
 * `npm run bench -- cell [BOOTS] [STARTS]`: the cost of cells, side by side in one run.
 *  (a) raw: the VM layer alone boots a VM with exactly the flags, kernel, initramfs, shares
 *      and guest agent a cell uses, until the guest agent answers the handshake;
 *  (b) carapace: the API call creating a `cell` service in a new tenant until its Cell is
 *      reported Ready (scheduler, controller, agent, QEMU, guest agent);
 *  (c) warm start: a new service placed into an already-Ready cell until its instance is
 *      reported Running, beside the time the guest agent's own `runc run` took in that cell.
 * Also reports the host memory overhead of a cell: QEMU's RSS minus the guest RAM it touched.
 * Final JSON line: {"bench":"cell","raw_boot_p50_ms","cell_ready_p50_ms","boot_ratio",
 * "warm_start_p50_ms","guest_runc_p50_ms","qemu_overhead_mib","accel"}.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { GUEST_AGENT_LAUNCH } from '../src/agent/cells.js';
import { startAllInOne } from '../src/allinone/allinone.js';
import { buildBusyboxImage, freePort, startRegistry } from '../src/image/testing/index.js';
import type { Cell, Instance } from '../src/model/objects.js';
import { createVmManager } from '../src/vm/qemu.js';

const BOOTS = Number(process.argv[2] ?? 3);
const STARTS = Number(process.argv[3] ?? 10);
const log = (s: string): boolean => process.stderr.write(`${s}\n`);
const p50 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

/** Connects to a cell channel, says hello, resolves at the guest agent's ready line. */
function handshake(socket: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeoutMs;
    const attempt = (): void => {
      const s = connect(socket);
      let buf = '';
      s.setEncoding('utf8');
      s.on('connect', () => s.write(`${JSON.stringify({ type: 'hello', version: 1, cellId: 'raw' })}\n`));
      s.on('data', (d: string) => {
        buf += d;
        if (buf.includes('"type":"ready"')) {
          s.destroy();
          resolve();
        }
      });
      s.on('error', () => undefined);
      s.on('close', () => {
        if (buf.includes('"type":"ready"')) return;
        if (Date.now() > deadline) reject(new Error('no ready line from the guest agent'));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

/** QEMU's resident memory and the resident part of its guest RAM mapping, MiB. */
function qemuOverheadMiB(pid: number, guestMiB: number): number {
  const smaps = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  let rss = 0;
  let guest = 0;
  let inGuest = false;
  for (const line of smaps) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (head?.[1] && head[2]) inGuest = (parseInt(head[2], 16) - parseInt(head[1], 16)) / 1048576 >= guestMiB;
    const m = /^Rss:\s+(\d+) kB/.exec(line);
    if (m?.[1]) {
      rss += Number(m[1]);
      if (inGuest) guest += Number(m[1]);
    }
  }
  return Math.round((rss - guest) / 1024);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-bench-cell-'));
  const registry = await startRegistry({ dir: join(dir, 'registry') });
  const image = await buildBusyboxImage({ registry: registry.address, repository: 'bench/busybox', tag: '1' });
  const stateDir = join(dir, 'state');
  const aio = await startAllInOne({ stateDir, port: await freePort(), logger: pino({ level: 'warn' }), cellGraceMs: 0 });
  const accel = await aio.vms.accel();
  const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const r = await fetch(`${aio.url}${path}`, { method, headers: { authorization: `Bearer ${aio.adminToken}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : null });
    const j = (await r.json()) as T;
    if (r.status >= 400) throw new Error(`${method} ${path}: ${JSON.stringify(j)}`);
    return j;
  };
  const poll = async <T>(fn: () => Promise<T | undefined>, what: string): Promise<T> => {
    for (let i = 0; i < 3000; i++) {
      const v = await fn();
      if (v !== undefined) return v;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`timed out: ${what}`);
  };
  const svc = (name: string, tenant: string): unknown => ({
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name, tenant },
    spec: { image: image.reference, isolation: 'cell', command: ['sleep', '3600'], cpu: 0.05, memory: '16Mi' },
  });
  const raw: number[] = [];
  const ready: number[] = [];
  const warm: number[] = [];
  const guest: number[] = [];
  let overhead = NaN;
  try {
    // Pull the image once, outside any timing.
    await (await import('../src/image/local-store.js')).createImageStore({ cacheDir: join(stateDir, 'images'), logger: pino({ level: 'silent' }) }).ensure(image.reference);
    const installDir = fileURLToPath(new URL('../..', import.meta.url));
    const rawVms = createVmManager({ stateDir: join(dir, 'raw-vms'), logger: pino({ level: 'warn' }), accel });
    for (let i = 0; i < BOOTS; i++) {
      // (a) the VM layer alone, same spec as CellManager.boot.
      const t0 = performance.now();
      const vm = await rawVms.launch({
        id: `raw-${i}`,
        cpus: 2,
        memoryMiB: 2048,
        shares: [
          { tag: 'usr', path: '/usr', readonly: true, mountPoint: '/usr' },
          { tag: 'carapace', path: installDir, readonly: true, mountPoint: '/opt/carapace' },
          { tag: 'images', path: join(stateDir, 'images', 'rootfs'), readonly: true, mountPoint: '/carapace/images' },
        ],
        ...GUEST_AGENT_LAUNCH,
        ports: [],
        channel: true,
        labels: {},
      });
      await handshake(vm.channelSocket ?? '', 180_000);
      raw.push(performance.now() - t0);
      overhead = qemuOverheadMiB(vm.pid, 2048);
      await rawVms.destroy(vm.id, 100);
      // (b) Carapace: a new tenant's cell service until its Cell is Ready.
      const tenant = `bench${i}`;
      await api('PUT', `/v1/tenants/${tenant}`, { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: tenant } });
      const t1 = performance.now();
      await api('PUT', `/v1/tenants/${tenant}/services/s`, svc('s', tenant));
      await poll(async () => (await api<{ items: Cell[] }>('GET', '/v1/cells')).items.find((c) => c.spec.tenant === tenant && c.status.phase === 'Ready'), 'cell ready');
      ready.push(performance.now() - t1);
      log(`boot ${i + 1}/${BOOTS}: raw ${raw[i]?.toFixed(0)} ms, carapace cell ready ${ready[i]?.toFixed(0)} ms`);
    }
    // (c) warm starts into the last tenant's Ready cell.
    const tenant = `bench${BOOTS - 1}`;
    const cellName = (await api<{ items: Cell[] }>('GET', '/v1/cells')).items.find((c) => c.spec.tenant === tenant)?.metadata.name ?? '';
    for (let i = 0; i < STARTS; i++) {
      const t0 = performance.now();
      await api('PUT', `/v1/tenants/${tenant}/services/w${i}`, svc(`w${i}`, tenant));
      const inst = await poll(async () => {
        const i2 = await api<Instance>('GET', `/v1/tenants/${tenant}/instances/w${i}-0`).catch(() => undefined);
        return i2?.status.phase === 'Running' ? i2 : undefined;
      }, 'instance running');
      warm.push(performance.now() - t0);
      const g = aio.cells.runtimeFor(cellName)?.guestStartMs.get(inst.status.containerId ?? '');
      if (g !== undefined) guest.push(g);
      log(`warm start ${i + 1}/${STARTS}: carapace ${warm[i]?.toFixed(0)} ms, guest runc ${g?.toFixed(0) ?? '?'} ms (cell ${cellName})`);
    }
    const result = {
      bench: 'cell',
      boots: BOOTS,
      raw_boot_p50_ms: Math.round(p50(raw)),
      cell_ready_p50_ms: Math.round(p50(ready)),
      boot_ratio: Number((p50(ready) / p50(raw)).toFixed(2)),
      warm_start_p50_ms: Math.round(p50(warm)),
      guest_runc_p50_ms: Math.round(p50(guest)),
      warm_minus_runc_ms: Math.round(p50(warm) - p50(guest)),
      qemu_overhead_mib: overhead,
      accel,
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    log('cleaning up');
    for (const t of [...Array(BOOTS).keys()].map((i) => `bench${i}`)) {
      const svcs = await api<{ items: { metadata: { name: string } }[] }>('GET', `/v1/tenants/${t}/services`).catch(() => ({ items: [] }));
      for (const s of svcs.items) await api('DELETE', `/v1/tenants/${t}/services/${s.metadata.name}`).catch(() => undefined);
    }
    await poll(async () => ((await api<{ items: unknown[] }>('GET', '/v1/cells')).items.length === 0 ? true : undefined), 'cells retired').catch(() => undefined);
    await aio.stop();
    for (const vm of aio.vms.recover()) await aio.vms.destroy(vm.id, 0);
    await registry.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
