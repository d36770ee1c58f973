/**
 * Launching and controlling QEMU microvm guests: cells and dedicated VMs (our initramfs plus a
 * guest agent reached over virtio-serial) and machines (own kernel/initrd or a disk). QEMU runs
 * daemonized (`-daemonize -pidfile`), so it outlives the agent; everything needed to find it
 * again sits in one directory per VM (`meta.json`, pidfile, QMP and channel sockets, console
 * log, disk overlay), which `recover()` reads back after an agent restart.
 */
import { spawn } from 'node:child_process';
import { constants, accessSync, existsSync, mkdirSync, openSync, closeSync, readFileSync, readdirSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import type { Logger } from 'pino';
import { buildInitramfs, findKernel } from './initramfs.js';
import { QmpClient, QmpError } from './qmp.js';
import { blockdevAddCommands, blockdevDelCommands, bootDiskArgs, deviceAddCommand, diskNames, diskNodes, diskSerial, portOccupancy, rootPortArgs, rootPortIds, type AttachedDisk, type DiskAttachment } from './disks.js';
import { pidAlive, startTicks } from '../proc/pids.js';
import { run } from '../proc/run.js';
import { sleep } from '../proc/sleep.js';

/** How guest CPUs are run: hardware virtualization or QEMU's software emulation. */
export type Accel = 'kvm' | 'tcg';

/** A host directory shared into the guest over virtio-9p. */
export interface VmShare {
  /** 9p mount tag (letters, digits, `_-`). */
  tag: string;
  /** Host directory. */
  path: string;
  readonly: boolean;
  /** Where our initramfs mounts it (added to `carapace.shares`); omit to leave mounting to the guest. */
  mountPoint?: string;
}

/** A port published from the guest (user-mode networking forward). */
export interface VmPort {
  hostPort: number;
  guestPort: number;
  protocol: 'tcp' | 'udp';
  /** Host address to bind; default 127.0.0.1. */
  hostAddress?: string;
}

/** What to run. Cells and dedicated VMs set `exec`/`channel`; machines set `kernel`/`initrd` or `disk`. */
export interface VmSpec {
  /** Unique per manager; `[a-z0-9][a-z0-9_.-]*`, at most 63 characters. */
  id: string;
  cpus: number;
  memoryMiB: number;
  /** Kernel image; default the manager's (newest /boot/vmlinuz-*). */
  kernel?: string;
  /** Initrd; default the Carapace initramfs (built and cached in the state dir). */
  initrd?: string;
  /** Extra kernel command line, appended after the generated `carapace.*` parameters. */
  append?: string;
  /** Command the Carapace init runs (sh syntax; passed base64-encoded as `carapace.exec64`). */
  exec?: string;
  /**
   * Start `exec` as soon as the shares and the channel's port are up (`carapace.early=1`), before
   * init loads the network, disk and overlay modules and configures eth0; the command must wait
   * for the file $CARAPACE_INIT_DONE before it uses those. The guest agent does (init-script.ts).
   */
  earlyExec?: boolean;
  /**
   * Run instead when `exec` exits with status 14, once (`carapace.fallback64`): node's status
   * when it refuses a startup snapshot made for another node or CPU (the guest agent's, see
   * src/agent/guest-launch.ts).
   */
  fallbackExec?: string;
  /**
   * Boot disk: a copy-on-write qcow2 overlay over `base` in the VM's own directory is attached
   * as /dev/vda; base is never written. `overlay: false` attaches `base` itself (the caller
   * owns a persistent overlay, e.g. a machine's disk that must survive restarts).
   */
  disk?: { base: string; format: 'qcow2' | 'raw'; overlay?: boolean };
  shares: VmShare[];
  /** Ports forwarded by QEMU's user networking (only without `nic`). */
  ports: VmPort[];
  /**
   * The VM's network card on a tap device the caller made (a tenant network's endpoint):
   * `-netdev tap` with this MAC. Without it the VM gets QEMU's user networking, restricted
   * (nothing leaves the VM; `ports` come in).
   */
  nic?: { tap: string; mac: string };
  /** Attach the virtio-serial port `carapace.0` backed by a unix socket (the guest agent channel). */
  channel: boolean;
  labels: Record<string, string>;
  /**
   * PCIe root ports made at boot for disks hot-plugged later (`attachDisk`); 0 or absent: none,
   * and the VM has no PCI bus at all (plain microvm). See README.md for the cost (none measurable).
   */
  hotplugSlots?: number;
  /** Extra disks given at boot (virtio-mmio, after `disk`), found in the guest by `diskSerial(id)`. */
  disks?: DiskAttachment[];
}

/** A VM as the manager sees it. */
export interface VmInfo {
  id: string;
  pid: number;
  state: 'running' | 'exited';
  /** Unix socket of the guest channel (virtio-serial `carapace.0`), when `spec.channel`. */
  channelSocket?: string;
  qmpSocket: string;
  consoleLog: string;
  /** ISO time QEMU was started. */
  bootedAt: string;
  labels: Record<string, string>;
  accel: Accel;
  /** The VM's own directory under the state dir. */
  dir: string;
  /** Ports currently published (launch-time plus run-time `hostfwdAdd`). */
  ports: VmPort[];
  /** The tap the VM's network card is on (VmSpec.nic), when it has one. */
  nic?: { tap: string; mac: string };
}

/** How a VM ended, as far as the host can tell. */
export interface VmExit {
  id: string;
  /** Exit status of the `carapace.exec` process as logged by our init, when it logged one. */
  guestExitCode?: number;
}

/** Options of `createVmManager`. */
export interface VmManagerOptions {
  /** Root of all VM state (one subdirectory per VM, the accel decision, the initramfs cache). */
  stateDir: string;
  logger: Logger;
  /** `auto` probes once (timed boots) and remembers the result in `<stateDir>/accel.json`. */
  accel?: 'auto' | Accel;
  qemuPath?: string;
  qemuImgPath?: string;
  kernelPath?: string;
}

/** Result of the timed acceleration probe, cached in `<stateDir>/accel.json`. */
export interface AccelDecision {
  accel: Accel;
  tcgMs: number;
  /** Wall time of the KVM probe boot; absent when KVM was unavailable or timed out. */
  kvmMs?: number;
  reason: string;
  decidedAt: string;
}

interface Meta {
  spec: VmSpec;
  pid: number;
  /** Field 22 of /proc/pid/stat at launch: guards against pid reuse on recover. */
  startTicks: string;
  accel: Accel;
  bootedAt: string;
  ports: VmPort[];
}

/** The VM layer's public surface; see README.md for the lifecycle. */
export interface VmManager {
  /** Starts a VM; resolves once QEMU runs (sockets listening), not when the guest has booted. */
  launch(spec: VmSpec): Promise<VmInfo>;
  /** Graceful stop: ACPI power button, after `graceMs` QMP quit, then SIGKILL. Idempotent. */
  stop(id: string, graceMs?: number): Promise<void>;
  /** Stops (if needed) and removes the VM's directory, disk overlay included. Idempotent. */
  destroy(id: string, graceMs?: number): Promise<void>;
  /** Current view of one VM; throws when the id is unknown. */
  inspect(id: string): VmInfo;
  /** All VMs found in the state dir (running or exited), e.g. after an agent restart. */
  recover(): VmInfo[];
  /** Resolves when the VM's QEMU process has gone (or `signal` aborts: then rejects). */
  wait(id: string, signal?: AbortSignal): Promise<VmExit>;
  /** Publishes a port at run time (QMP `hostfwd_add`). */
  hostfwdAdd(id: string, port: VmPort): Promise<void>;
  /** Withdraws a published port (QMP `hostfwd_remove`). */
  hostfwdRemove(id: string, port: VmPort): Promise<void>;
  /** Runs `fn` with a QMP connection to the VM, closed afterwards. */
  withQmp<T>(id: string, fn: (qmp: QmpClient) => Promise<T>): Promise<T>;
  /** The acceleration in use (probing once when `auto`). */
  accel(): Promise<Accel>;
  /**
   * Hot-plugs a raw image into a running VM (a free root port of `hotplugSlots`) and returns
   * how the guest sees it. Idempotent: a disk already attached under this id is returned as is
   * (the same id with another image is an error). Resolves once QEMU has added the device; the
   * guest notices it a fraction of a second later (wait for its serial in /sys/block).
   */
  attachDisk(id: string, disk: DiskAttachment): Promise<AttachedDisk>;
  /**
   * Unplugs a hot-plugged disk and closes its image. The guest should have unmounted it (and may
   * have powered its slot off already: see README.md); otherwise QEMU asks it through the PCIe
   * attention button, which Linux honours after 5 s. Idempotent, also on a VM that is gone.
   * Rejects when the device is still there after `timeoutMs` (default 20 s): a guest that
   * holds its device keeps it until the VM stops.
   */
  detachDisk(id: string, diskId: string, opts?: { timeoutMs?: number; guestGraceMs?: number }): Promise<void>;
  /** `detachDisk` by the disk's serial (a disk found by `listDisks` whose id the caller no longer knows). */
  detachSerial(id: string, serial: string, opts?: { timeoutMs?: number; guestGraceMs?: number }): Promise<void>;
  /** The disks QEMU has open (boot-time and hot-plugged), by serial, read from QEMU itself. */
  listDisks(id: string): Promise<AttachedDisk[]>;
}

const ID_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const NETDEV = 'n0';
/** sockaddr_un path limit on Linux, including the terminating NUL. */
const SUN_PATH_MAX = 107;

/** Creates a manager over `stateDir`. Cheap; no I/O until a method is called (apart from mkdir). */
export function createVmManager(opts: VmManagerOptions): VmManager {
  const log = opts.logger;
  const qemu = opts.qemuPath ?? 'qemu-system-x86_64';
  const qemuImg = opts.qemuImgPath ?? 'qemu-img';
  const stateDir = resolvePath(opts.stateDir);
  const vmsDir = join(stateDir, 'vms');
  mkdirSync(vmsDir, { recursive: true });
  let accelP: Promise<Accel> | undefined;
  /** Per-VM chain serialising disk changes (two attaches must not pick the same free port). */
  const diskLocks = new Map<string, Promise<unknown>>();
  const withDiskLock = <T>(id: string, fn: () => Promise<T>): Promise<T> => {
    const prev = diskLocks.get(id) ?? Promise.resolve();
    const p = prev.then(fn, fn);
    const tail = p.catch(() => undefined);
    diskLocks.set(id, tail);
    void tail.then(() => {
      if (diskLocks.get(id) === tail) diskLocks.delete(id);
    });
    return p;
  };
  const readDisks = async (q: QmpClient): Promise<AttachedDisk[]> => {
    const [pci, named] = await Promise.all([q.execute('query-pci'), q.execute('query-named-block-nodes')]);
    const occ = portOccupancy(pci);
    const portOf = new Map<string, string>();
    for (const [port, dev] of occ) if (dev !== undefined) portOf.set(dev, port);
    return [...diskNodes(named)].map(([serial, n]) => {
      const port = portOf.get(diskNames(serial).device);
      return { serial, path: n.path, readOnly: n.readOnly, ...(port !== undefined ? { port } : {}) };
    });
  };
  let initrdP: Promise<string> | undefined;
  const kernel = (): string => opts.kernelPath ?? findKernel().path;
  const defaultInitrd = (): Promise<string> =>
    (initrdP ??= buildInitramfs({ out: join(stateDir, 'cache') }).then((r) => r.path));

  const dirOf = (id: string): string => {
    if (!ID_RE.test(id)) throw new Error(`invalid VM id ${JSON.stringify(id)}`);
    return join(vmsDir, id);
  };

  function readMeta(id: string): Meta {
    const p = join(dirOf(id), 'meta.json');
    if (!existsSync(p)) throw new Error(`unknown VM ${id}`);
    return JSON.parse(readFileSync(p, 'utf8')) as Meta; // written by writeMeta below
  }
  function writeMeta(id: string, meta: Meta): void {
    const p = join(dirOf(id), 'meta.json');
    writeFileSync(`${p}.tmp`, JSON.stringify(meta, null, 2));
    renameSync(`${p}.tmp`, p);
  }
  function isRunning(meta: Meta): boolean {
    return pidAlive(meta.pid) && startTicks(meta.pid) === meta.startTicks;
  }
  function info(id: string, meta: Meta): VmInfo {
    const dir = dirOf(id);
    return {
      id,
      pid: meta.pid,
      state: isRunning(meta) ? 'running' : 'exited',
      channelSocket: meta.spec.channel ? join(dir, 'channel.sock') : undefined,
      qmpSocket: join(dir, 'qmp.sock'),
      consoleLog: join(dir, 'console.log'),
      bootedAt: meta.bootedAt,
      labels: meta.spec.labels,
      accel: meta.accel,
      dir,
      ports: meta.ports,
      ...(meta.spec.nic ? { nic: meta.spec.nic } : {}),
    };
  }

  async function accel(): Promise<Accel> {
    const mode = opts.accel ?? 'auto';
    if (mode !== 'auto') return mode;
    accelP ??= (async () => {
      const d = await probeAccel({ stateDir, logger: log, qemuPath: qemu, kernelPath: kernel(), initrd: await defaultInitrd() });
      return d.accel;
    })();
    return accelP;
  }

  async function withQmp<T>(id: string, fn: (qmp: QmpClient) => Promise<T>): Promise<T> {
    const meta = readMeta(id);
    if (!isRunning(meta)) throw new Error(`VM ${id} is not running`);
    const qmp = await QmpClient.connect(join(dirOf(id), 'qmp.sock'));
    try {
      return await fn(qmp);
    } finally {
      qmp.close();
    }
  }

  async function waitGone(meta: Meta, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (isRunning(meta)) {
      if (Date.now() >= end) return false;
      await sleep(100);
    }
    return true;
  }

  const manager: VmManager = {
    accel,
    withQmp,

    listDisks(id) {
      return withQmp(id, readDisks);
    },

    attachDisk(id, disk) {
      const serial = diskSerial(disk.id);
      const path = resolvePath(disk.path);
      return withDiskLock(id, () =>
        withQmp(id, async (q) => {
          const meta = readMeta(id);
          const ports = rootPortIds(meta.spec.hotplugSlots ?? 0);
          const occ = portOccupancy(await q.execute('query-pci'));
          const nodes = diskNodes(await q.execute('query-named-block-nodes'));
          const have = nodes.get(serial);
          const device = diskNames(serial).device;
          const pluggedAt = [...occ].find(([, dev]) => dev === device)?.[0];
          if (have && (have.path !== path || have.readOnly !== disk.readOnly)) {
            if (pluggedAt !== undefined) throw new Error(`VM ${id}: disk ${disk.id} is attached with another image or mode (${have.path}${have.readOnly ? ', read-only' : ''})`);
            // Left by an attach cut short (the agent died between blockdev-add and device_add).
            for (const c of blockdevDelCommands(serial)) await q.execute(c.command, c.args).catch(() => undefined);
          } else if (have && pluggedAt !== undefined) {
            return { serial, path, readOnly: disk.readOnly, port: pluggedAt };
          }
          const port = ports.find((p) => occ.has(p) && occ.get(p) === undefined);
          if (port === undefined) throw new Error(`VM ${id}: no free disk slot (${ports.length} hot-plug slots, all used)`);
          if (!(have && have.path === path && have.readOnly === disk.readOnly)) {
            for (const c of blockdevAddCommands(serial, path, disk.readOnly)) await q.execute(c.command, c.args);
          }
          const add = deviceAddCommand(serial, port);
          try {
            await q.execute(add.command, add.args);
          } catch (e) {
            for (const c of blockdevDelCommands(serial)) await q.execute(c.command, c.args).catch(() => undefined);
            throw e;
          }
          log.info({ vm: id, disk: disk.id, serial, port, readOnly: disk.readOnly }, 'disk attached');
          return { serial, path, readOnly: disk.readOnly, port };
        }),
      );
    },

    detachDisk(id, diskId, o = {}) {
      return manager.detachSerial(id, diskSerial(diskId), o);
    },

    detachSerial(id, serial, o = {}) {
      if (!/^cv[0-9a-f]{18}$/.test(serial)) throw new Error(`invalid disk serial ${JSON.stringify(serial)}`);
      const diskId = serial;
      const timeoutMs = o.timeoutMs ?? 20_000;
      const guestGraceMs = o.guestGraceMs ?? 2_000;
      return withDiskLock(id, async () => {
        let meta: Meta;
        try {
          meta = readMeta(id);
        } catch {
          return; // unknown VM: nothing holds the image
        }
        if (!isRunning(meta)) return; // QEMU is gone and with it its open images
        await withQmp(id, async (q) => {
          const device = diskNames(serial).device;
          const t0 = Date.now();
          let askedAt: number | undefined;
          for (;;) {
            const occ = portOccupancy(await q.execute('query-pci'));
            if (![...occ.values()].includes(device)) break;
            // The guest agent powers the slot off itself after unmounting (immediate); only a
            // guest that did not gets the attention button (Linux waits 5 s before it acts).
            // Pressed again every 6 s: a press while the guest is still bringing the slot up
            // (a detach right after an attach) is refused ("guest is busy") or ignored by
            // Linux, and QEMU accepts a new request 5 s after the last.
            if (Date.now() - t0 >= guestGraceMs && (askedAt === undefined || Date.now() - askedAt >= 6_000)) {
              askedAt = Date.now();
              await q.execute('device_del', { id: device }).catch((e: unknown) => {
                if (!(e instanceof QmpError)) throw e; // busy guest, unplug in progress, or just gone
              });
            }
            if (Date.now() - t0 > timeoutMs) throw new Error(`VM ${id}: disk ${diskId} (${serial}) still plugged in after ${timeoutMs} ms; the guest did not release it`);
            await sleep(100);
          }
          const nodes = diskNodes(await q.execute('query-named-block-nodes'));
          if (!nodes.has(serial)) return;
          for (;;) {
            try {
              for (const c of blockdevDelCommands(serial)) {
                await q.execute(c.command, c.args).catch((e: unknown) => {
                  // Already deleted (an earlier, interrupted detach) is fine; "in use" is retried.
                  if (e instanceof QmpError && /find|not found/i.test(e.message)) return;
                  throw e;
                });
              }
              break;
            } catch (e) {
              if (Date.now() - t0 > timeoutMs) throw e;
              await sleep(100); // the device's backend is released just after the device goes
            }
          }
          log.info({ vm: id, disk: diskId, serial, ms: Date.now() - t0 }, 'disk detached');
        });
      });
    },

    async launch(spec) {
      const dir = dirOf(spec.id);
      if (existsSync(join(dir, 'meta.json'))) throw new Error(`VM ${spec.id} already exists`);
      for (const s of spec.shares) {
        if (!/^[A-Za-z0-9_-]{1,31}$/.test(s.tag)) throw new Error(`invalid share tag ${JSON.stringify(s.tag)}`);
        if (s.mountPoint !== undefined && !/^\/[^\s,:"]*$/.test(s.mountPoint)) throw new Error(`invalid mount point ${JSON.stringify(s.mountPoint)}`);
      }
      if (join(dir, 'channel.sock').length > SUN_PATH_MAX) throw new Error(`state dir path too long for unix sockets: ${dir}`);
      mkdirSync(dir, { recursive: true });
      try {
        const acc = await accel();
        const args = await qemuArgs(spec, dir, acc);
        const errFile = join(dir, 'qemu.stderr');
        const fd = openSync(errFile, 'w');
        const code = await new Promise<number>((res, rej) => {
          // -daemonize: this parent exits once QEMU is initialised (sockets listening) and its
          // daemon child runs in its own session, so it survives the agent.
          const child = spawn(qemu, args, { stdio: ['ignore', fd, fd], detached: true });
          child.on('error', rej);
          child.on('exit', (c, s) => res(c ?? (s ? 128 : 1)));
        }).finally(() => closeSync(fd));
        if (code !== 0) throw new Error(`qemu exited ${code}: ${readFileSync(errFile, 'utf8').trim().slice(0, 2000)}`);
        const pid = Number(readFileSync(join(dir, 'qemu.pid'), 'utf8').trim());
        const meta: Meta = { spec, pid, startTicks: startTicks(pid), accel: acc, bootedAt: new Date().toISOString(), ports: [...spec.ports] };
        writeMeta(spec.id, meta);
        log.info({ vm: spec.id, pid, accel: acc }, 'vm launched');
        return info(spec.id, meta);
      } catch (e) {
        rmSync(dir, { recursive: true, force: true });
        throw e;
      }
    },

    async stop(id, graceMs = 10_000) {
      const meta = readMeta(id);
      if (!isRunning(meta)) return;
      try {
        await withQmp(id, (q) => q.execute('system_powerdown'));
        if (await waitGone(meta, graceMs)) return log.info({ vm: id }, 'vm powered off');
        await withQmp(id, (q) => q.execute('quit')).catch(() => undefined);
        if (await waitGone(meta, 3_000)) return log.info({ vm: id }, 'vm quit');
      } catch (e) {
        log.warn({ vm: id, err: String(e) }, 'vm graceful stop failed');
      }
      if (isRunning(meta)) process.kill(meta.pid, 'SIGKILL');
      await waitGone(meta, 5_000);
      log.warn({ vm: id }, 'vm killed');
    },

    async destroy(id, graceMs = 10_000) {
      const dir = dirOf(id);
      if (existsSync(join(dir, 'meta.json'))) await manager.stop(id, graceMs);
      rmSync(dir, { recursive: true, force: true });
      log.info({ vm: id }, 'vm destroyed');
    },

    inspect(id) {
      return info(id, readMeta(id));
    },

    recover() {
      const out: VmInfo[] = [];
      for (const id of readdirSync(vmsDir).sort()) {
        if (!ID_RE.test(id) || !existsSync(join(vmsDir, id, 'meta.json'))) continue;
        out.push(info(id, readMeta(id)));
      }
      return out;
    },

    async wait(id, signal) {
      const meta = readMeta(id);
      while (isRunning(meta)) {
        if (signal?.aborted) throw new Error(`wait for VM ${id} aborted`);
        await sleep(100, signal);
      }
      return { id, guestExitCode: guestExitCode(join(dirOf(id), 'console.log')) };
    },

    async hostfwdAdd(id, port) {
      const out = await withQmp(id, (q) => q.hmp(`hostfwd_add ${NETDEV} ${hostfwdRule(port)}`));
      if (out.trim() !== '') throw new Error(`hostfwd_add ${hostfwdRule(port)}: ${out.trim()}`);
      const meta = readMeta(id);
      writeMeta(id, { ...meta, ports: [...meta.ports, port] });
    },

    async hostfwdRemove(id, port) {
      const rule = `${port.protocol}:${port.hostAddress ?? '127.0.0.1'}:${port.hostPort}`;
      const out = await withQmp(id, (q) => q.hmp(`hostfwd_remove ${NETDEV} ${rule}`));
      if (!/removed/i.test(out) && out.trim() !== '') throw new Error(`hostfwd_remove ${rule}: ${out.trim()}`);
      const meta = readMeta(id);
      writeMeta(id, { ...meta, ports: meta.ports.filter((p) => !(p.hostPort === port.hostPort && p.protocol === port.protocol)) });
    },
  };

  async function qemuArgs(spec: VmSpec, dir: string, acc: Accel): Promise<string[]> {
    const slots = spec.hotplugSlots ?? 0;
    if (!Number.isInteger(slots) || slots < 0 || slots > 32) throw new Error(`VM ${spec.id}: hotplugSlots must be 0..32`);
    const args = [
      // pcie=on gives microvm a PCIe host bridge (ECAM) for the hot-plug root ports.
      '-M', `microvm,pit=on,pic=on,rtc=on${slots > 0 ? ',pcie=on' : ''}`,
      ...accelArgs(acc),
      '-smp', String(spec.cpus),
      '-m', `${spec.memoryMiB}M`,
      // Free page reporting: the guest hands back memory it frees (a stopped container, boot's
      // transients) in 2 MiB blocks, and QEMU drops it from its RSS.
      '-device', 'virtio-balloon-device,free-page-reporting=on',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-daemonize', '-pidfile', join(dir, 'qemu.pid'),
      '-serial', `file:${join(dir, 'console.log')}`,
      '-qmp', `unix:${join(dir, 'qmp.sock')},server=on,wait=off`,
      '-kernel', spec.kernel ?? kernel(),
      '-initrd', spec.initrd ?? (await defaultInitrd()),
      '-append', kernelCmdline(spec, acc),
      ...rootPortArgs(slots),
    ];
    if (spec.channel) {
      args.push(
        '-chardev', `socket,id=ch0,path=${join(dir, 'channel.sock')},server=on,wait=off`,
        '-device', 'virtio-serial-device',
        '-device', 'virtserialport,chardev=ch0,name=carapace.0',
      );
    }
    spec.shares.forEach((s, i) => {
      args.push(
        '-fsdev', `local,id=fs${i},path=${qemuOpt(resolvePath(s.path))},security_model=none${s.readonly ? ',readonly=on' : ''}`,
        '-device', `virtio-9p-device,fsdev=fs${i},mount_tag=${s.tag}`,
      );
    });
    if (spec.nic) {
      // A persistent tap made (and filtered) by the host's tenant network: QEMU only opens it.
      if (spec.ports.length > 0) throw new Error(`VM ${spec.id}: ports are forwarded by QEMU's user networking only; with a tap they are the tenant network's`);
      args.push('-netdev', `tap,id=${NETDEV},ifname=${qemuOpt(spec.nic.tap)},script=no,downscript=no`, '-device', `virtio-net-device,netdev=${NETDEV},mac=${spec.nic.mac}`);
    } else {
      const fwd = spec.ports.map((p) => `,hostfwd=${hostfwdRule(p)}`).join('');
      // restrict=on: the guest cannot open connections to the host or, through the host, anywhere
      // else. Without it QEMU's user networking turns a guest's connection into one made by the
      // host: a tenant's VM reached the host's loopback-only services (10.0.2.2 is the host's
      // 127.0.0.1: the API, a local registry, an etcd) and other tenants' bridge containers past
      // their isolation rules. Published ports (hostfwd) still come in.
      args.push('-netdev', `user,id=${NETDEV},restrict=on${fwd}`, '-device', `virtio-net-device,netdev=${NETDEV}`);
    }
    if (spec.disk?.overlay === false) {
      args.push('-drive', `id=d0,file=${qemuOpt(resolvePath(spec.disk.base))},format=${spec.disk.format},if=none`, '-device', 'virtio-blk-device,drive=d0');
    } else if (spec.disk) {
      const overlay = join(dir, 'disk.qcow2');
      const r = await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-b', resolvePath(spec.disk.base), '-F', spec.disk.format, overlay]);
      if (r.code !== 0) throw new Error(`qemu-img create: ${r.stderr.trim()}`);
      args.push('-drive', `id=d0,file=${qemuOpt(overlay)},format=qcow2,if=none`, '-device', 'virtio-blk-device,drive=d0');
    }
    for (const d of spec.disks ?? []) args.push(...bootDiskArgs(diskSerial(d.id), resolvePath(d.path), d.readOnly));
    return args;
  }

  return manager;
}

/**
 * The kernel command line for `spec`: serial console, reboot-on-panic (QEMU then exits because
 * of -no-reboot), and the `carapace.*` parameters our init reads. Exported for tests and docs.
 */
export function kernelCmdline(spec: Pick<VmSpec, 'shares' | 'channel' | 'exec' | 'earlyExec' | 'fallbackExec' | 'append' | 'hotplugSlots'>, acc: Accel): string {
  const parts = ['console=ttyS0', 'panic=-1', 'quiet', ...tcgParams(acc)];
  // microvm's ACPI tables let the kernel find ECAM only after _OSC is negotiated, so Linux does
  // not ask for (or get) native PCIe hot-plug control; without it pciehp never binds and a
  // hot-plugged disk is not seen. Force the port services (measured: README.md).
  if ((spec.hotplugSlots ?? 0) > 0) parts.push('pcie_ports=native');
  const mounted = spec.shares.filter((s) => s.mountPoint !== undefined);
  if (mounted.length > 0) {
    parts.push(`carapace.shares=${mounted.map((s) => `${s.tag}:${s.mountPoint ?? ''}:${s.readonly ? 'ro' : 'rw'}`).join(',')}`);
  }
  if (spec.channel) parts.push('carapace.port=carapace.0');
  if (spec.exec !== undefined) parts.push(`carapace.exec64=${Buffer.from(spec.exec).toString('base64')}`);
  if (spec.exec !== undefined && spec.earlyExec === true) parts.push('carapace.early=1');
  if (spec.exec !== undefined && spec.fallbackExec !== undefined) parts.push(`carapace.fallback64=${Buffer.from(spec.fallbackExec).toString('base64')}`);
  if (spec.append) parts.push(spec.append);
  return parts.join(' ');
}

/**
 * The kernel parameters of a guest under TCG. Timers: on a busy host the guest's PIT-based TSC
 * calibration can fail, after which the kernel hangs before printing anything (seen here under
 * load). TCG's guest TSC ticks at the host's rate, so hand the kernel that rate
 * (`tsc_early_khz`) and skip the IO-APIC timer check. Randomness: trust TCG_CPU's RDRAND.
 */
function tcgParams(acc: Accel): string[] {
  if (acc !== 'tcg') return [];
  // tsc=reliable: TCG's TSC follows the host's monotonic clock, but the guest cannot check it
  // against a reference (microvm has no HPET or PM timer) and falls back to jiffies, where the
  // tick can never stop (see accelArgs).
  // random.trust_cpu: Debian's kernels default to it (CONFIG_RANDOM_TRUST_CPU); said here for
  // kernels built without it, so that TCG_CPU's RDRAND seeds the generator (see accelArgs).
  const params = ['no_timer_check', 'tsc=reliable', 'random.trust_cpu=on'];
  try {
    const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
    if (mhz !== undefined) params.push(`tsc_early_khz=${Math.round(Number(mhz) * 1000)}`);
  } catch {
    // No /proc/cpuinfo: keep the kernel's own calibration.
  }
  return params;
}

/**
 * QEMU's accelerator and CPU model. KVM: the host's CPU. TCG (software emulation):
 *  - tb-size: the translated-code cache, filled as code runs; a full cache is flushed and
 *    refilled, not grown, which costs time when a cell's working set is larger (TCG_TB_SIZE_MIB);
 *  - qemu64 with ARAT (the local APIC timer keeps running in deep idle): without it the guest
 *    needs a broadcast timer to stop its tick, microvm has none, and an idle guest took
 *    250 timer interrupts a second per vCPU, 5% of a host core doing nothing (0.5% with it);
 *  - and with RDRAND (TCG answers it from the host's getrandom), which the guest kernel
 *    trusts to seed its random generator at boot (`random.trust_cpu=on`, see tcgParams).
 *    Without it the generator was seeded only by jitter entropy, ~3 s into the boot, and until
 *    then every getrandom() blocked: node's start (OpenSSL seeding its generator) waited
 *    1.0 s in it, so did the guest agent's, before every cell's Ready. With it: "crng init
 *    done" at 0.06 s of uptime, a first `node -e 0` in a cell-shaped VM 1.0 s instead of 2.2 s.
 */
export function accelArgs(acc: Accel): string[] {
  if (acc === 'kvm') return ['-accel', 'kvm', '-cpu', 'host'];
  const tb = Number(process.env.CARAPACE_TCG_TB_MIB ?? TCG_TB_SIZE_MIB);
  return ['-accel', `tcg,tb-size=${Number.isInteger(tb) && tb >= 16 ? tb : TCG_TB_SIZE_MIB}`, '-cpu', TCG_CPU];
}

/**
 * The guest CPU model under TCG. scripts/build-guest.mjs builds the guest agent's startup
 * snapshot under `qemu-x86_64 -cpu` this same model: V8 accepts a snapshot only on the CPU
 * features it was made with.
 */
export const TCG_CPU = 'qemu64,+arat,+rdrand';

/**
 * Size of TCG's translated-code cache per VM, MiB (see accelArgs): QEMU's own default, 1 GiB.
 * The agent's environment variable CARAPACE_TCG_TB_MIB (16 or more) overrides it. A trade, in
 * the cell bench (one run each, guest agent from its startup snapshot): 1024 gave warm starts
 * of 0.9 s (p50), Ready at 1.42x init and an idle nginx cell of 443 MiB RSS; 256 gave 1.8 s,
 * 1.63x and 441 MiB; 64 gave 1.4-2.0 s, 1.52-1.71x and 364 MiB. A cell's working set (node and
 * its JIT, crun, the kernel) does not fit a smaller cache, which is then flushed and refilled
 * again and again. Set 64 for density where starts matter less (79 MiB less per idle cell).
 */
export const TCG_TB_SIZE_MIB = 1024;

function hostfwdRule(p: VmPort): string {
  return `${p.protocol}:${p.hostAddress ?? '127.0.0.1'}:${p.hostPort}-:${p.guestPort}`;
}

/** Escapes a value for a QEMU option list (a comma is written as two). */
function qemuOpt(v: string): string {
  return v.replace(/,/g, ',,');
}

/** Exit status of the guest workload as logged by our init (`carapace-init: exit=N`), if any. */
export function guestExitCode(consoleLog: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(consoleLog, 'utf8');
  } catch {
    return undefined;
  }
  const all = [...text.matchAll(/carapace-init: exit=(\d+)/g)];
  const last = all[all.length - 1];
  return last ? Number(last[1]) : undefined;
}

/**
 * Decides between KVM and TCG by timing one boot under each (our initramfs with
 * `carapace.exec=true`: boot, load modules, power off). KVM wins only when it is available and
 * clearly faster (nested KVM can be far slower than TCG). The decision is cached in
 * `<stateDir>/accel.json`; delete that file to probe again.
 */
export async function probeAccel(o: {
  stateDir: string; logger: Logger; qemuPath?: string; kernelPath: string; initrd: string;
}): Promise<AccelDecision> {
  const file = join(o.stateDir, 'accel.json');
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as AccelDecision; // written below
  const qemu = o.qemuPath ?? 'qemu-system-x86_64';
  const boot = async (acc: Accel, timeoutMs: number): Promise<number | undefined> => {
    const args = [
      '-M', 'microvm,pit=on,pic=on,rtc=on', ...accelArgs(acc),
      '-m', '256M', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-serial', 'null', '-kernel', o.kernelPath, '-initrd', o.initrd,
      '-append', `console=ttyS0 panic=-1 quiet ${tcgParams(acc).join(' ')} carapace.net=none carapace.exec=true`,
    ];
    const t0 = Date.now();
    try {
      const r = await run(qemu, args, { timeoutMs });
      return r.code === 0 ? Date.now() - t0 : undefined;
    } catch {
      return undefined; // timed out (run killed it) or could not start
    }
  };
  const tcgMs = await boot('tcg', 60_000);
  if (tcgMs === undefined) throw new Error('accel probe: a TCG boot of the Carapace initramfs did not complete within 60 s');
  let decision: AccelDecision;
  let kvmUsable = true;
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    kvmUsable = false;
  }
  if (!kvmUsable) {
    decision = { accel: 'tcg', tcgMs, reason: '/dev/kvm not accessible', decidedAt: new Date().toISOString() };
  } else {
    const kvmMs = await boot('kvm', tcgMs);
    decision = kvmMs !== undefined && kvmMs < tcgMs * 0.8
      ? { accel: 'kvm', tcgMs, kvmMs, reason: 'KVM boot faster', decidedAt: new Date().toISOString() }
      : { accel: 'tcg', tcgMs, ...(kvmMs !== undefined ? { kvmMs } : {}), reason: kvmMs === undefined ? 'KVM boot failed or slower than TCG' : 'KVM boot not faster than TCG', decidedAt: new Date().toISOString() };
  }
  mkdirSync(o.stateDir, { recursive: true });
  writeFileSync(file, JSON.stringify(decision, null, 2));
  o.logger.info(decision, 'vm acceleration decided');
  return decision;
}
