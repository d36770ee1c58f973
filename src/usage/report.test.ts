/**
 * A deterministic run with known allocations and samples; every expected figure below is
 * computed by hand in the comments (core-seconds and MiB-seconds), then scaled to the exact units.
 */
import { describe, expect, it } from 'vitest';
import { formatReport, report, totalRow, type AllocationInterval, type ReportRow, type UsageSample, type UsageSubject } from './index.js';

const T0 = Date.parse('2024-01-01T00:00:00.000Z');
const at = (s: number): string => new Date(T0 + s * 1000).toISOString();
/** core-seconds to CPU-microseconds. */
const cs = (n: number): bigint => BigInt(n) * 1_000_000n;
/** MiB-seconds to byte-milliseconds. */
const mibs = (n: number): bigint => BigInt(n) * 1_048_576n * 1000n;
const MiB = 1_048_576;

const c1: UsageSubject = { kind: 'cell', tenant: 'acme', group: 'web', name: 'c1', uid: 'u-c1' };
const i1: UsageSubject = { kind: 'instance', tenant: 'acme', group: 'web', cell: 'c1', name: 'web-0', uid: 'u-i1' };
const i2: UsageSubject = { kind: 'instance', tenant: 'acme', group: 'web', cell: 'c1', name: 'web-1', uid: 'u-i2' };
const h1: UsageSubject = { kind: 'instance', tenant: 'acme', group: 'batch', name: 'etl-0', uid: 'u-h1' };
const m1: UsageSubject = { kind: 'machine', tenant: 'acme', name: 'legacy', uid: 'u-m1' };
const w1warm: UsageSubject = { kind: 'cell', tenant: '', group: '', name: 'w1', uid: 'u-w1' };
const w1beta: UsageSubject = { kind: 'cell', tenant: 'beta', group: 'default', name: 'w1', uid: 'u-w1' };
const j1: UsageSubject = { kind: 'instance', tenant: 'beta', group: 'default', cell: 'w1', name: 'job-0', uid: 'u-j1' };
const c3: UsageSubject = { kind: 'cell', tenant: 'acme', group: 'web', name: 'c3', uid: 'u-c3' };

const intervals: AllocationInterval[] = [
  // 2 cores, 1 GiB; in window [0, 1800): 3600 core-s, 1,843,200 MiB-s.
  { id: 'r1', subject: c1, cpu: 2, memoryMiB: 1024, start: at(-600), end: at(1800) },
  // [60, 1800) = 1740 s: 870 core-s, 445,440 MiB-s.
  { id: 'r2', subject: i1, cpu: 0.5, memoryMiB: 256, start: at(60), end: at(1800) },
  // [0, 900) = 900 s: 225 core-s, 115,200 MiB-s.
  { id: 'r3', subject: i2, cpu: 0.25, memoryMiB: 128, start: at(0), end: at(900) },
  // Open, counted to now = 3000: [1200, 3000) = 1800 s: 1800 core-s, 921,600 MiB-s.
  { id: 'r4', subject: h1, cpu: 1, memoryMiB: 512, start: at(1200) },
  // Open: [2400, 3000) = 600 s: 600 core-s, 153,600 MiB-s.
  { id: 'r5', subject: m1, cpu: 1, memoryMiB: 256, start: at(2400) },
  // Warm, then assigned to beta: [0, 100) = 100 s for tenant '': 100 core-s, 51,200 MiB-s.
  { id: 'r6', subject: w1warm, cpu: 1, memoryMiB: 512, start: at(-100), end: at(100) },
  // [100, 700) = 600 s: 600 core-s, 307,200 MiB-s.
  { id: 'r7', subject: w1beta, cpu: 1, memoryMiB: 512, start: at(100), end: at(700) },
  // Same: 600 core-s, 307,200 MiB-s.
  { id: 'r8', subject: j1, cpu: 1, memoryMiB: 512, start: at(100), end: at(700) },
  // Ends exactly at since: nothing.
  { id: 'r9', subject: c3, cpu: 8, memoryMiB: 8192, start: at(-1000), end: at(0) },
];

