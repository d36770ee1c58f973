/**
 * Leadership of the control plane: of all `carapace server` processes sharing a store, one
 * (the leader) runs the singleton loops — the workload controller (scheduler and
 * reconcilers), the host monitor, the timed audit checkpoints and etcd compaction. Every
 * server serves the API regardless. On etcd the leader is elected with a lease
 * (`store/etcd-election.ts`); a SQLite store belongs to one process, which always leads.
 *
 * Each term gets fresh loops, started with the term's signal and stopped when it aborts
 * (leadership lost, or shutdown); the next term starts only after they have all returned,
 * so one process never runs two sets at once. Leadership shows in the `carapace_leader`
 * gauge, in `/healthz` (`leader: true|false`) and in the log lines `became leader` and
 * `stopped leading`.
 */
import { setMaxListeners } from 'node:events';
import type { Logger } from 'pino';
import { metrics } from '../metrics/metrics.js';
import { soleLeader, type ElectionEvent, type LeaderElector } from '../store/election.js';
import type { Store } from '../store/store.js';

/** The name of the control plane's leadership in the store (`election/control-plane/…`). */
export const CONTROL_PLANE_ELECTION = 'control-plane';

export interface LeadershipOptions {
  store: Store;
  /** This server's name among its peers (default host:port); the `server` label of `carapace_leader`. */
  serverId: string;
  logger: Logger;
  /** The loops only the leader runs; started once per term with the term's signal, and must return when it aborts. */
  loops: (signal: AbortSignal) => Promise<unknown>;
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

  /** Campaigns and leads until `signal` aborts; rejects when the leader loops fail. */
  async start(signal: AbortSignal): Promise<void> {
    await this.elector.run(signal, async (term) => {
      // Every loop and watch of the term listens on its signal.
      setMaxListeners(100, term.signal);
      this.current = term.term;
      metrics.leader.set({ server: this.o.serverId }, 1);
      try {
        await this.o.loops(term.signal);
      } finally {
        this.current = undefined;
        metrics.leader.set({ server: this.o.serverId }, 0);
      }
    });
  }
}
