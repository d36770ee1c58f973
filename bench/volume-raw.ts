/**
 * The raw baselines of `npm run bench -- volume`, built by the bench itself with the same
 * kernel objects and QEMU commands Carapace uses and no Carapace, and the fio job every side
 * runs:
 *  - host: an ext4 image made as VolumeStore makes one (sparse, `mkfs.ext4 -b 4096 -m 0`) on a
 *    loop device with direct I/O, mounted on the host with the same options; the host's fio
 *    runs in it;
 *  - VM: a QEMU VM with a cell's kernel, initramfs, machine type (`microvm,pcie=on` with the
 *    same hot-plug root ports) and size, whose disk (an image made the same way) is hot-plugged
 *    by the VM layer's `attachDisk` (the same `blockdev-add` + `device_add virtio-blk-pci` a
 *    cell's volume gets); a script in the guest mounts it as the guest agent mounts a volume,
 *    runs the host's fio (over the read-only /usr share), unmounts it and powers its slot off
 *    as the guest agent's eject does.
 */
import { readFileSync } from 'node:fs';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { run, runOrThrow } from '../src/proc/run.js';
import { diskSerial } from '../src/vm/disks.js';
import { createVmManager, type Accel, type VmManager } from '../src/vm/qemu.js';

/** Size of every volume and raw image of the bench (a Volume of `1Gi`). */
export const VOLUME_BYTES = 1024 * 1024 * 1024;
/** The file fio works on, inside the volume: large enough that 4k random I/O is not one cache line. */
export const FIO_FILE_MIB = 256;
/** Seconds of each fio job: warm-up (not counted by fio) then measured. */
export const RANDRW_SECONDS = { ramp: 2, run: 10 };
export const SEQ_SECONDS = { ramp: 1, run: 5 };

/**
 * The fio command line every side runs, on `dir/fio.dat`: 4k random 70/30 read/write at queue
 * depth 16, then 1 MiB sequential reads, then 1 MiB sequential writes at queue depth 4
 * (`stonewall`: one after the other), libaio with O_DIRECT, time-based. Terse v3 output, one
 * line per job. `createOnly`: only lay the file out (written in full: `fallocate=none`, so
 * reads never hit unwritten extents that read as zeros without I/O).
 */
export function fioArgs(dir: string, createOnly = false): string[] {
  const job = (name: string, rw: string, bs: string, depth: number, t: { ramp: number; run: number }, extra: string[] = []): string[] => [
    `--name=${name}`, '--stonewall', `--rw=${rw}`, ...extra, `--bs=${bs}`, `--iodepth=${depth}`, `--ramp_time=${t.ramp}`, `--runtime=${t.run}`,
  ];
  return [
    '--minimal', '--terse-version=3', '--eta=never', '--direct=1', '--ioengine=libaio', '--fallocate=none',
    `--filename=${dir}/fio.dat`, `--size=${FIO_FILE_MIB}m`, '--time_based', ...(createOnly ? ['--create_only=1'] : []),
    ...job('randrw', 'randrw', '4k', 16, RANDRW_SECONDS, ['--rwmixread=70']),
    ...job('seqread', 'read', '1m', 4, SEQ_SECONDS),
    ...job('seqwrite', 'write', '1m', 4, SEQ_SECONDS),
  ];
}

/** One fio run's figures. MB/s are 10^6 bytes per second. */
export interface FioFigures {
  randReadIops: number;
  randWriteIops: number;
  /** Read plus write IOPS of the mixed job. */
  randrwIops: number;
  seqReadMBs: number;
  seqWriteMBs: number;
  /** fio's own CPU use during the mixed job (user and system %, of one CPU). */
  randrwCpu: string;
}

/**
 * Reads fio's terse v3 lines (`3;fio-3.33;JOB;GROUP;ERROR;` then 41 read fields from read KiB,
 * read KiB/s, read IOPS…, then 41 write fields, then CPU user%, system%…), as documented in
 * fio's HOWTO and checked against its JSON output. Throws when a job is missing, failed, or
 * the line does not have that shape.
 */
