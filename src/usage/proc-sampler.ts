/**
 * Samples one host process from /proc: its CPU time (utime + stime, own threads only) and its
 * resident memory. Used for QEMU processes (cells, machines), whose cost the guest cannot see.
 * Does I/O (reads /proc); kept apart from the pure aggregation.
 */
import { readFile } from 'node:fs/promises';

/**
 * Clock ticks per second of /proc/PID/stat times. USER_HZ is 100 on every Linux architecture
 * Node supports (it is part of the user-space ABI, independent of the kernel's HZ).
 */
export const USER_HZ = 100;

/** One sample of a process. */
export interface ProcessSample {
  /** utime + stime in seconds (a counter with 10 ms resolution). */
  cpuSecondsTotal: number;
  /** Resident set size (VmRSS). */
  rssBytes: number;
  /**
   * `pid:starttime`: names this process's counter. A reused pid gets another starttime, so a
   * change of `source` tells `measuredUsage` the counter restarted.
   */
  source: string;
}

/**
 * Reads /proc/PID/stat and /proc/PID/status. Undefined when the process does not exist (or
 * exited between the two reads, or is a zombie whose memory is gone). May be called any time.
 */
export async function sampleProcess(pid: number, procRoot = '/proc'): Promise<ProcessSample | undefined> {
  if (!Number.isInteger(pid) || pid <= 0) throw new RangeError(`not a pid: ${pid}`);
  let stat: string;
  let status: string;
  try {
    stat = await readFile(`${procRoot}/${pid}/stat`, 'utf8');
    status = await readFile(`${procRoot}/${pid}/status`, 'utf8');
  } catch (e) {
    // fs errors are ErrnoExceptions; a missing `code` just fails the comparison.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ESRCH') return undefined;
    throw e;
  }
  return parseProc(pid, stat, status);
}

/**
 * Parses the contents of /proc/PID/stat and /proc/PID/status (exported for tests on fixed
 * text). Undefined for a zombie (no VmRSS line and state Z). Throws on text that is not /proc.
 */
export function parseProc(pid: number, stat: string, status: string): ProcessSample | undefined {
  // `pid (comm) state ...`: comm may hold spaces and ')', so split after the last ')'.
  const close = stat.lastIndexOf(')');
  if (close < 0) throw new Error(`/proc/${pid}/stat: unexpected format`);
  // Fields after comm, from field 3 (state): utime is field 14, stime 15, starttime 22.
  const f = stat.slice(close + 2).trim().split(/\s+/);
  const field = (n: number): number => {
    const v = Number(f[n - 3]);
    if (!Number.isFinite(v)) throw new Error(`/proc/${pid}/stat: field ${n} is not a number`);
    return v;
  };
  const state = f[0];
  const ticks = field(14) + field(15);
  const rss = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!rss && state === 'Z') return undefined;
  return {
    cpuSecondsTotal: ticks / USER_HZ,
    // Kernel threads have no VmRSS line: they hold no user memory.
    rssBytes: rss ? Number(rss[1]) * 1024 : 0,
    source: `${pid}:${field(22)}`,
  };
}
