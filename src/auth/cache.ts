/**
 * An in-memory view of the token records, kept current by a Store watch, so authenticating
 * a request costs no store read. Revocation reaches the cache when the watch delivers the
 * write (microseconds in-process with SQLite; one watch hop with etcd). While the view is not
 * synced (before start, after a watch failure until the re-list) it falls back to reading
 * the store, so it never answers from a stale or empty map.
 */
import type { Logger } from 'pino';
import type { Store } from '../store/store.js';
import type { Principal } from './rbac.js';
import { authenticate, checkToken, tokenId, type TokenRecord } from './tokens.js';
import { TOKENS_KEY_PREFIX } from '../model/keys.js';

/** Cached authentication; one per API server process. */
export class TokenCache {
  private records = new Map<string, TokenRecord>();
  private synced = false;

  constructor(
    private readonly store: Store,
    private readonly logger?: Logger,
    /** Delay before re-listing after a watch failure, in ms. */
    private readonly retryMs = 1000,
  ) {}

  /** True while answers come from the watched view (for tests and metrics). */
  get isSynced(): boolean {
    return this.synced;
  }

  /**
   * Lists `tokens/` and follows it until `signal` aborts (the Runnable shape: resolves at
   * shutdown). On a watch failure (compaction, overflow) it re-lists after `retryMs`.
   */
  async start(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        const { items, revision } = await this.store.list<TokenRecord>(TOKENS_KEY_PREFIX);
        this.records = new Map(items.map((e) => [e.key.slice(TOKENS_KEY_PREFIX.length), e.value]));
        this.synced = true;
        for await (const ev of this.store.watch<TokenRecord>(TOKENS_KEY_PREFIX, revision, signal)) {
          const id = ev.key.slice(TOKENS_KEY_PREFIX.length);
          if (ev.type === 'delete') this.records.delete(id);
          else this.records.set(id, ev.value);
        }
        // The watch ended without an error: only abort does that; loop to check.
      } catch (err) {
        this.synced = false;
        if (signal.aborted) break;
        this.logger?.warn({ err }, 'token watch failed; re-listing');
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, this.retryMs);
          signal.addEventListener('abort', () => {
            clearTimeout(t);
            resolve();
          }, { once: true });
        });
      }
    }
    this.synced = false;
  }

  /** Like {@link authenticate}, from the view when synced, else from the store. */
  async authenticate(bearer: string | undefined): Promise<Principal | undefined> {
    if (!this.synced) return authenticate(this.store, bearer);
    if (bearer === undefined) return undefined;
    const id = tokenId(bearer);
    if (id === undefined) return undefined;
    return checkToken(bearer, this.records.get(id));
  }
}
