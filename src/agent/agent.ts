/**
 * The host agent: registers its host, watches the instances placed on it, and makes the
 * runtime match them: pull the image, set up the network, start the container through the
 * driver for its isolation tier, report status, apply the restart policy when it exits, and
 * remove everything when the instance is deleted. Containers are supervised by conmon, not
 * by this process: the agent can be killed at any point, and on restart `recover` adopts
 * what still matches an instance and destroys what does not (no orphans, no duplicates).
 */
import os from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Env } from '../core/actions.js';
import type { Resources } from '../core/resources.js';
import { ImagePullError, type ImageStore, type PulledImage } from '../image/image-store.js';
import { CarapaceError, isCarapaceError } from '../model/errors.js';
import { TERMINAL_PHASES, type Host, type HostLease, type Instance, type InstanceStatus } from '../model/objects.js';
import { referencesOf } from '../model/secrets.js';
import { hostLeaseKey, kindPrefix, tenantNetworkViewKey } from '../model/keys.js';
import type { TenantNetworkView } from '../model/tenant-network.js';
import type { Isolation } from '../model/schemas.js';
import type { ContainerInfo, ContainerState, LogLine, LogOptions, RuntimeDriver } from '../runtime/driver.js';
import type { ReconcileResult } from '../reconcile/workqueue.js';
import { Reconciler, watchOf } from '../reconcile/reconciler.js';
import { decideAfterExit, lastStateOf, stopGraceMsOf } from './restart-policy.js';
import { containerIdFor, LABELS } from './container-id.js';
import type { CellManager } from './cells.js';
import type { MachineRunner } from './machines.js';
import type { CellRuntime } from './cell-runtime.js';
import type { CellExtras, HostExtras, InstanceExtras } from './instance-extras.js';
import { Prober } from './prober.js';
import type { HostNetworking } from './network-controller.js';
import type { Endpoint } from '../network/types.js';
import type { ResolverConfig } from '../runtime/driver.js';
import { CARAPACE_VERSION } from '../model/version.js';
import type { ExecOptions } from '../exec/frames.js';
import { endSession, serveExec, type ExecPort } from '../exec/session.js';
import { dialWorkload, socketPort } from '../exec/forward.js';
import { DEFAULT_HOST_LEASE_TTL_MS, fenceTimings, instanceFencing, type Fencing, type HostLeaseSettings } from '../model/fencing.js';
import { HOST_LEASE_SETTINGS_KEY } from '../model/keys.js';
import { LeaseClock, mayStart, toFence } from './fence.js';


export interface AgentOptions {
  hostName: string;
  resources: Resources;
  env: Env;
  logger: Logger;
  drivers: Partial<Record<Isolation, RuntimeDriver>>;
  images: ImageStore;
  network?: HostNetworking;
  labels?: Record<string, string>;
  /** Milliseconds between SIGTERM and SIGKILL when stopping a container whose instance sets no `stopGracePeriodSeconds` (default 10 s). */
  stopGraceMs?: number;
  capacity?: { cpu: number; memoryMiB: number };
  /** Cells (VMs) on this host; absent when the host cannot run VMs. */
  cells?: CellManager;
  /** Plain VMs (kind Machine) on this host. */
  machines?: MachineRunner;
  /** Host overcommit ratios written when the host first registers (default cpu 4, memory 1). */
  overcommit?: { cpu: number; memory: number };
  /** Checks that this host can run VMs (QEMU and a kernel present); a reason if not. */
  vmProbe?: () => Promise<{ ok: true } | { ok: false; message: string }>;
  /** How often the host lease is renewed (default 1 s); the control plane's TTL is a few times this. */
  leaseRenewMs?: number;
  /**
   * The host lease TTL assumed until the control plane's published settings are read
   * (`HOST_LEASE_SETTINGS_KEY`; env CARAPACE_HOST_LEASE_TTL_MS, default 3 s): the fence grace
   * G is derived from it (model/fencing.ts).
   */
  leaseTtlMs?: number;
  /**
   * Stop `fencing: stop` containers when the lease goes stale (default true). False only where
   * no partition can separate this agent from the control plane that judges its lease: the
   * all-in-one, one process over its embedded store.
   */
  selfFencing?: boolean;
  /** Multiplies probes' initialDelaySeconds and periodSeconds (tests; env CARAPACE_PROBE_TIME_SCALE). Default 1. */
  probeTimeScale?: number;
  /** The host's underlay address, asked at each registration (agent/host-address.ts); absent: none reported. */
  hostAddress?: () => Promise<string | undefined>;
  /** Volumes, secret and config files and envFrom values of containers; absent: such instances cannot start here. */
  extras?: InstanceExtras;
  /** How often volumes' used bytes are reported and deleted volumes' storage removed (default 30 s). */
  volumeSweepMs?: number;
  /** How often running containers' `update` Secret and Config files are brought up to date (default FILES_REFRESH_MS). */
  filesRefreshMs?: number;
}

/** What the agent knows about the container currently serving an instance. */
interface LocalContainer {
  /** The instance this container serves: a re-created instance of the same name is another one. */
  uid: string;
  id: string;
  driver: RuntimeDriver;
  generation: number;
  startedAtMs: number;
  exited: boolean;
  /** Being stopped on purpose (deleted, replaced, moved): its exit is not a crash to restart. */
  tearingDown?: boolean;
  /**
   * Started, but its Running status is not written yet (the store did not answer): the next
   * pass writes it, then follows the container's exit and probes. The container is kept: a
   * status write that failed is no reason to kill what runs.
   */
  unrecorded?: StartedContainer;
  /** The volumes it mounts (VolumeStore ids), given back when it goes. */
  volumeIds?: string[];
  /** The cell it runs in (its volumes are the VM's disks). */
  cell?: string;
  /** The content version of the Secrets and Configs its files hold ('' after an adoption: rewritten at the next refresh). */
  materialVersion?: string;
  /**
   * SIGTERM-to-SIGKILL grace of the spec it was started (or adopted) from: used when it is
   * stopped without its instance at hand (the instance was deleted from the store or replaced).
   */
  stopGraceMs: number;
  /** Its instance's fencing (kept up to date by each pass): `stop` ones are stopped when the lease goes stale, without the store. */
  fencing: Fencing;
}

/** A container's final state, as the drivers report it. */
type ExitedState = Extract<ContainerState, { status: 'exited' }>;