export function parseFioTerse(lines: readonly string[]): FioFigures {
  const jobs = new Map<string, string[]>();
  for (const l of lines) {
    const f = l.trim().split(';');
    if (f[0] !== '3' || !f[1]?.startsWith('fio-')) continue;
    if (f.length < 90 || !f[87]?.endsWith('%') || !f[88]?.endsWith('%')) throw new Error(`not a fio terse v3 line: ${l.slice(0, 200)}`);
    if (f[4] !== '0') throw new Error(`fio job ${f[2]} failed with error ${f[4]}`);
    jobs.set(f[2] ?? '', f);
  }
  const field = (job: string, i: number): number => {
    const f = jobs.get(job);
    if (!f) throw new Error(`fio printed no line for job ${job} (got: ${[...jobs.keys()].join(', ') || 'none'})`);
    const v = Number(f[i]);
    if (!Number.isFinite(v)) throw new Error(`fio job ${job}: field ${i} is ${f[i]}`);
    return v;
  };
  const kibToMB = (kib: number): number => (kib * 1024) / 1e6;
  const r = field('randrw', 7);
  const w = field('randrw', 48);
  const rw = jobs.get('randrw') ?? [];
  return {
    randReadIops: r,
    randWriteIops: w,
    randrwIops: r + w,
    seqReadMBs: kibToMB(field('seqread', 6)),
    seqWriteMBs: kibToMB(field('seqwrite', 47)),
    randrwCpu: `usr ${rw[87] ?? '?'} sys ${rw[88] ?? '?'}`,
  };
}

/** One line for a side's figures. */
export function showFigures(f: FioFigures): string {
  return `randrw ${f.randrwIops.toFixed(0)} IOPS (r ${f.randReadIops.toFixed(0)} w ${f.randWriteIops.toFixed(0)}; fio ${f.randrwCpu}), seq read ${f.seqReadMBs.toFixed(1)} MB/s, seq write ${f.seqWriteMBs.toFixed(1)} MB/s`;
}

/**
 * Makes a sparse ext4 image of `bytes` exactly as VolumeStore creates a volume's (mode 0600,
 * truncate, `mkfs.ext4 -q -F -b 4096 -m 0 -L LABEL`; see src/storage/volume-store.ts).
 */
export async function makeExt4Image(path: string, bytes: number, label: string): Promise<void> {
  const fh = await open(path, 'w', 0o600);
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
  await runOrThrow('mkfs.ext4', ['-q', '-F', '-b', '4096', '-m', '0', '-L', label, path], { timeoutMs: 120_000 });
}

/** The loop devices on `image` and whether each does direct I/O (`losetup --list`). */
export async function loopDevicesOf(image: string): Promise<{ name: string; dio: boolean }[]> {
  const out = (await runOrThrow('losetup', ['--list', '--json', '--output', 'NAME,DIO', '--associated', image])).stdout;
  if (out.trim() === '') return [];
  const parsed = JSON.parse(out) as { loopdevices?: { name: string; dio: boolean | string }[] }; // `as`: losetup's documented JSON shape
  return (parsed.loopdevices ?? []).map((d) => ({ name: d.name, dio: d.dio === true || d.dio === '1' }));
}

/** (raw host) An ext4 image on a loop device with direct I/O, mounted at `mountDir`. */
export interface RawHostVolume {
  image: string;
  mountDir: string;
  device: string;
  /** Runs the fio job in the mount on the host; `createOnly` lays the file out. */
  fio(createOnly?: boolean): Promise<FioFigures | undefined>;
  /** Unmounts and detaches the loop device; idempotent. */
  cleanup(): Promise<void>;
}

