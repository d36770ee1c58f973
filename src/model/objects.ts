/**
 * Stored objects: a manifest's spec plus the metadata and status the control plane keeps.
 * Every object has `metadata.resourceVersion` (the store revision of its last write) and a
 * `generation` that grows when its spec changes. Ids and timestamps are always passed in by
 * the caller (deterministic writes). Pure types and helpers.
 */
import type { ContainerSpec, JobSpec, MachineSpec, ServiceSpec, TenantSpec } from './schemas.js';
import type { InstanceMount, Volume } from './volumes.js';
import type { Config, Secret } from './secrets.js';
import type { VolumeSnapshot } from './volume-snapshots.js';
import type { ProgressingCondition, RolloutProgress, ServiceRevision } from './rollout.js';
import type { Fencing } from './fencing.js';

/** Kinds stored by the control plane, with their URL/collection names. */
export const KINDS = {
  Tenant: { plural: 'tenants', scoped: false },
  Service: { plural: 'services', scoped: true },
  Job: { plural: 'jobs', scoped: true },
  Instance: { plural: 'instances', scoped: true },
  Host: { plural: 'hosts', scoped: false },
  Cell: { plural: 'cells', scoped: false },
  Machine: { plural: 'machines', scoped: true },
  Volume: { plural: 'volumes', scoped: true },
  Secret: { plural: 'secrets', scoped: true },
  Config: { plural: 'configs', scoped: true },
  VolumeSnapshot: { plural: 'volumesnapshots', scoped: true },
} as const;
export type Kind = keyof typeof KINDS;
export type Plural = (typeof KINDS)[Kind]['plural'];

/** Short words for kinds, as kubectl has (`get snapshots`). */
export const KIND_ALIASES: Readonly<Record<string, Kind>> = { snapshot: 'VolumeSnapshot', snapshots: 'VolumeSnapshot' };

/** Maps a plural or singular, any case ("services", "service", "Service"), or an alias ("snapshots"), to a Kind. */
export function kindFromWord(word: string): Kind | undefined {
  const w = word.toLowerCase();
  if (Object.hasOwn(KIND_ALIASES, w)) return KIND_ALIASES[w];
  for (const [kind, info] of Object.entries(KINDS) as [Kind, (typeof KINDS)[Kind]][]) {
    if (w === kind.toLowerCase() || w === info.plural) return kind;
  }
  return undefined;
}

export interface Metadata {
  name: string;
  /** The owning tenant; absent for cluster-scoped kinds (Tenant, Host). */
  tenant?: string;
  uid: string;
  labels: Record<string, string>;
  /** Store revision of the last write; 0 before the first write. */
  resourceVersion: number;
  /** Grows by one whenever the spec changes (not on status writes). */
  generation: number;
  createdAt: string;
  updatedAt: string;
  /** Set when deletion was requested and cleanup (stopping containers) is under way. */
  deletionRequestedAt?: string;
}

export interface Tenant {
  kind: 'Tenant';
  metadata: Metadata;
  spec: TenantSpec;
  /**
   * Written by the plan applier, in the transaction that creates the tenant's network (the
   * first placement of its work); absent before. For display: agents read the network record.
   */
  status?: {
    /** The tenant network's CIDR and VXLAN network identifier (see TenantNetwork). */
    network?: { cidr: string; vni: number };
  };
}

export interface ServiceStatus {
  /** Instances Running and ready right now (readiness probe passing, or none). */
  ready: number;
  /** The generation the controller last acted on. */
  observedGeneration: number;
  /**
   * The service address (VIP): claimed when the service is created (a service stored before
   * addresses existed gets one from the controller's next pass), kept by every status write,
   * released when the service is deleted.
   */
  address?: string;
  /**
   * Rolling updates (model/rollout.ts), written by the controller; absent on services no
   * pass has looked at since rollouts existed. `revision`: the revision of the current
   * template (moved by each template change, an undo, a rollback, a restart).
   */
  revision?: number;
  /** Replicas (ordinals below `replicas`) made from the current revision, not being removed. */
  updatedReplicas?: number;
  /** Replicas ready now, of any revision (the surge included). */
  readyReplicas?: number;
  /** Replicas available to serve: ready ones (there is no minReadySeconds yet, so equal to readyReplicas). */
  availableReplicas?: number;
  /** The `Progressing` condition (the only one so far). */
  conditions?: ProgressingCondition[];
  /** The last REVISION_HISTORY_LIMIT revisions, oldest first: templates for undo and rollback. */
  history?: ServiceRevision[];
  /** The revision that last completed: where an automatic rollback returns. */
  stableRevision?: number;
  /** For the progress deadline (see RolloutProgress). */
  progress?: RolloutProgress;
}

