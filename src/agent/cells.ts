/**
 * The host agent's cells: boots a VM for every Cell placed on this host, connects to its
 * guest agent, reports the cell Ready when the guest answers, keeps a warm pool of
 * pre-booted unassigned cells, and destroys retired cells (a cell is never reused for another
 * tenant: retiring always destroys the VM). VMs are QEMU processes that outlive this agent; on
 * restart the manager re-attaches to the ones that still run. Each attached cell's runtime
 * (`runtimeFor`) is a RuntimeDriver; a `cellChanged` event tells the host agent to look again
 * at the instances placed in a cell.
 */
import { EventEmitter } from 'node:events';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { setPriority } from 'node:os';
import { existsSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import type { Logger } from 'pino';
import type { Env } from '../core/actions.js';
import type { Resources } from '../core/resources.js';
import { HostChannel } from '../guest/host-channel.js';
import { MAX_CHECK_TIMEOUT_MS } from '../guest/protocol.js';
import type { Cell } from '../model/objects.js';
import { kindPrefix } from '../model/keys.js';
import type { ReconcileResult } from '../reconcile/workqueue.js';
import { Reconciler, watchOf } from '../reconcile/reconciler.js';
import type { Accel, VmInfo, VmManager, VmSpec } from '../vm/qemu.js';
import { CellRuntime, type CellPorts } from './cell-runtime.js';
import { WarmRefillGate } from './warm-refill.js';
import { containerIdFor } from './container-id.js';
import { cellEndpointId, type HostNetworking } from './network-controller.js';
import type { Endpoint } from '../network/types.js';
import { metrics } from '../metrics/metrics.js';

export interface CellManagerOptions {
  hostName: string;
  resources: Resources;
  env: Env;
  logger: Logger;
  vms: VmManager;
  /** Host directory holding unpacked image roots (shared read-only into every cell). */
  hostImagesRoot: string;
  /** The Carapace install directory (its dist/ and node_modules/ are shared read-only: the guest agent runs from them). */
  installDir: string;
  /** Pre-booted unassigned cells kept on this host. */
  warmCells: number;
  warmSize: { cpu: number; memoryMiB: number };
  /** How often a Ready cell's guest agent is pinged (default: a fifth of the timeout, 1 s to 6 s). */
  heartbeatMs?: number;
  /**
   * How long a Ready cell's guest agent may go without answering before the cell is declared
   * Lost and its VM is killed (fenced). Default 5 s with KVM, 30 s under software emulation,
   * where a guest busy starting a container (runc compiling its seccomp filter) can starve
   * its own agent for many seconds. A QEMU that dies is noticed within 100 ms regardless.
   */
  heartbeatTimeoutMs?: number;
  /**
   * How long a booting cell's guest agent may take to answer for the first time before the
   * VM is killed and the cell Failed (default 60 s with KVM, 120 s under software emulation:
   * a TCG cell answers 7-15 s after launch on a 2-core host, ~25 s with three booting at once;
   * a guest that never answers, seen once in ~40 chaos recoveries, holds its instances for
   * this long before they are placed again).
   */
  bootTimeoutMs?: number;
  /**
   * PCIe hot-plug slots of each cell VM: how many volumes can be attached to a running cell at
   * once (default 8; 0: a cell without PCI, no volumes). Costs no measurable boot time (src/vm/README.md).
   */
  diskSlots?: number;
  /** The host's tenant networks: a cell's VM gets a tap on its tenant's segment. Absent: QEMU's restricted user networking. */
  network?: HostNetworking;
}

const GUEST_IMAGES = '/carapace/images';
const GUEST_APP = '/opt/carapace';
/**
 * How a cell's VM runs its guest agent (bench/cell.ts and the VM tests boot the same): the
 * host's node (the shared /usr) on the agent's bundle and code cache from the shared install
 * (scripts/build-guest.mjs), started as soon as the shares and the channel are up, while init
 * loads the rest (the agent waits for that before containers, volumes and the network).
 * Under software emulation, from the agent's startup snapshot when the install has one
 * (src/guest/snapshot-entry.ts: 0.7 s less of each boot, measured), with the loader as the
 * fallback should node refuse it (status 14: another node or CPU than the build's).
 */
export function guestAgentLaunch(accel: Accel, installDir: string): Pick<VmSpec, 'exec' | 'earlyExec' | 'fallbackExec'> {
  const loader = `/usr/bin/node ${GUEST_APP}/dist/guest/agent.cjs --images ${GUEST_IMAGES}`;
  if (accel !== 'tcg' || !existsSync(join(installDir, 'dist/guest', GUEST_SNAPSHOT))) return { exec: loader, earlyExec: true };
  return {
    exec: `/usr/bin/node --snapshot-blob ${GUEST_APP}/dist/guest/${GUEST_SNAPSHOT} ${GUEST_APP}/dist/guest/agent.cjs --images ${GUEST_IMAGES}`,
    earlyExec: true,
    fallbackExec: loader,
  };
}
/** The guest agent's startup snapshot for TCG, in the install's dist/guest (scripts/build-guest.mjs). */
const GUEST_SNAPSHOT = 'agent-tcg.blob';
const WARM_KEY = '#warm';
/**
 * How much longer a probe check may take in a cell under software emulation (TCG) than its
 * `timeoutSeconds`: the check runs in the guest (its agent's HTTP GET, TCP connect or `runc
 * exec`), where emulation stretches every wall-clock second, and more so while the host's
 * cores also run other VMs booting or starting containers. Seen on a 2-core host: busybox
 * httpd in a Ready cell taking over 1 s to answer its probe while a neighbour cell booted, so
 * a service's replicas flapped out of its endpoints during a rolling update (and the update
 * replaced the flapping ones at once). The same stretch as the heartbeat's (5 s -> 30 s);
 * with KVM a check has exactly its timeout.
 */
export const EMULATED_CHECK_TIMEOUT_SCALE = 5;

/**
 * The time a cell's probe check of `timeoutMs` gets, for a VM running with `accel`: stretched
 * under emulation, but never past the longest check the guest accepts (MAX_CHECK_TIMEOUT_MS).
 */
export function cellCheckTimeoutMs(timeoutMs: number, accel: string): number {
  return accel === 'kvm' ? timeoutMs : Math.max(timeoutMs, Math.min(timeoutMs * EMULATED_CHECK_TIMEOUT_SCALE, MAX_CHECK_TIMEOUT_MS));
}

/**
 * The nice value of a cell VM's threads from its launch until its guest agent answers, under
 * software emulation. A TCG boot keeps a host core busy for 15-45 s; on a small host that
 * starves the VMs already serving (seen on 2 cores: a request to httpd in a Ready cell took
 * over 1 s while a rolling update's surge cell booted). At nice 10 a boot takes what the
 * serving VMs leave (and all of an idle host). With KVM a boot takes about a second: unchanged.
 */
export const EMULATED_BOOT_NICE = 10;

/** Sets the nice value of every thread of process `pid` (QEMU's vCPUs are threads); a thread or process gone meanwhile is skipped. */
export async function setProcessNice(pid: number, nice: number): Promise<void> {
  const tids = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  for (const tid of tids) {
    try {
      setPriority(Number(tid), nice);
    } catch {
      // the thread ended, or the process did: nothing to lower or restore
    }
  }
}

/** Volumes attachable to a running cell at once (PCIe root ports made at boot); bench/volume.ts gives its raw VM the same. */
export const DEFAULT_DISK_SLOTS = 8;

/** What the cell manager tells others (the host agent listens). */
export interface CellManagerEvents {
  /** A cell became Ready, was lost, failed or was removed: the instances placed in it must be looked at again. */
  cellChanged: [cell: string];
}

interface Attached {
  channel: HostChannel;
  runtime: CellRuntime;
  ac: AbortController;
}

export class CellManager extends EventEmitter<CellManagerEvents> {
  private readonly log: Logger;
  private readonly attached = new Map<string, Attached>();
  /** When the warm pool may boot a replacement (warm-refill.ts). */
  private readonly refillGate = new WarmRefillGate();
  private readonly queue: Reconciler;

  constructor(private readonly o: CellManagerOptions) {
    super();
    this.log = o.logger.child({ component: 'cells', host: o.hostName });
    this.queue = new Reconciler({
      name: 'cells',
      store: o.resources.store,
      logger: this.log,
      reconcile: (key) => (key === WARM_KEY ? this.reconcileWarm() : this.reconcile(key)),
      loopOf: (key) => (key === WARM_KEY ? 'cells-warm' : 'cells'),
      concurrency: 4,
      // Level-based resync: every VM on this host and every cell placed here is looked at again
      // now and then. After the control plane was unreachable the watch resumes by re-listing,
      // which says nothing about cells deleted meanwhile (their VMs must be destroyed: fencing).
      resync: {
        everyMs: 15_000,
        keys: async () => [
          ...this.o.vms.recover().flatMap((vm) => (vm.labels['carapace.cell'] !== undefined ? [vm.id] : [])),
          ...(await o.resources.list('Cell')).items.filter((c) => c.spec.host === o.hostName).map((c) => c.metadata.name),
          WARM_KEY,
        ],
      },
      watches: [
        watchOf<Cell>(kindPrefix('Cell'), (e) => [
          ...(e.value.spec.host === o.hostName || this.attached.has(e.value.metadata.name) ? [e.value.metadata.name] : []),
          ...(e.value.spec.host === o.hostName ? [WARM_KEY] : []),
        ]),
      ],
    });
  }

  /** The runtime of a Ready cell on this host, or undefined while it is not ready. */
  runtimeFor(cell: string): CellRuntime | undefined {
    const a = this.attached.get(cell);
    return a?.channel.connected ? a.runtime : undefined;
  }

  /** Runs until `signal` aborts; VMs keep running after it. */
  async start(signal: AbortSignal): Promise<void> {
    signal.addEventListener('abort', () => {
      for (const a of this.attached.values()) a.ac.abort();
    }, { once: true });
    // VMs this host runs that no Cell object explains (deleted while the agent was down), before anything else.
    const known = new Set((await this.o.resources.list('Cell')).items.map((c) => c.metadata.name));
    for (const vm of this.o.vms.recover()) {
      if (vm.labels['carapace.cell'] !== undefined && !known.has(vm.id)) {
        this.log.info({ cell: vm.id }, 'destroying VM of a cell that no longer exists');
        await this.o.vms.destroy(vm.id, 2_000);
      }
    }
    await this.queue.start(signal);
  }

  private vm(name: string): VmInfo | undefined {
    try {
      return this.o.vms.inspect(name);
    } catch {
      return undefined; // unknown id
    }
  }

  private async reconcile(name: string): Promise<ReconcileResult> {
    const r = this.o.resources;
    const cell = await r.get('Cell', name);
    if (!cell || cell.spec.host !== this.o.hostName || cell.metadata.deletionRequestedAt) {
      this.detach(name);
      if (this.vm(name)) {
        await this.o.vms.destroy(name, 5_000);
        this.log.info({ cell: name }, 'cell VM destroyed');
      }
      await this.releaseTap(name, cell?.spec.tenant);
      if (cell?.metadata.deletionRequestedAt && cell.spec.host === this.o.hostName) await r.remove('Cell', name);
      this.emit('cellChanged', name);
      return;
    }
    if (cell.status.phase === 'Failed' || cell.status.phase === 'Lost') {
      // Nothing of a dead cell may run again (fencing): its instances are being re-placed.
      this.detach(name);
      if (this.vm(name)?.state === 'running') {
        await this.o.vms.destroy(name, 0);
        this.log.warn({ cell: name }, 'fenced a lost cell: its VM was still running');
      }
      await this.releaseTap(name, cell.spec.tenant);
      return;
    }
    const vm = this.vm(name);
    if (vm?.state === 'running') {
      this.attach(cell, vm);
      // A warm cell claimed by a tenant: its tap joins the tenant's segment, then its guest takes the address.
      if (cell.spec.tenant && !cell.status.address && this.o.network && vm.nic) await this.joinClaimed(cell, vm);
      return;
    }
    if (vm?.state === 'exited') {
      await this.fail(cell, 'the VM exited');
      return;
    }
    await this.boot(cell);
    return;
  }

  private async boot(cell: Cell): Promise<void> {
    const name = cell.metadata.name;
    if (!isAbsolute(this.o.installDir)) throw new Error('installDir must be absolute');
    const bootStartedAt = this.o.env.now();
    let vm: VmInfo;
    let endpoint: Endpoint | undefined;
    let reserved: { tap: string; mac: string } | undefined;
    let search = '';
    try {
      // A tenant's cell boots on its tenant network, its address on the kernel command line; a
      // warm cell on a tap of no network, joined to its tenant's when claimed (joinClaimed).
      if (this.o.network && cell.spec.tenant) {
        const n = this.o.network;
        ({ search, endpoint } = await n.controller.attachToTenant(cell.spec.tenant, async (segment) => ({
          search: segment.search,
          endpoint: await n.net.attach({ id: cellEndpointId(name), tenant: cell.spec.tenant, kind: 'tap', ports: [] }),
        })));
      } else if (this.o.network) {
        reserved = await this.o.network.net.reserveTap(cellEndpointId(name));
      }
      // The image cache may not have unpacked anything yet; the share must exist to be mounted.
      await mkdir(this.o.hostImagesRoot, { recursive: true });
      vm = await this.o.vms.launch({
        id: name,
        cpus: Math.max(1, Math.ceil(cell.spec.cpu)),
        memoryMiB: cell.spec.memoryMiB,
        // The guest agent runs on the host's node and runc, shared read-only (Debian is merged-usr).
        shares: [
          { tag: 'usr', path: '/usr', readonly: true, mountPoint: '/usr' },
          { tag: 'carapace', path: this.o.installDir, readonly: true, mountPoint: GUEST_APP },
          { tag: 'images', path: this.o.hostImagesRoot, readonly: true, mountPoint: GUEST_IMAGES },
        ],
        ...guestAgentLaunch(await this.o.vms.accel(), this.o.installDir),
        ports: [],
        ...(endpoint?.tap ? { nic: { tap: endpoint.tap, mac: endpoint.mac }, append: `carapace.net=${endpoint.ip}/${endpoint.prefixLength},${endpoint.gateway},${endpoint.dns},${endpoint.mtu},${search}` } : {}),
        ...(reserved ? { nic: reserved, append: 'carapace.net=none' } : {}),
        channel: true,
        hotplugSlots: this.o.diskSlots ?? DEFAULT_DISK_SLOTS,
        labels: { 'carapace.cell': name, 'carapace.tenant': cell.spec.tenant },
      });
    } catch (e) {
      await this.releaseTap(name, cell.spec.tenant);
      await this.fail(cell, `QEMU did not start: ${(e as Error).message}`); // launch rejects with Error
      return;
    }
    // Under emulation the boot yields to the VMs already serving; the guest's first answer restores it (attach).
    if (vm.accel !== 'kvm') {
      await setProcessNice(vm.pid, EMULATED_BOOT_NICE);
    }
    await this.o.resources.mutate('Cell', name, undefined, (c) => {
      c.status = { ...c.status, phase: 'Booting', pid: vm.pid, accel: vm.accel, bootStartedAt, message: 'booting', ...(endpoint ? { address: endpoint.ip } : {}) };
      return c;
    });
    this.log.info({ cell: name, pid: vm.pid, accel: vm.accel, tenant: cell.spec.tenant || '(warm)' }, 'cell VM launched');
    this.attach(cell, vm);
  }

  /** Removes a cell's tap from its tenant's segment (the VM is gone); idempotent. */
  private async releaseTap(name: string, tenant: string | undefined): Promise<void> {
    if (!this.o.network) return;
    await this.o.network.net.detach(cellEndpointId(name));
    if (tenant) this.o.network.controller.touch(tenant);
  }

  /**
   * A warm cell was claimed: its tap (booted off any segment) joins the tenant's segment and
   * the guest agent puts the address on eth0, with the MAC the segment's filter expects.
   */
  private async joinClaimed(cell: Cell, vm: VmInfo): Promise<void> {
    const n = this.o.network;
    const channel = this.attached.get(cell.metadata.name)?.channel;
    if (!n || !channel?.connected) return; // the guest answers later; its `connected` event queues the cell again
    const { search, ep } = await n.controller.attachToTenant(cell.spec.tenant, async (segment) => ({
      search: segment.search,
      ep: await n.net.attach({ id: cellEndpointId(cell.metadata.name), tenant: cell.spec.tenant, kind: 'tap', ports: [] }),
    }));
    await channel.configureNetwork({ address: `${ep.ip}/${ep.prefixLength}`, gateway: ep.gateway, dns: [ep.dns], mtu: ep.mtu, search: [search], mac: ep.mac });
    await this.o.resources.mutate('Cell', cell.metadata.name, undefined, (c) => {
      if (c.spec.tenant !== cell.spec.tenant) return undefined;
      c.status = { ...c.status, address: ep.ip };
      return c;
    });
    this.log.info({ cell: cell.metadata.name, tenant: cell.spec.tenant, address: ep.ip, pid: vm.pid }, 'claimed warm cell joined its tenant network');
    // Its instances wait for the address (agent.ts): they start now, not at their next retry.
    this.emit('cellChanged', cell.metadata.name);
  }

  /**
   * The published ports of one cell's containers: what its tap endpoint publishes (kernel DNAT
   * to the VM's address, like every tier) is the union over the instances placed in the cell,
   * read from the store each time, so it survives an agent restart and needs no bookkeeping.
   */
  private portsOf(name: string): CellPorts {
    const apply = async (leaving?: string): Promise<void> => {
      const n = this.o.network;
      const cell = await this.o.resources.get('Cell', name);
      if (!n || !cell?.spec.tenant) return;
      const here = (await this.o.resources.list('Instance', cell.spec.tenant)).items.filter((i) => i.spec.cell === name && !i.metadata.deletionRequestedAt && containerIdFor(i) !== leaving);
      const ports = here.flatMap((i) => i.spec.container.ports.flatMap((p) => (p.hostPort !== undefined ? [{ containerPort: p.containerPort, hostPort: p.hostPort, protocol: p.protocol }] : [])));
      await n.net.attach({ id: cellEndpointId(name), tenant: cell.spec.tenant, kind: 'tap', ports });
    };
    return { publish: () => apply(), unpublish: (containerId) => apply(containerId) };
  }

  /**
   * Marks a cell dead: `Failed` when it never became Ready (a boot failure), `Lost` when it
   * was Ready (its instances ran there and must be re-placed by the controller).
   */
  private async fail(cell: Cell, message: string, at = this.o.env.now()): Promise<void> {
    this.detach(cell.metadata.name);
    let phase = 'Failed';
    await this.o.resources.mutate('Cell', cell.metadata.name, undefined, (c) => {
      if (c.status.phase === 'Failed' || c.status.phase === 'Lost') return undefined;
      const lost = c.status.phase === 'Ready';
      phase = lost ? 'Lost' : 'Failed';
      c.status = { ...c.status, phase: lost ? 'Lost' : 'Failed', message, ...(lost ? { lostAt: at } : {}) };
      return c;
    });
    this.log.warn({ cell: cell.metadata.name, phase, message }, phase === 'Lost' ? 'cell lost' : 'cell failed');
    this.emit('cellChanged', cell.metadata.name);
  }

  /**
   * Pings a Ready cell's guest agent; when it has not answered for the timeout while QEMU
   * still runs, kills the VM first (so nothing in it can run on: fencing) and then declares
   * the cell Lost. Ends when the cell is detached.
   */
  private heartbeat(name: string, channel: HostChannel, signal: AbortSignal, accel: string, wasReady: boolean): void {
    const timeout = this.o.heartbeatTimeoutMs ?? (accel === 'kvm' ? 5_000 : 30_000);
    // Three pings or more per timeout, 1 s to 10 s apart: 1.7 s with KVM; under emulation every
    // wake-up of the guest costs host CPU (a ping a second was ~0.4% of a core per idle cell; an
    // idle cell's agent, all its wake-ups together, ~0.5%), and 30 s allows 10 s.
    const every = this.o.heartbeatMs ?? Math.min(Math.max(1_000, Math.floor(timeout / 3)), 10_000);
    const bootTimeout = this.o.bootTimeoutMs ?? (accel === 'kvm' ? 60_000 : 120_000);
    const attachedAt = Date.now();
    // Silence is judged once the guest agent has answered (booting is not silence), or at once
    // for a cell adopted Ready after an agent restart: its guest answered before, and one that
    // hangs before we reconnect would otherwise stay Ready forever. A boot has its own limit.
    let lastAnswer: number | undefined = wasReady ? attachedAt : undefined;
    channel.on('connected', () => (lastAnswer = Date.now()));
    let inFlight = false;
    const fence = (message: string): void => {
      clearInterval(timer);
      void (async () => {
        const cur = await this.o.resources.get('Cell', name);
        if (!cur || signal.aborted) return;
        await this.o.vms.destroy(name, 0).catch((err: unknown) => this.log.warn({ cell: name, err }, 'could not kill an unresponsive cell'));
        await this.fail(cur, message);
      })().catch((err: unknown) => this.log.warn({ cell: name, err }, 'cannot record a lost cell'));
    };
    const timer = setInterval(() => {
      if (signal.aborted) return;
      if (lastAnswer === undefined) {
        if (Date.now() - attachedAt > bootTimeout) fence(`the guest agent did not answer within ${Math.round(bootTimeout / 1000)} s of booting; the VM was killed`);
        return;
      }
      if (Date.now() - lastAnswer > timeout) {
        fence(`the guest agent did not answer for ${((Date.now() - lastAnswer) / 1000).toFixed(1)} s; the VM was killed (fenced)`);
        return;
      }
      if (inFlight || !channel.connected) return;
      inFlight = true;
      channel
        .ping()
        .then(() => (lastAnswer = Date.now()))
        .catch(() => undefined) // a missed answer: the timeout above decides
        .finally(() => (inFlight = false));
    }, every);
    timer.unref();
    signal.addEventListener('abort', () => clearInterval(timer), { once: true });
  }

  /**
   * A booting cell is Ready once its guest agent answers; a warm pool cell once it has also run
   * its prewarm container. The scheduler claims only Ready warm cells, so the pool offers cells
   * whose first start is warm in fact: one claimed just after it booted (a failover soon after
   * the pool refilled) started its first containers cold, 3-4 s each under emulation, beside
   * one another. A prewarm that fails leaves the cell as good as unprewarmed: it is offered.
   */
  private async markReady(name: string, channel: HostChannel): Promise<void> {
    const cur = await this.o.resources.get('Cell', name);
    if (!cur || cur.status.phase !== 'Booting') return; // a reconnect, or gone meanwhile
    const answeredAt = this.o.env.now();
    let message = 'guest agent ready';
    if (cur.spec.warm && cur.spec.tenant === '') {
      const t0 = performance.now();
      await this.o.resources.mutate('Cell', name, undefined, (c) => (c.status.phase === 'Booting' ? { ...c, status: { ...c.status, message: 'prewarming' } } : undefined));
      message = await channel.prewarm().then(
        () => `guest agent ready, prewarmed in ${Math.round(performance.now() - t0)} ms`,
        (err: unknown) => {
          this.log.warn({ cell: name, err }, 'warm cell prewarm failed; offering it as it is');
          return `guest agent ready; prewarm failed: ${(err as Error).message}`; // the channel rejects with Errors
        },
      );
    }
    const now = this.o.env.now();
    await this.o.resources.mutate('Cell', name, undefined, (c) => {
      if (c.status.phase !== 'Booting') return undefined;
      const started = Date.parse(c.status.bootStartedAt ?? answeredAt);
      c.status = { ...c.status, phase: 'Ready', readyAt: now, bootMs: Math.max(0, Date.parse(answeredAt) - started), message };
      metrics.cellBootSeconds.observe({ tenant: c.spec.tenant, group: c.spec.group }, (c.status.bootMs ?? 0) / 1000);
      return c;
    });
    this.emit('cellChanged', name);
  }

  private attach(cell: Cell, vm: VmInfo): void {
    const name = cell.metadata.name;
    if (this.attached.has(name) || !vm.channelSocket) return;
    const ac = new AbortController();
    const channel = new HostChannel({ socketPath: vm.channelSocket, cellId: name, logger: this.log });
    const runtime = new CellRuntime({
      cellId: name,
      isolation: cell.spec.dedicated ? 'dedicated' : 'cell',
      channel,
      vms: this.o.vms,
      hostImagesRoot: this.o.hostImagesRoot,
      guestImagesRoot: GUEST_IMAGES,
      logger: this.log,
      checkTimeoutMs: (ms) => cellCheckTimeoutMs(ms, vm.accel),
      starts: { began: () => this.refillGate.startBegan(), ended: () => this.refillGate.startEnded(performance.now()) },
      // With a tap, published ports are the tenant network's; without, QEMU's forwards.
      ...(vm.nic && this.o.network ? { ports: this.portsOf(name) } : {}),
    });
    this.attached.set(name, { channel, runtime, ac });
    channel.on('connected', () => {
      if (vm.accel !== 'kvm') void setProcessNice(vm.pid, 0);
      void this.markReady(name, channel).catch((err: unknown) => this.log.warn({ cell: name, err }, 'cannot record cell ready'));
    });
    this.heartbeat(name, channel, ac.signal, vm.accel, cell.status.phase === 'Ready');
    // What the guest says it runs, kept on the cell so operators and tests can compare it with
    // the instances placed there (written only when it changes).
    let reported = '';
    channel.on('usage', (u) => {
      const ids = [...u.running].sort();
      const key = ids.join(',');
      if (key === reported) return;
      reported = key;
      this.o.resources
        .mutate('Cell', name, undefined, (c) => {
          if ((c.status.containers ?? []).join(',') === key || c.status.phase !== 'Ready') return undefined;
          c.status = { ...c.status, containers: ids };
          return c;
        })
        .catch((err: unknown) => this.log.warn({ cell: name, err }, 'cannot record the containers of a cell'));
    });
    channel.on('versionMismatch', (v) => this.log.error({ cell: name, ...v }, 'guest agent protocol mismatch'));
    channel.start(ac.signal).catch((err: unknown) => this.log.warn({ cell: name, err }, 'channel ended'));
    this.o.vms
      .wait(name, ac.signal)
      .then(async () => {
        if (ac.signal.aborted) return;
        const at = this.o.env.now();
        runtime.lost(at);
        // Why it exited is on its serial console (a guest panic, an init that ended): the
        // end of it goes into the log, since the VM's directory goes with the cell.
        const consoleTail = await readFile(vm.consoleLog, 'utf8').then((t) => t.split('\n').slice(-40).join('\n')).catch(() => undefined);
        this.log.warn({ cell: name, pid: vm.pid, console: consoleTail }, 'cell VM exited; the end of its console');
        const cur = await this.o.resources.get('Cell', name);
        if (cur && !cur.metadata.deletionRequestedAt) await this.fail(cur, `the VM exited (QEMU pid ${vm.pid})`, at);
      })
      .catch(() => undefined); // aborted: detached on purpose
  }

  private detach(name: string): void {
    const a = this.attached.get(name);
    if (!a) return;
    a.ac.abort();
    a.runtime.close();
    this.attached.delete(name);
  }

  /** Keeps `warmCells` unassigned, not retiring cells on this host; a replacement waits for the host to be quiet (WarmRefillGate). */
  private async reconcileWarm(): Promise<ReconcileResult> {
    if (this.o.warmCells <= 0) return;
    const cells = (await this.o.resources.list('Cell')).items;
    const warm = cells.filter((c) => c.spec.host === this.o.hostName && c.spec.tenant === '' && !c.metadata.deletionRequestedAt && c.status.phase !== 'Failed' && c.status.phase !== 'Lost');
    const claimed = cells.filter((c) => c.spec.host === this.o.hostName && c.spec.warm === true && c.spec.tenant !== '').map((c) => c.metadata.name);
    const nowMs = performance.now();
    if (warm.length >= this.o.warmCells) {
      this.refillGate.full(claimed, nowMs);
      return;
    }
    const wait = this.refillGate.deferMs(claimed, nowMs);
    if (wait > 0) return { requeueAfterMs: wait };
    for (let i = warm.length; i < this.o.warmCells; i++) {
      const now = this.o.env.now();
      const name = `warm-${this.o.env.newId().replace(/[^a-z0-9]/g, '').slice(0, 12)}`;
      const cell: Cell = {
        kind: 'Cell',
        metadata: { name, uid: this.o.env.newId(), labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
        spec: { tenant: '', group: '', host: this.o.hostName, cpu: this.o.warmSize.cpu, memoryMiB: this.o.warmSize.memoryMiB, dedicated: false, warm: true },
        status: { phase: 'Pending' },
      };
      await this.o.resources.write(cell, 0);
      this.log.info({ cell: name }, 'warm cell created');
    }
  }
}
