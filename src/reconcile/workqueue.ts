/**
 * A keyed work queue for level-based reconcilers (after controller-runtime's): a key queued
 * many times is reconciled once; a key is never reconciled by two workers at once; an error
 * re-queues the key with exponential backoff; `after` schedules a later look (e.g. a restart
 * backoff expiring). Keys, not events: the reconciler reads the current state itself.
 */

export interface WorkQueueOptions {
  /** First retry delay after an error. */
  baseDelayMs?: number;
  /** Longest retry delay. */
  maxDelayMs?: number;
  /** Called when a reconcile throws (for logging); the key is retried regardless. */
  onError?: (key: string, error: unknown, attempt: number) => void;
}

export type ReconcileResult = void | { requeueAfterMs: number };

export class WorkQueue {
  private readonly dirty = new Set<string>();
  private readonly running = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private wake: (() => void) | undefined;
  private stopped = false;

  constructor(
    private readonly reconcile: (key: string) => Promise<ReconcileResult>,
    private readonly opts: WorkQueueOptions = {},
  ) {}

  /** Marks a key for reconciliation as soon as a worker is free. */
  add(key: string): void {
    if (this.stopped) return;
    this.dirty.add(key);
    this.wake?.();
  }

  /** Marks a key for reconciliation after a delay (replaces an earlier delayed add for it). */
  addAfter(key: string, delayMs: number): void {
    if (this.stopped) return;
    const prev = this.timers.get(key);
    if (prev) clearTimeout(prev);
    const t = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, Math.max(0, delayMs));
    t.unref();
    this.timers.set(key, t);
  }

  /** Number of keys waiting (for metrics and tests). */
  get pending(): number {
    return this.dirty.size;
  }

  /**
   * Runs `concurrency` workers until `signal` aborts; resolves once in-flight reconciles end.
   * The one lifecycle shape: start(signal) resolves at shutdown.
   */
  async start(signal: AbortSignal, concurrency = 4): Promise<void> {
    const onAbort = (): void => {
      this.stopped = true;
      for (const t of this.timers.values()) clearTimeout(t);
      this.timers.clear();
      this.wake?.();
    };
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    const workers = Array.from({ length: concurrency }, () => this.worker());
    await Promise.all(workers);
  }

  private next(): string | undefined {
    for (const key of this.dirty) {
      if (!this.running.has(key)) {
        this.dirty.delete(key);
        return key;
      }
    }
    return undefined;
  }

  private async worker(): Promise<void> {
    while (!this.stopped) {
      const key = this.next();
      if (key === undefined) {
        await new Promise<void>((resolve) => {
          const prev = this.wake;
          this.wake = () => {
            this.wake = undefined;
            prev?.();
            resolve();
          };
        });
        continue;
      }
      this.running.add(key);
      try {
        const r = await this.reconcile(key);
        this.failures.delete(key);
        if (r && r.requeueAfterMs >= 0) this.addAfter(key, r.requeueAfterMs);
      } catch (e) {
        const n = (this.failures.get(key) ?? 0) + 1;
        this.failures.set(key, n);
        this.opts.onError?.(key, e, n);
        const base = this.opts.baseDelayMs ?? 100;
        const max = this.opts.maxDelayMs ?? 30_000;
        this.addAfter(key, Math.min(max, base * 2 ** (n - 1)));
      } finally {
        this.running.delete(key);
        // A key added while it was running is still dirty: make sure a worker sees it.
        if (this.dirty.size > 0) this.wake?.();
      }
    }
  }
}