export interface Service {
  kind: 'Service';
  metadata: Metadata;
  spec: ServiceSpec;
  status: ServiceStatus;
}

export type JobPhase = 'Pending' | 'Running' | 'Succeeded' | 'Failed';

export interface JobStatus {
  phase: JobPhase;
  succeeded: number;
  failed: number;
  /** Why the job failed, when it did. */
  reason?: string;
  startedAt?: string;
  finishedAt?: string;
  observedGeneration: number;
}

export interface Job {
  kind: 'Job';
  metadata: Metadata;
  spec: JobSpec;
  status: JobStatus;
}

/**
 * Where an instance is in its life. `Pending`: not yet placed or not yet picked up;
 * `Pulling`: its image is being fetched; `Starting`: the runtime is creating it;
 * `Running`; `Backoff`: it exited and waits to be restarted; `Succeeded`/`Failed`: it exited
 * and will not be restarted; `Stopping`: being stopped because it was deleted or replaced.
 */
export type InstancePhase = 'Pending' | 'Pulling' | 'Starting' | 'Running' | 'Backoff' | 'Succeeded' | 'Failed' | 'Stopping';

/** Phases after which nothing more happens to an instance unless its spec changes. */
export const TERMINAL_PHASES: readonly InstancePhase[] = ['Succeeded', 'Failed'];

export interface InstanceOwner {
  kind: 'Service' | 'Job';
  name: string;
  uid: string;
}

/** What the controller asks of an instance (written only by the controller). */
export interface InstanceSpec {
  owner: InstanceOwner;
  /** Replica ordinal for services, completion index for jobs. */
  index: number;
  container: ContainerSpec;
  /** Restart policy the agent applies locally. Jobs use OnFailure with the job's backoffLimit. */
  restartPolicy: 'Always' | 'OnFailure' | 'Never';
  /** For jobs: retries allowed before the instance is Failed; services: unlimited (-1). */
  maxRestarts: number;
  /** The host chosen by the scheduler; empty while unplaced. */
  host: string;
  /** For `cell` and `dedicated` isolation: the cell (VM) the instance runs in; empty otherwise or while unplaced. */
  cell?: string;
  /** The generation of the owner's spec this instance was made from. */
  ownerGeneration: number;
  /**
   * The volumes it mounts, templates resolved (`data-2` for replica 2), filled by the
   * controller from the owner's spec so agents never resolve templates. Absent on instances
   * stored before volumes existed (read as none).
   */
  mounts?: InstanceMount[];
  /**
   * The content versions (`contentVersion`) of the Secrets and Configs with `onChange:
   * restart` that the container uses, by `secret/<name>` and `config/<name>`: the controller
   * updates it when one changes, which (like any spec change) makes the agent restart the
   * container. Absent when the container uses none.
   */
  restartOn?: Record<string, string>;
  /**
   * Seconds between SIGTERM and SIGKILL when the agent stops the container (deleted,
   * replaced, liveness failure), copied from the owner's `stopGracePeriodSeconds`. Absent:
   * the agent's default (10 s unless the agent was started with another).
   */
  stopGracePeriodSeconds?: number;
  /**
   * What the agent does when its host lease goes stale (model/fencing.ts): `stop` the
   * container before the control plane may replace it elsewhere, or `keep` it. Copied from
   * the owner's effective fencing (`fencingOf`); absent on instances stored before it
   * existed (`instanceFencing`: `stop` when it mounts a volume).
   */
  fencing?: Fencing;
  /**
   * For service replicas: the revision of the service's template it was made from
   * (`Service.status.revision`); absent on instances made before rollouts existed (read as 1).
   */
  revision?: number;
}

/**
 * How the most recent container of an instance ended (Kubernetes' `lastState.terminated`):
 * written by the agent at each exit or failed start, kept across restarts (overwritten by
 * the next one), cleared with the restart count when a spec change replaces the container.
 */
