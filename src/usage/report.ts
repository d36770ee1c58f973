/**
 * Usage reports: reserved and measured usage per tenant, per (tenant, group) or per
 * (tenant, group, cell), in four separate categories so nothing is counted twice and packing
 * waste shows:
 * - `cells`: the cell VMs' reservations (what a cell holds on its host) and the QEMU
 *   process's measured use;
 * - `cellInstances`: instances inside cells (the allocation inside the VM); a part of the
 *   cell, never added to it;
 * - `hostInstances`: instances run on the host (runc, runsc), with no cell;
 * - `machines`: plain VMs.
 * `charged` = cells + hostInstances + machines: what the tenant holds on hosts. `cells -
 * cellInstances` is the packing waste. Every row figure is a sum of per-subject integers,
 * so rows of a finer grouping add up exactly to the coarser ones. Pure.
 */
import { measuredUsage } from './measured.js';
import { reservedStorage, reservedUsage } from './reserved.js';
import { addInto, zeroAmount, type Amount, type AllocationInterval, type SubjectAmount, type UsageSample, type UsageSubject } from './types.js';

/** How a report groups rows (`volume`: one row per volume, the rest of the tenant under volume ''). */
export type ReportBy = 'tenant' | 'group' | 'cell' | 'volume';

/** The four non-overlapping categories of usage (see the file comment). */
export type Category = 'cells' | 'cellInstances' | 'hostInstances' | 'machines';

/** Categories in display order. */
export const CATEGORIES: readonly Category[] = ['cells', 'cellInstances', 'hostInstances', 'machines'];

/**
 * One report row. `group` is set when grouping by group or cell ('' for machines, which have
 * no group); `cell` is set when grouping by cell ('' for usage that is not in a cell).
 */
export interface ReportRow {
  tenant: string;
  group?: string;
  cell?: string;
  /** Set when grouping by volume ('' for usage that is not a volume's). */
  volume?: string;
  reserved: Record<Category, Amount>;
  measured: Record<Category, Amount>;
  /** reserved cells + hostInstances + machines: what is held on hosts for this row. */
  charged: Amount;
  /** measured cells + hostInstances + machines: what hosts actually spent for this row. */
  used: Amount;
  /** Storage held by volumes (their size from creation to deletion), byte-milliseconds. */
  storageByteMs: bigint;
}

/** Inputs of `report`. */
export interface ReportInput {
  intervals: readonly AllocationInterval[];
  samples: readonly UsageSample[];
  /** Window [since, until) in epoch milliseconds. */
  since: number;
  until: number;
  /** Open intervals count up to `now`; defaults to `until` (a window in the past). */
  now?: number;
  by: ReportBy;
  /** Only this tenant's subjects (what a tenant may see); all tenants when absent. */
  tenant?: string;
  /** Longest time a memory sample holds (see `measuredUsage`). */
  maxGapMs?: number;
}

/** The category a subject's usage falls in. */
export function categoryOf(s: UsageSubject): Category {
  if (s.kind === 'cell') return 'cells';
  if (s.kind === 'machine') return 'machines';
  return s.cell ? 'cellInstances' : 'hostInstances';
}

/** The row key fields of a subject under a grouping. */
function rowKeyOf(s: UsageSubject, by: ReportBy): { tenant: string; group?: string; cell?: string; volume?: string } {
  if (by === 'tenant') return { tenant: s.tenant };
  if (by === 'volume') return { tenant: s.tenant, volume: s.kind === 'volume' ? s.name : '' };
  const group = s.group ?? '';
  if (by === 'group') return { tenant: s.tenant, group };
  const cell = s.kind === 'cell' ? s.name : (s.cell ?? '');
  return { tenant: s.tenant, group, cell };
}

function emptyRow(k: { tenant: string; group?: string; cell?: string; volume?: string }): ReportRow {
  const byCat = (): Record<Category, Amount> => ({ cells: zeroAmount(), cellInstances: zeroAmount(), hostInstances: zeroAmount(), machines: zeroAmount() });
  return { ...k, reserved: byCat(), measured: byCat(), charged: zeroAmount(), used: zeroAmount(), storageByteMs: 0n };
}

/**
 * The usage report for a window. Rows are sorted by (tenant, group, cell) and include every
 * key that has any reserved or measured usage in the window.
 */
export function report(input: ReportInput): ReportRow[] {
  const w = { since: input.since, until: input.until, now: input.now ?? input.until };
  const mine = <T extends { subject: UsageSubject }>(xs: readonly T[]): readonly T[] => (input.tenant === undefined ? xs : xs.filter((x) => x.subject.tenant === input.tenant));
  const reserved = reservedUsage(mine(input.intervals), w);
  const measured = measuredUsage(mine(input.samples), { ...w, ...(input.maxGapMs !== undefined ? { maxGapMs: input.maxGapMs } : {}) });
  const rows = new Map<string, ReportRow>();
  const rowFor = (s: UsageSubject): ReportRow => {
    const k = rowKeyOf(s, input.by);
    const id = JSON.stringify([k.tenant, k.group ?? null, k.cell ?? null, k.volume ?? null]);
    let row = rows.get(id);
    if (!row) {
      row = emptyRow(k);
      rows.set(id, row);
    }
    return row;
  };
  const add = (list: SubjectAmount[], pick: (r: ReportRow) => Record<Category, Amount>, total: (r: ReportRow) => Amount): void => {
    for (const a of list) {
      if (a.subject.kind === 'volume') continue; // storage only: counted below
      const row = rowFor(a.subject);
      const cat = categoryOf(a.subject);
      addInto(pick(row)[cat], a);
      if (cat !== 'cellInstances') addInto(total(row), a);
    }
  };
  add(reserved, (r) => r.reserved, (r) => r.charged);
  add(measured, (r) => r.measured, (r) => r.used);
  for (const s of reservedStorage(mine(input.intervals), w)) rowFor(s.subject).storageByteMs += s.storageByteMs;
  return [...rows.values()].sort(compareRows);
}

function compareRows(a: ReportRow, b: ReportRow): number {
  for (const [x, y] of [[a.tenant, b.tenant], [a.group ?? '', b.group ?? ''], [a.cell ?? '', b.cell ?? ''], [a.volume ?? '', b.volume ?? '']] as const) {
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/**
 * The sum of rows as one row with `tenant` '*' (for a total line, or to check exactness).
 * Exact: BigInt sums.
 */
export function totalRow(rows: readonly ReportRow[]): ReportRow {
  const t = emptyRow({ tenant: '*' });
  for (const r of rows) {
    for (const c of CATEGORIES) {
      addInto(t.reserved[c], r.reserved[c]);
      addInto(t.measured[c], r.measured[c]);
    }
    addInto(t.charged, r.charged);
    addInto(t.used, r.used);
    t.storageByteMs += r.storageByteMs;
  }
  return t;
}
