/**
 * Renders report rows for people and tools. `json` keeps the exact integer units (as decimal
 * strings: byte-milliseconds pass 2^53 within a day of a GiB); `csv` gives core-seconds (exact,
 * 6 decimals) and MiB-seconds (rounded to 3 decimals); `table` the main columns, rounded.
 * Rounding happens here only, never in the sums. Pure.
 */
import { CATEGORIES, type Category, type ReportRow } from './report.js';
import { formatCpuSeconds, formatGiBHours, formatMiBSeconds, type Amount } from './types.js';

/** Output formats of `formatReport`. */
export type ReportFormat = 'table' | 'csv' | 'json';

const CATEGORY_COLUMN: Record<Category, string> = { cells: 'cells', cellInstances: 'cell_instances', hostInstances: 'host_instances', machines: 'machines' };

interface Column {
  name: string;
  /** Header in the table; omitted columns are CSV-only. */
  table?: string;
  value: (r: ReportRow, digits: { cpu: number; mem: number }) => string;
}

function amountColumns(prefix: string, get: (r: ReportRow) => Amount, tableCpu?: string, tableMem?: string): [Column, Column] {
  return [
    { name: `${prefix}_cpu_s`, ...(tableCpu ? { table: tableCpu } : {}), value: (r, d) => formatCpuSeconds(get(r).cpuUs, d.cpu) },
    { name: `${prefix}_mem_mib_s`, ...(tableMem ? { table: tableMem } : {}), value: (r, d) => formatMiBSeconds(get(r).memByteMs, d.mem) },
  ];
}

const TABLE_LABEL: Partial<Record<Category, string>> = { cells: 'CELLS', cellInstances: 'IN-CELLS' };

/** Every column, in CSV order; `table` marks the ones a table shows. */
const COLUMNS: Column[] = [
  { name: 'tenant', table: 'TENANT', value: (r) => r.tenant },
  { name: 'group', table: 'GROUP', value: (r) => r.group ?? '' },
  { name: 'cell', table: 'CELL', value: (r) => r.cell ?? '' },
  ...amountColumns('charged', (r) => r.charged, 'CHARGED CPU-S', 'CHARGED MIB-S'),
  ...amountColumns('used', (r) => r.used, 'USED CPU-S', 'USED MIB-S'),
  ...CATEGORIES.flatMap((c) => amountColumns(`reserved_${CATEGORY_COLUMN[c]}`, (r) => r.reserved[c], TABLE_LABEL[c] && `${TABLE_LABEL[c]} CPU-S`, TABLE_LABEL[c] && `${TABLE_LABEL[c]} MIB-S`)),
  ...CATEGORIES.flatMap((c) => amountColumns(`measured_${CATEGORY_COLUMN[c]}`, (r) => r.measured[c])),
  // Added after the others, so CSV columns keep their positions for existing readers.
  { name: 'storage_gib_h', table: 'STORAGE GIB-H', value: (r, d) => formatGiBHours(r.storageByteMs, d.mem + 2) },
  { name: 'volume', table: 'VOLUME', value: (r) => r.volume ?? '' },
];

function csvField(s: string): string {
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function amountJson(a: Amount): { cpuUs: string; memByteMs: string } {
  return { cpuUs: a.cpuUs.toString(), memByteMs: a.memByteMs.toString() };
}

function categoriesJson(x: Record<Category, Amount>): Record<Category, { cpuUs: string; memByteMs: string }> {
  return { cells: amountJson(x.cells), cellInstances: amountJson(x.cellInstances), hostInstances: amountJson(x.hostInstances), machines: amountJson(x.machines) };
}

/**
 * Renders rows. The table shows only the columns its grouping has (no GROUP/CELL when by
 * tenant, VOLUME only by volume, STORAGE GIB-H when volumes held storage) and '-' for an empty key (warm cells: tenant ''; machines: group ''; host-run: cell '').
 */
export function formatReport(rows: readonly ReportRow[], format: ReportFormat): string {
  if (format === 'json') {
    const out = rows.map((r) => ({
      tenant: r.tenant,
      ...(r.group !== undefined ? { group: r.group } : {}),
      ...(r.cell !== undefined ? { cell: r.cell } : {}),
      ...(r.volume !== undefined ? { volume: r.volume } : {}),
      charged: amountJson(r.charged),
      used: amountJson(r.used),
      reserved: categoriesJson(r.reserved),
      measured: categoriesJson(r.measured),
      storageByteMs: r.storageByteMs.toString(),
    }));
    return `${JSON.stringify({ units: { cpu: 'cpuUs: CPU-microseconds (= millicore-milliseconds)', memory: 'memByteMs: byte-milliseconds', storage: 'storageByteMs: byte-milliseconds of volume size' }, rows: out }, null, 2)}\n`;
  }
  if (format === 'csv') {
    const lines = [COLUMNS.map((c) => c.name).join(',')];
    for (const r of rows) lines.push(COLUMNS.map((c) => csvField(c.value(r, { cpu: 6, mem: 3 }))).join(','));
    return `${lines.join('\n')}\n`;
  }
  const hasGroup = rows.some((r) => r.group !== undefined);
  const hasCell = rows.some((r) => r.cell !== undefined);
  const hasVolume = rows.some((r) => r.volume !== undefined);
  // Storage only when some row holds any (a cluster without volumes keeps its table).
  const hasStorage = hasVolume || rows.some((r) => r.storageByteMs > 0n);
  const cols = COLUMNS.filter(
    (c) => c.table !== undefined && (c.name !== 'group' || hasGroup) && (c.name !== 'cell' || hasCell) && (c.name !== 'volume' || hasVolume) && (c.name !== 'storage_gib_h' || hasStorage),
  );
  const keyCols = new Set(['tenant', 'group', 'cell', 'volume']);
  // Key columns first in a table (VOLUME is last in CSV order).
  cols.sort((a, b) => Number(keyCols.has(b.name)) - Number(keyCols.has(a.name)));
  // Every column here has a table header by the filter above.
  const grid = [cols.map((c) => c.table as string), ...rows.map((r) => cols.map((c) => {
    const v = c.value(r, { cpu: 3, mem: 1 });
    return keyCols.has(c.name) && v === '' ? '-' : v;
  }))];
  // Every line has one entry per column (built from `cols` above).
  const widths = cols.map((_, i) => Math.max(...grid.map((line) => (line[i] as string).length)));
  return `${grid
    .map((line) =>
      line
        .map((v, i) => (keyCols.has((cols[i] as Column).name) ? v.padEnd(widths[i] as number) : v.padStart(widths[i] as number)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n')}\n`;
}
