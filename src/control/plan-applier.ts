/**
 * The one plan applier: turns a scheduler Plan into store writes, each with its audit record in
 * the same transaction. It decides nothing: where instances, machines and cells go is the
 * plan's; this module only says how each decision is written.
 *
 * A plan is written in units: a new (or claimed warm) cell together with everything placed
 * into it, or one placement, or one refusal. Units are packed in order into transactions of at
 * most MAX_WRITES_PER_TXN objects, so a plan of any size stays under the store's transaction
 * limit (etcd: 128 operations; each object write also carries its audit record and up to two
 * allocation records). A cell is always committed with or before what is placed into it; a
 * failed transaction leaves the ones before it applied, and the next pass plans the rest.
 */
import type { AuditEntry } from '../audit/record.js';
import type { Resources } from '../core/resources.js';
import { cidrClaimKey, tenantNetworkKey } from '../model/keys.js';
import type { AnyObject, Cell, Instance, Machine, Tenant } from '../model/objects.js';
import type { CidrClaim } from '../model/tenant-network.js';
import type { Plan, PlannedCell } from '../scheduler/types.js';
import type { TxnOp } from '../store/store.js';
import type { NetworkChange, NetworkLedger } from './network-ledger.js';
import type { Volume } from '../model/volumes.js';

/** Most objects written by one transaction (with their audit and allocation records: about 5 ops each). */
export const MAX_WRITES_PER_TXN = 16;

/** What a scheduler id in the plan stands for. */
export type PlanSubject =
  /** An instance the owner's reconcile just made (not stored yet: created with its placement). */
  | { kind: 'newInstance'; obj: Instance }
  /** A stored instance waiting for a host. */
  | { kind: 'instance'; obj: Instance }
  /** A stored machine waiting for a host. */
  | { kind: 'machine'; obj: Machine };

/** What the applier needs besides the plan. */
export interface ApplyContext {
  resources: Resources;
  now: string;
  newUid: () => string;
  /** The request behind each scheduler id of the plan's placements and refusals. */
  subjects: ReadonlyMap<string, PlanSubject>;
  /** Stored cells by name (the warm cells a plan claims are read from here, with their version). */
  cells: ReadonlyMap<string, Cell>;
  /**
   * Hands out the tenant networks and host blocks the placements need (built from the stored
   * records); `networkVersions` holds the stored records' versions (absent: not stored), for
   * their compare-and-set; `tenants` the stored tenants, whose status names their network.
   */
  networks: NetworkLedger;
  networkVersions: ReadonlyMap<string, number>;
  tenants: ReadonlyMap<string, Tenant>;
  /**
   * Stored volumes by `tenant/name` (absent: none): a placement of an instance that mounts an
   * unbound volume binds it to the chosen host in the placement's transaction (compare-and-set
   * on the volume's version, so two passes never bind one volume to two hosts).
   */
  volumes?: ReadonlyMap<string, Volume>;
}

/** What a plan changed, for logs and metrics. */
export interface AppliedPlan {
  placed: number;
  /** Refusals written (new instances created waiting, or a waiting one's reason that changed), by tenant. */
  refusedByTenant: Map<string, number>;
  cellsCreated: number;
  cellsClaimed: number;
}

interface Write {
  obj: AnyObject;
  expectVersion: number;
  audit?: AuditEntry;
}

/**
 * What lands together: a cell with what is placed into it, or one placement, or one refusal;
 * `network` is the tenant network change the unit's placements need (written with its first
 * slice).
 */
interface Unit {
  writes: Write[];
  network?: NetworkChange;
  /** Tenant and host of its placements (undefined for a refusal). */
  where?: { tenant: string; host: string };
}

/** An audit entry for an action the control plane takes on its own. */
export function systemEntry(time: string, action: string, kind: string, name: string, tenant: string, detail: Record<string, unknown>): AuditEntry {
  return { time, actor: { kind: 'system', id: 'controller' }, action, target: { kind, name, ...(tenant ? { tenant } : {}) }, outcome: 'success', detail };
}

/** The audit record of the scheduler refusing to place an instance past its tenant's quota. */
export function quotaRefusal(time: string, kind: string, name: string, tenant: string, message: string): AuditEntry {
  return { ...systemEntry(time, 'quota.refused', kind, name, tenant, { code: 'QuotaExceeded', message: message.slice(0, 500) }), outcome: 'failure' };
}

/** The refusal code of a placement whose tenant got no network or no host block (see NetworkLedger). */
export const NETWORK_POOL_EXHAUSTED = 'CARAPACE_E_NETWORK_POOL_EXHAUSTED';

