/**
 * The one placement pipeline: every reservation on a host (instances in every tier, cells warm
 * or not, machines) is decided here, by one scheduler call per pass over everything waiting,
 * and written by the one plan applier. Owners' reconciles hand over the instances they create;
 * the `Placement` pass retries whatever still waits (capacity freed, a host came back, a quota
 * was raised).
 *
 * It keeps the scheduler's ClusterState between passes (the scheduler README's long-lived
 * caller): each pass builds the snapshot of the store objects it was given and compares it,
 * row by row, with the snapshot the kept state stands for (the one it was built from, with
 * every plan since applied). Instances that went away are removed from the state; any other
 * difference (a host, a cell, a quota, a placement someone else made) rebuilds the state from
 * the fresh snapshot. A failed write also drops it. Callers run one pass at a time (the
 * controller's single worker): two passes at once could fill one cell from the same state.
 */
import type { Logger } from 'pino';
import type { Env } from '../core/actions.js';
import type { Resources } from '../core/resources.js';
import { metrics } from '../metrics/metrics.js';
import { CIDR_CLAIM_PREFIX, TENANT_NETWORK_PREFIX } from '../model/keys.js';
import { TERMINAL_PHASES, type Instance } from '../model/objects.js';
import { DEFAULT_NETWORK_POOLS, type NetworkPools, type TenantNetwork } from '../model/tenant-network.js';
import { applyPlan as applyToSnapshot, ClusterState } from '../scheduler/index.js';
import { blockingVolumeConstraint, instanceRequestWithVolumes, machineRequestFromModel, machineSchedulerId, schedulerId, snapshotFromModel, volumeIndex, type ModelView } from '../scheduler/model-adapter.js';
import type { Unplaced } from '../scheduler/types.js';
import type { CellInfo, HostInfo, InstanceRequest, Placement as SnapshotPlacement, Snapshot, TenantQuota } from '../scheduler/types.js';
import { NetworkLedger } from './network-ledger.js';
import { applyPlan, type PlanSubject } from './plan-applier.js';

export interface PlacementOptions {
  resources: Resources;
  env: Env;
  logger: Logger;
  /** The cluster's network pools (tenant networks are handed out from them); default DEFAULT_NETWORK_POOLS. */
  pools?: NetworkPools;
}

/** What one pass did. */
export interface PlacementOutcome {
  /** Instances and machines placed. */
  placed: number;
  /** Waiting ones whose refusal was written (new, or a changed reason). */
  refused: number;
  /** Whether the kept scheduler state was rebuilt from the snapshot. */
  rebuilt: boolean;
}

/** Canonical rows of a snapshot, to compare two snapshots item by item. */
interface Rows {
  hosts: Map<string, string>;
  cells: Map<string, string>;
  placements: Map<string, string>;
  quotas: Map<string, string>;
}