export interface InstanceLastState {
  exitCode: number;
  /** `Completed`, `Error`, `OOMKilled`, `Unhealthy` or `StartFailed` (LAST_STATE_REASONS). */
  reason: LastStateReason;
  /** What happened, for people (`exited with code 3`, the liveness probe's failure, the start error). */
  message?: string;
  /** The runtime id of that container. */
  containerId?: string;
  /** When it started; absent when it never started (`StartFailed`). */
  startedAt?: string;
  finishedAt: string;
}

/** Why a container ended, as `lastState.reason` says it. */
export const LAST_STATE_REASONS = ['Completed', 'Error', 'OOMKilled', 'Unhealthy', 'StartFailed'] as const;
export type LastStateReason = (typeof LAST_STATE_REASONS)[number];

/** What the agent reports (written only by the agent, or by the controller for placement). */
export interface InstanceStatus {
  phase: InstancePhase;
  /** Stable, machine-readable reason for the phase (e.g. `ImagePullFailed`, `Exited`). */
  reason?: string;
  /** Human-readable detail. */
  message?: string;
  /** The image digest actually run. */
  imageDigest?: string;
  exitCode?: number;
  /** Number of times the agent restarted the container. */
  restarts: number;
  /** Runtime container id of the current attempt. */
  containerId?: string;
  pid?: number;
  startedAt?: string;
  finishedAt?: string;
  /** When a Backoff instance will be restarted. */
  nextRestartAt?: string;
  /** Ports published on the host. */
  hostPorts?: { containerPort: number; hostPort: number; protocol: 'tcp' | 'udp' }[];
  /**
   * Set on an instance created to replace one lost with its cell or host: where it ran, why
   * it was lost and when; cleared (and audited with the recovery time) once it runs again.
   */
  failover?: { from: string; reason: string; lostAt: string };
  /**
   * Whether the instance serves: its container runs and its readiness probe passes (true
   * while Running when it has no readiness probe). Written by the agent; use
   * `instanceReady`, which also reads records written before this field existed.
   */
  ready: boolean;
  /**
   * Its address on the tenant network, written by the agent once the endpoint is attached
   * (an instance in a cell has its cell's address).
   */
  address?: string;
  /** How the previous (most recent ended) container ended; see InstanceLastState. */
  lastState?: InstanceLastState;
}

export interface Instance {
  kind: 'Instance';
  metadata: Metadata;
  spec: InstanceSpec;
  status: InstanceStatus;
}

/**
 * True when the instance counts as ready (in `Service.status.ready`, `apply --wait`): it is
 * Running, not being deleted, and its readiness probe passes. A record written before
 * `status.ready` existed (absent at runtime) is ready when Running without a readiness probe.
 */
export function instanceReady(i: Instance): boolean {
  if (i.status.phase !== 'Running' || i.metadata.deletionRequestedAt) return false;
  // `as`: stored records older than the field lack it; the type describes new writes.
  const ready = i.status.ready as boolean | undefined;
  return ready ?? i.spec.container.readinessProbe === undefined;
}

export interface HostStatus {
  state: 'Ready' | 'NotReady';
  lastHeartbeatAt: string;
  /** Isolation tiers this host can run, found by probing its runtimes at start. */
  isolation: string[];
  capacity: { cpu: number; memoryMiB: number };
  agentVersion: string;
  /** Why the host is not ready or lacks a tier. */
  message?: string;
  /** Why it is NotReady (`LeaseExpired`), set by the control plane. */
  reason?: string;
  /** When the control plane declared it NotReady. */
  lostAt?: string;
  /**
   * When its lease had been silent for the fence wait W (model/fencing.ts): its agent, if
   * alive, has stopped every `fencing: stop` instance by then, so the controller may replace
   * them. Set by the host monitor, cleared when the host is Ready again.
   */
  fencedAt?: string;
  /**
   * The host's underlay address, where other hosts' VXLAN reaches it: the agent's
   * `--advertise-address`, else the source address of its default route. Absent when the
   * agent found neither (the host then joins no overlay).
   */
  address?: string;
}

export interface Host {
  kind: 'Host';
  metadata: Metadata;
  spec: {
    labels: Record<string, string>;
    /** Cordoned: nothing new is placed here (running work stays). */
    unschedulable: boolean;
    /** Draining: cordoned, and its instances are moved elsewhere within their services' disruption budgets. */
    draining?: boolean;
    /**
     * Allocatable = capacity x ratio. CPU is time-shared (containers' cpu is a quota, cells'
     * vCPUs are threads), so hosts default to 4 for cpu; memory is not overcommitted (1).
     */
    overcommit?: { cpu: number; memory: number };
  };
  status: HostStatus;
}

