/**
 * The allocation interval record and how the control plane keeps it: at every state change
 * of an instance, cell or machine it compares what the object holds now (`allocationOf`) with
 * the subject's open interval and writes the difference (`planIntervalChange`), in the same
 * store transaction as the state change when it can. Records are append-only: a new record
 * is created when an allocation starts or changes, and the old one gets its `end` once.
 * Pure: ids and times are passed in.
 */
import { z } from 'zod';
import { TERMINAL_PHASES, type Cell, type Instance, type Machine } from '../model/objects.js';
import { volumeSizeMiB, type Volume } from '../model/volumes.js';
import { intervalKey } from '../model/keys.js';
import type { Entry, TxnOp } from '../store/store.js';
import type { AllocationInterval, UsageSubject } from './types.js';

const IsoTime = z.string().refine((s) => Number.isFinite(Date.parse(s)), 'must be an ISO-8601 time');

/** Schema of a stored subject (strict: unknown fields are a bug in the writer). */
export const UsageSubjectSchema = z.strictObject({
  kind: z.enum(['instance', 'cell', 'machine', 'volume']),
  tenant: z.string(),
  group: z.string().optional(),
  cell: z.string().optional(),
  name: z.string().min(1),
  uid: z.string().min(1),
});

/** Schema of a stored interval record; use it to read records back from the store. */
export const AllocationIntervalSchema = z
  .strictObject({
    id: z.string().min(1),
    subject: UsageSubjectSchema,
    cpu: z.number().min(0).max(1_000_000),
    memoryMiB: z.number().int().min(0).max(1 << 30),
    storageMiB: z.number().int().min(0).optional(),
    start: IsoTime,
    end: IsoTime.optional(),
  })
  .refine((r) => r.end === undefined || Date.parse(r.end) >= Date.parse(r.start), { message: 'end must not be before start', path: ['end'] });

/** Parses an untrusted (stored) value into an interval record; throws a zod error naming the field. */
export function parseInterval(value: unknown): AllocationInterval {
  return AllocationIntervalSchema.parse(value);
}

/** What a subject holds right now. */
export interface Allocation {
  subject: UsageSubject;
  cpu: number;
  memoryMiB: number;
  /** Storage held (volumes), whole MiB. */
  storageMiB?: number;
}

/**
 * What an instance, cell or machine holds right now, or undefined when it holds nothing.
 * The rule follows the scheduler (`snapshotFromModel`), so "reserved" means
 * "capacity kept off the market for you":
 * - instance: placed (`spec.host` set) and not in a terminal phase;
 * - cell: placed on a host, in any phase until the object is deleted (a Failed or Retiring
 *   cell still occupies its host until it is gone); tenant '' while warm;
 * - machine: placed (`status.host` set) and neither Stopped nor Failed. The scheduler keeps
 *   counting a stopped machine on its host; tenants are not charged for it (see README).
 * Call with the object as it will be after the write being made. A deleted object holds
 * nothing: call `planIntervalChange` with `want` undefined instead.
 */
export function allocationOf(o: Instance | Cell | Machine | Volume): Allocation | undefined {
  switch (o.kind) {
    case 'Volume':
      // A volume holds its size from its creation to its deletion: the quota counts it so,
      // and once bound its host keeps the space whether or not anything mounts it.
      return { subject: subjectOf(o), cpu: 0, memoryMiB: 0, storageMiB: volumeSizeMiB(o.spec.size) };
    case 'Instance':
      if (o.spec.host === '' || TERMINAL_PHASES.includes(o.status.phase)) return undefined;
      return { subject: subjectOf(o), cpu: o.spec.container.cpu, memoryMiB: o.spec.container.memory };
    case 'Cell':
      if (o.spec.host === '') return undefined;
      return { subject: subjectOf(o), cpu: o.spec.cpu, memoryMiB: o.spec.memoryMiB };
    case 'Machine':
      if (o.status.host === '' || o.status.phase === 'Stopped' || o.status.phase === 'Failed') return undefined;
      return { subject: subjectOf(o), cpu: o.spec.cpu, memoryMiB: o.spec.memory };
  }
}

/**
 * The usage subject of an instance, cell or machine, with the keys reports group by. The
 * same for reserved and measured usage, so both land in the same report rows.
 */
export function subjectOf(o: Instance | Cell | Machine | Volume): UsageSubject {
  switch (o.kind) {
    case 'Volume':
      return { kind: 'volume', tenant: o.metadata.tenant ?? '', name: o.metadata.name, uid: o.metadata.uid };
    case 'Instance': {
      const subject: UsageSubject = { kind: 'instance', tenant: o.metadata.tenant ?? '', group: o.spec.container.group, name: o.metadata.name, uid: o.metadata.uid };
      if (o.spec.cell) subject.cell = o.spec.cell;
      return subject;
    }
    case 'Cell':
      // A warm cell has no group yet either; keep the key shape stable with ''.
      return { kind: 'cell', tenant: o.spec.tenant, group: o.spec.group, name: o.metadata.name, uid: o.metadata.uid };
    case 'Machine':
      return { kind: 'machine', tenant: o.metadata.tenant ?? '', name: o.metadata.name, uid: o.metadata.uid };
  }
}

/** A new open interval record. */
export function openInterval(id: string, a: Allocation, start: string): AllocationInterval {
  return { id, subject: { ...a.subject }, cpu: a.cpu, memoryMiB: a.memoryMiB, ...(a.storageMiB !== undefined ? { storageMiB: a.storageMiB } : {}), start };
}

/**
 * The record with its `end` set. Throws when it is already closed (records are append-only)
 * or when `end` is before `start`; an `end` equal to `start` is allowed (an empty interval).
 */
export function closeInterval(r: AllocationInterval, end: string): AllocationInterval {
  if (r.end !== undefined) throw new Error(`interval ${r.id} is already closed`);
  if (Date.parse(end) < Date.parse(r.start)) throw new Error(`interval ${r.id}: end ${end} is before start ${r.start}`);
  return { ...r, subject: { ...r.subject }, end };
}

function sameAllocation(r: AllocationInterval, a: Allocation): boolean {
  const s = r.subject;
  const t = a.subject;
  return r.cpu === a.cpu && r.memoryMiB === a.memoryMiB && (r.storageMiB ?? 0) === (a.storageMiB ?? 0) && s.kind === t.kind && s.uid === t.uid && s.tenant === t.tenant && s.group === t.group && s.cell === t.cell && s.name === t.name;
}

/**
 * The store operations that make the interval records match `want` (what the subject holds
 * now, from `allocationOf`; undefined when it holds nothing or was deleted), given its open
 * record `open` (at most one per subject; find it by listing or by an index the caller keeps).
 * Level-based and idempotent: when they already match, no operations. Otherwise: close the
 * open record at `now` (compare-and-set on its version, so two writers cannot both close it)
 * and, when `want` is set, create a new record `newId` starting at `now` (must be absent).
 * Put the operations in the same `txn` as the state change they describe.
 */
export function planIntervalChange(open: Entry<AllocationInterval> | undefined, want: Allocation | undefined, now: string, newId: string): TxnOp[] {
  if (open && want && sameAllocation(open.value, want)) return [];
  if (!open && !want) return [];
  const ops: TxnOp[] = [];
  if (open) ops.push({ op: 'put', key: open.key, value: closeInterval(open.value, now), expect: { version: open.version } });
  if (want) ops.push({ op: 'put', key: intervalKey(newId), value: openInterval(newId, want, now), expect: { absent: true } });
  return ops;
}
