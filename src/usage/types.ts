/**
 * Vocabulary of usage accounting: who used something (a subject), what was held for it
 * (allocation intervals), what it actually consumed (counter samples), and the exact integer
 * units every figure is kept in. Pure types and unit conversions.
 *
 * Units (see README.md): all arithmetic is on BigInt integers so sums are exact.
 * - CPU: `cpuUs`, CPU-microseconds. One core busy for one microsecond. Reserved CPU is
 *   millicores x milliseconds, which is the same unit (1 mcore x 1 ms = 1 core x 1 us).
 * - Memory: `memByteMs`, byte-milliseconds. Reserved MiB x ms is scaled by 2^20 exactly.
 */

/** What a figure is about. */
export type SubjectKind = 'instance' | 'cell' | 'machine' | 'volume';

/**
 * The thing that held or used resources, with the keys reports group by. `tenant` is '' for
 * an unassigned warm cell (operator overhead). `group` is the trust group (absent for
 * machines); `cell` names the cell an instance runs in (absent for host-run instances; for a
 * cell subject it is absent and `name` is the cell).
 */
export interface UsageSubject {
  kind: SubjectKind;
  tenant: string;
  group?: string;
  cell?: string;
  name: string;
  uid: string;
}

/**
 * One allocation record, stored at `usage/intervals/<id>`: `subject` held `cpu` cores and
 * `memoryMiB` from `start` (inclusive) to `end` (exclusive; absent while still held).
 * Times are ISO-8601 strings like every stored timestamp. Written by the control plane at
 * state changes; append-only: the only later change allowed is setting `end` once.
 */
export interface AllocationInterval {
  id: string;
  subject: UsageSubject;
  /** Cores, canonical to millicores (0.1, 2). */
  cpu: number;
  /** Whole MiB. */
  memoryMiB: number;
  /** Whole MiB of storage (volumes; absent: none). */
  storageMiB?: number;
  start: string;
  end?: string;
}

/**
 * One measurement of a subject. `cpuSecondsTotal` is a monotonic counter of CPU time since
 * the measured thing started (cgroup cpuacct.usage, /proc utime+stime); `memoryBytes` is a
 * gauge (cgroup memory usage, RSS). `source` names the counter (container id, `pid:starttime`):
 * when it changes the counter restarted even if the new value is not smaller. `time` is epoch
 * milliseconds (samples are many; numbers are cheaper than strings).
 */
export interface UsageSample {
  subject: UsageSubject;
  time: number;
  cpuSecondsTotal: number;
  memoryBytes: number;
  source?: string;
}

/** An exact amount of CPU and memory over time. */
export interface Amount {
  /** CPU-microseconds (= millicore-milliseconds). */
  cpuUs: bigint;
  /** Byte-milliseconds. */
  memByteMs: bigint;
}

/** A subject's reserved storage within a window, in byte-milliseconds (exact). */
export interface StorageAmount {
  subject: UsageSubject;
  storageByteMs: bigint;
}

/** A subject and its exact amount within a window. */
export interface SubjectAmount extends Amount {
  subject: UsageSubject;
}

/**
 * A report window `[since, until)` in epoch milliseconds, and `now`: open intervals (no `end`)
 * count up to `now`, and nothing is counted at or after `now`.
 */
export interface UsageWindow {
  since: number;
  until: number;
  now: number;
}

/** The zero amount (a fresh object each call: callers may mutate it). */
export function zeroAmount(): Amount {
  return { cpuUs: 0n, memByteMs: 0n };
}

/** Adds `b` into `a` (mutating `a`) and returns `a`; for accumulating rows. */
export function addInto(a: Amount, b: Amount): Amount {
  a.cpuUs += b.cpuUs;
  a.memByteMs += b.memByteMs;
  return a;
}

/** Bytes in a MiB, as a BigInt scale factor. */
export const BYTES_PER_MIB = 1_048_576n;

/** Cores to integer millicores (stored cpu is already canonical to millicores; this removes float noise). */
export function toMillicores(cores: number): bigint {
  return BigInt(Math.round(cores * 1000));
}

/** Seconds of CPU to integer CPU-microseconds (rounded to nearest; counters are rounded once per sample). */
export function secondsToCpuUs(seconds: number): bigint {
  return BigInt(Math.round(seconds * 1_000_000));
}

/**
 * Renders `n / scale` as a decimal string, rounding half away from zero to `digits`
 * fraction digits. Exact (BigInt), for display only.
 */
export function formatScaled(n: bigint, scale: bigint, digits: number): string {
  const neg = n < 0n;
  const abs = neg ? -n : n;
  const d = 10n ** BigInt(digits);
  // abs / scale rounded to `digits` decimals: round(abs * d / scale).
  const q = (abs * d * 2n + scale) / (scale * 2n);
  const whole = q / d;
  const frac = (q % d).toString().padStart(digits, '0');
  return `${neg && q !== 0n ? '-' : ''}${whole}${digits > 0 ? `.${frac}` : ''}`;
}

/** CPU-microseconds as core-seconds text (6 digits is exact). */
export function formatCpuSeconds(cpuUs: bigint, digits = 6): string {
  return formatScaled(cpuUs, 1_000_000n, digits);
}

/** Bytes in a GiB, as a BigInt scale factor. */
export const BYTES_PER_GIB = 1_073_741_824n;

/** Byte-milliseconds of storage as GiB-hours text (rounded to `digits`). */
export function formatGiBHours(storageByteMs: bigint, digits = 3): string {
  return formatScaled(storageByteMs, BYTES_PER_GIB * 3_600_000n, digits);
}

/** Byte-milliseconds as MiB-seconds text (rounded to `digits`). */
export function formatMiBSeconds(memByteMs: bigint, digits = 3): string {
  return formatScaled(memByteMs, BYTES_PER_MIB * 1000n, digits);
}
