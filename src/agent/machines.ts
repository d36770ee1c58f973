/**
 * The host agent's machines: plain VMs with their own kernel (+ initrd) or disk, for software
 * that wants a whole machine. Each machine gets a persistent copy-on-write overlay over its
 * base disk (created once, kept across restarts, removed when the machine is deleted; the
 * base is never written), a serial console log, published ports, the desired power state
 * (`spec.running`) and a restart policy. Level-based like everything else: a change to the
 * Machine object or the VM exiting queues the machine, and one pass makes them agree.
 */
import { existsSync } from 'node:fs';
import { appendFile, mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Env } from '../core/actions.js';
import type { Resources } from '../core/resources.js';
import type { Machine } from '../model/objects.js';
import { kindPrefix } from '../model/keys.js';
import type { LogLine, LogOptions } from '../runtime/driver.js';
import type { ReconcileResult } from '../reconcile/workqueue.js';
import { Reconciler, watchOf } from '../reconcile/reconciler.js';
import { findKernel } from '../vm/initramfs.js';
import type { VmInfo, VmManager, VmSpec } from '../vm/qemu.js';
import { run } from '../proc/run.js';
import { decideAfterExit } from './restart-policy.js';
import type { HostNetworking } from './network-controller.js';
import type { Endpoint } from '../network/types.js';

export interface MachineRunnerOptions {
  hostName: string;
  resources: Resources;
  env: Env;
  logger: Logger;
  vms: VmManager;
  /** Where operators put machine kernels, initrds and base disks; manifests name files in it. */
  imagesDir: string;
  /** Per-machine persistent state (disk overlays, console logs of earlier boots). */
  stateDir: string;
  /**
   * The host's tenant networks: a machine's VM gets a tap on its tenant's segment and its
   * own OS asks DHCP for its address (a fixed lease), as on any network. Absent: QEMU's
   * restricted user networking with its port forwards.
   */
  network?: HostNetworking;
  /**
   * The image file of a tenant's volume (the host storage library's `VolumeStore.imagePath`,
   * the volume not mounted on the host), for `spec.disks`. Absent: machines with disks fail to start.
   */
  volumeImage?: (tenant: string, volume: string) => Promise<string>;
}

/** The disk id (and so the guest-visible serial, `diskSerial`) of a machine's volume disk. */
export function machineVolumeDiskId(tenant: string, volume: string): string {
  return `${tenant}.${volume}`;
}

function key(m: Machine): string {
  return `${m.metadata.tenant ?? ''}/${m.metadata.name}`;
}

export class MachineRunner {
  private readonly log: Logger;
  private readonly loop: Reconciler;
  private readonly watching = new Set<string>();

  constructor(private readonly o: MachineRunnerOptions) {
    this.log = o.logger.child({ component: 'machines', host: o.hostName });
    this.loop = new Reconciler({
      name: 'machines',
      store: o.resources.store,
      logger: this.log,
      reconcile: (k) => this.reconcile(k),
      concurrency: 2,
      resync: { everyMs: 15_000, keys: async () => (await o.resources.list('Machine')).items.filter((m) => m.status.host === o.hostName).map(key) },
      watches: [watchOf<Machine>(kindPrefix('Machine'), (e) => (e.value.status.host === o.hostName ? [key(e.value)] : []))],
    });
  }

  /** The VM id of a machine: stable for its whole life, derived from its uid. */
  static vmId(m: Machine): string {
    return `m-${m.metadata.uid.replace(/[^a-z0-9]/gi, '').toLowerCase().slice(0, 16)}`;
  }

  /** Runs until `signal` aborts; VMs keep running after it. */
  async start(signal: AbortSignal): Promise<void> {
    await this.loop.start(signal);
  }

  private vm(id: string): VmInfo | undefined {
    try {
      return this.o.vms.inspect(id);
    } catch {
      return undefined; // unknown id
    }
  }

  private file(name: string): string {
    // Names are validated by the schema (no '/'); joining keeps them inside the image directory.
    return join(this.o.imagesDir, name);
  }

  private async setStatus(m: Machine, patch: Partial<Machine['status']>, clear: (keyof Machine['status'])[] = []): Promise<void> {
    await this.o.resources.mutate('Machine', m.metadata.name, m.metadata.tenant, (x) => {
      if (x.metadata.uid !== m.metadata.uid) return undefined;
      const next = { ...x.status, ...patch };
      for (const k of clear) delete next[k];
      x.status = next;
      return x;
    });
  }

