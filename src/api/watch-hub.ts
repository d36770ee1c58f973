/**
 * One store watch shared by every stream client that follows the same prefix "from now"
 * (no resourceVersion, no Last-Event-ID): dashboards and management tools. With a watch per
 * client, a thousand clients made every committed change cost a thousand reads, parses and
 * wake-ups before the server could answer the next request; through the hub each change is
 * read once and handed to every client, who filters it and formats it (formatting is cached
 * per event, see `frameOf`). Clients that resume from a revision keep a watch of their own
 * (they need the changes before now).
 *
 * Event objects are shared by all clients of a hub: they must not be changed.
 */
import type { Logger } from 'pino';
import type { Store, WatchEvent } from '../store/store.js';

/** One client of a hub. */
export interface HubClient {
  /** Called for every change after the client joined, in revision order; must not throw or block. */
  deliver(e: WatchEvent<unknown>): void;
  /** Called once when the hub's watch fails (the client should end its stream). */
  fail(err: Error): void;
  /** Called once, synchronously on joining, with the revision deliveries start after. */
  joined?(from: number): void;
}

export class WatchHub {
  private readonly clients = new Set<HubClient>();
  private ac: AbortController | undefined;
  private starting: Promise<void> | undefined;
  /** The revision everything up to has been delivered. */
  private position = 0;

  constructor(
    private readonly store: Store,
    private readonly prefix: string,
    private readonly logger: Logger,
  ) {}

  /** Clients now joined (for tests and metrics). */
  get size(): number {
    return this.clients.size;
  }

  /**
   * Joins: the client gets every change after the returned revision. Resolves once the hub's
   * watch runs; `leave` must be called when the client goes.
   */
  async join(client: HubClient): Promise<{ from: number; leave: () => void }> {
    if (!this.ac) {
      this.starting ??= this.start();
      await this.starting;
    }
    this.clients.add(client);
    client.joined?.(this.position);
    return { from: this.position, leave: () => this.leave(client) };
  }

  private leave(client: HubClient): void {
    this.clients.delete(client);
    if (this.clients.size === 0) this.stop();
  }

  private async start(): Promise<void> {
    const ac = new AbortController();
    this.position = await this.store.revision();
    this.ac = ac;
    this.starting = undefined;
    const iter = this.store.watch<unknown>(this.prefix, this.position, ac.signal);
    void (async () => {
      try {
        for await (const e of iter) {
          this.position = e.revision;
          for (const c of this.clients) c.deliver(e);
        }
      } catch (err) {
        if (ac.signal.aborted) return;
        this.logger.warn({ err, prefix: this.prefix }, 'shared watch failed; its clients are ended');
        const clients = [...this.clients];
        this.clients.clear();
        if (this.ac === ac) this.stop();
        for (const c of clients) c.fail(err as Error); // store watches fail with Errors
      }
    })();
  }

  private stop(): void {
    this.ac?.abort();
    this.ac = undefined;
  }
}

/** The hubs of one API server, per store and prefix. */
export class WatchHubs {
  private readonly hubs = new Map<string, WatchHub>();
  constructor(
    private readonly store: Store,
    private readonly logger: Logger,
  ) {}

  /** The hub following `prefix`. */
  for(prefix: string): WatchHub {
    let h = this.hubs.get(prefix);
    if (!h) this.hubs.set(prefix, (h = new WatchHub(this.store, prefix, this.logger)));
    return h;
  }
}

/** One way of formatting events, cached per event object (a shared event is formatted once). */
export class FrameCache {
  private readonly frames = new WeakMap<object, string>();
  constructor(private readonly format: (e: WatchEvent<unknown>) => string) {}

  frameOf(e: WatchEvent<unknown>): string {
    let f = this.frames.get(e);
    if (f === undefined) this.frames.set(e, (f = this.format(e)));
    return f;
  }
}
