/**
 * `npm run bench -- volume [HOST_PAIRS] [CELL_PAIRS]` (default 5 and 3): volumes' I/O beside raw baselines built by the bench with
 * the same kernel objects and QEMU commands (bench/volume-raw.ts), in one run, the same fio job
 * on every side (4k random 70/30 read/write at queue depth 16 for 10 s, then 1 MiB sequential
 * reads and writes at depth 4 for 5 s each; libaio, O_DIRECT, a 256 MiB file; fio's own ramp
 * before each):
 *  - host: fio in a host-tier (runc) container of a Job, through the all-in-one, on a Volume
 *          (VolumeStore: ext4 image, loop device with direct I/O, bound into the container),
 *          vs the host's fio on an image made the same way, loop-mounted the same way;
 *  - cell: fio in a container of a cell (a Job whose volume CellRuntime hot-plugs and the guest
 *          agent mounts) vs fio in a raw QEMU VM of the cell's shape (kernel, initramfs,
 *          `microvm,pcie=on`, root ports, vCPUs, RAM) whose disk the VM layer hot-plugs with
 *          the same QMP commands and options, mounted in the guest with the same options.
 * Pairs alternate (raw, carapace, raw, carapace…), each side's file laid out by an unmeasured
 * first run; ratios are Carapace / raw per pair, and the JSON has their medians (seq: the
 * geometric mean of the read and write ratios; randrw: read plus write IOPS).
 * attach_ms: what a container start in a running cell waits for because it needs a volume:
 * CellRuntime's attach (QMP `blockdev-add` + `device_add`) until the guest agent answers that it
 * mounted the disk, as CellRuntime logs it ("volume ready in cell", `ms`), median over the
 * measured cell runs (each attaches anew: the previous Job is deleted and its disk detached).
 * bench/volume-seccomp.ts measures how much of the cell's gap is the containers' seccomp filter.
 * Final JSON line: {"bench":"volume","host_randrw_ratio","host_seq_ratio","cell_randrw_ratio",
 * "cell_seq_ratio","attach_ms"}; every figure behind them is printed on stderr first.
 */
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { DEFAULT_DISK_SLOTS } from '../src/agent/cells.js';
import { teardownHost } from '../src/agent/teardown.js';
import { startAllInOne, type RunningAllInOne } from '../src/allinone/allinone.js';
import { buildFioImage, freePort, startRegistry, type RunningRegistry } from '../src/image/testing/index.js';
import type { Cell, Instance, Job } from '../src/model/objects.js';
import type { Volume } from '../src/model/volumes.js';
import { run, runOrThrow } from '../src/proc/run.js';
import { createRuncDriver } from '../src/runtime/index.js';
import { VolumeStore } from '../src/storage/volume-store.js';
import { cpuSeconds, fioArgs, loopDevicesOf, makeExt4Image, parseFioTerse, rawHostVolume, rawVm, showFigures, VOLUME_BYTES, type FioFigures, type RawHostVolume, type RawVm } from './volume-raw.js';
import { until } from '../src/proc/until.js';

/**
 * Pairs per tier. The host tier's raw disk (this VM's virtual disk) swings between states run
 * to run (42k-66k IOPS, 1-4.7 GB/s seen in one run): more pairs are cheap there (~1 min each).
 */
const HOST_PAIRS = Number(process.argv[2] ?? 5);
const CELL_PAIRS = Number(process.argv[3] ?? 3);
const TENANT = 'bench';
const log = (s: string): boolean => process.stderr.write(`${s}\n`);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
};
const round = (x: number, d = 3): number => Math.round(x * 10 ** d) / 10 ** d;
/** The 1-minute load average, printed with each measurement: the machine is shared. */
const load = (): string => `load ${readFileSync('/proc/loadavg', 'utf8').split(' ')[0] ?? '?'}`;

/** Carapace / raw of one pair: the mixed job's total IOPS, and the geometric mean of the sequential read and write ratios. */
function ratios(raw: FioFigures, car: FioFigures): { randrw: number; seq: number; seqRead: number; seqWrite: number } {
  const seqRead = car.seqReadMBs / raw.seqReadMBs;
  const seqWrite = car.seqWriteMBs / raw.seqWriteMBs;
  return { randrw: car.randrwIops / raw.randrwIops, seq: Math.sqrt(seqRead * seqWrite), seqRead, seqWrite };
}