function sortedEntries(r: Record<string, string> | undefined): [string, string][] {
  return Object.entries(r ?? {}).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

function hostRow(h: HostInfo): string {
  return JSON.stringify([h.cpu, h.memoryMiB, h.overcommit?.cpu ?? 1, h.overcommit?.memory ?? 1, sortedEntries(h.labels), h.ready, h.schedulable, [...h.isolation].sort()]);
}

/** A group's cell is open to new instances while creating or running: the scheduler treats both alike. */
function cellRow(c: CellInfo): string {
  const warm = c.warm === true || c.tenant === '';
  return JSON.stringify([c.tenant, c.group, c.host, c.cpu, c.memoryMiB, warm ? c.state : c.state === 'draining' ? 'draining' : 'open', c.dedicated === true, warm]);
}

function placementRow(p: SnapshotPlacement): string {
  const r = p.instance;
  const constraints = (r.constraints ?? []).map((c) => [c.name, [...c.hosts].sort(), c.code, c.reason]);
  return JSON.stringify([r.tenant, r.group, r.service, r.isolation, r.cpu, r.memoryMiB, r.spread ?? 'none', sortedEntries(r.nodeSelector), constraints, p.host, p.cell ?? '']);
}

function quotaRow(q: TenantQuota): string {
  return JSON.stringify([q.cpu ?? null, q.memoryMiB ?? null, q.instances ?? null, q.cells ?? null]);
}

function rowsOf(s: Snapshot): Rows {
  return {
    hosts: new Map(s.hosts.map((h) => [h.name, hostRow(h)])),
    cells: new Map(s.cells.map((c) => [c.id, cellRow(c)])),
    placements: new Map(s.placements.map((p) => [p.instance.id, placementRow(p)])),
    quotas: new Map((s.quotas ?? []).map((q) => [q.tenant, quotaRow(q)])),
  };
}

function sameMap(a: Map<string, string>, b: Map<string, string>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

/**
 * How to bring a state standing for `kept` to `fresh`: the instances to remove, or `rebuild`
 * when anything else differs.
 */
function difference(kept: Rows, fresh: Rows): { rebuild: boolean; removed: string[] } {
  if (!sameMap(kept.hosts, fresh.hosts) || !sameMap(kept.cells, fresh.cells) || !sameMap(kept.quotas, fresh.quotas)) return { rebuild: true, removed: [] };
  const removed: string[] = [];
  for (const [id, row] of kept.placements) {
    const now = fresh.placements.get(id);
    if (now === undefined) removed.push(id);
    else if (now !== row) return { rebuild: true, removed: [] };
  }
  for (const id of fresh.placements.keys()) if (!kept.placements.has(id)) return { rebuild: true, removed: [] };
  return { rebuild: false, removed };
}

/**
 * Why `i` cannot run now because a volume it mounts is held by another live instance (placed,
 * not finished, of the same tenant): a read-write mount on either side is exclusive. The
 * holder keeps it until its record is gone (a deleted instance holds it while it stops).
 */
export function volumeInUse(i: Instance, instances: readonly Instance[]): string | undefined {
  const tenant = i.metadata.tenant ?? '';
  for (const m of i.spec.mounts ?? []) {
    for (const o of instances) {
      if (o.metadata.tenant !== tenant || o.metadata.name === i.metadata.name || o.spec.host === '' || TERMINAL_PHASES.includes(o.status.phase)) continue;
      const theirs = (o.spec.mounts ?? []).find((x) => x.volume === m.volume);
      if (!theirs || (theirs.readOnly && m.readOnly)) continue;
      return `volume ${tenant}/${m.volume} is in use ${theirs.readOnly ? 'read-only' : 'read-write'} by instance ${o.metadata.name} on host ${o.spec.host}; waiting for it to stop`;
    }
  }
  return undefined;
}

/** Everything waiting for a host in `view`: instances not being deleted nor finished, machines not being deleted. */
function waiting(view: ModelView): PlanSubject[] {
  const out: PlanSubject[] = [];
  for (const i of view.instances) if (i.spec.host === '' && !i.metadata.deletionRequestedAt && !TERMINAL_PHASES.includes(i.status.phase)) out.push({ kind: 'instance', obj: i });
  for (const m of view.machines) if (m.status.host === '' && !m.metadata.deletionRequestedAt) out.push({ kind: 'machine', obj: m });
  return out;
}

export class Placement {
  private readonly log: Logger;
  private state: ClusterState | undefined;
  /** The snapshot `state` stands for, and its rows. */
  private kept: { snapshot: Snapshot; rows: Rows } | undefined;

  constructor(private readonly o: PlacementOptions) {
    this.log = o.logger.child({ component: 'placement' });
  }

  /** The objects a pass reads, fresh from the store. */
  async view(): Promise<ModelView> {
    const r = this.o.resources;
    const [hosts, instances, cells, machines, tenants, volumes] = await Promise.all([r.list('Host'), r.list('Instance'), r.list('Cell'), r.list('Machine'), r.list('Tenant'), r.list('Volume')]);
    return { hosts: hosts.items, instances: instances.items, cells: cells.items, machines: machines.items, tenants: tenants.items, volumes: volumes.items };
  }

  /** The stored tenant networks (by tenant, with their versions) and the pool indexes claimed. */
  private async networks(): Promise<{ records: Map<string, TenantNetwork>; versions: Map<string, number>; claimed: number[] }> {
    const store = this.o.resources.store;
    const [nets, claims] = await Promise.all([store.list<TenantNetwork>(TENANT_NETWORK_PREFIX), store.list<unknown>(CIDR_CLAIM_PREFIX)]);
    return {
      records: new Map(nets.items.map((e) => [e.value.tenant, e.value])),
      versions: new Map(nets.items.map((e) => [e.value.tenant, e.version])),
      claimed: claims.items.map((e) => Number(e.key.slice(CIDR_CLAIM_PREFIX.length))).filter(Number.isInteger),
    };
  }

  /**
   * One pass: places `created` (instances an owner's reconcile just made, not stored yet: each
   * is written with its placement or its refusal) together with everything in `view` that
   * waits for a host. `view` must be fresh (read after the last write the caller made) and
   * must not contain the `created` ones. `metricsTenant` labels the scheduler timing.
   */
  async place(view: ModelView, created: Instance[] = [], metricsTenant = ''): Promise<PlacementOutcome> {
    const subjects = new Map<string, PlanSubject>();
    for (const i of created) subjects.set(schedulerId(i), { kind: 'newInstance', obj: i });
    for (const s of waiting(view)) subjects.set(s.kind === 'machine' ? machineSchedulerId(s.obj) : schedulerId(s.obj), s);
    if (subjects.size === 0) return { placed: 0, refused: 0, rebuilt: false };

    const endTimer = metrics.scheduleSeconds.startTimer({ tenant: metricsTenant });
    const fresh = snapshotFromModel(view);
    const rows = rowsOf(fresh);
    const diff = this.state && this.kept ? difference(this.kept.rows, rows) : { rebuild: true, removed: [] };
    const now = this.o.env.now();
    const nowMs = Date.parse(now);
    const newId = (): string => `cell-${this.o.env.newId().replace(/[^a-z0-9]/g, '').slice(0, 12)}`;
    let state = this.state;
    let kept = this.kept?.snapshot;
    if (diff.rebuild || !state || !kept) {
      state = ClusterState.fromSnapshot(fresh);
      kept = fresh;
    } else if (diff.removed.length > 0) {
      kept = applyToSnapshot(kept, state.schedule({ place: [], remove: diff.removed, keepEmptyCells: true }, { now: nowMs, newId }));
    }
    const vols = volumeIndex(view.volumes ?? [], view.hosts);
    const requests: InstanceRequest[] = [];
    // Instances whose volume another live instance holds (VolumeInUse), or whose volume's host
    // cannot take work (VolumeHostNotReady, VolumeHostCordoned, VolumeNotFound), wait without a plan.
    const inUse: Unplaced[] = [];
    for (const s of subjects.values()) {
      if (s.kind === 'machine') {
        // A machine's disks (spec.disks) are volumes: placed where they live, bound with it.
        const req = machineRequestFromModel(s.obj, vols);
        const blocked = blockingVolumeConstraint(req, vols.hosts);
        if (blocked) inUse.push({ instance: req, code: blocked.code, reason: blocked.reason });
        else requests.push(req);
        continue;
      }
      const req = instanceRequestWithVolumes(s.obj, vols);
      const blocked = blockingVolumeConstraint(req, vols.hosts);
      const held = volumeInUse(s.obj, view.instances);
      if (blocked) inUse.push({ instance: req, code: blocked.code, reason: blocked.reason });
      else if (held !== undefined) inUse.push({ instance: req, code: 'VolumeInUse', reason: held });
      else requests.push(req);
    }
    // Empty cells stay: the Cells reconcile retires them after their grace period, and until
    // then their VMs hold their hosts' capacity.
    const plan = state.schedule({ place: requests, keepEmptyCells: true }, { now: nowMs, newId });
    plan.unplaced.push(...inUse);
    endTimer();
    // Assume the plan applied; on any failure below the state is dropped and rebuilt next pass.
    this.state = undefined;
    this.kept = undefined;
    // Read after the plan: the records' versions are what the compare-and-set checks.
    const nets = await this.networks();
    const applied = await applyPlan(plan, {
      resources: this.o.resources,
      now,
      newUid: () => this.o.env.newId(),
      subjects,
      cells: new Map(view.cells.map((c) => [c.metadata.name, c])),
      networks: new NetworkLedger(this.o.pools ?? DEFAULT_NETWORK_POOLS, nets.records, nets.claimed, now),
      networkVersions: nets.versions,
      tenants: new Map(view.tenants.map((t) => [t.metadata.name, t])),
      volumes: vols.volumes,
    });
    const next = applyToSnapshot(kept, plan);
    this.state = state;
    this.kept = { snapshot: next, rows: rowsOf(next) };
    let refused = 0;
    for (const [tenant, n] of applied.refusedByTenant) {
      metrics.unplaced.inc({ tenant }, n);
      refused += n;
    }
    if (applied.placed > 0 || refused > 0) {
      this.log.info({ placed: applied.placed, refused, cellsCreated: applied.cellsCreated, cellsClaimed: applied.cellsClaimed, rebuilt: diff.rebuild }, 'plan applied');
    }
    return { placed: applied.placed, refused, rebuilt: diff.rebuild };
  }
}
