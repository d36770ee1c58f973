/**
 * Reserved usage: what was held for each subject within a window, from allocation intervals.
 * An interval [start, end) holding `cpu` cores and `memoryMiB` contributes, over its overlap
 * with [since, min(until, now)), millicores x ms CPU-microseconds and MiB x 2^20 x ms
 * byte-milliseconds. Integer-exact, so windows add up: r[a,b) + r[b,c) = r[a,c). Pure.
 */
import { BYTES_PER_MIB, type StorageAmount, toMillicores, type AllocationInterval, type SubjectAmount, type UsageSubject, type UsageWindow } from './types.js';

/** Checks a window; throws a RangeError describing what is wrong. Call before any computation. */
export function checkWindow(w: UsageWindow): void {
  for (const k of ['since', 'until', 'now'] as const) {
    if (!Number.isSafeInteger(w[k])) throw new RangeError(`usage window: ${k} must be an integer number of epoch milliseconds, got ${w[k]}`);
  }
  if (w.until < w.since) throw new RangeError(`usage window: until (${w.until}) is before since (${w.since})`);
}

/**
 * A stable identity for a subject as reports see it: every field takes part, so a warm cell
 * counted under tenant '' and later under its tenant gives two subjects (two owners, two bills).
 */
export function subjectKey(s: UsageSubject): string {
  return JSON.stringify([s.kind, s.uid, s.tenant, s.group ?? null, s.cell ?? null, s.name]);
}

function parseTime(iso: string, what: string): number {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) throw new RangeError(`${what}: not a time: ${JSON.stringify(iso)}`);
  return t;
}

/**
 * Reserved CPU and memory per subject within `[since, until)`, counting open intervals up to
 * `now` and nothing at or after `now`. Subjects with nothing inside the window are left out.
 * Intervals whose end precedes their start count as empty. Result order: by subject key.
 * May be called with any records read back from the store (parse them first).
 */
export function reservedUsage(intervals: readonly AllocationInterval[], w: UsageWindow): SubjectAmount[] {
  checkWindow(w);
  const hi = Math.min(w.until, w.now);
  const out = new Map<string, SubjectAmount>();
  for (const r of intervals) {
    const start = parseTime(r.start, `interval ${r.id} start`);
    const end = r.end === undefined ? w.now : parseTime(r.end, `interval ${r.id} end`);
    const from = Math.max(start, w.since);
    const to = Math.min(end, hi);
    if (to <= from) continue;
    const ms = BigInt(to - from);
    const key = subjectKey(r.subject);
    let acc = out.get(key);
    if (!acc) {
      acc = { subject: r.subject, cpuUs: 0n, memByteMs: 0n };
      out.set(key, acc);
    }
    acc.cpuUs += toMillicores(r.cpu) * ms;
    acc.memByteMs += BigInt(r.memoryMiB) * BYTES_PER_MIB * ms;
  }
  return [...out.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v);
}

/**
 * Reserved storage (volumes) per subject within the window, in byte-milliseconds, with the same
 * window rules as reservedUsage. Only intervals holding storage take part.
 */
export function reservedStorage(intervals: readonly AllocationInterval[], w: UsageWindow): StorageAmount[] {
  checkWindow(w);
  const hi = Math.min(w.until, w.now);
  const out = new Map<string, StorageAmount>();
  for (const r of intervals) {
    if (!r.storageMiB) continue;
    const start = parseTime(r.start, `interval ${r.id} start`);
    const end = r.end === undefined ? w.now : parseTime(r.end, `interval ${r.id} end`);
    const from = Math.max(start, w.since);
    const to = Math.min(end, hi);
    if (to <= from) continue;
    const key = subjectKey(r.subject);
    const acc = out.get(key) ?? { subject: r.subject, storageByteMs: 0n };
    acc.storageByteMs += BigInt(r.storageMiB) * BYTES_PER_MIB * BigInt(to - from);
    out.set(key, acc);
  }
  return [...out.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v);
}
