/** The measured-usage rules on small hand-checked series. */
import { describe, expect, it } from 'vitest';
import { measuredUsage, type UsageSample, type UsageSubject } from './index.js';

const T = 1_700_000_000_000;
const sub: UsageSubject = { kind: 'instance', tenant: 't', group: 'g', name: 'i', uid: 'u' };
const s = (sec: number, cpu: number, bytes = 0, source?: string): UsageSample => ({ subject: sub, time: T + sec * 1000, cpuSecondsTotal: cpu, memoryBytes: bytes, ...(source ? { source } : {}) });
const win = (a: number, b: number, now = b) => ({ since: T + a * 1000, until: T + b * 1000, now: T + now * 1000 });
const cpu = (samples: UsageSample[], a: number, b: number, now = b): bigint => measuredUsage(samples, win(a, b, now))[0]?.cpuUs ?? 0n;
const mem = (samples: UsageSample[], a: number, b: number, now = b, maxGapMs?: number): bigint =>
  measuredUsage(samples, { ...win(a, b, now), ...(maxGapMs !== undefined ? { maxGapMs } : {}) })[0]?.memByteMs ?? 0n;

describe('measuredUsage', () => {
  it('treats the first sample as a baseline', () => {
    expect(cpu([s(0, 50)], -10, 10)).toBe(0n);
    expect(cpu([s(0, 50), s(10, 51)], -10, 20)).toBe(1_000_000n);
  });

  it('spreads an increment linearly over its gap, even a long one', () => {
    // 100 s of CPU over a 1000 s gap: 10 s in [0, 100), 50 s in [500, 1000).
    const xs = [s(0, 0), s(1000, 100)];
    expect(cpu(xs, 0, 100)).toBe(10_000_000n);
    expect(cpu(xs, 500, 1000)).toBe(50_000_000n);
    expect(cpu(xs, -5000, 5000)).toBe(100_000_000n);
  });

  it('rounds down within a gap but keeps windows additive', () => {
    // 1 us over 3 ms: A(1ms) = 0, A(2ms) = 0, A(3ms) = 1.
    const xs: UsageSample[] = [{ subject: sub, time: T, cpuSecondsTotal: 0, memoryBytes: 0 }, { subject: sub, time: T + 3, cpuSecondsTotal: 0.000001, memoryBytes: 0 }];
    const at = (a: number, b: number): bigint => measuredUsage(xs, { since: T + a, until: T + b, now: T + 10 })[0]?.cpuUs ?? 0n;
    expect([at(0, 1), at(1, 2), at(2, 3)]).toEqual([0n, 0n, 1n]);
    expect(at(0, 3)).toBe(1n);
  });

  it('counts the new value after a counter reset (value went down)', () => {
    expect(cpu([s(0, 10), s(10, 30), s(20, 5), s(30, 7)], -1, 31)).toBe(27_000_000n); // 20 + 5 + 2
  });

  it('counts the new value after a source change even when it is larger', () => {
    expect(cpu([s(0, 10, 0, 'a'), s(10, 30, 0, 'b')], -1, 11)).toBe(30_000_000n);
    expect(cpu([s(0, 10, 0, 'a'), s(10, 30, 0, 'a')], -1, 11)).toBe(20_000_000n);
  });

  it('counts nothing at or after now', () => {
    expect(cpu([s(0, 0), s(100, 100)], 0, 100, 40)).toBe(40_000_000n);
    expect(cpu([s(0, 0), s(100, 100)], 50, 100, 40)).toBe(0n);
  });

  it('integrates memory as steps held until the next sample, at most maxGap, never past now', () => {
    const xs = [s(0, 0, 100), s(10, 0, 300), s(200, 0, 50)];
    // 100 B x 10 s + 300 B x 60 s (gap capped) + 50 B x 60 s (last sample) = 1000 + 18000 + 3000 byte-s.
    expect(mem(xs, -100, 1000, 1000)).toBe(22_000_000n);
    // A longer max gap covers the whole 190 s gap.
    expect(mem(xs, -100, 1000, 1000, 500_000)).toBe((1000n + 300n * 190n + 50n * 500n) * 1000n);
    // now = 5 s: only the first 5 s.
    expect(mem(xs, -100, 1000, 5)).toBe(500_000n);
    // Clipped to [5, 15): 100 x 5 + 300 x 5.
    expect(mem(xs, 5, 15, 1000)).toBe(2_000_000n);
  });

  it('accepts samples in any order and never returns a negative figure', () => {
    const xs = [s(30, 7), s(0, 10), s(20, 5), s(10, 30)];
    const got = measuredUsage(xs, win(-1, 31));
    expect(got[0]!.cpuUs).toBe(27_000_000n);
    expect(measuredUsage([s(0, -3), s(10, -1)], win(-1, 11))[0]?.cpuUs ?? 0n).toBe(0n);
  });

  it('rejects a backwards window and fractional times', () => {
    expect(() => measuredUsage([], win(10, 0))).toThrow(RangeError);
    expect(() => measuredUsage([], { since: 0.5, until: 1, now: 1 })).toThrow(/integer/);
  });
});
