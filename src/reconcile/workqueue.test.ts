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
    for (let i = 0; i < 20; i++) q.add('a');
    q.add('b');
    await new Promise((r) => setTimeout(r, 30));
    q.add('a'); // added after its run: runs again
    await new Promise((r) => setTimeout(r, 30));
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
    await new Promise((r) => setTimeout(r, 100));
    ac.abort();
    await done;
    expect(calls).toBe(3);
    expect(errors).toEqual([1, 2]);
  });

  it('honours requeueAfter', async () => {
    let calls = 0;
    const q = new WorkQueue(async () => {
      calls++;
      return calls === 1 ? { requeueAfterMs: 20 } : undefined;
    });
    const ac = new AbortController();
    const done = q.start(ac.signal, 1);
    q.add('k');
    await new Promise((r) => setTimeout(r, 10));
    expect(calls).toBe(1);
    await new Promise((r) => setTimeout(r, 40));
    ac.abort();
    await done;
    expect(calls).toBe(2);
  });
});
