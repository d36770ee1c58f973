/**
 * In-process single-flight: concurrent callers asking for the same key share one run of the
 * work. Each caller may give up on its own (its signal); the work itself is aborted only when
 * every caller has given up, so one impatient caller never fails the others. Progress events
 * of the shared work reach every caller that listens (a late joiner first gets the latest one).
 */

/** Work run once per key; `emit` broadcasts a progress event to the current callers. */
export type FlightWork<T, E> = (signal: AbortSignal, emit: (event: E) => void) => Promise<T>;

interface Flight<T, E> {
  promise: Promise<T>;
  controller: AbortController;
  /** Callers still waiting (including ones without a signal, who can never leave). */
  waiters: number;
  listeners: Set<(event: E) => void>;
  /** The latest event, replayed to late joiners. */
  memo: { last?: E };
}

/** A table of in-flight works keyed by string. One instance per kind of work. */
export class SingleFlight<T, E> {
  private readonly flights = new Map<string, Flight<T, E>>();

  /** Number of works running now (for tests and metrics). */
  get size(): number {
    return this.flights.size;
  }

  /**
   * Joins the work running for `key`, or starts `work` if none is. Resolves or rejects with
   * the work's outcome, or rejects with `signal.reason` when `signal` aborts first.
   */
  run(key: string, work: FlightWork<T, E>, opts: { signal?: AbortSignal; onEvent?: (event: E) => void } = {}): Promise<T> {
    const { signal, onEvent } = opts;
    if (signal?.aborted) return Promise.reject(signal.reason);
    let flight = this.flights.get(key);
    if (flight === undefined) {
      const controller = new AbortController();
      const listeners = new Set<(event: E) => void>();
      const memo: { last?: E } = {};
      const emit = (event: E): void => {
        memo.last = event;
        for (const l of listeners) {
          try {
            l(event);
          } catch {
            // A listener's failure is its own business; the pull goes on for everyone.
          }
        }
      };
      // Started on the next microtask, so the creating caller's listener (added below) sees
      // even events the work emits before its first await.
      const promise = Promise.resolve().then(() => work(controller.signal, emit)).finally(() => {
        if (this.flights.get(key) === created) this.flights.delete(key);
      });
      // Callers observe the promise through their own wrappers; this keeps an abandoned
      // flight's rejection from surfacing as unhandled.
      promise.catch(() => undefined);
      const created: Flight<T, E> = { controller, waiters: 0, listeners, promise, memo };
      this.flights.set(key, created);
      flight = created;
    } else if (onEvent !== undefined && flight.memo.last !== undefined) {
      onEvent(flight.memo.last);
    }
    const joined = flight;
    joined.waiters += 1;
    if (onEvent !== undefined) joined.listeners.add(onEvent);
    const leave = (): void => {
      if (onEvent !== undefined) joined.listeners.delete(onEvent);
    };
    if (signal === undefined) {
      return joined.promise.finally(leave);
    }
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => {
        leave();
        joined.waiters -= 1;
        if (joined.waiters === 0) {
          // Nobody wants the result any more: stop the work, and let the next caller start
          // afresh instead of joining a flight that is being torn down.
          if (this.flights.get(key) === joined) this.flights.delete(key);
          joined.controller.abort(signal.reason);
        }
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      joined.promise.then(
        (v) => {
          signal.removeEventListener('abort', onAbort);
          leave();
          resolve(v);
        },
        (e: unknown) => {
          signal.removeEventListener('abort', onAbort);
          leave();
          reject(e);
        },
      );
    });
  }
}