/**
 * The QEMU options a raw VM must share with the cell it stands for (machine, accelerator,
 * vCPUs, RAM, kernel, hot-plug root ports), read from /proc/PID/cmdline.
 */
function qemuShape(pid: number): string {
  const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  const opt = (name: string): string => args[args.indexOf(name) + 1] ?? '?';
  const ports = args.filter((x) => x.startsWith('pcie-root-port,')).length;
  return `-M ${opt('-M')} -accel ${opt('-accel')} -smp ${opt('-smp')} -m ${opt('-m')} -kernel ${opt('-kernel')} -initrd …/${basename(opt('-initrd'))}, ${ports} root ports`;
}

async function main(): Promise<void> {
  const began = performance.now();
  const dir = await mkdtemp(join(tmpdir(), 'carapace-bench-volume-'));
  const stateDir = join(dir, 'state');
  // The all-in-one saves a CLI config with its admin token: here, not over the user's own.
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json');
  const clkTck = Number((await runOrThrow('getconf', ['CLK_TCK'])).stdout.trim()) || 100;
  // The all-in-one logs at info into this sink: CellRuntime's "volume ready in cell" lines
  // carry attach_ms; warnings and errors go on to stderr.
  const attachMs: number[] = [];
  let partial = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb): void {
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        try {
          const rec = JSON.parse(line) as { level?: number; msg?: string; ms?: number }; // pino's JSON records
          if (rec.msg === 'volume ready in cell' && typeof rec.ms === 'number') attachMs.push(rec.ms);
          else if ((rec.level ?? 0) >= 40) process.stderr.write(`${line}\n`);
        } catch {
          process.stderr.write(`${line}\n`);
        }
      }
      cb();
    },
  });
  let registry: RunningRegistry | undefined;
  let aio: RunningAllInOne | undefined;
  let rawHost: RawHostVolume | undefined;
  let vm: RawVm | undefined;
  const jobs = new Set<string>();

  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      log('cleaning up');
      await vm?.cleanup().catch((e: unknown) => log(`raw VM cleanup: ${String(e)}`));
      await rawHost?.cleanup().catch((e: unknown) => log(`raw host volume cleanup: ${String(e)}`));
      if (aio) {
        const a = aio;
        const api = apiOf(a);
        for (const j of jobs) await api('DELETE', `/v1/tenants/${TENANT}/jobs/${j}`).catch(() => undefined);
        await api('DELETE', `/v1/tenants/${TENANT}/services/keeper`).catch(() => undefined);
        await until('instances gone', async () => ((await api<{ items: Instance[] }>('GET', `/v1/tenants/${TENANT}/instances`)).items.length === 0 ? true : undefined), 120_000).catch(() => log('instances left behind (removed below)'));
        await until('cells retired', async () => ((await api<{ items: Cell[] }>('GET', '/v1/cells')).items.length === 0 ? true : undefined), 120_000).catch(() => log('cells left behind (destroyed below)'));
        await a.stop();
        for (const v of a.vms.recover()) await a.vms.destroy(v.id, 0).catch(() => undefined);
        // The tenant network's bridge and dnsmasq (a dnsmasq left behind blocks the next all-in-one).
        await teardownHost(stateDir).catch((e: unknown) => log(`teardown: ${String(e)}`));
      }
      const runc = createRuncDriver({ stateDir: join(stateDir, 'runtime', 'runc'), logger: pino({ level: 'silent' }) });
      for (const c of await runc.recover().catch(() => [])) await runc.destroy(c.id).catch(() => undefined);
      const store = new VolumeStore({ stateDir, logger: pino({ level: 'silent' }) });
      for (const v of await store.list().catch(() => [])) {
        await store.unmount(v.id).catch((e: unknown) => log(`volume ${v.id}: ${String(e)}`));
        await store.releaseImage(v.id).catch(() => undefined);
        await store.remove(v.id).catch((e: unknown) => log(`volume ${v.id}: ${String(e)}`));
      }
      // Whatever is still mounted or looped under the bench's directory (an interrupted step).
      for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
        const target = line.split(' ')[1];
        if (target?.startsWith(`${dir}/`)) await run('umount', ['-l', target]);
      }
      const loops = JSON.parse((await run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'])).stdout || '{}') as { loopdevices?: { name: string; 'back-file': string }[] }; // `as`: losetup's JSON
      for (const l of loops.loopdevices ?? []) if (l['back-file']?.startsWith(`${dir}/`)) await run('losetup', ['--detach', l.name]);
      await registry?.stop().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    })();
    return cleaning;
  };
  const onSignal = (): void => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    registry = await startRegistry({ dir: join(dir, 'registry') });
    const image = (await buildFioImage(registry.address)).reference;
    aio = await startAllInOne({ stateDir, port: await freePort(), logger: pino({ level: 'info' }, sink), network: false, cellGraceMs: 0, hostName: 'bench' });
    const a = aio;
    const api = apiOf(a);
    const accel = await a.vms.accel();
    log(`accel ${accel}; ${HOST_PAIRS} host pairs, ${CELL_PAIRS} cell pairs; fio: ${fioArgs('DIR').join(' ')}`);
    await api('PUT', `/v1/tenants/${TENANT}`, { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: TENANT } });
    for (const v of ['hostvol', 'cellvol']) {
      await api('PUT', `/v1/tenants/${TENANT}/volumes/${v}`, { apiVersion: 'carapace/v1', kind: 'Volume', metadata: { name: v, tenant: TENANT }, spec: { size: `${VOLUME_BYTES / 1024 ** 3}Gi` } });
    }

    /**
     * Runs the fio job in a Job's container on `volume` and returns its figures (undefined for
     * `createOnly`), then deletes the Job and waits until its instance is gone.
     */
    const fioJob = async (name: string, isolation: 'host' | 'cell', volume: string, createOnly = false): Promise<{ figures?: FioFigures; runningMs: number }> => {
      jobs.add(name);
      const t0 = performance.now();
      await api('PUT', `/v1/tenants/${TENANT}/jobs/${name}`, {
        apiVersion: 'carapace/v1',
        kind: 'Job',
        metadata: { name, tenant: TENANT },
        // cpu 1.5: fio's one I/O thread is never throttled by its quota (the cell's usable share is 1.75).
        spec: { image, isolation, cpu: 1.5, memory: '256Mi', backoffLimit: 0, command: ['fio', ...fioArgs('/vol', createOnly)], volumes: [{ volume, mountPath: '/vol' }] },
      });
      const inst = `${name}-0`;
      let runningMs = NaN;
      let job: Job | undefined;
      // Every 200 ms until the instance runs, then every second: the polling shares the two
      // cores with the fio being measured (the raw sides are waited for without polling the API).
      for (const deadline = Date.now() + 900_000; ; ) {
        if (Number.isNaN(runningMs)) {
          const i = await api<Instance>('GET', `/v1/tenants/${TENANT}/instances/${inst}`).catch(() => undefined);
          if (i && ['Running', 'Succeeded', 'Failed'].includes(i.status.phase)) runningMs = performance.now() - t0;
        }
        const j = await api<Job>('GET', `/v1/tenants/${TENANT}/jobs/${name}`);
        if (j.status.phase === 'Succeeded' || j.status.phase === 'Failed') {
          job = j;
          break;
        }
        if (Date.now() > deadline) throw new Error(`job ${name} did not finish within 15 minutes (${j.status.phase})`);
        await new Promise((res) => setTimeout(res, Number.isNaN(runningMs) ? 200 : 1000));
      }
      const r = await fetch(`${a.url}/v1/tenants/${TENANT}/instances/${inst}/logs`, { headers: { authorization: `Bearer ${a.adminToken}` } });
      const lines = (await r.text()).split('\n').map((l) => {
        try {
          return (JSON.parse(l) as { text: string }).text; // NDJSON log records
        } catch {
          return '';
        }
      });
      if (job.status.phase !== 'Succeeded') throw new Error(`job ${name} ${job.status.phase}: ${job.status.reason ?? ''} ${lines.slice(-10).join(' | ')}`);
      await api('DELETE', `/v1/tenants/${TENANT}/jobs/${name}`);
      await until(`job ${name}'s instance gone`, async () => ((await api<{ items: Instance[] }>('GET', `/v1/tenants/${TENANT}/instances`)).items.some((i) => i.metadata.name === inst) ? undefined : true), 120_000);
      jobs.delete(name);
      return { runningMs, ...(createOnly ? {} : { figures: parseFioTerse(lines) }) };
    };

    // ---- host tier: before any VM exists, so no emulated guest competes for the 2 cores.
    rawHost = await rawHostVolume(join(dir, 'raw-host'));
    await rawHost.fio(true);
    await fioJob('hw', 'host', 'hostvol', true);
    const hostPairs: { raw: FioFigures; car: FioFigures }[] = [];
    for (let i = 0; i < HOST_PAIRS; i++) {
      const raw = await rawHost.fio();
      if (!raw) throw new Error('no raw host figures');
      log(`host pair ${i + 1}/${HOST_PAIRS}: raw      ${showFigures(raw)}; ${load()}`);
      const name = `h${i}`;
      // The volume's loop device is read while the container runs: the direct I/O flag must match the raw one's.
      const vol = await api<Volume>('GET', `/v1/tenants/${TENANT}/volumes/hostvol`);
      const pending = fioJob(name, 'host', 'hostvol');
      const volImage = new VolumeStore({ stateDir, logger: pino({ level: 'silent' }) }).imageFile(vol.metadata.uid);
      const loops = await until('the volume on a loop device', async () => {
        const l = await loopDevicesOf(volImage);
        return l.length > 0 ? l : undefined;
      }, 60_000, 100).catch(() => []);
      const car = (await pending).figures;
      if (!car) throw new Error('no carapace host figures');
      log(`host pair ${i + 1}/${HOST_PAIRS}: carapace ${showFigures(car)}; ${load()}`);
      const rawLoops = await loopDevicesOf(rawHost.image);
      log(`  loop devices: raw ${rawLoops.map((l) => `${l.name} dio=${l.dio}`).join(', ')}; volume ${loops.map((l) => `${l.name} dio=${l.dio}`).join(', ') || '(not seen)'}`);
      hostPairs.push({ raw, car });
    }
    await rawHost.cleanup();
    rawHost = undefined;

    // ---- cell tier: a cell kept up by a sleeping service, and a raw VM of the same shape.
    await api('PUT', `/v1/tenants/${TENANT}/services/keeper`, { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'keeper', tenant: TENANT }, spec: { image, isolation: 'cell', command: ['sleep', '100000'], cpu: 0.05, memory: '16Mi' } });
    await until('keeper running', async () => ((await api<Instance>('GET', `/v1/tenants/${TENANT}/instances/keeper-0`)).status.phase === 'Running' ? true : undefined), 900_000, 250);
    const cell = await until('the cell', async () => (await api<{ items: Cell[] }>('GET', '/v1/cells')).items.find((c) => c.spec.tenant === TENANT && c.status.phase === 'Ready'), 60_000);
    const cellPid = cell.status.pid ?? 0;
    const rawImage = join(dir, 'raw-vm', 'raw-vm.img');
    await mkdir(join(dir, 'raw-vm'), { recursive: true });
    await makeExt4Image(rawImage, VOLUME_BYTES, 'rawvm');
    vm = await rawVm({ dir: join(dir, 'raw-vm'), image: rawImage, shape: { cpus: Math.max(1, Math.ceil(cell.spec.cpu)), memoryMiB: cell.spec.memoryMiB, hotplugSlots: DEFAULT_DISK_SLOTS }, accel, logger: pino({ level: 'warn' }) });
    const shapes = { cell: qemuShape(cellPid), raw: qemuShape(vm.pid) };
    log(`cell QEMU: ${shapes.cell}\nraw QEMU:  ${shapes.raw}`);
    if (shapes.cell !== shapes.raw) throw new Error('the raw VM does not have the cell\'s shape');
    const rawVmRef = vm;
    await rawVmRef.round(0, true);
    await fioJob('cw', 'cell', 'cellvol', true);
    const detached = async (): Promise<void> => {
      await until('the cell\'s volume detached', async () => ((await a.vms.listDisks(cell.metadata.name)).some((d) => d.port !== undefined) ? undefined : true), 120_000, 200);
    };
    await detached();
    attachMs.length = 0; // the warm-up's attach is not counted
    const cellPairs: { raw: FioFigures; car: FioFigures }[] = [];
    const rawAttach: number[] = [];
    const cellRunning: number[] = [];
    for (let i = 0; i < CELL_PAIRS; i++) {
      let c0 = cpuSeconds(cellPid, clkTck);
      let r0 = cpuSeconds(rawVmRef.pid, clkTck);
      const raw = await rawVmRef.round(i + 1);
      const idleCell = cpuSeconds(cellPid, clkTck) - c0;
      const busyRaw = cpuSeconds(rawVmRef.pid, clkTck) - r0;
      if (!raw.figures) throw new Error('no raw VM figures');
      rawAttach.push(raw.attachMs);
      log(`cell pair ${i + 1}/${CELL_PAIRS}: raw VM   ${showFigures(raw.figures)}; attach to mount ${raw.attachMs.toFixed(0)} ms; CPU s: raw QEMU ${busyRaw.toFixed(1)}, idle cell QEMU ${idleCell.toFixed(1)}; ${load()}`);
      c0 = cpuSeconds(cellPid, clkTck);
      r0 = cpuSeconds(rawVmRef.pid, clkTck);
      const car = await fioJob(`c${i}`, 'cell', 'cellvol');
      const busyCell = cpuSeconds(cellPid, clkTck) - c0;
      const idleRaw = cpuSeconds(rawVmRef.pid, clkTck) - r0;
      if (!car.figures) throw new Error('no cell figures');
      cellRunning.push(car.runningMs);
      log(`cell pair ${i + 1}/${CELL_PAIRS}: cell     ${showFigures(car.figures)}; attach to mount ${attachMs[attachMs.length - 1]?.toFixed(0) ?? '?'} ms (Job to Running ${car.runningMs.toFixed(0)} ms); CPU s: cell QEMU ${busyCell.toFixed(1)} (whole Job), idle raw QEMU ${idleRaw.toFixed(1)}; ${load()}`);
      cellPairs.push({ raw: raw.figures, car: car.figures });
      await detached();
    }

    const summary = (what: string, pairs: { raw: FioFigures; car: FioFigures }[]): { randrw: number; seq: number } => {
      const rs = pairs.map((p) => ratios(p.raw, p.car));
      const med = (f: (x: FioFigures) => number, side: 'raw' | 'car'): string => median(pairs.map((p) => f(p[side]))).toFixed(1);
      log(`${what} medians: raw randrw ${med((f) => f.randrwIops, 'raw')} IOPS, seq r/w ${med((f) => f.seqReadMBs, 'raw')}/${med((f) => f.seqWriteMBs, 'raw')} MB/s; carapace randrw ${med((f) => f.randrwIops, 'car')} IOPS, seq r/w ${med((f) => f.seqReadMBs, 'car')}/${med((f) => f.seqWriteMBs, 'car')} MB/s`);
      log(`${what} ratios per pair: randrw ${rs.map((r) => r.randrw.toFixed(3)).join(' ')}; seq read ${rs.map((r) => r.seqRead.toFixed(3)).join(' ')}; seq write ${rs.map((r) => r.seqWrite.toFixed(3)).join(' ')}`);
      return { randrw: median(rs.map((r) => r.randrw)), seq: median(rs.map((r) => r.seq)) };
    };
    const host = summary('host', hostPairs);
    const cellR = summary('cell', cellPairs);
    log(`attach: carapace ${attachMs.map((x) => x.toFixed(0)).join(' ')} ms (CellRuntime: QMP attach to the guest agent's mount); raw VM ${rawAttach.map((x) => x.toFixed(0)).join(' ')} ms (QMP attach to the guest's mount line); cell Job to Running ${cellRunning.map((x) => x.toFixed(0)).join(' ')} ms`);
    if (attachMs.length !== CELL_PAIRS) throw new Error(`expected ${CELL_PAIRS} attaches in the cell, CellRuntime logged ${attachMs.length}`);
    log(`measured in ${((performance.now() - began) / 1000).toFixed(0)} s`);
    console.log(JSON.stringify({
      bench: 'volume',
      host_randrw_ratio: round(host.randrw),
      host_seq_ratio: round(host.seq),
      cell_randrw_ratio: round(cellR.randrw),
      cell_seq_ratio: round(cellR.seq),
      attach_ms: Math.round(median(attachMs)),
    }));
  } finally {
    await cleanup();
  }
}

/** An authenticated JSON client of the all-in-one's API; throws on a status of 300 or more. */
function apiOf(a: RunningAllInOne) {
  return async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const r = await fetch(`${a.url}${path}`, { method, headers: { authorization: `Bearer ${a.adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const text = await r.text();
    if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return (text ? JSON.parse(text) : undefined) as T; // `as`: the API's documented response shapes
  };
}

await main();