/**
 * A cell's life: `Pending` (decided, no VM yet), `Booting` (QEMU started, waiting for the guest
 * agent), `Ready` (the guest agent answered: instances can run), `Failed` (the VM could not
 * boot), `Lost` (the VM died, its guest agent stopped answering, or its host was lost: its
 * instances are re-placed and the VM is fenced), `Retiring` (being stopped and removed).
 */
export type CellPhase = 'Pending' | 'Booting' | 'Ready' | 'Failed' | 'Lost' | 'Retiring';

/** Cell phases after which a cell never runs anything again. */
export const DEAD_CELL_PHASES: readonly CellPhase[] = ['Failed', 'Lost'];

/**
 * A VM that holds the instances of exactly one (tenant, group) for its whole life. A warm
 * cell (tenant '') is pre-booted and unassigned; it is assigned once, on first use, and is
 * destroyed, never returned, when retired. Cluster-scoped: operators see all cells; the tenant
 * is a field, not part of the key, so assignment never moves the object.
 */
export interface Cell {
  kind: 'Cell';
  metadata: Metadata;
  spec: {
    /** The owning tenant; '' while the cell is an unassigned warm cell. Set once, never changed after. */
    tenant: string;
    group: string;
    host: string;
    cpu: number;
    memoryMiB: number;
    /** Holds exactly one instance (isolation `dedicated`). */
    dedicated: boolean;
    /** Created by the host's warm pool rather than for a placement. */
    warm: boolean;
  };
  status: {
    phase: CellPhase;
    message?: string;
    /** QEMU process id on the host. */
    pid?: number;
    accel?: string;
    bootStartedAt?: string;
    readyAt?: string;
    /** Launch to the guest agent's ready line. */
    bootMs?: number;
    /** When the cell last became empty (for the retirement grace period). */
    emptySince?: string;
    /** When it was assigned to its tenant (warm cells). */
    assignedAt?: string;
    /** When the host agent noticed the cell was lost (Lost). */
    lostAt?: string;
    /** Container ids the guest agent reports running (from its usage reports; written when they change). */
    containers?: string[];
    /** The VM's address on its tenant network, written by the agent once its tap is attached. */
    address?: string;
  };
}

/**
 * A machine's life: `Pending` (not placed or not picked up), `Starting` (QEMU launched),
 * `Running`, `Backoff` (exited; restarting after a delay), `Stopped` (stopped on request or
 * finished under its restart policy), `Failed` (could not start, or exited with an error and
 * will not be restarted).
 */
export type MachinePhase = 'Pending' | 'Starting' | 'Running' | 'Backoff' | 'Stopped' | 'Failed';

/** A plain VM with its own kernel or disk, for software that wants a whole machine. */
export interface Machine {
  kind: 'Machine';
  metadata: Metadata;
  spec: MachineSpec;
  status: {
    phase: MachinePhase;
    /** The host chosen at first placement; a machine stays there (its disk overlay lives there). */
    host: string;
    reason?: string;
    message?: string;
    pid?: number;
    accel?: string;
    startedAt?: string;
    finishedAt?: string;
    exitCode?: number;
    restarts: number;
    nextRestartAt?: string;
    /** The spec generation the running VM was started from. */
    runningGeneration?: number;
    /** The VM's address on its tenant network (its DHCP lease), written by the agent once its tap is attached. */
    address?: string;
    /** The MAC of the VM's network card, fixed per endpoint so anti-spoofing and DHCP know it. */
    mac?: string;
  };
}

export type AnyObject = Tenant | Service | Job | Instance | Host | Cell | Machine | Volume | Secret | Config | VolumeSnapshot;
export type ObjectOfKind<K extends Kind> = Extract<AnyObject, { kind: K }>;

/** Deterministic instance name for a service replica or a job completion index. */
export function instanceName(owner: string, index: number): string {
  return `${owner}-${index}`;
}

/**
 * What a host's agent writes into its lease (`hostLeaseKey(host)`) about every second; the
 * control plane's host monitor judges a host by the lease's version moving, so `renewedAt` is
 * informative only (the agent's clock).
 */
export interface HostLease {
  host: string;
  renewedAt: string;
  /** The agent's process id and start time, to tell a restarted agent from a renewing one. */
  holder: string;
}
