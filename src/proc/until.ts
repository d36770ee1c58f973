/**
 * Waiting for a condition with a deadline, the one way tests, benchmarks and tools wait for
 * what another process does (never a fixed sleep followed by a check).
 */
import { sleep } from './sleep.js';

/**
 * Calls `f` every `pollMs` until it resolves to something other than undefined, and returns
 * that. A call that throws counts as "not yet" (the thing waited for may not exist yet); past
 * `timeoutMs` it throws, naming `what` and the last error seen.
 */
export async function until<T>(what: string, f: () => Promise<T | undefined>, timeoutMs = 60_000, pollMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(pollMs);
  }
}
