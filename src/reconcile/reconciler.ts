/**
 * The one shape of a reconcile loop (after controller-runtime's controllers): a name, the
 * store prefixes it watches and the keys each change queues, a periodic resync that queues
 * every key it should look at, and a level-based reconcile function of one key. Every loop of
 * Carapace (the workload controller, the host agent, its cells and machines) is one of these,
 * instead of wiring its own queue, watches and timers.
 *
 * Lifecycle: `start(signal)` queues the resync's keys once, then runs the workers, the watches
 * and the resync timer until `signal` aborts, and resolves when in-flight reconciles ended.
 * Keys may also be queued from outside (`add`, `addAfter`), e.g. when a VM exits.
 */
import type { Logger } from 'pino';
import { metrics, timed } from '../metrics/metrics.js';
import type { Store, WatchEvent } from '../store/store.js';
import { watchForever } from './watch.js';
import { WorkQueue, type ReconcileResult } from './workqueue.js';

/** One watched prefix and the keys a change under it queues. */
export interface WatchSpec<T = never> {
  prefix: string;
  /** Keys to queue for one change (none, one or several). */
  keys: (e: WatchEvent<T>) => Iterable<string>;
}

/** A watch of `prefix` whose changes carry values of type T (objects of one kind). */
export function watchOf<T>(prefix: string, keys: (e: WatchEvent<T>) => Iterable<string>): WatchSpec<never> {
  return { prefix, keys };
}

/**
 * A watch of `prefix` that queues keys only when what the loop reads of a value changes:
 * `project` maps a value to a string of exactly the fields the loop depends on, and a put
 * whose projection equals the last one seen for its key queues nothing (a spec field the loop
 * does not read, a heartbeat, an audit-only change). A new key and a delete always queue. The
 * projections are remembered in memory per key; a loop started afresh has none, so it reacts
 * to each key's first event, and its resync still queues everything periodically.
 */
export function watchChangesOf<T>(prefix: string, project: (v: T) => string, keys: (e: WatchEvent<T>) => Iterable<string>): WatchSpec<never> {
  const seen = new Map<string, string>();
  return watchOf<T>(prefix, (e) => {
    if (e.type === 'delete') {
      seen.delete(e.key);
      return keys(e);
    }
    const now = project(e.value);
    if (seen.get(e.key) === now) return [];
    seen.set(e.key, now);
    return keys(e);
  });
}

export interface ReconcilerOptions {
  /** The loop's name, for logs and the `loop` label of `carapace_reconcile_duration_seconds`. */
  name: string;
  store: Store;
  logger: Logger;
  /** Reconciles one key: read fresh state, make it so, idempotently; throw to retry with backoff. */
  reconcile: (key: string) => Promise<ReconcileResult>;
  /** The metrics label of a key's pass, when one loop runs passes of several kinds (default `name`). */
  loopOf?: (key: string) => string;
  // `never` in the element type lets loops list watches of different value types: each
  // `keys` function is only ever called with events of its own prefix.
  watches?: readonly WatchSpec<never>[];
  /** Every key the loop should look at now and then (level-based: catches what watches missed). */
  resync?: { everyMs: number; keys: () => Promise<Iterable<string>> | Iterable<string> };
  /** Keys reconciled at once (default 1; a key is never reconciled twice at once). */
  concurrency?: number;
}

/** A running reconcile loop. Create one per loop; `start` once. */
export class Reconciler {
  private readonly queue: WorkQueue;
  private readonly log: Logger;

  constructor(private readonly o: ReconcilerOptions) {
    this.log = o.logger;
    this.queue = new WorkQueue((key) => timed(metrics.reconcileSeconds, o.loopOf?.(key) ?? o.name, () => o.reconcile(key)), {
      onError: (key, err, attempt) => this.log.warn({ loop: o.name, key, attempt, err }, 'reconcile failed; retrying'),
    });
  }

  /** Queues `key` for a pass as soon as a worker is free. */
  add(key: string): void {
    this.queue.add(key);
  }

  /** Queues `key` after `delayMs` (replaces an earlier delayed add of it). */
  addAfter(key: string, delayMs: number): void {
    this.queue.addAfter(key, delayMs);
  }

  /** Queues every key of the resync. */
  async resync(): Promise<void> {
    for (const k of (await this.o.resync?.keys()) ?? []) this.queue.add(k);
  }

  /** Runs until `signal` aborts (see the module comment). */
  async start(signal: AbortSignal): Promise<void> {
    await this.resync().catch((err: unknown) => this.log.warn({ loop: this.o.name, err }, 'first resync failed; the watches and the timer retry'));
    const every = this.o.resync?.everyMs;
    if (every !== undefined) {
      const timer = setInterval(() => void this.resync().catch((err: unknown) => this.log.warn({ loop: this.o.name, err }, 'resync failed')), every);
      timer.unref();
      signal.addEventListener('abort', () => clearInterval(timer), { once: true });
    }
    await Promise.all([
      this.queue.start(signal, this.o.concurrency ?? 1),
      ...(this.o.watches ?? []).map((w) =>
        watchForever<never>(this.o.store, w.prefix, signal, this.log, (e) => {
          for (const k of w.keys(e)) this.queue.add(k);
        }),
      ),
    ]);
  }
}
