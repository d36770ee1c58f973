/**
 * What happens after a container exits: restart (after a backoff) or stop for good. Pure, so
 * the rules are unit-tested apart from processes.
 */
import type { InstanceLastState, InstanceSpec, LastStateReason } from '../model/objects.js';

export type ExitDecision =
  | { action: 'restart'; delayMs: number; reason: string }
  | { action: 'stop'; phase: 'Succeeded' | 'Failed'; reason: string };

/** First restart delay; doubles per restart up to MAX_BACKOFF_MS. */
export const BASE_BACKOFF_MS = 1_000;
export const MAX_BACKOFF_MS = 60_000;
/** A container that ran this long is considered healthy again: its backoff starts over. */
export const BACKOFF_RESET_AFTER_MS = 60_000;

/** The restart delay after `restarts` earlier restarts, reset when the last run was long. */
export function backoffDelay(restarts: number, ranMs: number): number {
  if (ranMs >= BACKOFF_RESET_AFTER_MS) return BASE_BACKOFF_MS;
  return Math.min(MAX_BACKOFF_MS, BASE_BACKOFF_MS * 2 ** Math.min(restarts, 16));
}

/**
 * Milliseconds between SIGTERM and SIGKILL for a container of an instance: its spec's
 * `stopGracePeriodSeconds` (copied from the service or job), else the agent's default.
 */
export function stopGraceMsOf(spec: Pick<InstanceSpec, 'stopGracePeriodSeconds'>, defaultMs: number): number {
  return spec.stopGracePeriodSeconds !== undefined ? spec.stopGracePeriodSeconds * 1000 : defaultMs;
}

/** What the agent knows about why a container ended, besides its exit code. */
export interface ExitCause {
  /** Stopped by the agent because its liveness probe failed. */
  unhealthy?: boolean;
  /** Killed by the kernel's OOM killer in its cgroup (the driver saw the cgroup's oom_kill count move). */
  oomKilled?: boolean;
  /** It never started: the start failed (the exit code is the agent's, not the container's). */
  startFailed?: boolean;
}

/**
 * Why a container ended, as `lastState.reason` says it: the agent's own causes first (a
 * failed start, a liveness kill: the agent sent the signal, so the code says nothing more),
 * then the kernel's OOM kill (Kubernetes reports OOMKilled whatever the code), then the code.
 */
export function terminationReason(exitCode: number, cause: ExitCause = {}): LastStateReason {
  if (cause.startFailed) return 'StartFailed';
  if (cause.unhealthy) return 'Unhealthy';
  if (cause.oomKilled) return 'OOMKilled';
  return exitCode === 0 ? 'Completed' : 'Error';
}

/** The `lastState` recorded for a container that ended (pure: times and ids passed in). */
export function lastStateOf(e: { exitCode: number; finishedAt: string; startedAt?: string | undefined; containerId?: string | undefined; message: string; cause?: ExitCause }): InstanceLastState {
  return {
    exitCode: e.exitCode,
    reason: terminationReason(e.exitCode, e.cause),
    message: e.message,
    ...(e.containerId !== undefined ? { containerId: e.containerId } : {}),
    // A failed start never ran: it has no start time.
    ...(e.startedAt !== undefined && !e.cause?.startFailed ? { startedAt: e.startedAt } : {}),
    finishedAt: e.finishedAt,
  };
}

/**
 * Decides what to do after an exit. `restarts` counts the restarts already done;
 * `spec.maxRestarts` < 0 means unlimited (services), otherwise the retry budget (jobs).
 * `unhealthy`: the agent stopped the container because its liveness probe failed; that is a
 * failure (reason `Unhealthy`) whatever the exit code, as in Kubernetes: `OnFailure` restarts it.
 * `oomKilled`: the kernel's OOM killer killed a process of it: a failure (reason `OOMKilled`).
 */
export function decideAfterExit(spec: Pick<InstanceSpec, 'restartPolicy' | 'maxRestarts'>, exitCode: number, restarts: number, ranMs: number, unhealthy = false, oomKilled = false): ExitDecision {
  // An OOM kill is a failure even when the process exited 0 (a helper was killed, the main process carried on).
  const failed = exitCode !== 0 || unhealthy || oomKilled;
  const reason = unhealthy ? 'Unhealthy' : oomKilled ? 'OOMKilled' : failed ? 'Error' : 'Completed';
  const wants = spec.restartPolicy === 'Always' || (spec.restartPolicy === 'OnFailure' && failed);
  if (!wants) return { action: 'stop', phase: failed ? 'Failed' : 'Succeeded', reason };
  if (spec.maxRestarts >= 0 && restarts >= spec.maxRestarts) {
    return { action: 'stop', phase: failed ? 'Failed' : 'Succeeded', reason: failed ? 'BackoffLimitExceeded' : reason };
  }
  return { action: 'restart', delayMs: backoffDelay(restarts, ranMs), reason };
}
