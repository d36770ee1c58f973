/**
 * The checked history at CI size: concurrent clients against real servers (SQLite; two
 * servers over etcd) with kill -9 of servers and of the etcd member during the run; every
 * call recorded and checked for linearizability against the sequential model. The soak
 * (`npm run soak`) runs the same with more calls and faults.
 */
import { describe, expect, it } from 'vitest';
import { runCheckedHistory } from './history.js';
import { CI } from './sizes.js';

describe('checked history under faults', () => {
  for (const store of ['sqlite', 'etcd'] as const) {
    it(`${store}: every answer is explained by one sequential order that respects real time`, async () => {
      const r = await runCheckedHistory({ store, ...CI.history, seed: store === 'sqlite' ? 9101 : 9102, log: (l) => console.log(l) });
      expect(r.violations).toEqual([]);
      expect(r.internalErrors).toBe(0);
      expect(r.faults).toHaveLength(CI.history.faults);
      expect(r.ops).toBeGreaterThanOrEqual(CI.history.ops * 0.8);
    }, 180_000);
  }
});