/** The audit record of a placement refused because the network pools are used up. */
export function networkRefusal(time: string, kind: string, name: string, tenant: string, message: string): AuditEntry {
  return { ...systemEntry(time, 'network.refused', kind, name, tenant, { code: NETWORK_POOL_EXHAUSTED, message: message.slice(0, 500) }), outcome: 'failure' };
}

/** The audit record of a tenant network created, or of a host block added to one. */
function networkEntry(time: string, c: NetworkChange): AuditEntry {
  const detail = { ...(c.createdIndex !== undefined ? { cidr: c.network.cidr, vni: c.network.vni } : {}), ...(c.addedBlock ? { host: c.addedBlock.host, block: c.addedBlock.block } : {}) };
  return systemEntry(time, 'network.allocated', 'TenantNetwork', c.tenant, c.tenant, detail);
}

function cellWrite(c: PlannedCell, ctx: ApplyContext): Write {
  const now = ctx.now;
  if (c.fromWarmPool === true) {
    const w = ctx.cells.get(c.id);
    if (!w) throw new Error(`plan claims warm cell ${c.id}, which is not in the view it was planned from`);
    // Compare-and-set on the warm cell's version: it is handed to one group, once, never back.
    const claimed: Cell = { ...w, spec: { ...w.spec, tenant: c.tenant, group: c.group, dedicated: c.dedicated }, status: { ...w.status, assignedAt: now }, metadata: { ...w.metadata, updatedAt: now } };
    return { obj: claimed, expectVersion: w.metadata.resourceVersion, audit: systemEntry(now, 'cell.assigned', 'Cell', c.id, c.tenant, { group: c.group, host: c.host, fromWarmPool: true }) };
  }
  const cell: Cell = {
    kind: 'Cell',
    metadata: { name: c.id, uid: ctx.newUid(), labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
    spec: { tenant: c.tenant, group: c.group, host: c.host, cpu: c.cpu, memoryMiB: c.memoryMiB, dedicated: c.dedicated, warm: false },
    status: { phase: 'Pending' },
  };
  return { obj: cell, expectVersion: 0, audit: systemEntry(now, 'cell.created', 'Cell', c.id, c.tenant, { group: c.group, host: c.host, cpu: c.cpu, memoryMiB: c.memoryMiB, dedicated: c.dedicated }) };
}

function placementWrite(s: PlanSubject, host: string, cell: string | undefined, now: string): Write {
  const where = cell !== undefined ? `cell ${cell} on host ${host}` : `host ${host}`;
  const tenant = s.obj.metadata.tenant ?? '';
  if (s.kind === 'machine') {
    const m: Machine = { ...s.obj, status: { ...s.obj.status, host, reason: 'Scheduled', message: `placed on host ${host}` } };
    return { obj: m, expectVersion: s.obj.metadata.resourceVersion, audit: systemEntry(now, 'machine.placed', 'Machine', m.metadata.name, tenant, { host }) };
  }
  const i = structuredClone(s.obj);
  i.spec.host = host;
  if (cell !== undefined) i.spec.cell = cell;
  i.status = { ...i.status, phase: 'Pending', reason: 'Scheduled', message: `placed in ${where}` };
  return { obj: i, expectVersion: s.kind === 'newInstance' ? 0 : s.obj.metadata.resourceVersion, audit: systemEntry(now, 'instance.placed', 'Instance', i.metadata.name, tenant, { host, ...(cell !== undefined ? { cell } : {}) }) };
}

/**
 * Stable `status.reason` of an instance waiting for its volumes (the scheduler's constraint
 * codes, VolumeInUse from the placement pipeline, VolumeBinding from here); any other refusal
 * is `Unschedulable` with the code's sentence in the message.
 */
export const VOLUME_WAIT_REASONS: readonly string[] = ['VolumeHostNotReady', 'VolumeHostCordoned', 'VolumeNotFound', 'VolumeInUse', 'VolumeBinding'];

/** The audit record of a volume bound to the host its first user was placed on. */
function volumeBound(now: string, v: Volume, host: string, by: string): Write {
  const bound: Volume = { ...v, status: { ...v.status, phase: 'Bound', host }, metadata: { ...v.metadata, updatedAt: now } };
  return { obj: bound, expectVersion: v.metadata.resourceVersion, audit: systemEntry(now, 'volume.bound', 'Volume', v.metadata.name, v.metadata.tenant ?? '', { host, instance: by }) };
}

/** The write recording why a subject waits, or undefined when its status already says so. */
function refusalWrite(s: PlanSubject, code: string, reason: string, now: string): Write | undefined {
  const tenant = s.obj.metadata.tenant ?? '';
  const kind = s.kind === 'machine' ? 'Machine' : 'Instance';
  const quota = code === 'QuotaExceeded' ? quotaRefusal(now, kind, s.obj.metadata.name, tenant, reason) : code === NETWORK_POOL_EXHAUSTED ? networkRefusal(now, kind, s.obj.metadata.name, tenant, reason) : undefined;
  if (s.kind === 'machine') {
    if (s.obj.status.message === reason) return undefined;
    return { obj: { ...s.obj, status: { ...s.obj.status, reason: 'Unschedulable', message: reason } }, expectVersion: s.obj.metadata.resourceVersion, ...(quota ? { audit: quota } : {}) };
  }
  if (s.kind === 'instance' && s.obj.status.message === reason && s.obj.status.reason === (VOLUME_WAIT_REASONS.includes(code) ? code : 'Unschedulable')) return undefined;
  const i: Instance = { ...s.obj, status: { ...s.obj.status, phase: 'Pending', reason: VOLUME_WAIT_REASONS.includes(code) ? code : 'Unschedulable', message: reason } };
  return { obj: i, expectVersion: s.kind === 'newInstance' ? 0 : s.obj.metadata.resourceVersion, ...(quota ? { audit: quota } : {}) };
}

/**
 * Writes `plan` (its cells, placements and refusals; `retireCells` and `moves` are not applied
 * here: empty and dead cells are retired by the Cells reconcile after its grace period, and
 * consolidation is not enabled). The first unit placing a tenant's work creates its network
 * (record, CIDR claim, the tenant's status), the first on a host adds the host's block, both
 * in that unit's transaction (compare-and-set on the record); when the pools are used up the
 * unit's placements are refused instead (CARAPACE_E_NETWORK_POOL_EXHAUSTED, audited).
 * Throws CARAPACE_E_CONFLICT / CARAPACE_E_ALREADY_EXISTS when a precondition fails (the view
 * was stale): units before the failing transaction stay applied.
 */
export async function applyPlan(plan: Plan, ctx: ApplyContext): Promise<AppliedPlan> {
  const out: AppliedPlan = { placed: 0, refusedByTenant: new Map(), cellsCreated: 0, cellsClaimed: 0 };
  const units: Unit[] = [];
  const intoCell = new Map<string, Unit>();
  const subjectsOf = new Map<Unit, PlanSubject[]>();
  /** Volumes this plan binds, by `tenant/name`: the host. */
  const binding = new Map<string, string>();
  /** Placements turned into refusals: their volume was just bound to another host by this plan. */
  const rebind: { s: PlanSubject; reason: string }[] = [];
  for (const c of plan.createCells) {
    const unit: Unit = { writes: [cellWrite(c, ctx)], where: { tenant: c.tenant, host: c.host } };
    units.push(unit);
    intoCell.set(c.id, unit);
    subjectsOf.set(unit, []);
  }
  for (const p of plan.placements) {
    const s = ctx.subjects.get(p.instance.id);
    // A placement of something not asked for (a displaced instance re-placed): the controller
    // fails such instances over by itself; nothing to write.
    if (!s) continue;
    // Unbound volumes it mounts are bound to this host with the placement (first use wins).
    const binds: Write[] = [];
    let clash: string | undefined;
    {
      const tenant = s.obj.metadata.tenant ?? '';
      const names = s.kind === 'machine' ? (s.obj.spec.disks ?? []).map((d) => d.volume) : (s.obj.spec.mounts ?? []).map((m) => m.volume);
      for (const volume of names) {
        const key = `${tenant}/${volume}`;
        const v = ctx.volumes?.get(key);
        if (!v || v.status.phase === 'Bound') continue;
        const already = binding.get(key);
        if (already === undefined) {
          binding.set(key, p.host);
          binds.push(volumeBound(ctx.now, v, p.host, s.obj.metadata.name));
        } else if (already !== p.host) {
          clash = `volume ${key} is being bound to host ${already} for another instance; this one is placed there next`;
        }
      }
    }
    if (clash !== undefined) {
      rebind.push({ s, reason: clash });
      continue;
    }
    const w = placementWrite(s, p.host, p.cell, ctx.now);
    const unit = p.cell !== undefined ? intoCell.get(p.cell) : undefined;
    if (unit) {
      // Right after the cell: a unit split into slices still binds with or before the placement.
      unit.writes.splice(1, 0, ...binds);
      unit.writes.push(w);
      subjectsOf.get(unit)?.push(s);
    } else {
      const u: Unit = { writes: [...binds, w], where: { tenant: s.obj.metadata.tenant ?? '', host: p.host } };
      units.push(u);
      subjectsOf.set(u, [s]);
    }
  }
  const refuse = (s: PlanSubject, code: string, reason: string): Unit | undefined => {
    const w = refusalWrite(s, code, reason, ctx.now);
    if (!w) return undefined;
    const t = s.obj.metadata.tenant ?? '';
    out.refusedByTenant.set(t, (out.refusedByTenant.get(t) ?? 0) + 1);
    return { writes: [w] };
  };
  // Networks, in plan order: a unit whose tenant gets no network (or no block on its host)
  // becomes refusals of what it placed; its cell is not made.
  const written: Unit[] = [];
  for (const unit of units) {
    const where = unit.where;
    // Work of a tenant that is gone (deleted since the view was read) gets no network: the
    // record would outlive its tenant. Its instances are being removed anyway.
    const r = where && ctx.tenants.has(where.tenant) ? ctx.networks.ensure(where.tenant, where.host) : { ok: true as const };
    if (!r.ok) {
      for (const s of subjectsOf.get(unit) ?? []) {
        const u = refuse(s, NETWORK_POOL_EXHAUSTED, r.message);
        if (u) written.push(u);
      }
      continue;
    }
    if (r.change) unit.network = r.change;
    written.push(unit);
    const cell = plan.createCells.find((c) => intoCell.get(c.id) === unit);
    if (cell) {
      if (cell.fromWarmPool === true) out.cellsClaimed++;
      else out.cellsCreated++;
    }
    out.placed += subjectsOf.get(unit)?.length ?? 0;
  }
  for (const u of plan.unplaced) {
    const s = ctx.subjects.get(u.instance.id);
    if (!s) continue;
    const unit = refuse(s, u.code, u.reason);
    if (unit) written.push(unit);
  }
  for (const r of rebind) {
    const unit = refuse(r.s, 'VolumeBinding', r.reason);
    if (unit) written.push(unit);
  }

  // Versions of the network records as the transactions leave them (absent: not stored yet).
  const versions = new Map(ctx.networkVersions);
  let batch: Write[] = [];
  let audits: AuditEntry[] = [];
  /** The network records this batch writes, by tenant: the newest record and the version it expects (0: absent). */
  let records = new Map<string, { change: NetworkChange; expect: number; claim?: number }>();
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    const writes = batch;
    const entries = audits;
    const recs = records;
    batch = [];
    audits = [];
    records = new Map();
    const ops: TxnOp[] = [];
    for (const [tenant, r] of recs) {
      ops.push({ op: 'put', key: tenantNetworkKey(tenant), value: r.change.network, expect: r.expect === 0 ? { absent: true } : { version: r.expect } });
      if (r.claim !== undefined) ops.push({ op: 'put', key: cidrClaimKey(r.claim), value: { tenant } satisfies CidrClaim, expect: { absent: true } });
    }
    const done = await ctx.resources.writeAll(
      writes.map(({ obj, expectVersion }) => ({ obj, expectVersion })),
      entries,
      ops,
    );
    // Every object of one transaction carries its revision, which is also the records' version.
    const revision = done[0]?.metadata.resourceVersion ?? 0;
    for (const tenant of recs.keys()) versions.set(tenant, revision);
  };
  const add = (ws: Write[], network: NetworkChange | undefined): void => {
    if (network) {
      const prev = records.get(network.tenant);
      // One transaction names a key once: a second change of the same record in this batch
      // replaces the first (it contains it), keeping the first's precondition and claim.
      const claim = prev?.claim ?? network.createdIndex;
      records.set(network.tenant, { change: network, expect: prev?.expect ?? versions.get(network.tenant) ?? 0, ...(claim !== undefined ? { claim } : {}) });
      audits.push(networkEntry(ctx.now, network));
      const t = ctx.tenants.get(network.tenant);
      if (network.createdIndex !== undefined && t) {
        // The tenant's status names its network (for display), in the same transaction.
        const shown: Tenant = { ...t, status: { ...t.status, network: { cidr: network.network.cidr, vni: network.network.vni } } };
        batch.push({ obj: shown, expectVersion: t.metadata.resourceVersion });
      }
    }
    batch.push(...ws);
    for (const w of ws) if (w.audit) audits.push(w.audit);
  };
  for (const unit of written) {
    const extra = unit.network?.createdIndex !== undefined ? 1 : 0;
    if (batch.length + unit.writes.length + extra > MAX_WRITES_PER_TXN) await flush();
    // A unit larger than a transaction (a cell filled by many instances) goes in slices, the
    // cell (and the network it needs) in the first: what is placed into it never lands before it.
    for (let i = 0; i < unit.writes.length; ) {
      const room = MAX_WRITES_PER_TXN - (i === 0 ? extra : 0);
      add(unit.writes.slice(i, i + room), i === 0 ? unit.network : undefined);
      i += room;
      if (batch.length >= MAX_WRITES_PER_TXN) await flush();
    }
  }
  await flush();
  return out;
}