const s = (subject: UsageSubject, t: number, cpu: number, memMiB: number, source?: string): UsageSample => ({ subject, time: T0 + t * 1000, cpuSecondsTotal: cpu, memoryBytes: memMiB * MiB, ...(source ? { source } : {}) });

const samples: UsageSample[] = [
  // QEMU of c1. CPU: 100 -> 104 over [-10, 10): 2 s fall in the window; then +6; then the
  // source changes (QEMU restarted): +3. Total 11 core-s.
  // Memory: 100 MiB over [0, 10) = 1000; 200 MiB over [10, 40) = 6000; 0; 100 MiB held 60 s
  // (max gap) = 6000. Total 13,000 MiB-s.
  s(c1, -10, 100, 100, 'a'),
  s(c1, 10, 104, 200, 'a'),
  s(c1, 40, 110, 0, 'a'),
  s(c1, 70, 3, 100, 'b'),
  // Host container h1: baseline 0, +5, counter went down (restart) to 2: +2, then +2. 9 core-s.
  // Memory 1 MiB held 10 + 10 + 10 + 60 s = 90 MiB-s.
  s(h1, 1200, 0, 1),
  s(h1, 1210, 5, 1),
  s(h1, 1220, 2, 1),
  s(h1, 1230, 4, 1),
  // After the window: nothing.
  s(j1, 4000, 0, 64),
  s(j1, 4010, 9, 64),
];

const input = { intervals, samples, since: T0, until: T0 + 3600_000, now: T0 + 3000_000 };

function row(rows: ReportRow[], tenant: string, group?: string, cell?: string): ReportRow {
  const r = rows.find((x) => x.tenant === tenant && x.group === group && x.cell === cell);
  if (!r) throw new Error(`no row ${tenant}/${group}/${cell}`);
  return r;
}

