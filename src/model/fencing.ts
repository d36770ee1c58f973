/**
 * Self-fencing, the shared part (pure): what a service or job says about its instances when
 * their host is cut off (`spec.fencing`), and the timings the host agents and the control
 * plane derive from the host lease TTL so that a fenced host has stopped its work before the
 * control plane places it anywhere else (ARCHITECTURE.md invariant 9).
 *
 * The bound. An agent renews its lease about once a second. Let `s` be the time at which the
 * agent *sent* its last renewal that succeeded (its own monotonic clock); the store wrote it
 * after `s`, and the control plane's host monitor observed the new lease version at some `o`
 * after that write, so `s <= o` (both clocks only measure durations; their rates are assumed
 * equal to within a few per cent, no agreement on the time of day is needed). The agent
 * checks every `checkMs` and, once `graceMs` passed since `s` without a newer success, stops
 * every local instance whose fencing is `stop` within `stopBudgetMs` (SIGTERM, SIGKILL after
 * `killGraceMs`): they are all stopped by `s + graceMs + checkMs + stopBudgetMs <= o +
 * graceMs + checkMs + stopBudgetMs`. The monitor declares the host NotReady after `ttlMs` of
 * silence since `o`, and lets the controller replace `stop` instances only after `waitMs`
 * of silence since `o` (`Host.status.fencedAt`). `fenceTimings` keeps `waitMs >= graceMs +
 * checkMs + stopBudgetMs + FENCE_MARGIN_MS`, so replacements start after the originals
 * stopped, with at least the margin to spare.
 */
import { z } from 'zod';

/** `stop`: a cut-off host stops the instance before it is replaced elsewhere; `keep`: it keeps running (two copies for a while). */
export const FENCING_MODES = ['stop', 'keep'] as const;
export const FencingSchema = z.enum(FENCING_MODES);
export type Fencing = z.infer<typeof FencingSchema>;

/**
 * The effective fencing of a service or job spec: its own, else `stop` when it mounts a
 * volume (a second writer corrupts data) and `keep` otherwise (a stateless copy is harmless
 * and stays available). Resolved here, not by the schema: specs stored before it existed
 * compare equal and roll nothing.
 */
export function fencingOf(spec: { fencing?: Fencing | undefined; volumes?: readonly unknown[] | undefined; volumeTemplates?: readonly unknown[] | undefined }): Fencing {
  return spec.fencing ?? ((spec.volumes?.length ?? 0) + (spec.volumeTemplates?.length ?? 0) > 0 ? 'stop' : 'keep');
}

/** Why `fencingOf` chose what it did, as describe shows it. */
export function fencingSummary(spec: Parameters<typeof fencingOf>[0]): string {
  const f = fencingOf(spec);
  if (spec.fencing !== undefined) return f;
  return `${f} (default: ${f === 'stop' ? 'mounts a volume' : 'no volume'})`;
}

/**
 * The fencing of an instance: the one copied from its owner (`InstanceSpec.fencing`), else
 * (instances stored before it existed) `stop` when it mounts a volume.
 */
export function instanceFencing(spec: { fencing?: Fencing | undefined; mounts?: readonly unknown[] | undefined }): Fencing {
  return spec.fencing ?? ((spec.mounts?.length ?? 0) > 0 ? 'stop' : 'keep');
}

/** The default host lease TTL (env CARAPACE_HOST_LEASE_TTL_MS). */
export const DEFAULT_HOST_LEASE_TTL_MS = 3_000;
/** SIGTERM to SIGKILL when fencing: the workload's own stop grace is not waited for. */
export const FENCE_KILL_GRACE_MS = 1_000;
/** Upper bound of a fence: SIGTERM, the kill grace, SIGKILL and the exit observed. */
export const FENCE_STOP_BUDGET_MS = 2_000;
/** How often an agent looks at its lease's age. */
export const FENCE_CHECK_MS = 200;
/** What the control plane's wait keeps above the agents' worst case (clock rates, a slow kill, a loaded host). */
export const FENCE_MARGIN_MS = 2_000;

export interface FenceTimings {
  /** The host lease TTL: silent this long, the host is NotReady. */
  ttlMs: number;
  /** G: an agent that sent no successful renewal for this long fences (= the TTL). */
  graceMs: number;
  checkMs: number;
  killGraceMs: number;
  stopBudgetMs: number;
  /** W: silent this long, the control plane counts the host's `stop` instances as stopped and replaces them. */
  waitMs: number;
}

/** The timings for a lease TTL: G = TTL, W = max(3 x TTL, G + check + stop budget + margin). */
export function fenceTimings(ttlMs: number = DEFAULT_HOST_LEASE_TTL_MS): FenceTimings {
  const graceMs = ttlMs;
  const waitMs = Math.max(3 * ttlMs, graceMs + FENCE_CHECK_MS + FENCE_STOP_BUDGET_MS + FENCE_MARGIN_MS);
  return { ttlMs, graceMs, checkMs: FENCE_CHECK_MS, killGraceMs: FENCE_KILL_GRACE_MS, stopBudgetMs: FENCE_STOP_BUDGET_MS, waitMs };
}

/**
 * What the control plane publishes at `HOST_LEASE_SETTINGS_KEY` (model/keys.ts) for the
 * agents: they fence after `graceMs`, whatever their own environment says, so an agent
 * never waits longer than the control plane assumes.
 */
export interface HostLeaseSettings {
  ttlMs: number;
  graceMs: number;
  waitMs: number;
}
