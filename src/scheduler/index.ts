/**
 * The scheduler's public entry points. Pure: `schedule(snapshot, demand, {now, newId}) -> Plan`.
 * See README.md in this folder for the flow, the vocabulary and the unplaced-reason codes.
 */
import { ClusterState } from './state.js';
import type { Demand, Placement, Plan, ScheduleOptions, Snapshot } from './types.js';

export { ClusterState, DEFAULT_CELL_POLICY } from './state.js';
export type * from './types.js';

/**
 * Plans `demand` against `snapshot`: placements, cells to create and retire, consolidation
 * moves (only when `demand.consolidate` is set) and a readable reason for every instance it
 * could not place. No I/O, no clock: `opts.now` and `opts.newId` are the only outside inputs,
 * so the same arguments (and the same `newId` sequence) give the same plan. May be called
 * anywhere; cost is O(snapshot) to index plus about O(log hosts) per placement.
 */
export function schedule(snapshot: Snapshot, demand: Demand, opts: ScheduleOptions): Plan {
  return ClusterState.fromSnapshot(snapshot).schedule(demand, opts);
}

/**
 * Returns the snapshot that results from carrying out `plan` (a new object; `snapshot` is not
 * modified): created cells added as `creating` (claimed warm cells become the group's, still
 * `running`), retired cells and removed instances dropped,
 * placements and moves recorded. Used by callers that keep state in memory and by the tests.
 */
export function applyPlan(snapshot: Snapshot, plan: Plan): Snapshot {
  const retired = new Set(plan.retireCells.map((c) => c.id));
  const claimed = new Set(plan.createCells.filter((c) => c.fromWarmPool === true).map((c) => c.id));
  const removed = new Set(plan.removed);
  const cells = snapshot.cells.filter((c) => !retired.has(c.id) && !claimed.has(c.id));
  for (const c of plan.createCells) {
    // A claimed warm cell is already booted: it keeps running, now as the group's.
    cells.push({ id: c.id, tenant: c.tenant, group: c.group, host: c.host, cpu: c.cpu, memoryMiB: c.memoryMiB, state: c.fromWarmPool === true ? 'running' : 'creating', dedicated: c.dedicated });
  }
  const byId = new Map<string, Placement>();
  for (const p of snapshot.placements) if (!removed.has(p.instance.id)) byId.set(p.instance.id, p);
  for (const p of plan.placements) byId.set(p.instance.id, p.cell === undefined ? { instance: p.instance, host: p.host } : { instance: p.instance, host: p.host, cell: p.cell });
  for (const m of plan.moves) byId.set(m.instance.id, { instance: m.instance, host: m.host, cell: m.toCell });
  // Instances the plan could not (re-)place, and those whose cell was retired under them, are
  // not running anywhere: the caller asks for them again in a later demand.
  for (const u of plan.unplaced) byId.delete(u.instance.id);
  const placements = [...byId.values()].filter((p) => p.cell === undefined || !retired.has(p.cell));
  const next: Snapshot = { ...snapshot, cells, placements };
  if (plan.consolidated) next.lastConsolidationAt = plan.now;
  return next;
}
