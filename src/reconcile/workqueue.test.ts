import { describe, expect, it } from 'vitest';
import { WorkQueue } from './workqueue.js';

describe('WorkQueue', () => {
  it('coalesces repeated adds and never runs one key twice at once', async () => {
    const running = new Set<string>();
    let overlaps = 0;
    const runs: string[] = [];
    const q = new WorkQueue(async (key) => {
      if (running.has(key)) overlaps++;
      running.add(key);
      await new Promise((r) => setTimeout(r, 5));
      runs.push(key);
      running.delete(key);
    });
    const ac = new AbortController();
    const done = q.start(ac.signal, 4);
    const count = (k: string): number => runs.filter((r) => r === k).length;
    // Idle: nothing queued and no reconcile in flight (checked between timer ticks, where the
    // queue's own microtask hand-offs are complete).
    const idle = (): boolean => q.pending === 0 && running.size === 0;
    for (let i = 0; i < 20; i++) q.add('a');
    q.add('b');
    await expect.poll(() => count('a') > 0 && count('b') > 0 && idle(), { timeout: 10_000, interval: 5 }).toBe(true);
    const before = count('a');
    q.add('a'); // added after its run: runs again
    await expect.poll(() => count('a') === before + 1 && idle(), { timeout: 10_000, interval: 5 }).toBe(true);
    ac.abort();
    await done;
    expect(overlaps).toBe(0);
    expect(runs.filter((k) => k === 'b')).toHaveLength(1);
    expect(runs.filter((k) => k === 'a').length).toBeGreaterThanOrEqual(2);
    expect(runs.filter((k) => k === 'a').length).toBeLessThanOrEqual(3);
  });

  it('retries a failing key with backoff until it succeeds', async () => {
    let calls = 0;
    const errors: number[] = [];
    const q = new WorkQueue(
      async () => {
        calls++;
        if (calls < 3) throw new Error('boom');
      },
      { baseDelayMs: 5, onError: (_k, _e, n) => errors.push(n) },
    );
    const ac = new AbortController();
    const done = q.start(ac.signal, 1);
    q.add('k');
    await expect.poll(() => calls === 3 && q.pending === 0, { timeout: 10_000, interval: 5 }).toBe(true);
    ac.abort();
    await done;
    expect(calls).toBe(3);
    expect(errors).toEqual([1, 2]);
  });

  it('honours requeueAfter', async () => {
    const at: number[] = [];
    const q = new WorkQueue(async () => {
      at.push(performance.now());
      return at.length === 1 ? { requeueAfterMs: 20 } : undefined;
    });
    const ac = new AbortController();
    const done = q.start(ac.signal, 1);
    q.add('k');
    await expect.poll(() => at.length, { timeout: 10_000, interval: 5 }).toBe(2);
    ac.abort();
    await done;
    expect(at).toHaveLength(2);
    // Not before the delay (a timer may fire up to a millisecond early by the clock's rounding).
    expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(19);
  });
});
