/**
 * The scheduler's own input and output types: plain data, no classes, no I/O.
 *
 * Units: cpu in cores (numbers such as 0.25; the scheduler works in integer millicores inside
 * and rounds to the nearest millicore), memory in MiB (integers). Ids and names are strings.
 * Callers translate their objects into these types (`model-adapter.ts` does it for the
 * control plane's; see README.md in this folder).
 */

/**
 * Where a request runs: `cell` (shared VM of its trust group), `dedicated` (a VM of its own),
 * `host` (runc), `sandbox` (runsc), or `machine` (a plain VM of its own: a Machine object, not
 * a container; placed on a host like a host-run instance, its vCPUs and memory charged there).
 */
export type Isolation = 'cell' | 'dedicated' | 'host' | 'sandbox' | 'machine';

/**
 * How a service's replicas are spread. `required`: at most one replica per cell (per host for
 * `host`/`sandbox`); `preferred`: a cell without a replica is chosen when one fits, otherwise
 * packing wins; `none`: packing only.
 */
export type Spread = 'required' | 'preferred' | 'none';

/** A host as the scheduler sees it. */
export interface HostInfo {
  name: string;
  /** Physical cores. */
  cpu: number;
  memoryMiB: number;
  /** Allocatable = capacity x ratio; defaults 1 (no overcommit). */
  overcommit?: { cpu?: number; memory?: number };
  /** Labels for node selectors; `zone` is also used to spread cells. */
  labels: Record<string, string>;
  /** False when the agent stopped heartbeating: its cells and instances are lost and re-placed. */
  ready: boolean;
  /** False when cordoned: what runs there stays, nothing new goes there (not even into its cells). */
  schedulable: boolean;
  /** Tiers the host can run (its probed runtimes): `cell`/`dedicated`/`machine` need QEMU, `sandbox` runsc. */
  isolation: Isolation[];
}

/** State of an existing cell. `draining` cells keep their instances but take no new ones. */
export type CellState = 'creating' | 'running' | 'draining';

/**
 * An existing cell (VM) of one (tenant, group), or a warm one: pre-booted, of no tenant yet
 * (`warm: true`, tenant and group empty). A warm cell's size is charged to its host; a plan may
 * claim a `running` warm cell for a group instead of creating a cell (`PlannedCell.fromWarmPool`),
 * after which it belongs to that group for the rest of its life.
 */
export interface CellInfo {
  id: string;
  /** Empty for a warm cell. */
  tenant: string;
  /** Empty for a warm cell. */
  group: string;
  host: string;
  /** Size of the VM charged to the host (the guest overhead is inside it). */
  cpu: number;
  memoryMiB: number;
  state: CellState;
  /** A `dedicated` cell holds exactly one instance and is never shared. */
  dedicated?: boolean;
  /** A pre-booted cell of no tenant yet; claimable once `running`. */
  warm?: boolean;
}

/**
 * A rule that limits the hosts one request may go to, given by the caller as data: the
 * extension point for constraints the scheduler does not know about (an instance that must go
 * to the host holding its volume, one that needs its tenant's network on the host). The
 * request may only go to hosts in `hosts`; every other rule still applies. When no ready,
 * schedulable host of the set is left, the request is unplaced with this constraint's `code`
 * and `reason` (e.g. `VolumeHostNotReady`, "volume acme/db-0 lives on host h2, which is
 * NotReady"); when hosts of the set are usable but full, the usual capacity sentence names
 * the constraint.
 */
export interface HostConstraint {
  /** Short name for sentences and failure caching, e.g. `volume acme/db-0`. */
  name: string;
  /** Hosts the request may go to. */
  hosts: string[];
  /** Stable code of the unplaced reason when no host of the set is usable. */
  code: string;
  /** The sentence for `carapace describe` when no host of the set is usable. */
  reason: string;
}

/** One instance (or machine) the scheduler is asked to place (or that is placed already). */
export interface InstanceRequest {
  /** Unique across the cluster (e.g. `tenant/service-3`). */
  id: string;
  tenant: string;
  group: string;
  /** Service (or job) name inside the tenant; spread is per (tenant, service). */
  service: string;
  isolation: Isolation;
  cpu: number;
  memoryMiB: number;
  /** Default `none`. */
  spread?: Spread;
  /** Host labels the host must have, e.g. `{ zone: 'eu-1' }`. */
  nodeSelector?: Record<string, string>;
  /** Further host rules from the caller (see HostConstraint); all must admit a host. */
  constraints?: HostConstraint[];
}

/** Where an instance runs: on `host`, inside `cell` when it has one. */
export interface Placement {
  instance: InstanceRequest;
  host: string;
  /** Absent for `host`/`sandbox` instances and machines. */
  cell?: string;
}

/**
 * Limits on what a tenant's instances and machines may request in total (their own sizes, not
 * cell sizes). Machines count towards cpu and memory, not towards `instances`.
 */
export interface TenantQuota {
  tenant: string;
  cpu?: number;
  memoryMiB?: number;
  /** Most container instances (machines are not counted here). */
  instances?: number;
  /** Most cells (VMs) the tenant may hold; the scheduler creates no cell past it. */
  cells?: number;
}

