/**
 * Leadership of the control plane: of all `carapace server` processes sharing a store, one
 * (the leader) runs the singleton loops — the workload controller (scheduler and
 * reconcilers), the host monitor, the timed audit checkpoints and etcd compaction. Every
 * server serves the API regardless. On etcd the leader is elected with a lease
 * (`store/etcd-election.ts`); a SQLite store belongs to one process, which always leads.
 *
 * Each term gets fresh loops, started with the term's signal and stopped when it aborts
 * (leadership lost, or shutdown); the next term starts only after they have all returned,
 * so one process never runs two sets at once. A loop that fails (e.g. its first store read
 * at the start of a term hit an etcd hiccup) ends the term: the other loops are stopped, the
 * server steps down after a pause (another may take over) and campaigns again. Leadership shows in the `carapace_leader`
 * gauge, in `/healthz` (`leader: true|false`) and in the log lines `became leader` and
 * `stopped leading`.
 */
import { setMaxListeners } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { metrics } from '../metrics/metrics.js';
import { soleLeader, type ElectionEvent, type LeaderElector } from '../store/election.js';
import type { Store } from '../store/store.js';

/** How long a leader whose loop failed waits before giving leadership up and campaigning again. */
const STEP_DOWN_PAUSE_MS = 1_000;

/** The name of the control plane's leadership in the store (`election/control-plane/…`). */
export const CONTROL_PLANE_ELECTION = 'control-plane';

export interface LeadershipOptions {
  store: Store;
  /** This server's name among its peers (default host:port); the `server` label of `carapace_leader`. */
  serverId: string;
  logger: Logger;
  /** The loops only the leader runs; each is started once per term with the term's signal and must return when it aborts. */
  loops: ((signal: AbortSignal) => Promise<unknown>)[];
  /** Lease TTL in whole seconds (default 2; env CARAPACE_LEADER_TTL_S). */
  ttlSeconds?: number;
}

/** Campaigns for the control plane's leadership and runs the leader loops while it holds it. */
export class Leadership {
  private current: number | undefined;
  private readonly elector: LeaderElector;
  private readonly log: Logger;

  constructor(private readonly o: LeadershipOptions) {
    this.log = o.logger.child({ component: 'leader', server: o.serverId });
    const onEvent = (e: ElectionEvent): void => {
      if (e.type === 'elected') this.log.info({ term: e.term }, 'became leader');
      else if (e.type === 'lost') this.log.warn({ term: e.term, reason: e.reason }, 'stopped leading');
      else if (e.type === 'resigned') this.log.info({ term: e.term, reason: 'shutdown' }, 'stopped leading');
      else this.log.warn({ err: e.error }, 'leader election failed; campaigning again');
    };
    const ttlSeconds = o.ttlSeconds ?? (Number(process.env['CARAPACE_LEADER_TTL_S']) || undefined);
    this.elector = o.store.elector?.(CONTROL_PLANE_ELECTION, o.serverId, { onEvent, ...(ttlSeconds !== undefined ? { ttlSeconds } : {}) }) ?? soleLeader({ onEvent });
    metrics.leader.set({ server: o.serverId }, 0);
  }

  /** True while this server leads (its leader loops are running). */
  get leading(): boolean {
    return this.current !== undefined;
  }

  /** The current term number while leading. */
  get term(): number | undefined {
    return this.current;
  }

  /** Campaigns and leads until `signal` aborts (the one lifecycle shape); never rejects for a failed loop (see above). */
  async start(signal: AbortSignal): Promise<void> {
    await this.elector.run(signal, async (term) => {
      // The loops' own signal: the term's, or earlier when one of them fails.
      const ac = new AbortController();
      // Every loop and watch of the term listens on it.
      setMaxListeners(100, ac.signal);
      const stop = (): void => ac.abort();
      term.signal.addEventListener('abort', stop, { once: true });
      if (term.signal.aborted) stop();
      let failure: { err: unknown } | undefined;
      this.current = term.term;
      metrics.leader.set({ server: this.o.serverId }, 1);
      try {
        await Promise.all(
          this.o.loops.map((loop) =>
            loop(ac.signal).catch((err: unknown) => {
              // After a stop, errors are the loops ending (e.g. a store call cut short): not failures.
              if (ac.signal.aborted) return;
              failure = { err };
              stop();
            }),
          ),
        );
      } finally {
        term.signal.removeEventListener('abort', stop);
        this.current = undefined;
        metrics.leader.set({ server: this.o.serverId }, 0);
      }
      if (failure && !term.signal.aborted) {
        this.log.error({ err: failure.err, term: term.term }, 'a leader loop failed; stepping down');
        await delay(STEP_DOWN_PAUSE_MS, undefined, { signal: term.signal }).catch(() => undefined); // aborted: shutting down anyway
      }
    });
  }
}
