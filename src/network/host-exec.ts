/**
 * Runs the data plane's tools (ip, bridge, nft, sysctl, dnsmasq) in the network namespace the
 * data plane manages: the caller's own, or a named one (a test's "host", or an agent managing a
 * namespace it does not live in) through `nsenter --net`, which changes nothing else (`ip netns
 * exec` would also remount /sys). Reading /proc/net goes the same way: it shows the reader's
 * namespace.
 */
import path from 'node:path';
import { CommandError, runOrThrow } from '../proc/run.js';

/** Where `ip netns add` keeps its namespaces. */
export const NETNS_DIR = '/var/run/netns';

/** The tools the data plane runs; anything else is a bug. */
export type Tool = 'ip' | 'bridge' | 'nft' | 'sysctl' | 'cat' | '/usr/sbin/dnsmasq';

/** A network namespace to run tools in. */
export interface HostExec {
  /** The namespace's path, or undefined for the caller's own. */
  readonly netnsPath: string | undefined;
  /** Runs a tool to completion with optional stdin; resolves with stdout, rejects with a CommandError. */
  run(tool: Tool, args: readonly string[], input?: string): Promise<string>;
}

/** A runner for namespace `netns` (a name under /var/run/netns or a path), or the caller's own. */
export function hostExec(netns: string | undefined): HostExec {
  const netnsPath = netns === undefined ? undefined : netns.includes('/') ? netns : path.join(NETNS_DIR, netns);
  return {
    netnsPath,
    async run(tool, args, input) {
      const opts = input === undefined ? {} : { input };
      if (netnsPath === undefined) return (await runOrThrow(tool, args, opts)).stdout;
      return (await runOrThrow('nsenter', [`--net=${netnsPath}`, '--', tool, ...args], opts)).stdout;
    },
  };
}

/** True when a command failed because what it was to remove or change is not there. */
export function isMissing(e: unknown): boolean {
  return e instanceof CommandError && /Cannot find device|No such file|does not exist|No such process|not found/i.test(e.stderr);
}

/** True when a command failed because what it was to create is there already. */
export function isExisting(e: unknown): boolean {
  return e instanceof CommandError && /File exists/.test(e.stderr);
}

/** Rethrows anything but "not there" (for idempotent removals). */
export function ignoreMissing(e: unknown): void {
  if (!isMissing(e)) throw e;
}

/** Rethrows anything but "already there" (for idempotent creations). */
export function ignoreExisting(e: unknown): void {
  if (!isExisting(e)) throw e;
}
