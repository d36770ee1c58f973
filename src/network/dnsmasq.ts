/**
 * A segment's dnsmasq (Debian's dnsmasq-base): started detached so it outlives the agent,
 * adopted by the next agent, reloaded with SIGHUP when its names or leases change, restarted
 * when its command line would change (upstreams, addresses), stopped with its segment.
 *
 * Identity: the pid in the segment's pid file names our dnsmasq only while
 * /proc/<pid>/cmdline is a dnsmasq with that very `--pid-file` argument (a recycled pid runs
 * something else); it is the expected one when the whole command line matches. That check
 * subsumes a start-time check and also tells when the configuration changed.
 */
import { promises as fs } from 'node:fs';
import { pidAlive } from '../proc/pids.js';
import { sleep } from '../proc/sleep.js';
import type { HostExec } from './host-exec.js';

/** Debian's dnsmasq-base. */
export const DNSMASQ = '/usr/sbin/dnsmasq';

/** How long a stopped dnsmasq may take to exit before it is killed. */
const STOP_TIMEOUT_MS = 5_000;

async function cmdline(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((a, i, all) => a !== '' || i < all.length - 1);
  } catch {
    return undefined;
  }
}

async function pidFromFile(pidFile: string): Promise<number | undefined> {
  try {
    const n = Number((await fs.readFile(pidFile, 'utf8')).trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** The pid of the dnsmasq that owns `pidFile`, if one runs, with its command line. */
async function ours(pidFile: string): Promise<{ pid: number; args: string[] } | undefined> {
  const pid = await pidFromFile(pidFile);
  if (pid === undefined || !pidAlive(pid)) return undefined;
  const args = await cmdline(pid);
  if (!args || !args[0]?.endsWith('dnsmasq') || !args.includes(`--pid-file=${pidFile}`)) return undefined;
  return { pid, args: args.slice(1) };
}

/**
 * Makes sure the dnsmasq of `pidFile` runs with exactly `args` (which must contain
 * `--pid-file=<pidFile>`): adopts a running one, replaces one with other arguments, or starts
 * one. dnsmasq daemonizes and its launcher exits only once it serves (or with its error), so on
 * return it answers. Returns whether a new process was started.
 */
export async function ensureDnsmasq(exec: HostExec, pidFile: string, args: readonly string[]): Promise<boolean> {
  const running = await ours(pidFile);
  if (running && running.args.length === args.length && running.args.every((a, i) => a === args[i])) return false;
  if (running) await stop(running.pid);
  await fs.rm(pidFile, { force: true });
  await exec.run(DNSMASQ, args);
  return true;
}

/** Asks the dnsmasq of `pidFile` to re-read its names and leases files; false when none runs. */
export async function reloadDnsmasq(pidFile: string): Promise<boolean> {
  const running = await ours(pidFile);
  if (!running) return false;
  try {
    process.kill(running.pid, 'SIGHUP');
    return true;
  } catch {
    return false; // it exited meanwhile
  }
}

/** Stops the dnsmasq of `pidFile` if one runs, and waits until it is gone. */
export async function stopDnsmasq(pidFile: string): Promise<void> {
  const running = await ours(pidFile);
  if (running) await stop(running.pid);
  await fs.rm(pidFile, { force: true });
}

async function stop(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return; // already gone
  }
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (pidAlive(pid) && Date.now() < deadline) await sleep(20);
  if (pidAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone between the check and the kill
    }
    while (pidAlive(pid)) await sleep(20);
  }
}