/** Makes the raw host volume: image, `losetup --direct-io=on` (as VolumeStore), mount nosuid,nodev,errors=remount-ro. */
export async function rawHostVolume(dir: string): Promise<RawHostVolume> {
  await mkdir(join(dir, 'mnt'), { recursive: true });
  const image = join(dir, 'raw-host.img');
  const mountDir = join(dir, 'mnt');
  await makeExt4Image(image, VOLUME_BYTES, 'rawhost');
  let device: string;
  const cleanup = async (): Promise<void> => {
    if ((await run('mountpoint', ['-q', mountDir])).code === 0) await runOrThrow('umount', [mountDir]);
    for (const d of await loopDevicesOf(image).catch(() => [])) await run('losetup', ['--detach', d.name]);
  };
  try {
    device = (await runOrThrow('losetup', ['--find', '--show', '--direct-io=on', image])).stdout.trim();
    await runOrThrow('mount', ['-t', 'ext4', '-o', 'nosuid,nodev,errors=remount-ro', device, mountDir]);
  } catch (e) {
    await cleanup();
    throw e;
  }
  return {
    image,
    mountDir,
    device,
    async fio(createOnly = false) {
      const out = await runOrThrow('fio', fioArgs(mountDir, createOnly), { timeoutMs: 300_000 });
      return createOnly ? undefined : parseFioTerse(out.stdout.split('\n'));
    },
    cleanup,
  };
}

/** The guest script of the raw VM (busybox sh under our init). */
export function rawVmScript(serial: string, runArgs: string, createArgs: string): string {
  return `#!/bin/sh
# The raw VM's workload (bench/volume-raw.ts). For each line the host writes on the channel
# ("run N" or "create N"): wait for the disk with serial ${serial} (polled every 50 ms, as the
# guest agent does), mount it as the guest agent mounts a volume, run fio, unmount it, and power
# its hot-plug slot off as the guest agent's eject does. Between commands it blocks in read.
S=${serial}
dev_of() {
  for b in /sys/block/vd*; do
    [ "$(cat "$b/serial" 2>/dev/null)" = "$S" ] && { basename "$b"; return 0; }
  done
  return 1
}
echo RAW-READY
while :; do
  while read -r what n; do
    until dev=$(dev_of); do usleep 50000; done
    mkdir -p /mnt/vol
    if ! mount -t ext4 -o nosuid,nodev "/dev/$dev" /mnt/vol; then echo "RAW-FAILED $n mount"; continue; fi
    echo "RAW-MOUNTED $n"
    if [ "$what" = create ]; then /usr/bin/fio ${createArgs} >/dev/null </dev/null; else /usr/bin/fio ${runArgs} </dev/null; fi
    echo "RAW-FIO-EXIT $n $?"
    umount /mnt/vol
    fn=$(readlink -f "/sys/block/$dev" | tr / '\\n' | grep -E '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}[.][0-7]$' | tail -n 1)
    addr=$(echo "$fn" | cut -d. -f1)
    for s in /sys/bus/pci/slots/*; do
      [ "$(cat "$s/address" 2>/dev/null)" = "$addr" ] && echo 0 > "$s/power"
    done
    echo "RAW-DONE $n"
  done < "$CARAPACE_PORT"
  # EOF: no host client on the channel yet; open it again.
  usleep 200000
done
`;
}

/** The VM's size and hot-plug slots, copied from the cell it is compared with. */
export interface RawVmShape {
  cpus: number;
  memoryMiB: number;
  hotplugSlots: number;
}

/** One round in the raw VM. */
export interface RawVmRound {
  figures?: FioFigures;
  /** From the start of the QMP attach to the guest's "mounted" line on the console (polled every 20 ms). */
  attachMs: number;
}

/** (raw VM) A QEMU VM with a cell's shape and a hot-plugged disk, driven round by round. */
export interface RawVm {
  pid: number;
  round(n: number, createOnly?: boolean): Promise<RawVmRound>;
  /** Destroys the VM (its image is the caller's); idempotent. */
  cleanup(): Promise<void>;
}

/** CPU seconds a process has used (utime + stime of /proc/PID/stat), or NaN when it is gone. */
export function cpuSeconds(pid: number, clkTck = 100): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / clkTck;
  } catch {
    return NaN;
  }
}

