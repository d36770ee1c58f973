/**
 * Leader election over a store, so several control-plane processes sharing one store run the
 * singleton loops (scheduler, reconcilers, host monitor) in exactly one of them. The core sees
 * only this interface: the etcd store implements it with a lease (`etcd-election.ts`); a
 * store owned by one process (SQLite) has no rival, so that process is always the leader
 * (`soleLeader`).
 */

/** One period of leadership, handed to the `lead` callback of {@link LeaderElector.run}. */
export interface LeaderTerm {
  /**
   * Aborts when this term ends: leadership lost (lease expired or revoked, the store
   * unreachable past the fencing deadline) or the elector's own signal aborted. Every loop
   * the leader runs must stop when it aborts.
   */
  signal: AbortSignal;
  /**
   * Orders terms: a later term has a larger number (etcd: the revision that created this
   * candidate's key; sole leader: 1).
   */
  term: number;
}

/** Campaigns for one named leadership on behalf of one candidate. */
export interface LeaderElector {
  /**
   * Campaigns until `signal` aborts. Each time this candidate wins, calls `lead(term)` and
   * waits for it to settle; when `term.signal` aborts, `lead` must stop its loops and
   * resolve. After a term ends the candidate campaigns again. Resolves once `signal` has
   * aborted and the last `lead` has settled (leadership is then given up, so a rival can
   * take over at once). Rejects when `lead` rejects (after giving leadership up).
   * Terms never overlap within one process: `lead` is never called while a previous call
   * is still running.
   */
  run(signal: AbortSignal, lead: (term: LeaderTerm) => Promise<void>): Promise<void>;
}

/** Options for an elector (see `Store.elector`). */
export interface ElectorOptions {
  /**
   * Lease time-to-live in whole seconds (default 2, etcd's floor with its default timing).
   * A dead leader is replaced about this long after its last renewal; a live one renews
   * every quarter of it and stops leading when a renewal has not succeeded in
   * `ttl - fencing margin`.
   */
  ttlSeconds?: number;
  /** Called with what happened, for logs (elected, lost with its reason, resigned). */
  onEvent?: (e: ElectionEvent) => void;
}

/** What an elector reports through `onEvent`. */
export type ElectionEvent =
  | { type: 'elected'; term: number }
  | { type: 'lost'; term: number; reason: string }
  | { type: 'resigned'; term: number }
  | { type: 'error'; error: unknown };

/** How long the sole leader waits before leading again when `lead` returned on its own. */
const SOLE_RELEAD_MS = 1_000;

/**
 * The elector of a store that one process owns (SQLite): there is no rival, so it leads at
 * once and for as long as `signal` lives. If `lead` returns while `signal` lives, it leads
 * again (a new term) after a second.
 */
export function soleLeader(opts: Pick<ElectorOptions, 'onEvent'> = {}): LeaderElector {
  return {
    async run(signal, lead) {
      for (let term = 1; !signal.aborted; term++) {
        opts.onEvent?.({ type: 'elected', term });
        try {
          await lead({ signal, term });
        } catch (e) {
          opts.onEvent?.({ type: 'lost', term, reason: 'the leader loops failed' });
          throw e;
        }
        if (signal.aborted) {
          opts.onEvent?.({ type: 'resigned', term });
          return;
        }
        opts.onEvent?.({ type: 'lost', term, reason: 'the leader loops ended' });
        await new Promise<void>((resolve) => {
          const done = (): void => {
            clearTimeout(timer);
            signal.removeEventListener('abort', done);
            resolve();
          };
          const timer = setTimeout(done, SOLE_RELEAD_MS);
          signal.addEventListener('abort', done);
        });
      }
    },
  };
}