  private async reconcile(k: string): Promise<ReconcileResult> {
    const [tenant = '', name = ''] = k.split('/');
    const m = await this.o.resources.get('Machine', name, tenant);
    if (!m || m.status.host !== this.o.hostName) return;
    const id = MachineRunner.vmId(m);
    const vm = this.vm(id);
    const machineDir = join(this.o.stateDir, id);
    if (m.metadata.deletionRequestedAt) {
      if (vm) await this.o.vms.destroy(id, 20_000);
      if (this.o.network) {
        await this.o.network.net.detach(id);
        this.o.network.controller.touch(tenant);
      }
      await rm(machineDir, { recursive: true, force: true });
      await this.o.resources.remove('Machine', name, tenant);
      this.log.info({ machine: k }, 'machine removed');
      return;
    }
    const running = vm?.state === 'running';
    if (!m.spec.running) {
      if (vm) {
        await this.o.vms.destroy(id, 30_000);
        this.log.info({ machine: k }, 'machine stopped');
      }
      if (m.status.phase !== 'Stopped') await this.setStatus(m, { phase: 'Stopped', reason: 'StoppedByUser', message: 'stopped on request', finishedAt: this.o.env.now() }, ['pid', 'nextRestartAt']);
      return;
    }
    if (running && m.status.runningGeneration !== m.metadata.generation) {
      // The spec changed (or a restart was asked for): boot again with the new spec; the disk overlay stays.
      await this.o.vms.destroy(id, 30_000);
      return this.boot(m, machineDir, 'Restarted');
    }
    if (running) {
      this.watchExit(m, id);
      if (m.status.phase !== 'Running') await this.setStatus(m, { phase: 'Running', reason: 'Started' });
      return;
    }
    if (vm?.state === 'exited') {
      // It powered off or crashed: the restart policy decides.
      const log = await readFile(vm.consoleLog, 'utf8').catch(() => '');
      await this.archiveConsole(machineDir, vm.consoleLog);
      await this.o.vms.destroy(id, 0);
      const ranMs = Date.now() - Date.parse(m.status.startedAt ?? new Date().toISOString());
      const exitCode = /Kernel panic/.test(log) ? 1 : 0;
      const d = decideAfterExit({ restartPolicy: m.spec.restartPolicy, maxRestarts: -1 }, exitCode, m.status.restarts, ranMs);
      const finishedAt = this.o.env.now();
      if (d.action === 'stop') {
        await this.setStatus(m, { phase: d.phase === 'Succeeded' ? 'Stopped' : 'Failed', reason: exitCode ? 'Crashed' : 'PoweredOff', message: exitCode ? 'the kernel panicked' : 'the machine powered off', finishedAt, exitCode }, ['pid']);
        return;
      }
      const next = new Date(Date.now() + d.delayMs).toISOString();
      await this.setStatus(m, { phase: 'Backoff', reason: exitCode ? 'Crashed' : 'PoweredOff', message: `the machine ${exitCode ? 'crashed' : 'powered off'}; restarting in ${Math.round(d.delayMs / 1000)}s`, finishedAt, exitCode, nextRestartAt: next, restarts: m.status.restarts + 1 }, ['pid']);
      return { requeueAfterMs: d.delayMs };
    }
    if (m.status.phase === 'Backoff' && m.status.nextRestartAt) {
      const wait = Date.parse(m.status.nextRestartAt) - Date.now();
      if (wait > 0) return { requeueAfterMs: wait };
    }
    if (m.status.phase === 'Failed' && m.status.runningGeneration === m.metadata.generation) return;
    return this.boot(m, machineDir, 'Started');
  }

  private async archiveConsole(machineDir: string, consoleLog: string): Promise<void> {
    await mkdir(machineDir, { recursive: true });
    const prev = await readFile(consoleLog).catch(() => undefined);
    if (prev) await appendFile(join(machineDir, 'console.log'), prev);
  }

