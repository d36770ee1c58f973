import { describe, expect, it } from 'vitest';
import { WarmRefillGate } from './warm-refill.js';

const t = { settleMs: 5_000, quietMs: 2_000, maxDeferMs: 60_000 };

describe('the warm pool refill waits for a quiet host', () => {
  it('boots at once when nothing was claimed and nothing starts', () => {
    expect(new WarmRefillGate(t).deferMs([], 1_000)).toBe(0);
  });

  it('waits settleMs after it first sees a claim, then for the starts in flight, then quietMs after the last', () => {
    const g = new WarmRefillGate(t);
    expect(g.deferMs(['warm-a'], 10_000)).toBe(5_000);
    g.startBegan();
    g.startBegan();
    expect(g.deferMs(['warm-a'], 16_000)).toBe(1_000); // settled, two starts in flight
    g.startEnded(17_000);
    expect(g.deferMs(['warm-a'], 17_500)).toBe(1_500); // one still in flight, and 2 s of quiet after the first
    g.startEnded(18_000);
    expect(g.deferMs(['warm-a'], 18_500)).toBe(1_500); // quiet for 2 s after the last
    expect(g.deferMs(['warm-a'], 20_000)).toBe(0);
  });

  it('a cell claimed long ago does not hold the pool back', () => {
    const g = new WarmRefillGate(t);
    g.full(['warm-a'], 0);
    expect(g.deferMs(['warm-a'], 30_000)).toBe(0);
    expect(g.deferMs(['warm-a', 'warm-b'], 31_000)).toBe(5_000); // a new claim
  });

  it('never defers more than maxDeferMs in all, however busy the host', () => {
    const g = new WarmRefillGate(t);
    g.startBegan();
    expect(g.deferMs([], 0)).toBe(1_000);
    expect(g.deferMs([], 59_500)).toBe(500);
    expect(g.deferMs([], 60_000)).toBe(0);
    // The next shortage waits again.
    expect(g.deferMs([], 61_000)).toBe(1_000);
  });

  it('a full pool ends the wait: the next shortage starts its own', () => {
    const g = new WarmRefillGate(t);
    g.startBegan();
    expect(g.deferMs([], 0)).toBe(1_000);
    g.full([], 50_000);
    expect(g.deferMs([], 70_000)).toBe(1_000);
  });
});
