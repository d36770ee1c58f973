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
import type { AnyObject, Cell, Instance, Machine } from '../model/objects.js';
import type { Plan, PlannedCell } from '../scheduler/types.js';

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

/** An audit entry for an action the control plane takes on its own. */
export function systemEntry(time: string, action: string, kind: string, name: string, tenant: string, detail: Record<string, unknown>): AuditEntry {
  return { time, actor: { kind: 'system', id: 'controller' }, action, target: { kind, name, ...(tenant ? { tenant } : {}) }, outcome: 'success', detail };
}

/** The audit record of the scheduler refusing to place an instance past its tenant's quota. */
export function quotaRefusal(time: string, kind: string, name: string, tenant: string, message: string): AuditEntry {
  return { ...systemEntry(time, 'quota.refused', kind, name, tenant, { code: 'QuotaExceeded', message: message.slice(0, 500) }), outcome: 'failure' };
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

/** The write recording why a subject waits, or undefined when its status already says so. */
function refusalWrite(s: PlanSubject, code: string, reason: string, now: string): Write | undefined {
  const tenant = s.obj.metadata.tenant ?? '';
  const quota = code === 'QuotaExceeded' ? quotaRefusal(now, s.kind === 'machine' ? 'Machine' : 'Instance', s.obj.metadata.name, tenant, reason) : undefined;
  if (s.kind === 'machine') {
    if (s.obj.status.message === reason) return undefined;
    return { obj: { ...s.obj, status: { ...s.obj.status, reason: 'Unschedulable', message: reason } }, expectVersion: s.obj.metadata.resourceVersion, ...(quota ? { audit: quota } : {}) };
  }
  if (s.kind === 'instance' && s.obj.status.message === reason) return undefined;
  const i: Instance = { ...s.obj, status: { ...s.obj.status, phase: 'Pending', reason: 'Unschedulable', message: reason } };
  return { obj: i, expectVersion: s.kind === 'newInstance' ? 0 : s.obj.metadata.resourceVersion, ...(quota ? { audit: quota } : {}) };
}

/**
 * Writes `plan` (its cells, placements and refusals; `retireCells` and `moves` are not applied
 * here: empty and dead cells are retired by the Cells reconcile after its grace period, and
 * consolidation is not enabled). Throws CARAPACE_E_CONFLICT / CARAPACE_E_ALREADY_EXISTS when a
 * precondition fails (the view was stale): units before the failing transaction stay applied.
 */
export async function applyPlan(plan: Plan, ctx: ApplyContext): Promise<AppliedPlan> {
  const out: AppliedPlan = { placed: 0, refusedByTenant: new Map(), cellsCreated: 0, cellsClaimed: 0 };
  const units: Write[][] = [];
  const intoCell = new Map<string, Write[]>();
  for (const c of plan.createCells) {
    const unit = [cellWrite(c, ctx)];
    units.push(unit);
    intoCell.set(c.id, unit);
    if (c.fromWarmPool === true) out.cellsClaimed++;
    else out.cellsCreated++;
  }
  for (const p of plan.placements) {
    const s = ctx.subjects.get(p.instance.id);
    // A placement of something not asked for (a displaced instance re-placed): the controller
    // fails such instances over by itself; nothing to write.
    if (!s) continue;
    const w = placementWrite(s, p.host, p.cell, ctx.now);
    const unit = p.cell !== undefined ? intoCell.get(p.cell) : undefined;
    if (unit) unit.push(w);
    else units.push([w]);
    out.placed++;
  }
  for (const u of plan.unplaced) {
    const s = ctx.subjects.get(u.instance.id);
    if (!s) continue;
    const w = refusalWrite(s, u.code, u.reason, ctx.now);
    if (!w) continue;
    units.push([w]);
    const t = s.obj.metadata.tenant ?? '';
    out.refusedByTenant.set(t, (out.refusedByTenant.get(t) ?? 0) + 1);
  }
  let batch: Write[] = [];
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    const writes = batch;
    batch = [];
    await ctx.resources.writeAll(
      writes.map(({ obj, expectVersion }) => ({ obj, expectVersion })),
      writes.flatMap((w) => (w.audit ? [w.audit] : [])),
    );
  };
  for (const unit of units) {
    if (batch.length + unit.length > MAX_WRITES_PER_TXN) await flush();
    // A unit larger than a transaction (a cell filled by many instances) goes in slices, the
    // cell in the first: what is placed into it never lands before it.
    for (let i = 0; i < unit.length; i += MAX_WRITES_PER_TXN) {
      batch.push(...unit.slice(i, i + MAX_WRITES_PER_TXN));
      if (batch.length >= MAX_WRITES_PER_TXN) await flush();
    }
  }
  await flush();
  return out;
}
