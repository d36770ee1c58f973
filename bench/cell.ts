/**
 * `npm run bench -- cell [BOOTS] [STARTS]`: the cost of cells, side by side in one run.
 *  (a) raw: the VM layer alone boots a VM with exactly the flags, kernel, initramfs, shares
 *      and guest agent a cell uses, until the guest agent answers the handshake;
 *  (b) carapace: the API call creating a `cell` service in a new tenant until its Cell is
 *      reported Ready (scheduler, controller, agent, QEMU, guest agent); each boot's cell but the
 *      last is retired before the next boot, so every boot, raw or not, has the host to itself;
 *  (c) warm start: a new service placed into an already-Ready cell (done starting its first
 *      container) until its instance is reported Running, beside the time the guest agent's
 *      own runtime run took in that cell.
 * Also reports the host memory overhead of a cell: QEMU's RSS minus the guest RAM it touched.
 * In (a), each raw boot also times launch to /init's first line on the serial console
 * (`init_p50_ms`: what the kernel and initramfs cost before anything of Carapace runs), and
 * `ready_over_init_ratio` is (b) over that.
 *  (d) idle: a new tenant's cell running one nginx (`web`, built from the host's Debian nginx
 *      package); once nginx answers a GET on the cell's tenant-network address, QEMU's VmRSS
 *      60 s later (`idle_rss_mib`), then the share of one core QEMU used over the next 30 s
 *      with no requests (`idle_cpu_pct`). Beside it over the same windows, the floor: a VM of
 *      the cell's shape running only `sleep` (logged, not in the JSON: what the kernel and the
 *      hypervisor cost; under TCG alone it is above the 160 MiB).
 * Final JSON line: {"bench":"cell","raw_boot_p50_ms","cell_ready_p50_ms","boot_ratio",
 * "warm_start_p50_ms","guest_runc_p50_ms","qemu_overhead_mib","init_p50_ms",
 * "ready_over_init_ratio","idle_rss_mib","idle_cpu_pct","accel"}.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { DEFAULT_DISK_SLOTS, guestAgentLaunch } from '../src/agent/cells.js';
import { startAllInOne } from '../src/allinone/allinone.js';
import { buildNginxImage, NGINX_PAGE } from '../src/image/testing/debian-images.js';
import { buildBusyboxImage, freePort, startRegistry } from '../src/image/testing/index.js';
import type { Cell, Instance } from '../src/model/objects.js';
import { createVmManager, type VmInfo, type VmSpec } from '../src/vm/qemu.js';

const BOOTS = Number(process.argv[2] ?? 3);
const STARTS = Number(process.argv[3] ?? 10);
const log = (s: string): boolean => process.stderr.write(`${s}\n`);
const p50 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
/** The idle windows the definitions of idle_rss_mib and idle_cpu_pct ask for. */
const IDLE_RSS_AFTER_MS = 60_000;
const IDLE_CPU_WINDOW_MS = 30_000;
const IDLE_TENANT = 'benchidle';

/**
 * Polls a VM's serial console log every 10 ms from before its launch (the file does not exist
 * yet) and resolves with performance.now() when it first holds a line of /init
 * (`carapace-init: userspace up at …`). Rejects at the deadline or when `signal` aborts.
 */
function firstInitLine(consoleLog: string, timeoutMs: number, signal: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const deadline = performance.now() + timeoutMs;
    const check = (): void => {
      if (signal.aborted) return reject(new Error('console poll aborted'));
      let text = '';
      try {
        text = readFileSync(consoleLog, 'latin1');
      } catch {
        // not created yet
      }
      const now = performance.now();
      if (/(^|\n)carapace-init: /.test(text)) return resolve(now);
      if (now > deadline) return reject(new Error(`no carapace-init line in ${consoleLog}`));
      setTimeout(check, 10);
    };
    check();
  });
}

/** VmRSS of a process from /proc/PID/status, MiB. */
function vmRssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m?.[1]) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) / 1024;
}

/** utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after the command's closing parenthesis). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // rest[0] is field 3 (state)
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`cannot parse /proc/${pid}/stat`);
  return utime + stime;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

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
  // The all-in-one saves its admin token for the CLI: into this run's directory, not the user's config.
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json');
  const registry = await startRegistry({ dir: join(dir, 'registry') });
  const image = await buildBusyboxImage({ registry: registry.address, repository: 'bench/busybox', tag: '1' });
  const nginx = await buildNginxImage(registry.address);
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
  /** Polls `fn` every `everyMs` until it gives a value; throws after `timeoutMs`. */
  const until = async <T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number, everyMs = 100): Promise<T> => {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const v = await fn();
      if (v !== undefined) return v;
      if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
      await sleep(everyMs);
    }
  };
  const svc = (name: string, tenant: string): unknown => ({
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name, tenant },
    spec: { image: image.reference, isolation: 'cell', command: ['sleep', '3600'], cpu: 0.05, memory: '16Mi' },
  });
  const raw: number[] = [];
  const init: number[] = [];
  const ready: number[] = [];
  const warm: number[] = [];
  const guest: number[] = [];
  let overhead = NaN;
  const installDir = fileURLToPath(new URL('../..', import.meta.url));
  const rawVms = createVmManager({ stateDir: join(dir, 'raw-vms'), logger: pino({ level: 'warn' }), accel });
  /** A VM with a cell's flags, size, kernel, initramfs, shares and root ports (CellManager.boot), running `run`; no NIC. */
  const cellShaped = (id: string, run: Pick<VmSpec, 'exec' | 'earlyExec' | 'fallbackExec'>): VmSpec => ({
    id,
    cpus: 2,
    memoryMiB: 2048,
    shares: [
      { tag: 'usr', path: '/usr', readonly: true, mountPoint: '/usr' },
      { tag: 'carapace', path: installDir, readonly: true, mountPoint: '/opt/carapace' },
      { tag: 'images', path: join(stateDir, 'images', 'rootfs'), readonly: true, mountPoint: '/carapace/images' },
    ],
    ...run,
    ports: [],
    channel: true,
    hotplugSlots: DEFAULT_DISK_SLOTS,
    labels: {},
  });
  /**
   * Launches a cell-shaped VM, its console polled for /init's first line from just before the
   * launch (firstInitLine); the caller awaits `initLine` and then aborts `stopPoll`.
   */
  const launchWatched = async (id: string, run: Pick<VmSpec, 'exec' | 'earlyExec' | 'fallbackExec'>): Promise<{ vm: VmInfo; initLine: Promise<number>; stopPoll: AbortController }> => {
    const stopPoll = new AbortController();
    const initLine = firstInitLine(join(dir, 'raw-vms', 'vms', id, 'console.log'), 180_000, stopPoll.signal);
    initLine.catch(() => undefined); // awaited by the caller; a launch failure must not leave it unhandled
    try {
      return { vm: await rawVms.launch(cellShaped(id, run)), initLine, stopPoll };
    } catch (e) {
      stopPoll.abort();
      throw e;
    }
  };
  try {
    // Pull the image once, outside any timing.
    await (await import('../src/image/local-store.js')).createImageStore({ cacheDir: join(stateDir, 'images'), logger: pino({ level: 'silent' }) }).ensure(image.reference);
    for (let i = 0; i < BOOTS; i++) {
      // (a) the VM layer alone, same spec as CellManager.boot; the console is polled from
      // just before the launch call for /init's first line.
      const t0 = performance.now();
      const { vm, initLine, stopPoll } = await launchWatched(`raw-${i}`, guestAgentLaunch(accel, installDir));
      try {
        await handshake(vm.channelSocket ?? '', 180_000);
        raw.push(performance.now() - t0);
        init.push((await initLine) - t0);
      } catch (e) {
        const tail = (() => {
          try {
            return readFileSync(vm.consoleLog, 'utf8').split('\n').slice(-30).join('\n');
          } catch {
            return '(no console log)';
          }
        })();
        log(`raw boot ${i + 1} failed after ${(performance.now() - t0).toFixed(0)} ms; its console:\n${tail}`);
        throw e;
      } finally {
        stopPoll.abort();
      }
      overhead = qemuOverheadMiB(vm.pid, 2048);
      await rawVms.destroy(vm.id, 100);
      // (b) Carapace: a new tenant's cell service until its Cell is Ready.
      const tenant = `bench${i}`;
      await api('PUT', `/v1/tenants/${tenant}`, { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: tenant } });
      const t1 = performance.now();
      await api('PUT', `/v1/tenants/${tenant}/services/s`, svc('s', tenant));
      await poll(async () => (await api<{ items: Cell[] }>('GET', '/v1/cells')).items.find((c) => c.spec.tenant === tenant && c.status.phase === 'Ready'), 'cell ready');
      ready.push(performance.now() - t1);
      log(`boot ${i + 1}/${BOOTS}: raw ${raw[i]?.toFixed(0)} ms (init's first line at ${init[i]?.toFixed(0)} ms), carapace cell ready ${ready[i]?.toFixed(0)} ms`);
      if (i < BOOTS - 1) {
        // The next boots (raw and Carapace) on a quiet host: this cell, still starting its first
        // container (a cold runtime under emulation, ~5 s of both cores), is retired first. Seen
        // without this: every second boot 40-50% slower on both sides.
        await api('DELETE', `/v1/tenants/${tenant}/services/s`);
        await until(`the cell of ${tenant} retired`, async () => ((await api<{ items: Cell[] }>('GET', '/v1/cells')).items.some((c) => c.spec.tenant === tenant) ? undefined : true), 300_000, 200);
      }
    }
    // (c) warm starts into the last tenant's Ready cell.
    const tenant = `bench${BOOTS - 1}`;
    const cellName = (await api<{ items: Cell[] }>('GET', '/v1/cells')).items.find((c) => c.spec.tenant === tenant)?.metadata.name ?? '';
    // Into a Ready cell done with what it booted for: its first container (s-0) starts right
    // after Ready, and a start measured meanwhile shares the guest's vCPUs with that one (seen:
    // 4.3 s of a 5.9 s start spent preparing its bundle while s-0's runtime ran).
    await until('s-0 running in the warm-start cell', async () => ((await api<Instance>('GET', `/v1/tenants/${tenant}/instances/s-0`).catch(() => undefined))?.status.phase === 'Running' ? true : undefined), 300_000, 100);
    for (let i = 0; i < STARTS; i++) {
      const t0 = performance.now();
      await api('PUT', `/v1/tenants/${tenant}/services/w${i}`, svc(`w${i}`, tenant));
      const inst = await poll(async () => {
        const i2 = await api<Instance>('GET', `/v1/tenants/${tenant}/instances/w${i}-0`).catch(() => undefined);
        return i2?.status.phase === 'Running' ? i2 : undefined;
      }, 'instance running');
      warm.push(performance.now() - t0);
      // The guest's own time rides on its answer to `run`, which can come a moment after the
      // running state the API already shows (seen: "?" for both starts of a short run).
      const g = await until('the guest runtime time', async () => aio.cells.runtimeFor(cellName)?.guestStartMs.get(inst.status.containerId ?? ''), 5_000, 20).catch(() => undefined);
      if (g !== undefined) guest.push(g);
      log(`warm start ${i + 1}/${STARTS}: carapace ${warm[i]?.toFixed(0)} ms, guest runc ${g?.toFixed(0) ?? '?'} ms (cell ${cellName})`);
    }
    // (d) an idle cell with one nginx, alone: the other tenants' cells are retired first so
    // that their guests do not compete with it for the host's cores.
    for (let i = 0; i < BOOTS; i++) {
      const t = `bench${i}`;
      const svcs = await api<{ items: { metadata: { name: string } }[] }>('GET', `/v1/tenants/${t}/services`);
      for (const s of svcs.items) await api('DELETE', `/v1/tenants/${t}/services/${s.metadata.name}`);
    }
    await until('the other cells retired', async () => ((await api<{ items: unknown[] }>('GET', '/v1/cells')).items.length === 0 ? true : undefined), 300_000, 200);
    await api('PUT', `/v1/tenants/${IDLE_TENANT}`, { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: IDLE_TENANT } });
    await api('PUT', `/v1/tenants/${IDLE_TENANT}/services/web`, {
      apiVersion: 'carapace/v1',
      kind: 'Service',
      metadata: { name: 'web', tenant: IDLE_TENANT },
      spec: { image: nginx.reference, isolation: 'cell', cpu: 0.1, memory: '64Mi' },
    });
    const { cell, inst } = await until(
      'the nginx cell Ready and web-0 Running',
      async () => {
        const c = (await api<{ items: Cell[] }>('GET', '/v1/cells')).items.find((x) => x.spec.tenant === IDLE_TENANT && x.status.phase === 'Ready');
        const i2 = await api<Instance>('GET', `/v1/tenants/${IDLE_TENANT}/instances/web-0`).catch(() => undefined);
        return c?.status.pid !== undefined && i2?.status.phase === 'Running' && i2.status.address !== undefined ? { cell: c, inst: i2 } : undefined;
      },
      300_000,
      200,
    );
    const pid = cell.status.pid ?? 0; // checked defined above
    const url = `http://${inst.status.address ?? ''}:80/`;
    // The host reaches its tenants' networks (network/nft-rules.ts host_services).
    const page = await until(
      `nginx answering at ${url}`,
      async () => {
        try {
          const r = await fetch(url, { signal: AbortSignal.timeout(2_000), headers: { connection: 'close' } });
          const body = await r.text();
          return r.ok && body === NGINX_PAGE ? body : undefined;
        } catch {
          return undefined;
        }
      },
      60_000,
      250,
    );
    // The floor, beside it over the same windows: a VM of the cell's shape running only
    // `sleep`, nothing of Carapace. What the kernel and the hypervisor cost (under TCG with the
    // translation cache of the kernel's own boot); the cell's own cost is what it adds.
    const { vm: floor, initLine: floorInit, stopPoll: floorPoll } = await launchWatched('floor', { exec: 'exec /bin/sleep infinity' });
    try {
      await floorInit;
    } finally {
      floorPoll.abort();
    }
    log(`idle: nginx in cell ${cell.metadata.name} (QEMU pid ${pid}) answered ${url} (${page.length} bytes); the floor VM (QEMU pid ${floor.pid}) is up; waiting ${IDLE_RSS_AFTER_MS / 1000} s`);
    await sleep(IDLE_RSS_AFTER_MS);
    const idleRss = vmRssMiB(pid);
    const floorRss = vmRssMiB(floor.pid);
    const hz = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    const c0 = cpuTicks(pid);
    const f0 = cpuTicks(floor.pid);
    const w0 = performance.now();
    await sleep(IDLE_CPU_WINDOW_MS);
    const c1 = cpuTicks(pid);
    const f1 = cpuTicks(floor.pid);
    const windowS = (performance.now() - w0) / 1000;
    const idleCpu = ((c1 - c0) / hz / windowS) * 100;
    const floorCpu = ((f1 - f0) / hz / windowS) * 100;
    await rawVms.destroy(floor.id, 100);
    // The figures are the same cell's only if it stayed Ready with the same QEMU throughout.
    const after = (await api<{ items: Cell[] }>('GET', '/v1/cells')).items.find((x) => x.metadata.name === cell.metadata.name);
    if (after?.status.phase !== 'Ready' || after.status.pid !== pid) throw new Error(`the nginx cell changed during the idle window: ${JSON.stringify(after?.status)}`);
    log(`idle: QEMU VmRSS ${idleRss.toFixed(1)} MiB, CPU ${idleCpu.toFixed(2)} % of one core over ${IDLE_CPU_WINDOW_MS / 1000} s (${c1 - c0} ticks at ${hz} Hz)`);
    log(
      `idle floor (a VM of the cell's shape running only sleep, same windows): VmRSS ${floorRss.toFixed(1)} MiB, CPU ${floorCpu.toFixed(2)} %; ` +
        `the cell's own: ${(idleRss - floorRss).toFixed(1)} MiB (cell/floor ${(idleRss / floorRss).toFixed(2)}), ${(idleCpu - floorCpu).toFixed(2)} % of a core`,
    );
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
      init_p50_ms: Math.round(p50(init)),
      ready_over_init_ratio: Number((p50(ready) / p50(init)).toFixed(2)),
      idle_rss_mib: Math.round(idleRss),
      idle_cpu_pct: Number(idleCpu.toFixed(2)),
      accel,
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    log('cleaning up');
    for (const t of [...[...Array(BOOTS).keys()].map((i) => `bench${i}`), IDLE_TENANT]) {
      const svcs = await api<{ items: { metadata: { name: string } }[] }>('GET', `/v1/tenants/${t}/services`).catch(() => ({ items: [] }));
      for (const s of svcs.items) await api('DELETE', `/v1/tenants/${t}/services/${s.metadata.name}`).catch(() => undefined);
    }
    await poll(async () => ((await api<{ items: unknown[] }>('GET', '/v1/cells')).items.length === 0 ? true : undefined), 'cells retired').catch(() => undefined);
    await aio.stop();
    for (const vm of aio.vms.recover()) await aio.vms.destroy(vm.id, 0);
    // Tenant networks (bridges, taps, dnsmasq) are not the VMs': a run that failed before its
    // cells retired would leave them holding the tenants' gateway addresses for the next run.
    const { teardownHost } = await import('../src/agent/teardown.js');
    await teardownHost(stateDir, {});
    await registry.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
