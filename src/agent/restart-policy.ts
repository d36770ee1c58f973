/**
 * What happens after a container exits: restart (after a backoff) or stop for good. Pure, so
 * the rules are unit-tested apart from processes.
 */
import type { InstanceSpec } from '../model/objects.js';

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
 * Decides what to do after an exit. `restarts` counts the restarts already done;
 * `spec.maxRestarts` < 0 means unlimited (services), otherwise the retry budget (jobs).
 * `unhealthy`: the agent stopped the container because its liveness probe failed; that is a
 * failure (reason `Unhealthy`) whatever the exit code, as in Kubernetes: `OnFailure` restarts it.
 */
export function decideAfterExit(spec: Pick<InstanceSpec, 'restartPolicy' | 'maxRestarts'>, exitCode: number, restarts: number, ranMs: number, unhealthy = false): ExitDecision {
  const failed = exitCode !== 0 || unhealthy;
  const reason = unhealthy ? 'Unhealthy' : failed ? 'Error' : 'Completed';
  const wants = spec.restartPolicy === 'Always' || (spec.restartPolicy === 'OnFailure' && failed);
  if (!wants) return { action: 'stop', phase: failed ? 'Failed' : 'Succeeded', reason };
  if (spec.maxRestarts >= 0 && restarts >= spec.maxRestarts) {
    return { action: 'stop', phase: failed ? 'Failed' : 'Succeeded', reason: failed ? 'BackoffLimitExceeded' : reason };
  }
  return { action: 'restart', delayMs: backoffDelay(restarts, ranMs), reason };
}
