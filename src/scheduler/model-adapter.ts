/**
 * Glue from the control-plane model (src/model) to the scheduler's own types, for the path
 * the control plane runs today: `host` and `sandbox` instances on one or a few hosts. Pure.
 * Cells are not in the model yet; when they are, their snapshot rows are added here.
 */
import { TERMINAL_PHASES, type Cell, type Host, type Instance, type Tenant } from '../model/objects.js';
import { schedule } from './index.js';
import type { CellInfo, HostInfo, InstanceRequest, Isolation, Plan, Snapshot, TenantQuota, UnplacedCode } from './types.js';

const TIERS = new Set<string>(['cell', 'dedicated', 'host', 'sandbox']);

/** The scheduler's view of a registered host. */
export function hostInfoFromModel(h: Host): HostInfo {
  return {
    name: h.metadata.name,
    cpu: h.status.capacity.cpu,
    memoryMiB: h.status.capacity.memoryMiB,
    labels: { ...h.metadata.labels, ...h.spec.labels },
    ...(h.spec.overcommit ? { overcommit: { cpu: h.spec.overcommit.cpu, memory: h.spec.overcommit.memory } } : {}),
    ready: h.status.state === 'Ready',
    schedulable: !h.spec.unschedulable,
    // The narrowing filter keeps only the four tier names, so the cast cannot admit others.
    isolation: h.status.isolation.filter((t) => TIERS.has(t)) as Isolation[],
  };
}

/** The scheduler's view of a tenant's quota (instances' cpu, memory and count; cells). */
export function tenantQuotaFromModel(t: Tenant): TenantQuota | undefined {
  const q = t.spec.quota;
  if (!q || (q.cpu === undefined && q.memory === undefined && q.instances === undefined && q.cells === undefined)) return undefined;
  return {
    tenant: t.metadata.name,
    ...(q.cpu !== undefined ? { cpu: q.cpu } : {}),
    ...(q.memory !== undefined ? { memoryMiB: q.memory } : {}),
    ...(q.instances !== undefined ? { instances: q.instances } : {}),
    ...(q.cells !== undefined ? { cells: q.cells } : {}),
  };
}

/** The scheduler's id of an instance object: `tenant/name` (instance names are unique per tenant). */
export function schedulerId(i: Instance): string {
  return `${i.metadata.tenant ?? ''}/${i.metadata.name}`;
}

/**
 * The request for one instance object. Service replicas are spread across hosts when they can
 * be (`preferred`); job runs are packed (`none`).
 */
export function instanceRequestFromModel(i: Instance): InstanceRequest {
  const c = i.spec.container;
  return {
    id: schedulerId(i),
    tenant: i.metadata.tenant ?? '',
    group: c.group,
    service: `${i.spec.owner.kind.toLowerCase()}/${i.spec.owner.name}`,
    isolation: c.isolation,
    cpu: c.cpu,
    memoryMiB: c.memory,
    spread: i.spec.owner.kind === 'Service' ? 'preferred' : 'none',
  };
}

/**
 * The scheduler's view of a cell object. Warm (unassigned) cells are never offered to
 * instances: the scheduler plans a new cell and the controller then claims a matching warm
 * one instead of booting (compare-and-set), so a warm cell is never handed to two groups.
 */
export function cellInfoFromModel(c: Cell): CellInfo {
  // Warm (unassigned) cells are listed as draining: their size is charged to the host, but
  // no instance is ever placed into them by a plan (the controller claims them instead).
  if (c.spec.tenant === '') return { id: c.metadata.name, tenant: '', group: '', host: c.spec.host, cpu: c.spec.cpu, memoryMiB: c.spec.memoryMiB, state: 'draining' };
  const state = c.metadata.deletionRequestedAt || c.status.phase === 'Retiring' || c.status.phase === 'Failed' || c.status.phase === 'Lost' ? 'draining' : c.status.phase === 'Ready' ? 'running' : 'creating';
  return { id: c.metadata.name, tenant: c.spec.tenant, group: c.spec.group, host: c.spec.host, cpu: c.spec.cpu, memoryMiB: c.spec.memoryMiB, state, dedicated: c.spec.dedicated };
}

/**
 * A snapshot of `hosts` and assigned `cells` with the placed, not yet finished `instances` as
 * placements (those with a host and a non-terminal phase).
 */
export function snapshotFromModel(hosts: Host[], instances: Instance[], cells: Cell[] = [], quotas: TenantQuota[] = []): Snapshot {
  const cellInfos = cells.map(cellInfoFromModel);
  const known = new Set(cellInfos.map((c) => c.id));
  const placements = instances
    .filter((i) => i.spec.host !== '' && !TERMINAL_PHASES.includes(i.status.phase))
    .map((i) => ({ instance: instanceRequestFromModel(i), host: i.spec.host, ...(i.spec.cell && known.has(i.spec.cell) ? { cell: i.spec.cell } : {}) }));
  return { hosts: hosts.map(hostInfoFromModel), cells: cellInfos, placements, ...(quotas.length ? { quotas } : {}) };
}

/**
 * Places the `pending` instance objects (those with an empty `spec.host`) among `hosts`, given
 * everything else already placed in `instances`. Returns host names by instance name, and a
 * reason for each one that could not go anywhere (for `status.message` and `carapace
 * describe`). For `cell`/`dedicated` instances the plan also asks for cells, which only a
 * caller that runs cells may act on; this helper is for the host-run tiers.
 */
export function placePending(
  hosts: Host[],
  instances: Instance[],
  pending: Instance[],
  now: number,
  cells: Cell[] = [],
  newId?: () => string,
  quotas: TenantQuota[] = [],
): { hosts: Map<string, string>; cells: Map<string, string>; reasons: Map<string, string>; codes: Map<string, UnplacedCode>; plan: Plan } {
  const snapshot = snapshotFromModel(hosts, instances, cells, quotas);
  let n = 0;
  const plan = schedule(snapshot, { place: pending.map(instanceRequestFromModel) }, { now, newId: newId ?? (() => `cell-${now.toString(36)}-${n++}`) });
  const byId = new Map(pending.map((i) => [schedulerId(i), i.metadata.name]));
  const placed = new Map<string, string>();
  const inCell = new Map<string, string>();
  for (const p of plan.placements) {
    const name = byId.get(p.instance.id);
    if (name !== undefined) placed.set(name, p.host);
    if (name !== undefined && p.cell !== undefined) inCell.set(name, p.cell);
  }
  const reasons = new Map<string, string>();
  const codes = new Map<string, UnplacedCode>();
  for (const u of plan.unplaced) {
    const name = byId.get(u.instance.id);
    if (name !== undefined) {
      reasons.set(name, u.reason);
      codes.set(name, u.code);
    }
  }
  return { hosts: placed, cells: inCell, reasons, codes, plan };
}
