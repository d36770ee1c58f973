/**
 * Self-fencing, the agent's decisions (pure: the clock is passed in). The agent notes when it
 * sent each lease renewal and, when one succeeds, that send time (`LeaseClock`): a renewal
 * counts from when it left, not from when its answer came, because the control plane may
 * have observed it before the answer arrived (model/fencing.ts argues the bound). When the
 * last successful renewal is older than the grace G the lease is stale: the agent stops every
 * local container whose instance says `fencing: stop` (`toFence`) and starts none of them
 * (`mayStart`) until a renewal succeeds again.
 */
import type { Fencing } from '../model/fencing.js';

/**
 * The time of the last renewal that succeeded, by send time, on the agent's monotonic clock
 * (milliseconds, `performance.now()`). Renewals may complete out of order (one stuck behind a
 * cut link, one after it): the latest send time wins.
 */
export class LeaseClock {
  private lastOkSentAt: number;

  /** `startedAt`: the agent's start; it counts as renewed then, so a fresh agent has a full grace. */
  constructor(startedAt: number) {
    this.lastOkSentAt = startedAt;
  }

  /** A renewal sent at `sentAt` succeeded. */
  renewed(sentAt: number): void {
    if (sentAt > this.lastOkSentAt) this.lastOkSentAt = sentAt;
  }

  /** Milliseconds since the last successful renewal was sent. */
  ageMs(now: number): number {
    return Math.max(0, now - this.lastOkSentAt);
  }

  /** True when no renewal sent in the last `graceMs` succeeded: time to fence. */
  stale(now: number, graceMs: number): boolean {
    return this.ageMs(now) >= graceMs;
  }
}

/** A local container as the fence sees it. */
export interface FenceCandidate {
  key: string;
  fencing: Fencing;
  /** Its process is gone already (exited, not restarted yet). */
  exited: boolean;
  /** Being stopped already (deleted, replaced, or fenced). */
  stopping: boolean;
}

/** The keys of the containers a stale lease stops: running, not already going, `fencing: stop`. */
export function toFence(local: readonly FenceCandidate[]): string[] {
  return local.filter((c) => c.fencing === 'stop' && !c.exited && !c.stopping).map((c) => c.key);
}

/** May a container of an instance with this fencing be started now? Not a `stop` one while the lease is stale. */
export function mayStart(fencing: Fencing, leaseStale: boolean): boolean {
  return !(leaseStale && fencing === 'stop');
}