/** How a container ended, as afterExit records it. */
interface ExitFacts {
  exitCode: number;
  finishedAtMs: number;
  /** When it started (absent for a start that failed). */
  startedAt?: string;
  containerId?: string;
  /** The start failed with this message: there was no container. */
  startError?: string;
  /** ...because the runtime did not answer (a cell's guest under load): it may well start on the next try. */
  startUnavailable?: boolean;
  oomKilled?: boolean;
  /** How long it ran (backoff resets after a long run). */
  ranMs?: number;
}

/** What a start gets besides its image (see InstanceExtras). */
type StartExtras = ({ kind: 'host' } & HostExtras) | ({ kind: 'cell'; runtime: CellRuntime; cell: string } & CellExtras);

/** What a start learnt that goes into the instance's Running status. */
interface StartedContainer {
  imageDigest: string;
  pid?: number;
  /** Its endpoint on the tenant network (namespace drivers). */
  endpoint?: Endpoint;
}

/** What the host reports as `status.agentVersion`: the release this agent was built from. */
const VERSION = CARAPACE_VERSION;

/** The bound on how long a changed `update` Secret or Config takes to reach running containers' files. */
export const FILES_REFRESH_MS = 10_000;

/** A deleted serving replica: the longest wait for its address to leave its service's endpoints (see `drain`). */
const DRAIN_TIMEOUT_MS = 5_000;
/** Then: time for every host's rules to follow the tenant's view (a watch event and an `nft -f` each: well under this). */
const DRAIN_SETTLE_MS = 1_000;

/**
 * Where an instance's driver is: found; in a cell whose guest agent is not connected (yet, or
 * any more): wait for it; or nowhere on this host.
 */
type DriverLookup = { driver: RuntimeDriver } | { waitingForCell: string } | { none: true };

function instanceKey(tenant: string, name: string): string {
  return `${tenant}/${name}`;
}

export class HostAgent {
  private readonly log: Logger;
  private readonly local = new Map<string, LocalContainer>();
  /**
   * The agent's run, aborted when it stops: the waits on its containers' exits end with it
   * (each holds a file watch and a poll timer, which kept the process alive after a graceful
   * stop for as long as any container ran, i.e. for ever: containers outlive the agent).
   */
  private readonly running = new AbortController();
  private readonly queue: Reconciler;
  /** Consecutive image pull failures per instance key, for pull backoff. */
  private readonly pullFailures = new Map<string, number>();
  /** Liveness and readiness probes of the running containers (prober.ts). */
  private readonly probes: Prober;
  /**
   * When the last successful lease renewal was sent (monotonic clock): the fence's evidence.
   * Started again by `start`: until its first renewal an agent has a full grace, and it holds
   * no container before then that it did not adopt through the store (`recover`).
   */
  private lease = new LeaseClock(performance.now());
  /** G: no successful renewal for this long and `fencing: stop` containers are stopped (model/fencing.ts). */
  private fenceGraceMs: number;
  /** Instances this agent fenced while its lease was stale, with when and which container (logged, requeued when it is fresh again). */
  private readonly fenced = new Map<string, { container: string; at: string }>();
  /** The lease is stale now (as of the last fence check). */
  private fencing = false;

  constructor(private readonly o: AgentOptions) {
    this.log = o.logger.child({ component: 'agent', host: o.hostName });
    this.fenceGraceMs = fenceTimings(o.leaseTtlMs ?? DEFAULT_HOST_LEASE_TTL_MS).graceMs;
    this.probes = new Prober({ resources: o.resources, logger: this.log, stopGraceMs: o.stopGraceMs ?? 10_000, ...(o.probeTimeScale !== undefined ? { timeScale: o.probeTimeScale } : {}) });
    this.queue = new Reconciler({
      name: 'agent-instance',
      store: o.resources.store,
      logger: this.log,
      reconcile: (key) => this.reconcile(key),
      concurrency: 8,
      // Level-based resync: every container this agent runs and every instance placed here is
      // looked at again now and then. A watch that resumed by re-listing (after the control
      // plane was unreachable) says nothing about instances deleted meanwhile; this catches them.
      resync: {
        everyMs: 15_000,
        keys: async () => {
          const all = await o.resources.list('Instance');
          return [...this.local.keys(), ...all.items.filter((i) => i.spec.host === o.hostName).map((i) => instanceKey(i.metadata.tenant ?? '', i.metadata.name))];
        },
      },
      watches: [
        watchOf<Instance>(kindPrefix('Instance'), (e) => {
          const key = instanceKey(e.value.metadata.tenant ?? '', e.value.metadata.name);
          return e.value.spec.host === o.hostName || this.local.has(key) ? [key] : [];
        }),
      ],
    });
    o.cells?.on('cellChanged', (cell) => this.cellChanged(cell));
  }

  /** Runs until `signal` aborts. Containers keep running after the agent stops. */
  async start(signal: AbortSignal): Promise<void> {
    if (signal.aborted) this.running.abort();
    else signal.addEventListener('abort', () => this.running.abort(), { once: true });
    // The lease first: the control plane declares this host lost when it stops moving, and a
    // restarted agent is alive while it probes its runtimes and recovers its containers (seconds
    // on a loaded host). Renewing only afterwards had the control plane fail over the very
    // containers being adopted.
    const holder = `${process.pid}:${Date.now()}`;
    this.lease = new LeaseClock(performance.now());
    const renew = (): void => {
      const lease: HostLease = { host: this.o.hostName, renewedAt: this.o.env.now(), holder };
      const sentAt = performance.now();
      this.o.resources.store
        .put(hostLeaseKey(this.o.hostName), lease)
        .then(() => this.lease.renewed(sentAt))
        .catch((err: unknown) => this.log.warn({ err }, 'lease renewal failed'));
    };
    renew();
    const leaseTimer = setInterval(renew, this.o.leaseRenewMs ?? 1_000);
    leaseTimer.unref();
    // Self-fencing: a lease not renewed for G stops the `fencing: stop` containers (fence()).
    const fenceTimer = this.o.selfFencing === false ? undefined : setInterval(() => this.checkFence(), fenceTimings(this.fenceGraceMs).checkMs);
    fenceTimer?.unref();
    signal.addEventListener('abort', () => (clearInterval(leaseTimer), clearInterval(fenceTimer)), { once: true });
    await this.register();
    await this.o.extras?.recover().catch((err: unknown) => this.log.warn({ err }, 'volume recovery failed'));
    await this.recover();
    if (this.o.extras) {
      const extras = this.o.extras;
      const sweep = setInterval(() => void extras.sweep(this.volumesInUse()).catch((err: unknown) => this.log.warn({ err }, 'volume sweep failed')), this.o.volumeSweepMs ?? 30_000);
      sweep.unref();
      // Changed `update` Secrets and Configs reach running containers within this period.
      let refreshing = false;
      const refresh = setInterval(() => {
        if (refreshing) return;
        refreshing = true;
        void this.refreshFiles().finally(() => (refreshing = false));
      }, this.o.filesRefreshMs ?? FILES_REFRESH_MS);
      refresh.unref();
      signal.addEventListener('abort', () => (clearInterval(sweep), clearInterval(refresh)), { once: true });
    }
    const heartbeat = setInterval(() => {
      this.register().catch((err: unknown) => this.log.warn({ err }, 'heartbeat failed'));
    }, 30_000);
    heartbeat.unref();
    signal.addEventListener('abort', () => clearInterval(heartbeat), { once: true });
    signal.addEventListener('abort', () => this.probes.stopAll(), { once: true });
    await Promise.all([this.queue.start(signal), ...(this.o.network ? [this.o.network.controller.start(signal)] : []), ...(this.o.cells ? [this.o.cells.start(signal)] : []), ...(this.o.machines ? [this.o.machines.start(signal)] : [])]);
  }

