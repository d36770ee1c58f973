/**
 * Crash consistency at CI size: kill -9 during a stream of applies, scales and deletes of
 * real `host` services, for SQLite (`carapace up`) and etcd (`carapace server` and `carapace
 * agent`; the victim is the server, the agent or the etcd member). After every restart no
 * acknowledged write is lost and no version went backwards; at the end nothing runs twice
 * and nothing is left that no object explains. `npm run soak` runs 20 rounds of 500.
 */
import { describe, expect, it } from 'vitest';
import { runCrashConsistency } from './crash.js';
import { CI } from './sizes.js';

describe('crash consistency', () => {
  for (const store of ['sqlite', 'etcd'] as const) {
    it(`${store}: no acknowledged write lost, no version backwards, no duplicate or orphan after kill -9`, async () => {
      const r = await runCrashConsistency({ store, ...CI.crash, seed: store === 'sqlite' ? 7001 : 7002, log: (l) => console.log(l) });
      expect(r.kills).toHaveLength(CI.crash.rounds);
      expect(r.lostWrites).toEqual([]);
      expect(r.versionRegressions).toEqual([]);
      expect(r.duplicates).toEqual([]);
      expect(r.orphans).toEqual([]);
      expect(r.unexpected).toEqual([]);
      expect(r.acked).toBeGreaterThan(CI.crash.rounds * CI.crash.opsPerRound * 0.8);
    }, 400_000);
  }
});
