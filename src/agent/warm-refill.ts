/**
 * When the warm pool may boot a replacement for a cell it gave away. Under software emulation
 * a booting VM takes the host's cores from the cell that was just claimed, whose containers are
 * starting (a failover's): measured in the failover bench, three instances ran again in a
 * claimed warm cell after 14.6 s when the pool refilled at once, 5.5 s when it waited.
 * So the refill waits until this host is quiet: `settleMs` after a claim (its instances are on
 * their way), while any container start into a cell is in flight, and `quietMs` after the last
 * one ended; never more than `maxDeferMs` in all, so a busy host still gets its pool back.
 * Pure: the cell manager feeds it the clock, the claimed cells and the starts.
 */
export interface WarmRefillTimings {
  settleMs: number;
  quietMs: number;
  maxDeferMs: number;
}

export const DEFAULT_WARM_REFILL: WarmRefillTimings = { settleMs: 5_000, quietMs: 2_000, maxDeferMs: 60_000 };

export class WarmRefillGate {
  /** Claimed warm cells by name: when this gate first saw each claimed. */
  private readonly claimSeen = new Map<string, number>();
  private inFlight = 0;
  private lastStartEnd = Number.NEGATIVE_INFINITY;
  /** Since when the pool has been short and waiting. */
  private shortSince: number | undefined;

  constructor(private readonly t: WarmRefillTimings = DEFAULT_WARM_REFILL) {}

  startBegan(): void {
    this.inFlight += 1;
  }

  startEnded(now: number): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
    this.lastStartEnd = now;
  }

  /** The pool is full: a later shortage starts its own wait. */
  full(claimed: readonly string[], now: number): void {
    this.see(claimed, now);
    this.shortSince = undefined;
  }

  /** The pool is short: ms to wait before booting a replacement, 0 to boot now. */
  deferMs(claimed: readonly string[], now: number): number {
    this.see(claimed, now);
    this.shortSince ??= now;
    const left = this.shortSince + this.t.maxDeferMs - now;
    let wait = this.inFlight > 0 ? 1_000 : 0;
    for (const seen of this.claimSeen.values()) wait = Math.max(wait, seen + this.t.settleMs - now);
    wait = Math.max(wait, this.lastStartEnd + this.t.quietMs - now);
    if (wait <= 0 || left <= 0) {
      this.shortSince = undefined;
      return 0;
    }
    return Math.ceil(Math.min(wait, left));
  }

  private see(claimed: readonly string[], now: number): void {
    const current = new Set(claimed);
    for (const name of this.claimSeen.keys()) if (!current.has(name)) this.claimSeen.delete(name);
    for (const name of claimed) if (!this.claimSeen.has(name)) this.claimSeen.set(name, now);
  }
}
