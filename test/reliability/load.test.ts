/**
 * Load at CI size: 250 event-stream watchers and 100 writes/s for 30 s against a real
 * `carapace server` (the soak: 1,000 watchers for 5 minutes). Every write answered, every
 * watcher served to the end with every write's audit record at least, write p99 within
 * 100 ms, and the server's memory not growing by more than 10% over the run.
 */
import { describe, expect, it } from 'vitest';
import { runLoad } from './load.js';
import { CI } from './sizes.js';

describe('load', () => {
  it('serves watchers and writes together: no errors, write p99 within 100 ms, memory growth within 10%', async () => {
    const r = await runLoad({ ...CI.load, log: (l) => console.log(l) });
    expect(r.watcherErrors).toBe(0);
    expect(r.watchersAlive).toBe(CI.load.watchers);
    expect(r.writeErrors).toBe(0);
    expect(r.writes).toBe(CI.load.writesPerSec * CI.load.seconds);
    // Half the watchers follow /v1/events: each gets at least every write's audit record.
    expect(r.events).toBeGreaterThanOrEqual((r.writes * CI.load.watchers) / 2);
    expect(r.writeP99Ms).toBeLessThanOrEqual(100);
    expect(r.memGrowthPct).toBeLessThanOrEqual(10);
  }, 180_000);
});