  private async boot(m: Machine, machineDir: string, reason: string): Promise<ReconcileResult> {
    const id = MachineRunner.vmId(m);
    const k = key(m);
    const missing = [m.spec.kernel && m.spec.kernel !== 'host' ? m.spec.kernel : undefined, m.spec.initrd, m.spec.disk?.image].filter((f): f is string => !!f).filter((f) => !existsSync(this.file(f)));
    if (missing.length > 0) {
      await this.setStatus(m, { phase: 'Failed', reason: 'ImageMissing', message: `not in the machine image directory ${this.o.imagesDir}: ${missing.join(', ')}`, runningGeneration: m.metadata.generation });
      return;
    }
    await mkdir(machineDir, { recursive: true });
    const spec: VmSpec = {
      id,
      cpus: m.spec.cpu,
      memoryMiB: m.spec.memory,
      shares: [],
      ports: m.spec.ports.map((p) => ({ hostPort: p.hostPort, guestPort: p.guestPort, protocol: p.protocol, hostAddress: '0.0.0.0' })),
      channel: false,
      labels: { 'carapace.machine': k },
    };
    if (m.spec.kernel) spec.kernel = m.spec.kernel === 'host' ? findKernel().path : this.file(m.spec.kernel);
    if (m.spec.initrd) spec.initrd = this.file(m.spec.initrd);
    if (m.spec.cmdline) spec.append = m.spec.cmdline;
    if (this.o.network) {
      // Its address stays the same across power cycles and restarts: the endpoint lives until the machine is deleted.
      const tenant = m.metadata.tenant ?? '';
      const n = this.o.network;
      const ports = m.spec.ports.map((p) => ({ containerPort: p.guestPort, hostPort: p.hostPort, protocol: p.protocol }));
      // A segment that cannot be made yet throws (retried); an attachment the user must fix fails the machine.
      const attached = await n.controller.attachToTenant(tenant, (): Promise<Endpoint | Error> =>
        n.net.attach({ id, tenant, kind: 'tap', ports, dhcp: true }).catch((e: unknown) => e as Error), // the data plane rejects with Error subclasses
      );
      if (attached instanceof Error) {
        // A host port in use, an exhausted block: the user must change something; say what.
        await this.setStatus(m, { phase: 'Failed', reason: 'NetworkFailed', message: attached.message, runningGeneration: m.metadata.generation });
        return;
      }
      const ep = attached;
      spec.ports = [];
      if (ep.tap) spec.nic = { tap: ep.tap, mac: ep.mac };
      // The Carapace initramfs (no initrd or disk of the machine's own) asks DHCP when told to; an OS of its own does by itself.
      if (!m.spec.initrd && !m.spec.disk) spec.append = ['carapace.net=dhcp', spec.append].filter(Boolean).join(' ');
      await this.setStatus(m, { address: ep.ip, mac: ep.mac });
    }
    if (m.spec.disk) {
      // The machine's own copy-on-write layer: made once, kept across restarts.
      const overlay = join(machineDir, 'disk.qcow2');
      if (!existsSync(overlay)) await qemuImgCreate(this.file(m.spec.disk.image), m.spec.disk.format, overlay);
      spec.disk = { base: overlay, format: 'qcow2', overlay: false };
    }
    if ((m.spec.disks ?? []).length > 0) {
      // Volumes as extra virtio disks at boot (/dev/vdb...; serial = diskSerial of `<tenant>.<volume>`).
      const tenant = m.metadata.tenant ?? '';
      try {
        if (!this.o.volumeImage) throw new Error('this host cannot attach volumes to machines');
        spec.disks = [];
        for (const d of m.spec.disks ?? []) spec.disks.push({ id: machineVolumeDiskId(tenant, d.volume), path: await this.o.volumeImage(tenant, d.volume), readOnly: d.readOnly });
      } catch (e) {
        await this.setStatus(m, { phase: 'Failed', reason: 'StartFailed', message: `volumes: ${(e as Error).message}`, runningGeneration: m.metadata.generation }); // volumeImage rejects with Error
        return;
      }
    }
    await this.setStatus(m, { phase: 'Starting', reason, message: 'launching QEMU' });
    let vm: VmInfo;
    try {
      vm = await this.o.vms.launch(spec);
    } catch (e) {
      await this.setStatus(m, { phase: 'Failed', reason: 'StartFailed', message: (e as Error).message, runningGeneration: m.metadata.generation }); // launch rejects with Error
      return;
    }
    await this.setStatus(m, { phase: 'Running', reason, message: `QEMU pid ${vm.pid} (${vm.accel})`, pid: vm.pid, accel: vm.accel, startedAt: vm.bootedAt, runningGeneration: m.metadata.generation }, ['exitCode', 'finishedAt', 'nextRestartAt']);
    this.log.info({ machine: k, pid: vm.pid }, 'machine started');
    this.watchExit(m, id);
    return;
  }

  private watchExit(m: Machine, id: string): void {
    if (this.watching.has(id)) return;
    this.watching.add(id);
    this.o.vms
      .wait(id)
      .catch(() => undefined)
      .finally(() => {
        this.watching.delete(id);
        this.loop.add(key(m));
      });
  }

  /** The serial console of a machine: earlier boots, then the current one; follows while it runs. */
  async *console(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine> {
    const m = await this.o.resources.mustGet('Machine', name, tenant);
    const id = MachineRunner.vmId(m);
    const files = [join(this.o.stateDir, id, 'console.log')];
    const vm = this.vm(id);
    if (vm) files.push(vm.consoleLog);
    let lines: string[] = [];
    for (const f of files) lines.push(...(await readFile(f, 'utf8').catch(() => '')).split(/\r?\n/));
    lines = lines.filter((l) => l !== '');
    if (opts.tail !== undefined) lines = lines.slice(-opts.tail);
    const now = new Date().toISOString();
    for (const text of lines) yield { time: now, stream: 'stdout', text };
    if (!opts.follow || !vm) return;
    let offset = (await stat(vm.consoleLog).catch(() => ({ size: 0 }))).size;
    let partial = '';
    while (!opts.signal?.aborted) {
      await new Promise((r) => setTimeout(r, 250));
      const size = (await stat(vm.consoleLog).catch(() => ({ size: offset }))).size;
      if (size > offset) {
        const fh = await open(vm.consoleLog, 'r');
        const buf = Buffer.alloc(size - offset);
        await fh.read(buf, 0, buf.length, offset);
        await fh.close();
        offset = size;
        const parts = (partial + buf.toString('utf8')).split(/\r?\n/);
        partial = parts.pop() ?? '';
        for (const text of parts) if (text !== '') yield { time: new Date().toISOString(), stream: 'stdout', text };
      }
      if (this.vm(id)?.state !== 'running') return;
    }
  }
}

async function qemuImgCreate(base: string, format: string, overlay: string): Promise<void> {
  const r = await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', format, overlay]);
  if (r.code !== 0) throw new Error(`qemu-img create failed: ${r.stderr.trim()}`);
}