  /** The containers this agent runs now (for the usage sampler). */
  localContainers(): { tenant: string; name: string; id: string; driver: RuntimeDriver }[] {
    return [...this.local].filter(([, c]) => !c.exited).map(([key, c]) => {
      const slash = key.indexOf('/');
      return { tenant: key.slice(0, slash), name: key.slice(slash + 1), id: c.id, driver: c.driver };
    });
  }

  /** Probes the drivers and writes this host's record (capacity, tiers, heartbeat); reads the control plane's lease settings. */
  async register(): Promise<Host> {
    await this.readLeaseSettings();
    const tiers: string[] = [];
    const problems: string[] = [];
    for (const [tier, d] of Object.entries(this.o.drivers)) {
      const p = await d.probe();
      if (p.ok) tiers.push(tier);
      else problems.push(`${tier}: ${p.message}`);
    }
    if (this.o.cells && this.o.vmProbe) {
      const p = await this.o.vmProbe();
      if (p.ok) tiers.push('cell', 'dedicated', 'machine');
      else problems.push(`cell, dedicated, machine: ${p.message}`);
    }
    const now = this.o.env.now();
    const capacity = this.o.capacity ?? { cpu: os.cpus().length, memoryMiB: Math.floor(os.totalmem() / 1024 / 1024) };
    const status: Host['status'] = { state: 'Ready', lastHeartbeatAt: now, isolation: tiers.sort(), capacity, agentVersion: VERSION };
    if (problems.length > 0) status.message = problems.join('; ');
    const address = await this.o.hostAddress?.();
    if (address !== undefined) status.address = address;
    const r = this.o.resources;
    const overcommit = this.o.overcommit ?? { cpu: 4, memory: 1 };
    const existing = await r.mutate('Host', this.o.hostName, undefined, (h) => {
      h.status = status;
      h.spec.overcommit ??= overcommit; // an operator's later change is kept
      return h;
    });
    if (existing) return existing;
    const host: Host = {
      kind: 'Host',
      metadata: { name: this.o.hostName, uid: this.o.env.newId(), labels: this.o.labels ?? {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
      spec: { labels: this.o.labels ?? {}, unschedulable: false, overcommit },
      status,
    };
    try {
      return await r.write(host, 0);
    } catch {
      return this.register(); // raced with ourselves (a previous run's write landed): update instead
    }
  }

  /**
   * Adopts containers that still match an instance on this host and destroys the rest
   * (deleted instances, replaced attempts, another host's leftovers). Runs before the watch.
   */
  async recover(): Promise<void> {
    const instances = (await this.o.resources.list('Instance')).items;
    const byUid = new Map(instances.map((i) => [i.metadata.uid, i]));
    const keep = new Set<string>();
    for (const driver of new Set(Object.values(this.o.drivers))) {
      let found: ContainerInfo[];
      try {
        found = await driver.recover();
      } catch (err) {
        this.log.warn({ driver: driver.name, err }, 'recover failed');
        continue;
      }
      for (const c of found) {
        const inst = byUid.get(c.labels[LABELS.uid] ?? '');
        const wanted =
          inst !== undefined &&
          inst.spec.host === this.o.hostName &&
          !inst.metadata.deletionRequestedAt &&
          containerIdFor(inst) === c.id &&
          Number(c.labels[LABELS.generation]) === inst.metadata.generation;
        if (!wanted || !inst) {
          this.log.info({ container: c.id }, 'removing container that no instance wants');
          await driver.stop(c.id, 0).catch(() => undefined);
          await driver.destroy(c.id);
          continue;
        }
        keep.add(c.id);
        const key = instanceKey(inst.metadata.tenant ?? '', inst.metadata.name);
        const startedAtMs = c.state.status === 'running' ? Date.parse(c.state.startedAt) : Date.now();
        this.local.set(key, { uid: inst.metadata.uid, id: c.id, driver, generation: inst.metadata.generation, startedAtMs, exited: c.state.status === 'exited', stopGraceMs: this.graceFor(inst), fencing: instanceFencing(inst.spec) });
        this.log.info({ instance: key, container: c.id, state: c.state.status }, 'adopted container');
        if (c.state.status === 'running') {
          this.watchExit(key, c.id, driver);
          const ip = await this.addressOf(c.id, driver);
          this.probes.watch({ key, inst, containerId: c.id, driver, startedAtMs, initialReady: inst.status.ready, ...(ip !== undefined ? { address: ip } : {}) });
        } else if (c.state.status === 'exited' && inst.status.phase === 'Running' && inst.status.containerId === c.id) {
          await this.recordExit(key, c.id, c.state);
        } else if (c.state.status === 'created') {
          // Died between create and start: start it over cleanly.
          await driver.destroy(c.id);
          keep.delete(c.id);
          this.local.delete(key);
        }
      }
    }
    if (this.o.network) {
      // Endpoints of containers (namespaces); a VM's tap belongs to its cell or machine.
      const net = this.o.network.net;
      for (const id of await net.recover()) {
        const ep = await net.inspect(id);
        if (ep?.kind !== 'netns' || keep.has(id)) continue;
        await net.detach(id).catch((err: unknown) => this.log.warn({ id, err }, 'network teardown failed'));
      }
    }
  }

  /** Streams an instance's container logs (for the API's logs endpoint). */
  async *logs(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine> {
    const inst = await this.o.resources.mustGet('Instance', name, tenant);
    const id = inst.status.containerId;
    const found = this.driverFor(inst);
    if (!id || !('driver' in found)) return;
    yield* found.driver.logs(id, opts);
  }

  /**
   * Runs an exec session in an instance's container (for the API's exec endpoint, here or
   * relayed from another host): the frames on `port` drive it, the last frame is the exit
   * code or why it could not run. Never throws: every failure is a status frame. The session's
   * bytes are never logged; its start and end are, with the command's program name only.
   */
  async exec(tenant: string, name: string, opts: ExecOptions, port: ExecPort): Promise<void> {
    const log = this.log.child({ instance: `${tenant}/${name}`, program: opts.command[0], tty: opts.tty });
    try {
      const inst = await this.o.resources.mustGet('Instance', name, tenant);
      const id = inst.status.containerId;
      const found = this.driverFor(inst);
      if (inst.status.phase !== 'Running' || !id || !('driver' in found)) throw new CarapaceError('CARAPACE_E_INSTANCE_NOT_RUNNING', `instance ${tenant}/${name} is not running (phase ${inst.status.phase})`);
      const driver = found.driver;
      if (!driver.exec) throw new CarapaceError('CARAPACE_E_EXEC_UNSUPPORTED', `exec is not supported for ${inst.spec.container.isolation} isolation yet`);
      const run = await driver.exec(id, opts);
      log.info('exec session started');
      const code = await serveExec(run.process, port, () => run.kill());
      log.info({ exitCode: code ?? 'abandoned' }, 'exec session ended');
    } catch (err) {
      const e = err instanceof CarapaceError ? err : new CarapaceError('CARAPACE_E_INTERNAL', 'the exec session failed; see the agent log');
      if (e.code === 'CARAPACE_E_INTERNAL') log.warn({ err }, 'exec session failed');
      endSession(port, { error: { code: e.code, message: e.message } });
    }
  }

  /**
   * Connects to `port` of an instance's workload (for the API's port-forward endpoint, here
   * or relayed from another host); resolves once the workload accepted the connection, with
   * the connection as a port of forward frames (exec/forward.ts).
   * The address dialled is the instance's on its tenant network: its namespace endpoint's
   * (runc, runsc) or its cell's (a cell's containers share the VM's address). The dial is
   * made from the agent's own network namespace, where the tenant's bridge has its gateway
   * address: the segment's rules drop what workloads send to the host, but not the host's own
   * connections to them nor their answers (established), which is how the probes' httpGet
   * and tcpSocket checks reach them too. So no entering of the container's namespace
   * (nsenter, setns from a helper process) is needed, and the connection is an ordinary
   * socket of this process. Never logs the bytes; logs the start with the port.
   * Throws CarapaceError: NOT_FOUND, INSTANCE_NOT_RUNNING, PORT_FORWARD_UNSUPPORTED, PORT_UNREACHABLE.
   */
  async portForward(tenant: string, name: string, port: number): Promise<ExecPort> {
    const inst = await this.o.resources.mustGet('Instance', name, tenant);
    const id = inst.status.containerId;
    const found = this.driverFor(inst);
    if (inst.status.phase !== 'Running' || !id || !('driver' in found)) throw new CarapaceError('CARAPACE_E_INSTANCE_NOT_RUNNING', `instance ${tenant}/${name} is not running (phase ${inst.status.phase})`);
    const address = found.driver.capabilities.network === 'namespace' ? await this.addressOf(id, found.driver) : inst.spec.cell ? (await this.o.resources.get('Cell', inst.spec.cell))?.status.address : undefined;
    if (address === undefined) throw new CarapaceError('CARAPACE_E_PORT_FORWARD_UNSUPPORTED', `instance ${tenant}/${name} has no address on its tenant network that its host can reach`);
    const sock = await dialWorkload(address, port, `instance ${tenant}/${name}`);
    this.log.info({ instance: `${tenant}/${name}`, port }, 'port-forward connection opened');
    return socketPort(sock);
  }

  /** A machine's serial console (for the API's machine logs endpoint). */
  async *machineLogs(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine> {
    if (!this.o.machines) return;
    yield* this.o.machines.console(tenant, name, opts);
  }

  /**
   * Looks again at every instance placed in `cell` (it became ready, or was lost), and removes
   * containers the cell still runs that no instance there wants (left by instances deleted or
   * replaced while this agent was down): inside a cell as on the host, nothing runs twice.
   */
  private cellChanged(cell: string): void {
    const check = async (): Promise<void> => {
      const here = (await this.o.resources.list('Instance')).items.filter((i) => i.spec.cell === cell);
      for (const i of here) this.queue.add(instanceKey(i.metadata.tenant ?? '', i.metadata.name));
      const runtime = this.o.cells?.runtimeFor(cell);
      if (!runtime) return;
      // Ids first, instances after: a container exists only for an instance that existed
      // before it, so one started meanwhile is always explained by the fresh list.
      const ids = (await runtime.recover()).map((c) => c.id);
      const fresh = (await this.o.resources.list('Instance')).items.filter((i) => i.spec.cell === cell && !i.metadata.deletionRequestedAt);
      const wanted = new Set(fresh.map((i) => containerIdFor(i)));
      const known = new Set([...this.local.values()].map((c) => c.id));
      for (const id of ids) {
        if (wanted.has(id) || known.has(id)) continue;
        this.log.info({ cell, container: id }, 'removing a container in a cell that no instance wants');
        await runtime.stop(id, 0).catch(() => undefined);
        await runtime.destroy(id).catch((err: unknown) => this.log.warn({ cell, container: id, err }, 'cannot remove an unwanted container'));
      }
    };
    check().catch((err: unknown) => this.log.warn({ cell, err }, 'cannot look at the instances of a cell'));
  }

  /**
   * The driver of an instance, from its placement: the runtime of the cell it was placed in,
   * or this host's driver for its isolation. The one place the agent looks at `spec.cell`;
   * everything else asks the driver (`capabilities`).
   */
  private driverFor(inst: Instance): DriverLookup {
    if (inst.spec.cell) {
      const runtime = this.o.cells?.runtimeFor(inst.spec.cell);
      return runtime ? { driver: runtime } : { waitingForCell: inst.spec.cell };
    }
    const driver = this.o.drivers[inst.spec.container.isolation];
    return driver ? { driver } : { none: true };
  }

  /** The address network checks of a container use: its namespace's address on the bridge, when the agent made one. */
  private async addressOf(id: string, driver: RuntimeDriver): Promise<string | undefined> {
    if (driver.capabilities.network !== 'namespace' || !this.o.network) return undefined;
    return (await this.o.network.net.inspect(id).catch(() => undefined))?.ip;
  }

  private async setStatus(inst: Instance, patch: Partial<InstanceStatus>, clear: (keyof InstanceStatus)[] = []): Promise<Instance | undefined> {
    return this.o.resources.mutate('Instance', inst.metadata.name, inst.metadata.tenant, (i) => {
      if (i.metadata.uid !== inst.metadata.uid) return undefined;
      const next = { ...i.status, ...patch };
      for (const k of clear) delete next[k];
      i.status = next;
      return i;
    });
  }

  /** The SIGTERM-to-SIGKILL grace for the container of `inst`: its spec's, else this agent's default. */
  private graceFor(inst: Instance): number {
    return stopGraceMsOf(inst.spec, this.o.stopGraceMs ?? 10_000);
  }

  /** True when no lease renewal sent in the last G succeeded. */
  private leaseStale(): boolean {
    return this.o.selfFencing !== false && this.lease.stale(performance.now(), this.fenceGraceMs);
  }

  /** The fence grace G from the control plane's published settings (kept when they cannot be read). */
  private async readLeaseSettings(): Promise<void> {
    const settings = (await this.o.resources.store.get<HostLeaseSettings>(HOST_LEASE_SETTINGS_KEY).catch(() => undefined))?.value;
    if (!settings || !(settings.graceMs > 0) || settings.graceMs === this.fenceGraceMs) return;
    this.log.info({ fenceGraceMs: settings.graceMs, leaseTtlMs: settings.ttlMs, fenceWaitMs: settings.waitMs }, 'fence grace from the control plane');
    this.fenceGraceMs = settings.graceMs;
  }

  /**
   * One fence check (every FENCE_CHECK_MS): while the lease is stale, stops each local
   * container whose instance says `fencing: stop`; once it is fresh again, requeues the
   * fenced instances, which the usual pass starts again if they are still placed here (the
   * control plane may have replaced them elsewhere meanwhile: then they are simply gone).
   * Needs nothing from the store: what to stop is in `local`.
   */
  private checkFence(): void {
    const stale = this.leaseStale();
    if (stale && !this.fencing) this.log.warn({ leaseAgeMs: Math.round(this.lease.ageMs(performance.now())), fenceGraceMs: this.fenceGraceMs }, 'lease stale: fencing the fencing=stop instances of this host');
    if (!stale && this.fencing) {
      this.log.info({ fenced: [...this.fenced.keys()] }, 'lease renewed: fence lifted');
      for (const key of this.fenced.keys()) this.queue.add(key);
      this.fenced.clear();
    }
    this.fencing = stale;
    if (!stale) return;
    const candidates = [...this.local].map(([key, c]) => ({ key, fencing: c.fencing, exited: c.exited, stopping: c.tearingDown === true }));
    for (const key of toFence(candidates)) void this.fence(key);
  }

  /**
   * Stops one container for the fence: SIGTERM, SIGKILL after FENCE_KILL_GRACE_MS (not the
   * workload's own grace: the control plane's wait counts on the stop budget), logs
   * `fenced: stopped` with the instance once it is down, then removes it as a teardown does.
   */
  private async fence(key: string): Promise<void> {
    const cur = this.local.get(key);
    if (!cur) return;
    cur.tearingDown = true; // its exit is no crash to restart
    this.probes.forget(key);
    const killGraceMs = fenceTimings(this.fenceGraceMs).killGraceMs;
    const t0 = performance.now();
    await cur.driver.stop(cur.id, killGraceMs).catch((err: unknown) => this.log.warn({ instance: key, container: cur.id, err }, 'fence: stop failed'));
    const at = new Date().toISOString();
    this.fenced.set(key, { container: cur.id, at });
    this.log.warn({ instance: key, container: cur.id, stopMs: Math.round(performance.now() - t0), leaseAgeMs: Math.round(this.lease.ageMs(performance.now())) }, `fenced: stopped ${key}`);
    await this.teardown(key, 0).catch((err: unknown) => this.log.warn({ instance: key, container: cur.id, err }, 'fence: removal failed'));
  }

  /**
   * Stops and removes the instance's container and network; idempotent. `graceMs`: SIGTERM to
   * SIGKILL; absent: the grace of the spec the container was started from.
   */
  private async teardown(key: string, graceMs?: number): Promise<void> {
    this.probes.forget(key);
    const cur = this.local.get(key);
    if (!cur) return;
    cur.tearingDown = true;
    await cur.driver.stop(cur.id, graceMs ?? cur.stopGraceMs).catch((err: unknown) => this.log.warn({ container: cur.id, err }, 'stop failed'));
    await cur.driver.destroy(cur.id);
    if (cur.driver.capabilities.network === 'namespace' && this.o.network) {
      await this.o.network.net.detach(cur.id);
      this.o.network.controller.touch(key.slice(0, key.indexOf('/'))); // its segment may have no work left
    }
    this.local.delete(key);
    await this.o.extras?.release(cur.uid, cur.volumeIds ?? [], this.volumesInUse(), cur.cell);
  }

  /** One level-based pass over one instance. */
  private async reconcile(key: string): Promise<ReconcileResult> {
    const [tenant, name] = key.split('/') as [string, string]; // keys are built by instanceKey
    const inst = await this.o.resources.get('Instance', name, tenant);
    const cur = this.local.get(key);
    if (!inst || inst.spec.host !== this.o.hostName) {
      await this.teardown(key);
      return;
    }
    if (inst.metadata.deletionRequestedAt) {
      if (inst.status.phase !== 'Stopping' && cur && !cur.exited) {
        await this.setStatus(inst, { phase: 'Stopping', reason: 'Deleted', message: 'stopping: instance deleted' });
        await this.drain(inst);
      }
      await this.teardown(key); // with the grace of the spec the container was started from
      await this.o.resources.remove('Instance', name, tenant, undefined);
      this.pullFailures.delete(key);
      this.log.info({ instance: key }, 'instance removed');
      return;
    }
    if (cur && cur.uid === inst.metadata.uid) cur.fencing = instanceFencing(inst.spec);
    if (cur && cur.uid !== inst.metadata.uid) {
      // The instance was replaced under the same name (e.g. failover moved it here or away):
      // whatever ran for the old one must not serve the new one.
      await this.teardown(key);
      return { requeueAfterMs: 0 };
    }
    if (cur && cur.generation !== inst.metadata.generation) {
      // The spec changed: replace the container (a destructive update), stopped with the grace
      // it was started under. Its restart count and last state belonged to the old spec: both
      // start over, so `describe` never blames the new version for the old one's crashes.
      await this.teardown(key);
      const fresh = await this.setStatus(inst, { phase: 'Pending', reason: 'Updated', message: 'spec changed; replacing container', restarts: 0, ready: false }, ['exitCode', 'finishedAt', 'nextRestartAt', 'lastState']);
      if (fresh) return this.startAttempt(key, fresh);
      return;
    }
    if (cur?.unrecorded && !cur.exited) return this.recordStart(key, inst, cur, cur.unrecorded);
    if (cur && !cur.exited) {
      if (inst.status.phase !== 'Running' || inst.status.containerId !== cur.id) {
        await this.setStatus(inst, { phase: 'Running', reason: 'Started', containerId: cur.id }, ['message']);
      }
      return;
    }
    if (TERMINAL_PHASES.includes(inst.status.phase)) return;
    if (!cur && inst.status.phase === 'Running' && inst.status.containerId === containerIdFor(inst)) {
      // After an agent restart the container may still run: one on the host was adopted by
      // recover() already (so its driver knows none here), one in a cell is found once the
      // cell is connected again. Adopt it rather than start a second one.
      const lookup = this.driverFor(inst);
      if ('waitingForCell' in lookup) return; // the cell is not connected yet; its change event brings us back
      const driver = 'driver' in lookup ? lookup.driver : undefined;
      const found = driver ? await driver.inspect(containerIdFor(inst)).catch(() => undefined) : undefined;
      if (driver && found && found.state.status !== 'exited') {
        const startedAtMs = found.state.status === 'running' ? Date.parse(found.state.startedAt) : Date.now();
        const volumeIds = await this.volumeIdsOf(inst);
        const refs = referencesOf(inst.spec.container);
        this.local.set(key, {
          uid: inst.metadata.uid,
          id: found.id,
          driver,
          generation: inst.metadata.generation,
          startedAtMs,
          exited: false,
          stopGraceMs: this.graceFor(inst),
          fencing: instanceFencing(inst.spec),
          ...(volumeIds.length > 0 ? { volumeIds } : {}),
          ...(refs.secrets.length + refs.configs.length > 0 ? { materialVersion: '' } : {}),
          ...(inst.spec.cell ? { cell: inst.spec.cell } : {}),
        });
        this.watchExit(key, found.id, driver);
        const ip = await this.addressOf(found.id, driver);
        this.probes.watch({ key, inst, containerId: found.id, driver, startedAtMs, initialReady: inst.status.ready, ...(ip !== undefined ? { address: ip } : {}) });
        this.log.info({ instance: key, container: found.id, driver: driver.name }, 'adopted container');
        return;
      }
      if (driver && found?.state.status === 'exited') {
        this.local.set(key, { uid: inst.metadata.uid, id: found.id, driver, generation: inst.metadata.generation, startedAtMs: Date.parse(found.state.startedAt ?? '') || Date.now(), exited: true, stopGraceMs: this.graceFor(inst), fencing: instanceFencing(inst.spec) });
        await this.recordExit(key, found.id, found.state);
        return;
      }
    }
    if (inst.status.phase === 'Backoff' && inst.status.nextRestartAt) {
      const wait = Date.parse(inst.status.nextRestartAt) - Date.now();
      if (wait > 0) return { requeueAfterMs: wait };
    }
    if (cur) await this.teardown(key, 0); // the exited previous attempt
    return this.startAttempt(key, inst);
  }

  private async startAttempt(key: string, inst: Instance): Promise<ReconcileResult> {
    // Fenced: not while the lease is stale (the control plane may be starting it elsewhere).
    if (!mayStart(instanceFencing(inst.spec), this.leaseStale())) return { requeueAfterMs: 1_000 };
    const lookup = this.driverFor(inst);
    const c = inst.spec.container;
    if ('waitingForCell' in lookup) {
      const name = lookup.waitingForCell;
      const cell = await this.o.resources.get('Cell', name);
      const msg = cell ? `waiting for cell ${name} (${cell.status.phase}${cell.status.message ? `: ${cell.status.message}` : ''})` : `cell ${name} is gone`;
      if (inst.status.message !== msg) await this.setStatus(inst, { phase: 'Pending', reason: 'WaitingForCell', message: msg });
      return { requeueAfterMs: 5_000 };
    }
    if ('none' in lookup) {
      await this.setStatus(inst, { phase: 'Failed', reason: 'IsolationUnavailable', message: `host ${this.o.hostName} has no driver for isolation "${c.isolation}"` });
      return;
    }
    const { driver } = lookup;
    if (inst.spec.cell && this.o.network) {
      // A claimed warm cell joins its tenant network after it was claimed: its containers copy
      // the VM's resolver when they start, so they start once it has.
      const cell = await this.o.resources.get('Cell', inst.spec.cell);
      if (cell && !cell.status.address) {
        const msg = `waiting for cell ${inst.spec.cell} to join the tenant network`;
        if (inst.status.message !== msg) await this.setStatus(inst, { phase: 'Pending', reason: 'WaitingForCell', message: msg });
        return { requeueAfterMs: 1_000 };
      }
    }
    // `namespace` drivers get a network namespace from the agent; `vm` drivers share their VM's network.
    const hostNetwork = driver.capabilities.network === 'namespace' ? this.o.network : undefined;
    const id = containerIdFor(inst);
    // Report Pulling only if the image is not at hand quickly: the common cached case
    // should not pay for an extra durable write.
    const showPulling = setTimeout(() => {
      this.setStatus(inst, { phase: 'Pulling', reason: 'PullingImage', message: `pulling ${c.image}` }).catch(() => undefined);
    }, 50);
    let image: PulledImage;
    try {
      image = await this.o.images.ensure(c.image);
    } catch (err) {
      clearTimeout(showPulling);
      const n = (this.pullFailures.get(key) ?? 0) + 1;
      this.pullFailures.set(key, n);
      const delay = Math.min(60_000, 1_000 * 2 ** Math.min(n - 1, 6));
      const reason = err instanceof ImagePullError ? err.reason : 'ImagePullFailed';
      const message = err instanceof Error ? err.message : String(err);
      await this.setStatus(inst, { phase: 'Backoff', reason, message: `${message} (retrying in ${Math.round(delay / 1000)}s)`, nextRestartAt: new Date(Date.now() + delay).toISOString() });
      return { requeueAfterMs: delay };
    }
    clearTimeout(showPulling);
    this.pullFailures.delete(key);
    // The pull may have taken long: the lease may have gone stale meanwhile.
    if (!mayStart(instanceFencing(inst.spec), this.leaseStale())) return { requeueAfterMs: 1_000 };
    let started: StartedContainer;
    let extras: StartExtras | undefined;
    try {
      extras = await this.extrasFor(inst);
      const net = hostNetwork ? await this.attach(hostNetwork, inst, id) : undefined;
      const labels = {
        [LABELS.uid]: inst.metadata.uid,
        [LABELS.tenant]: inst.metadata.tenant ?? '',
        [LABELS.instance]: inst.metadata.name,
        [LABELS.generation]: String(inst.metadata.generation),
      };
      const container = extras && Object.keys(extras.env).length > 0 ? { ...c, env: { ...c.env, ...extras.env } } : c;
      // Logged before the runtime is asked: no process of it exists before this line's time (the partition test orders fences by it).
      this.log.info({ instance: key, container: id }, 'starting container');
      const req = { id, rootfs: image.rootfs, image: image.config, container, hostname: inst.metadata.name, labels, ...(net ? { netnsPath: net.endpoint.netnsPath, dns: net.dns } : {}) };
      const info =
        extras?.kind === 'cell'
          ? await extras.runtime.start(req, extras.extras)
          : await driver.start({ ...req, ...(extras && extras.mounts.length > 0 ? { mounts: extras.mounts } : {}) });
      started = { imageDigest: image.digest, ...(info.state.status === 'running' ? { pid: info.state.pid } : {}), ...(net ? { endpoint: net.endpoint } : {}) };
    } catch (err) {
      // A start failure (e.g. the command does not exist) counts as an exit with an error.
      const message = err instanceof Error ? err.message : String(err);
      this.log.warn({ instance: key, container: id, err: message }, 'container start failed');
      await driver.destroy(id).catch(() => undefined);
      await hostNetwork?.net.detach(id).catch(() => undefined);
      this.local.delete(key);
      if (extras) await this.o.extras?.release(inst.metadata.uid, extras.volumeIds, this.volumesInUse(), extras.kind === 'cell' ? extras.cell : undefined);
      return this.afterExit(key, inst, { exitCode: 128, finishedAtMs: Date.now(), startError: message, containerId: id, startUnavailable: isCarapaceError(err, 'CARAPACE_E_UNAVAILABLE') });
    }
    const cur: LocalContainer = { uid: inst.metadata.uid, id, driver, generation: inst.metadata.generation, startedAtMs: Date.now(), exited: false, unrecorded: started, stopGraceMs: this.graceFor(inst), fencing: instanceFencing(inst.spec), ...(extras ? { volumeIds: extras.volumeIds } : {}), ...(extras?.materialVersion !== undefined ? { materialVersion: extras.materialVersion } : {}), ...(inst.spec.cell ? { cell: inst.spec.cell } : {}) };
    this.local.set(key, cur);
    return this.recordStart(key, inst, cur, started);
  }

  /**
   * Writes a started container's Running status, then follows its exit and runs its probes
   * (in that order: an exit is recorded against the status that names the container). When
   * the write fails the container keeps running and the key is retried.
   */
  private async recordStart(key: string, inst: Instance, cur: LocalContainer, started: StartedContainer): Promise<ReconcileResult> {
    const c = inst.spec.container;
    try {
      const status: Partial<InstanceStatus> = {
        phase: 'Running',
        reason: 'Started',
        containerId: cur.id,
        imageDigest: started.imageDigest,
        startedAt: new Date(cur.startedAtMs).toISOString(),
        // Not ready until the readiness probe passed once (prober.ts writes it).
        ready: c.readinessProbe === undefined,
      };
      if (started.pid !== undefined) status.pid = started.pid;
      // Its address on the tenant network: its endpoint's, or (`vm` drivers) its VM's.
      const address = started.endpoint ? started.endpoint.ip : inst.spec.cell ? (await this.o.resources.get('Cell', inst.spec.cell))?.status.address : undefined;
      if (address !== undefined) status.address = address;
      // Published by the agent's network, or (`vm` drivers) by the driver: every port with a host port.
      const published = started.endpoint
        ? started.endpoint.hostPorts
        : cur.driver.capabilities.network === 'vm'
          ? c.ports.flatMap((p) => (p.hostPort !== undefined ? [{ containerPort: p.containerPort, hostPort: p.hostPort, protocol: p.protocol }] : []))
          : [];
      if (published.length > 0) status.hostPorts = published;
      await this.setStatus(inst, status, ['message', 'exitCode', 'finishedAt', 'nextRestartAt']);
    } catch (err) {
      this.log.warn({ instance: key, container: cur.id, err }, 'container running, but its status could not be written; retrying');
      return { requeueAfterMs: 1_000 };
    }
    delete cur.unrecorded;
    this.log.info({ instance: key, container: cur.id }, 'container running');
    this.watchExit(key, cur.id, cur.driver);
    this.probes.watch({ key, inst, containerId: cur.id, driver: cur.driver, startedAtMs: cur.startedAtMs, initialReady: false, ...(started.endpoint ? { address: started.endpoint.ip } : {}) });
    return;
  }

  /**
   * The volumes, files and envFrom values of a container (undefined when it uses none): bind
   * mounts for a host-run one, hot-plugged disks and guest files for one in a cell.
   */
  private async extrasFor(inst: Instance): Promise<StartExtras | undefined> {
    const refs = referencesOf(inst.spec.container);
    if ((inst.spec.mounts ?? []).length === 0 && refs.secrets.length + refs.configs.length === 0) return undefined;
    if (!this.o.extras) throw new CarapaceError('CARAPACE_E_VALIDATION', `host ${this.o.hostName} cannot give containers volumes, secrets or configs`);
    if (inst.spec.cell) {
      const runtime = this.o.cells?.runtimeFor(inst.spec.cell);
      if (!runtime) throw new Error(`cell ${inst.spec.cell} is not connected`);
      return { kind: 'cell', runtime, cell: inst.spec.cell, ...(await this.o.extras.forCell(inst)) };
    }
    return { kind: 'host', ...(await this.o.extras.forHost(inst)) };
  }

  /** Rewrites the files of running containers whose `update` Secrets or Configs changed. */
  private async refreshFiles(): Promise<void> {
    const extras = this.o.extras;
    if (!extras) return;
    for (const [key, cur] of this.local) {
      if (cur.materialVersion === undefined || cur.exited || cur.unrecorded || cur.tearingDown) continue;
      const [tenant, name] = key.split('/') as [string, string]; // keys are built by instanceKey
      try {
        const inst = await this.o.resources.get('Instance', name, tenant);
        if (!inst || inst.metadata.uid !== cur.uid) continue;
        const runtime = cur.cell ? this.o.cells?.runtimeFor(cur.cell) : undefined;
        if (cur.cell && !runtime) continue; // its cell is not connected: next time
        const v = await extras.refresh(inst, cur.materialVersion, runtime ? { runtime, containerId: cur.id } : undefined);
        if (v !== undefined) cur.materialVersion = v;
      } catch (err) {
        this.log.warn({ instance: key, err }, 'cannot update the secret and config files of a container; retrying');
      }
    }
  }

  /** The VolumeStore ids of an instance's volumes (an adopted container's, to give back when it goes). */
  private async volumeIdsOf(inst: Instance): Promise<string[]> {
    const ids: string[] = [];
    for (const m of inst.spec.mounts ?? []) {
      const v = await this.o.resources.get('Volume', m.volume, inst.metadata.tenant);
      if (v?.status.host === this.o.hostName) ids.push(v.metadata.uid);
    }
    return ids;
  }

  /** The volumes the local containers mount. */
  private volumesInUse(): Set<string> {
    return new Set([...this.local.values()].flatMap((c) => c.volumeIds ?? []));
  }

  /**
   * Before a service's replica that was serving is stopped: waits until its address is out of
   * its service's endpoints in the tenant's network view (deleting it made it not ready; the
   * controller rewrites the view), then DRAIN_SETTLE_MS for every host's rules to follow the
   * view. New connections then go to other replicas, and a SIGTERM that ends the process at
   * once (nginx, busybox httpd) cuts no request a client just opened: what a rolling update or
   * a scale-down would otherwise cost (cf. a load balancer's deregistration delay). Bounded by
   * DRAIN_TIMEOUT_MS: a controller that is down must not hold a deletion forever.
   */
  private async drain(inst: Instance): Promise<void> {
    const address = inst.status.address;
    const tenant = inst.metadata.tenant;
    if (!this.o.network || inst.spec.owner.kind !== 'Service' || inst.status.phase !== 'Running' || inst.status.ready !== true || !address || !tenant) return;
    const store = this.o.resources.store;
    const deadline = Date.now() + DRAIN_TIMEOUT_MS;
    for (;;) {
      const view = (await store.get<TenantNetworkView>(tenantNetworkViewKey(tenant)).catch(() => undefined))?.value;
      const listed = view?.services.some((sv) => sv.name === inst.spec.owner.name && sv.endpoints.includes(address)) ?? false;
      if (!listed || Date.now() > deadline) break;
      await delay(50);
    }
    await delay(DRAIN_SETTLE_MS);
  }

  /** Puts container `id` of `inst` on its tenant's segment (made first if this host has none yet). */
  private async attach(n: HostNetworking, inst: Instance, id: string): Promise<{ endpoint: Endpoint; dns: ResolverConfig }> {
    const tenant = inst.metadata.tenant ?? '';
    return n.controller.attachToTenant(tenant, async (segment) => {
      const endpoint = await n.net.attach({ id, tenant, kind: 'netns', ports: inst.spec.container.ports });
      return { endpoint, dns: { nameservers: [endpoint.dns], search: [segment.search] } };
    });
  }

  private watchExit(key: string, id: string, driver: RuntimeDriver): void {
    const signal = this.running.signal;
    driver
      .wait(id, signal)
      .then((exit) => this.recordExit(key, id, exit))
      .catch((err: unknown) => {
        if (signal.aborted) return; // the agent stopped; its next run adopts the container
        this.log.warn({ instance: key, container: id, err }, 'wait failed');
        this.queue.addAfter(key, 1_000);
      });
  }

  private async recordExit(key: string, id: string, exit: ExitedState): Promise<void> {
    const cur = this.local.get(key);
    if (!cur || cur.id !== id || cur.tearingDown) return; // a replaced attempt, or one being removed
    cur.exited = true;
    this.probes.stop(key);
    const [tenant, name] = key.split('/') as [string, string]; // keys are built by instanceKey
    const inst = await this.o.resources.get('Instance', name, tenant);
    if (!inst || inst.status.containerId !== id) {
      this.queue.add(key);
      return;
    }
    const finishedAtMs = Date.parse(exit.finishedAt) || Date.now();
    const r = await this.afterExit(key, inst, {
      exitCode: exit.exitCode,
      finishedAtMs,
      startedAt: exit.startedAt ?? new Date(cur.startedAtMs).toISOString(),
      containerId: id,
      ranMs: finishedAtMs - cur.startedAtMs,
      ...(exit.oomKilled ? { oomKilled: true } : {}),
    });
    if (r) this.queue.addAfter(key, r.requeueAfterMs);
    else this.queue.add(key);
  }

  /**
   * Records how a container ended (status and `lastState`) and applies the restart policy:
   * Backoff with a restart time, or a terminal phase.
   */
  private async afterExit(key: string, inst: Instance, e: ExitFacts): Promise<ReconcileResult> {
    const { exitCode, startError } = e;
    if (inst.metadata.deletionRequestedAt) {
      this.queue.add(key);
      return;
    }
    // Stopped by the prober because its liveness probe failed: that is the reason users see.
    const unhealthy = !startError && inst.status.containerId ? this.probes.takeUnhealthy(inst.status.containerId) : undefined;
    const oomKilled = e.oomKilled === true && !startError;
    const d = decideAfterExit(inst.spec, exitCode, inst.status.restarts, e.ranMs ?? 0, unhealthy !== undefined, oomKilled);
    const finishedAt = new Date(e.finishedAtMs).toISOString();
    const what = startError ?? unhealthy ?? `exited with code ${exitCode}${oomKilled ? ' (OOM-killed: it used more than its memory limit)' : ''}`;
    const lastState = lastStateOf({ exitCode, finishedAt, startedAt: e.startedAt, containerId: e.containerId, message: what, cause: { unhealthy: unhealthy !== undefined, oomKilled, startFailed: startError !== undefined } });
    if (d.action === 'stop') {
      await this.setStatus(inst, { phase: d.phase, reason: startError ? 'StartFailed' : d.reason, message: what, exitCode, finishedAt, ready: false, lastState }, ['pid', 'nextRestartAt']);
      this.log.info({ instance: key, exitCode, phase: d.phase }, 'container finished');
      return;
    }
    const next = new Date(Date.now() + d.delayMs).toISOString();
    await this.setStatus(
      inst,
      {
        phase: 'Backoff',
        // RuntimeUnavailable: not the workload's fault, and `apply --wait` waits through it.
        reason: startError ? (e.startUnavailable ? 'RuntimeUnavailable' : 'StartFailed') : d.reason,
        message: `${what}; restarting in ${(d.delayMs / 1000).toFixed(0)}s`,
        exitCode,
        finishedAt,
        nextRestartAt: next,
        restarts: inst.status.restarts + 1,
        ready: false,
        lastState,
      },
      ['pid'],
    );
    return { requeueAfterMs: d.delayMs };
  }
}