/** How cells of a group are sized and filled. Every field defaults to `CellPolicyDefaults`. */
export interface CellPolicy {
  /** Default cell (VM) size charged to the host. */
  cellCpu: number;
  cellMemoryMiB: number;
  /** What the guest kernel and agent take inside the cell; instances get size - overhead. */
  guestOverheadCpu: number;
  guestOverheadMiB: number;
  /** Blast-radius limit: most instances in one cell (0 = no limit). */
  maxInstancesPerCell: number;
}

/** A per-(tenant, group) override of the cell policy. */
export interface GroupPolicy extends Partial<CellPolicy> {
  tenant: string;
  group: string;
}

/** Everything the scheduler reads: an immutable view of the cluster. */
export interface Snapshot {
  hosts: HostInfo[];
  cells: CellInfo[];
  placements: Placement[];
  quotas?: TenantQuota[];
  groupPolicies?: GroupPolicy[];
  /** Cluster-wide cell policy; built-in defaults are 2 cpu / 2048 MiB, overhead 0.25 / 256, no limit. */
  defaults?: Partial<CellPolicy>;
  /** When consolidation last ran (ms since epoch, the caller's clock); for its rate limit. */
  lastConsolidationAt?: number;
}

/** Consolidation request: move instances out of nearly empty cells so those cells can be retired. */
export interface ConsolidateRequest {
  /** Most instance moves in this plan (the rate limit per plan). */
  maxMoves: number;
  /** A cell is nearly empty when its fuller dimension is at most this fraction of its room (default 0.25). */
  nearlyEmptyFraction?: number;
  /** Skip consolidation when it ran less than this long before `now` (default 0). */
  minIntervalMs?: number;
}

/** What the caller wants changed. */
export interface Demand {
  /** Instances to place. Ones already placed (and not displaced) are left where they are. */
  place: InstanceRequest[];
  /** Instance ids to remove (deleted or scaled down); unknown ids are ignored. */
  remove?: string[];
  /** Present only when the operator enabled consolidation: it never runs otherwise. */
  consolidate?: ConsolidateRequest;
  /**
   * Keep cells that end up empty instead of retiring them in this plan (default false). A
   * caller that retires empty cells by a policy of its own (the control plane waits a grace
   * period) sets it, so the plan never counts a still-running empty cell's room as free.
   */
  keepEmptyCells?: boolean;
}

/** Inputs that would otherwise be effects: the caller's clock and id source. */
export interface ScheduleOptions {
  /** The caller's clock, ms since epoch; used for the consolidation rate limit and echoed in the plan. */
  now: number;
  /** Returns a fresh cell id; called once per created cell, in plan order. */
  newId: () => string;
}

/** Stable codes for why an instance could not be placed (besides a HostConstraint's own `code`). */
export type UnplacedCode =
  | 'InvalidRequest'
  | 'DuplicateInstance'
  | 'QuotaExceeded'
  | 'NoReadyHost'
  | 'IsolationUnavailable'
  | 'NoMatchingHost'
  | 'TooLarge'
  | 'NoCapacity';

/** An instance the plan could not place, with a sentence for `carapace describe`. */
export interface Unplaced {
  instance: InstanceRequest;
  /** A built-in code, or the `code` of the HostConstraint that ruled out every host. */
  code: UnplacedCode | HostConstraint['code'];
  reason: string;
}

/** A placement in the plan; `previous` is set when the instance was displaced (host lost) and re-placed. */
export interface PlannedPlacement extends Placement {
  previous?: { host: string; cell?: string };
}

/**
 * A cell the plan creates, or (`fromWarmPool`) the warm cell `id` it claims for the group:
 * then size and host are the warm cell's, and the caller assigns it instead of booting a VM.
 */
export interface PlannedCell {
  id: string;
  tenant: string;
  group: string;
  host: string;
  cpu: number;
  memoryMiB: number;
  dedicated: boolean;
  /** Set when this is an existing warm cell, claimed (never a second time: it leaves the pool). */
  fromWarmPool?: boolean;
}

/** Why a cell is retired. */
export type RetireReason = 'Empty' | 'Consolidated' | 'HostNotReady' | 'HostMissing';

/** A cell the plan retires (its VM is stopped and deleted). */
export interface RetiredCell {
  id: string;
  host: string;
  reason: RetireReason;
}

/** A consolidation move of a running instance from one cell to another of the same group. */
export interface Move {
  instance: InstanceRequest;
  fromCell: string;
  toCell: string;
  host: string;
}

/** The scheduler's output: apply it in order (create cells, placements and moves, then retire). */
export interface Plan {
  now: number;
  createCells: PlannedCell[];
  placements: PlannedPlacement[];
  moves: Move[];
  retireCells: RetiredCell[];
  unplaced: Unplaced[];
  /** Ids from `demand.remove` that were placed and are now removed. */
  removed: string[];
  /** True when consolidation ran (then `now` becomes the new `lastConsolidationAt`). */
  consolidated: boolean;
}
