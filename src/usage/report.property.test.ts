/**
 * Property tests over random intervals, samples and windows: finer groupings add up exactly
 * to coarser ones, adjacent windows add up to their union, clipping is exact, counters with
 * resets are counted by the documented rule, and nothing is ever negative.
 */
import fc from 'fast-check';
import { describe, it } from 'vitest';
import { CATEGORIES, measuredUsage, report, reservedUsage, secondsToCpuUs, totalRow, type AllocationInterval, type Amount, type ReportRow, type UsageSample, type UsageSubject } from './index.js';

const T0 = Date.parse('2024-03-01T00:00:00.000Z');
const SPAN = 100_000; // ms of the simulated timeline

const subjectArb: fc.Arbitrary<UsageSubject> = fc
  .record({
    kind: fc.constantFrom('instance', 'cell', 'machine'),
    tenant: fc.constantFrom('', 'a', 'b'),
    group: fc.constantFrom('g1', 'g2'),
    cell: fc.option(fc.constantFrom('c1', 'c2'), { nil: undefined }),
    n: fc.integer({ min: 0, max: 3 }),
  })
  .map(({ kind, tenant, group, cell, n }) => {
    if (kind === 'machine') return { kind, tenant, name: `m${n}`, uid: `u-m${n}` };
    if (kind === 'cell') return { kind, tenant, group, name: `c${n}`, uid: `u-c${n}` };
    return { kind, tenant, group, ...(cell ? { cell } : {}), name: `i${n}`, uid: `u-i${n}` };
  });

const intervalArb: fc.Arbitrary<AllocationInterval> = fc
  .record({
    subject: subjectArb,
    mcpu: fc.integer({ min: 0, max: 64_000 }),
    memoryMiB: fc.integer({ min: 0, max: 65_536 }),
    start: fc.integer({ min: -SPAN / 4, max: SPAN }),
    len: fc.option(fc.integer({ min: 0, max: SPAN }), { nil: undefined }),
    id: fc.nat(),
  })
  .map(({ subject, mcpu, memoryMiB, start, len, id }) => ({
    id: `r${id}`,
    subject,
    cpu: mcpu / 1000,
    memoryMiB,
    start: new Date(T0 + start).toISOString(),
    ...(len !== undefined ? { end: new Date(T0 + start + len).toISOString() } : {}),
  }));

/** A subject's sample series: counter steps (some resets), a source that sometimes changes. */
const seriesArb: fc.Arbitrary<UsageSample[]> = fc
  .record({
    subject: subjectArb,
    t0: fc.integer({ min: -SPAN / 4, max: SPAN }),
    steps: fc.array(
      fc.record({ dt: fc.integer({ min: 0, max: 20_000 }), inc: fc.double({ min: 0, max: 50, noNaN: true }), reset: fc.boolean(), newSource: fc.boolean(), memMiB: fc.integer({ min: 0, max: 4096 }) }),
      { minLength: 1, maxLength: 12 },
    ),
  })
  .map(({ subject, t0, steps }) => {
    let t = T0 + t0;
    let counter = 0;
    let source = 0;
    return steps.map((st) => {
      t += st.dt;
      if (st.newSource) source++;
      counter = st.reset ? st.inc : counter + st.inc;
      return { subject, time: t, cpuSecondsTotal: counter, memoryBytes: st.memMiB * 1_048_576, source: `s${source}` };
    });
  });

const worldArb = fc.record({ intervals: fc.array(intervalArb, { maxLength: 25 }), series: fc.array(seriesArb, { maxLength: 8 }) });
const timeArb = fc.integer({ min: -SPAN / 2, max: SPAN * 2 }).map((x) => T0 + x);

function sameAmount(a: Amount, b: Amount): boolean {
  return a.cpuUs === b.cpuUs && a.memByteMs === b.memByteMs;
}
function amountsOf(r: ReportRow): Amount[] {
  return [r.charged, r.used, ...CATEGORIES.map((c) => r.reserved[c]), ...CATEGORIES.map((c) => r.measured[c])];
}
function sameRow(a: ReportRow, b: ReportRow): boolean {
  const x = amountsOf(a);
  const y = amountsOf(b);
  return x.every((v, i) => sameAmount(v, y[i] as Amount));
}
function sumOf(rows: ReportRow[]): ReportRow {
  return totalRow(rows);
}

