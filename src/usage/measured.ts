/**
 * Measured usage: what each subject actually consumed within a window, from samples.
 *
 * CPU (a monotonic counter). Per subject, samples in time order give increments: the
 * difference to the previous sample, or, when the counter restarted (its `source` changed or
 * its value went down), the new value itself (the counter counted from 0 since the restart;
 * whatever the old counter gained after its last sample is lost, never guessed). The first
 * sample is a baseline: CPU before it is not counted (the agent samples at start, when the
 * counter is about 0). Each increment is spread linearly over the time between its two
 * samples, rounding down the running total, so the cumulative curve A(t) is an integer,
 * non-decreasing function and usage in [a, b) is A(b) - A(a). Gaps never lose or invent CPU:
 * a long gap only blurs when inside it the CPU was used.
 *
 * Memory (a gauge). Step integration: a sample's value holds from its time until the next
 * sample, but for at most `maxGapMs` (after that we do not know the subject still existed)
 * and never past `now`. Integer bytes x integer ms: exact.
 *
 * Both curves are functions of time, so windows add up exactly. Pure.
 */
import { secondsToCpuUs, type SubjectAmount, type UsageSample, type UsageWindow } from './types.js';
import { checkWindow, subjectKey } from './reserved.js';

/** Default longest time a memory sample stands for (samples come about every 10 s). */
export const DEFAULT_MAX_GAP_MS = 60_000;

/** Options of `measuredUsage`. */
export interface MeasuredOptions extends UsageWindow {
  /** Longest time a memory sample holds its value; defaults to DEFAULT_MAX_GAP_MS. */
  maxGapMs?: number;
}

/** The cumulative CPU curve of one subject: breakpoints with the running total at each. */
interface CpuCurve {
  times: number[];
  totals: bigint[];
}

function cpuCurve(samples: readonly UsageSample[]): CpuCurve {
  const times: number[] = [];
  const totals: bigint[] = [];
  let prevValue = 0n;
  let prevSource: string | undefined;
  let total = 0n;
  for (let i = 0; i < samples.length; i++) {
    // Index is in range by the loop bound.
    const s = samples[i] as UsageSample;
    const value = secondsToCpuUs(Math.max(0, s.cpuSecondsTotal));
    if (i > 0) total += s.source !== prevSource || value < prevValue ? value : value - prevValue;
    times.push(s.time);
    totals.push(total);
    prevValue = value;
    prevSource = s.source;
  }
  return { times, totals };
}

/** A(t): the running total at time t, linear (rounded down) between breakpoints. */
function cpuAt(c: CpuCurve, t: number): bigint {
  const n = c.times.length;
  // Indexes below are within [0, n) by the checks and the binary search bounds.
  if (n === 0 || t <= (c.times[0] as number)) return 0n;
  if (t >= (c.times[n - 1] as number)) return c.totals[n - 1] as bigint;
  // Largest i with times[i] <= t; then times[i] <= t < times[i+1].
  let lo = 0;
  let hi = n - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if ((c.times[mid] as number) <= t) lo = mid;
    else hi = mid;
  }
  const t0 = c.times[lo] as number;
  const t1 = c.times[lo + 1] as number;
  const a0 = c.totals[lo] as bigint;
  const a1 = c.totals[lo + 1] as bigint;
  return a0 + ((a1 - a0) * BigInt(t - t0)) / BigInt(t1 - t0);
}

function memoryIn(samples: readonly UsageSample[], lo: number, hi: number, maxGapMs: number, now: number): bigint {
  let sum = 0n;
  for (let i = 0; i < samples.length; i++) {
    // Indexes are in range by the loop bound and the explicit check.
    const s = samples[i] as UsageSample;
    const next = i + 1 < samples.length ? (samples[i + 1] as UsageSample).time : Infinity;
    const end = Math.min(next, s.time + maxGapMs, now);
    const from = Math.max(s.time, lo);
    const to = Math.min(end, hi);
    if (to > from) sum += BigInt(Math.max(0, Math.round(s.memoryBytes))) * BigInt(to - from);
  }
  return sum;
}

/**
 * Measured CPU and memory per subject within `[since, until)` (see the file comment for the
 * rules). Samples may come in any order; samples at the same time keep their input order.
 * Subjects whose figures are both zero are left out. Result order: by subject key.
 */
export function measuredUsage(samples: readonly UsageSample[], opts: MeasuredOptions): SubjectAmount[] {
  checkWindow(opts);
  const maxGapMs = opts.maxGapMs ?? DEFAULT_MAX_GAP_MS;
  if (!(maxGapMs >= 0) || !Number.isSafeInteger(maxGapMs)) throw new RangeError(`maxGapMs must be a non-negative integer, got ${maxGapMs}`);
  const bySubject = new Map<string, UsageSample[]>();
  for (const s of samples) {
    if (!Number.isSafeInteger(s.time)) throw new RangeError(`sample of ${s.subject.uid}: time must be integer epoch milliseconds, got ${s.time}`);
    const k = subjectKey(s.subject);
    const list = bySubject.get(k);
    if (list) list.push(s);
    else bySubject.set(k, [s]);
  }
  const out: SubjectAmount[] = [];
  const hi = Math.min(opts.until, opts.now);
  for (const key of [...bySubject.keys()].sort()) {
    // Every key came from the map.
    const list = (bySubject.get(key) as UsageSample[]).slice().sort((a, b) => a.time - b.time);
    const curve = cpuCurve(list);
    const cpuUs = hi > opts.since ? cpuAt(curve, hi) - cpuAt(curve, opts.since) : 0n;
    const memByteMs = memoryIn(list, opts.since, hi, maxGapMs, opts.now);
    // Every list has at least one sample.
    if (cpuUs !== 0n || memByteMs !== 0n) out.push({ subject: (list[0] as UsageSample).subject, cpuUs, memByteMs });
  }
  return out;
}
