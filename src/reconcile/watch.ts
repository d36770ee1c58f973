/**
 * A watch that never gives up: follows a prefix from the current revision, and when the
 * stream breaks (compaction, a slow-consumer cut, a store hiccup) re-lists and resumes.
 * Callers are level-based, so a re-list that replays "everything changed" is harmless.
 */
import type { Logger } from 'pino';
import type { Store, WatchEvent } from '../store/store.js';

/** Calls `onEvent` for every change under `prefix` until `signal` aborts. */
export async function watchForever<T>(
  store: Store,
  prefix: string,
  signal: AbortSignal,
  log: Logger,
  onEvent: (e: WatchEvent<T>) => void,
  onRelist?: (items: { key: string; value: T }[]) => void,
): Promise<void> {
  // The store may be unreachable (an agent whose control plane is down): keep trying, with a
  // growing pause, for as long as the caller runs. Its workloads do not depend on this.
  let pauseMs = 200;
  const pause = async (): Promise<void> => {
    await new Promise((r) => setTimeout(r, pauseMs));
    pauseMs = Math.min(pauseMs * 2, 5_000);
  };
  let from: number | undefined;
  while (!signal.aborted && from === undefined) {
    try {
      from = await store.revision();
    } catch (err) {
      if (signal.aborted) return;
      log.warn({ prefix, err }, 'store unreachable; retrying');
      await pause();
    }
  }
  while (!signal.aborted) {
    try {
      for await (const e of store.watch<T>(prefix, from ?? 0, signal)) {
        from = e.revision;
        pauseMs = 200;
        onEvent(e);
      }
      // A stream that ended without an error (a remote store's connection closed): resume.
      if (!signal.aborted) await pause();
    } catch (err) {
      if (signal.aborted) return;
      log.warn({ prefix, err }, 'watch broke; re-listing');
      await pause();
      try {
        const l = await store.list<T>(prefix);
        from = l.revision;
        // Without a re-list handler, replay the current state as puts: callers are level-based.
        if (onRelist) onRelist(l.items);
        else for (const it of l.items) onEvent({ type: 'put', key: it.key, value: it.value, revision: l.revision });
      } catch (err2) {
        log.warn({ prefix, err: err2 }, 're-list failed');
      }
    }
  }
}