describe('usage report properties', () => {
  it('per-cell rows add up to group rows and to tenant rows exactly; nothing is negative', () => {
    fc.assert(
      fc.property(worldArb, timeArb, timeArb, timeArb, ({ intervals, series }, x, y, now) => {
        const [since, until] = x <= y ? [x, y] : [y, x];
        const samples = series.flat();
        const base = { intervals, samples, since, until, now };
        const byTenant = report({ ...base, by: 'tenant' });
        const byGroup = report({ ...base, by: 'group' });
        const byCell = report({ ...base, by: 'cell' });
        for (const r of [...byTenant, ...byGroup, ...byCell]) for (const a of amountsOf(r)) if (a.cpuUs < 0n || a.memByteMs < 0n) return false;
        for (const t of byTenant) {
          if (!sameRow(t, sumOf(byGroup.filter((g) => g.tenant === t.tenant)))) return false;
          if (!sameRow(t, sumOf(byCell.filter((c) => c.tenant === t.tenant)))) return false;
          // A tenant-filtered report gives that tenant's row unchanged.
          const own = report({ ...base, by: 'tenant', tenant: t.tenant });
          if (own.length !== 1 || !sameRow(own[0] as ReportRow, t)) return false;
        }
        for (const g of byGroup) if (!sameRow(g, sumOf(byCell.filter((c) => c.tenant === g.tenant && c.group === g.group)))) return false;
        return byGroup.every((g) => byTenant.some((t) => t.tenant === g.tenant));
      }),
      { numRuns: 300 },
    );
  });

  it('adjacent windows add up to their union: r[a,b) + r[b,c) = r[a,c)', () => {
    fc.assert(
      fc.property(worldArb, fc.array(timeArb, { minLength: 3, maxLength: 3 }), timeArb, ({ intervals, series }, ts, now) => {
        const [a, b, c] = ts.slice().sort((p, q) => p - q) as [number, number, number];
        const samples = series.flat();
        const run = (since: number, until: number): ReportRow[] => report({ intervals, samples, since, until, now, by: 'cell' });
        const left = run(a, b);
        const right = run(b, c);
        const whole = run(a, c);
        const key = (r: ReportRow): string => `${r.tenant}/${r.group}/${r.cell}`;
        const keys = new Set([...left, ...right, ...whole].map(key));
        for (const k of keys) {
          const l = left.filter((r) => key(r) === k);
          const r = right.filter((x) => key(x) === k);
          const w = whole.filter((x) => key(x) === k);
          if (!sameRow(sumOf([...l, ...r]), sumOf(w))) return false;
        }
        return true;
      }),
      { numRuns: 300 },
    );
  });

  it('clips one interval to the window exactly', () => {
    fc.assert(
      fc.property(intervalArb, timeArb, timeArb, timeArb, (r, x, y, now) => {
        const [since, until] = x <= y ? [x, y] : [y, x];
        const start = Date.parse(r.start);
        const end = r.end === undefined ? now : Date.parse(r.end);
        const ms = Math.max(0, Math.min(end, until, now) - Math.max(start, since));
        const got = reservedUsage([r], { since, until, now });
        const mcpu = BigInt(Math.round(r.cpu * 1000));
        const expected = { cpuUs: mcpu * BigInt(ms), memByteMs: BigInt(r.memoryMiB) * 1_048_576n * BigInt(ms) };
        if (ms === 0) return got.length === 0;
        return got.length === 1 && got[0]!.cpuUs === expected.cpuUs && got[0]!.memByteMs === expected.memByteMs;
      }),
      { numRuns: 500 },
    );
  });

  it('counts counters with resets by the rule: after the first sample, the delta, or the new value after a reset', () => {
    fc.assert(
      fc.property(seriesArb, (samples) => {
        // A window covering every sample counts every increment exactly.
        const first = samples[0]!.time;
        const last = samples[samples.length - 1]!.time;
        const got = measuredUsage(samples, { since: first - 1, until: last + 1, now: last + 1 });
        let expected = 0n;
        for (let i = 1; i < samples.length; i++) {
          const v = secondsToCpuUs(samples[i]!.cpuSecondsTotal);
          const p = secondsToCpuUs(samples[i - 1]!.cpuSecondsTotal);
          expected += samples[i]!.source !== samples[i - 1]!.source || v < p ? v : v - p;
        }
        const cpu = got.length === 0 ? 0n : got[0]!.cpuUs;
        return cpu === expected && cpu >= 0n;
      }),
      { numRuns: 500 },
    );
  });
});