/** Polls `file` until a line matching `re` appears after byte `from`; resolves with the text after `from` and when it was seen. */
async function waitForLine(file: string, from: number, re: RegExp, timeoutMs: number, pollMs: number): Promise<{ text: string; at: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = (await readFile(file).catch(() => Buffer.alloc(0))).subarray(from).toString('utf8').replace(/\r/g, '');
    if (text.split('\n').some((l) => re.test(l))) return { text, at: performance.now() };
    if (Date.now() > deadline) throw new Error(`the raw VM printed no line matching ${re} within ${timeoutMs} ms; its console ends: ${text.split('\n').slice(-8).join(' | ')}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/**
 * Boots the raw VM (the VM layer with a cell's kernel, initramfs, machine type and `shape`;
 * the host's /usr shared read-only, as a cell's) and connects to its channel. Each `round`
 * hot-plugs `image` with `attachDisk` (the cells' QMP commands and options), waits for the
 * guest to mount it and run fio, then detaches it with `detachDisk`.
 */
export async function rawVm(o: { dir: string; image: string; shape: RawVmShape; accel: Accel; logger: Logger }): Promise<RawVm> {
  const diskId = 'bench.rawvol';
  const scriptDir = join(o.dir, 'script');
  await mkdir(scriptDir, { recursive: true });
  const script = rawVmScript(diskSerial(diskId), fioArgs('/mnt/vol').join(' '), fioArgs('/mnt/vol', true).join(' '));
  await writeFile(join(scriptDir, 'raw.sh'), script, { mode: 0o755 });
  const vms: VmManager = createVmManager({ stateDir: join(o.dir, 'vms'), logger: o.logger, accel: o.accel });
  const id = 'rawvol';
  let channel: Socket | undefined;
  const cleanup = async (): Promise<void> => {
    channel?.destroy();
    for (const vm of vms.recover()) await vms.destroy(vm.id, 0).catch(() => undefined);
  };
  try {
    const vm = await vms.launch({
      id,
      cpus: o.shape.cpus,
      memoryMiB: o.shape.memoryMiB,
      hotplugSlots: o.shape.hotplugSlots,
      shares: [
        { tag: 'usr', path: '/usr', readonly: true, mountPoint: '/usr' },
        { tag: 'bench', path: scriptDir, readonly: true, mountPoint: '/bench' },
      ],
      exec: 'exec /bin/sh /bench/raw.sh',
      ports: [],
      channel: true,
      labels: {},
    });
    // Connected before the guest opens its port: a port without a host client reads EOF.
    channel = await new Promise<Socket>((resolve, reject) => {
      const s = connect(vm.channelSocket ?? '');
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    channel.on('error', () => undefined); // the VM's end closes when it is destroyed
    await waitForLine(vm.consoleLog, 0, /^RAW-READY$/, 600_000, 250);
    const ch = channel;
    return {
      pid: vm.pid,
      async round(n, createOnly = false) {
        const from = (await readFile(vm.consoleLog)).length;
        ch.write(`${createOnly ? 'create' : 'run'} ${n}\n`);
        const t0 = performance.now();
        await vms.attachDisk(id, { id: diskId, path: o.image, readOnly: false });
        const mounted = await waitForLine(vm.consoleLog, from, new RegExp(`^RAW-(MOUNTED|FAILED) ${n}\\b`), 120_000, 20);
        if (mounted.text.includes(`RAW-FAILED ${n}`)) throw new Error(`the raw VM could not mount its disk: ${mounted.text.slice(-500)}`);
        const attachMs = mounted.at - t0;
        const done = await waitForLine(vm.consoleLog, from, new RegExp(`^RAW-DONE ${n}$`), 600_000, 250);
        const lines = done.text.split('\n');
        const exit = lines.find((l) => l.startsWith(`RAW-FIO-EXIT ${n} `));
        if (exit !== `RAW-FIO-EXIT ${n} 0`) throw new Error(`fio in the raw VM failed (${exit ?? 'no exit line'}): ${lines.slice(-10).join(' | ')}`);
        await vms.detachDisk(id, diskId, { timeoutMs: 60_000 });
        return { attachMs, ...(createOnly ? {} : { figures: parseFioTerse(lines) }) };
      },
      cleanup,
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}