describe('report on a known scenario', () => {
  it('gives the hand-computed figures per tenant', () => {
    const rows = report({ ...input, by: 'tenant' });
    expect(rows.map((r) => r.tenant)).toEqual(['', 'acme', 'beta']);
    const acme = row(rows, 'acme');
    expect(acme.reserved.cells).toEqual({ cpuUs: cs(3600), memByteMs: mibs(1_843_200) });
    expect(acme.reserved.cellInstances).toEqual({ cpuUs: cs(870 + 225), memByteMs: mibs(445_440 + 115_200) });
    expect(acme.reserved.hostInstances).toEqual({ cpuUs: cs(1800), memByteMs: mibs(921_600) });
    expect(acme.reserved.machines).toEqual({ cpuUs: cs(600), memByteMs: mibs(153_600) });
    expect(acme.charged).toEqual({ cpuUs: cs(6000), memByteMs: mibs(2_918_400) });
    expect(acme.measured.cells).toEqual({ cpuUs: cs(11), memByteMs: mibs(13_000) });
    expect(acme.measured.hostInstances).toEqual({ cpuUs: cs(9), memByteMs: mibs(90) });
    expect(acme.used).toEqual({ cpuUs: cs(20), memByteMs: mibs(13_090) });
    const warm = row(rows, '');
    expect(warm.charged).toEqual({ cpuUs: cs(100), memByteMs: mibs(51_200) });
    const beta = row(rows, 'beta');
    expect(beta.reserved.cells).toEqual({ cpuUs: cs(600), memByteMs: mibs(307_200) });
    expect(beta.reserved.cellInstances).toEqual({ cpuUs: cs(600), memByteMs: mibs(307_200) });
    expect(beta.charged).toEqual({ cpuUs: cs(600), memByteMs: mibs(307_200) });
    expect(beta.used).toEqual({ cpuUs: 0n, memByteMs: 0n });
  });

  it('splits by group and cell with the same totals', () => {
    const byGroup = report({ ...input, by: 'group' });
    expect(byGroup.map((r) => `${r.tenant}/${r.group}`)).toEqual(['/', 'acme/', 'acme/batch', 'acme/web', 'beta/default']);
    expect(row(byGroup, 'acme', 'web').charged).toEqual({ cpuUs: cs(3600), memByteMs: mibs(1_843_200) });
    expect(row(byGroup, 'acme', 'web').reserved.cellInstances.cpuUs).toBe(cs(1095));
    expect(row(byGroup, 'acme', '').reserved.machines.cpuUs).toBe(cs(600));
    const byCell = report({ ...input, by: 'cell' });
    expect(byCell.map((r) => `${r.tenant}/${r.group}/${r.cell}`)).toEqual(['//w1', 'acme//', 'acme/batch/', 'acme/web/c1', 'beta/default/w1']);
    expect(row(byCell, 'acme', 'web', 'c1').used).toEqual({ cpuUs: cs(11), memByteMs: mibs(13_000) });
    const t = (by: 'tenant' | 'group' | 'cell'): ReportRow => totalRow(report({ ...input, by }));
    expect(t('cell')).toEqual(t('tenant'));
    expect(t('group')).toEqual(t('tenant'));
  });

  it('shows a tenant only its own rows', () => {
    const rows = report({ ...input, by: 'cell', tenant: 'beta' });
    expect(rows.map((r) => r.tenant)).toEqual(['beta']);
    expect(rows[0]!.charged.cpuUs).toBe(cs(600));
  });

  it('defaults now to until', () => {
    // h1 and m1 run on to 3600: +600 s each.
    const rows = report({ ...input, now: undefined, by: 'tenant' });
    expect(row(rows, 'acme').charged.cpuUs).toBe(cs(6000 + 600 + 600));
  });

  it('formats csv with exact core-seconds', () => {
    const csv = formatReport(report({ ...input, by: 'tenant' }), 'csv').split('\n');
    expect(csv[0]!.split(',').slice(0, 7)).toEqual(['tenant', 'group', 'cell', 'charged_cpu_s', 'charged_mem_mib_s', 'used_cpu_s', 'used_mem_mib_s']);
    expect(csv[2]!.split(',').slice(0, 7)).toEqual(['acme', '', '', '6000.000000', '2918400.000', '20.000000', '13090.000']);
    expect(csv).toHaveLength(5); // header, 3 rows, trailing newline
  });

  it('formats json with exact integers as strings', () => {
    const json = JSON.parse(formatReport(report({ ...input, by: 'group' }), 'json'));
    const web = json.rows.find((r: any) => r.tenant === 'acme' && r.group === 'web');
    expect(web.charged).toEqual({ cpuUs: cs(3600).toString(), memByteMs: mibs(1_843_200).toString() });
    expect(web.reserved.cellInstances.cpuUs).toBe('1095000000');
  });

  it('formats an aligned table with - for empty keys', () => {
    const table = formatReport(report({ ...input, by: 'cell' }), 'table').trimEnd().split('\n');
    expect(table[0]).toMatch(/^TENANT\s+GROUP\s+CELL\s+CHARGED CPU-S\s+CHARGED MIB-S\s+USED CPU-S\s+USED MIB-S\s+CELLS CPU-S\s+CELLS MIB-S\s+IN-CELLS CPU-S\s+IN-CELLS MIB-S$/);
    expect(table[1]).toMatch(/^-\s+-\s+w1\s+100\.000\s+51200\.0\s/);
    expect(table[4]).toMatch(/^acme\s+web\s+c1\s+3600\.000\s+1843200\.0\s+11\.000\s+13000\.0\s+3600\.000\s+1843200\.0\s+1095\.000\s+560640\.0$/);
    // Right-aligned last column: every line has the same length.
    expect(new Set(table.map((l) => l.length)).size).toBe(1);
    const byTenant = formatReport(report({ ...input, by: 'tenant' }), 'table');
    expect(byTenant).not.toMatch(/GROUP/);
  });
});
