/**
 * Export formats and filters for audit records. Pure: records in, text out. A tenant filter
 * keeps only records whose actor or target belongs to that tenant, so a tenant's export
 * never shows another tenant's activity.
 */
import { canonicalJson } from './canonical.js';
import type { AuditRecord } from './record.js';

/** Which records to export. Times are ISO 8601; `since` is inclusive, `until` exclusive. */
export interface ExportFilter {
  since?: string;
  until?: string;
  /** Only records where actor.tenant or target.tenant is this tenant. */
  tenant?: string;
}

/** Export options: a filter plus the output format. */
export interface ExportOptions extends ExportFilter {
  format: 'jsonl' | 'csv';
}

function parseTime(t: string, what: string): number {
  const ms = Date.parse(t);
  if (Number.isNaN(ms)) throw new TypeError(`export ${what} must be an ISO 8601 time`);
  return ms;
}

/** A predicate for `filter`; validates the times once. Throws a TypeError for an unparseable time. */
export function recordFilter(filter: ExportFilter): (r: AuditRecord) => boolean {
  const since = filter.since !== undefined ? parseTime(filter.since, 'since') : undefined;
  const until = filter.until !== undefined ? parseTime(filter.until, 'until') : undefined;
  const tenant = filter.tenant;
  return (r) => {
    if (tenant !== undefined && r.actor?.tenant !== tenant && r.target?.tenant !== tenant) return false;
    if (since === undefined && until === undefined) return true;
    const t = Date.parse(r.time);
    if (since !== undefined && !(t >= since)) return false;
    if (until !== undefined && !(t < until)) return false;
    return true;
  };
}

/** One JSON Lines line (no trailing newline): the record's canonical JSON, hash included, so each line can be re-verified. */
export function toJsonLine(r: AuditRecord): string {
  return canonicalJson(r);
}

/** The CSV columns, in order; `detail` is the canonical JSON of the detail object. */
export const CSV_COLUMNS = [
  'seq', 'time', 'actor_kind', 'actor_id', 'actor_tenant', 'source', 'action',
  'target_kind', 'target_tenant', 'target_name', 'outcome', 'detail', 'prev_hash', 'hash',
] as const;

/**
 * Quote one CSV field per RFC 4180: fields holding a comma, quote, CR or LF are wrapped in
 * double quotes with inner quotes doubled; others are written as is. A field that a
 * spreadsheet would run as a formula (starting with = + - @, tab or CR; e.g. a name a caller
 * put in a refused request's URL) gets a leading `'` (OWASP's CSV-injection advice): CSV is
 * for people and spreadsheets; JSONL is the exact, verifiable form.
 */
export function csvField(v: string): string {
  const safe = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

/** The CSV header line (no line ending). */
export function csvHeader(): string {
  return CSV_COLUMNS.join(',');
}

/** One CSV data line (no line ending); absent optional fields are empty. */
export function toCsvLine(r: AuditRecord): string {
  const cells = [
    String(r.seq), r.time, r.actor.kind, r.actor.id, r.actor.tenant ?? '', r.source ?? '', r.action,
    r.target.kind, r.target.tenant ?? '', r.target.name, r.outcome,
    r.detail !== undefined ? canonicalJson(r.detail) : '', r.prevHash, r.hash,
  ];
  return cells.map(csvField).join(',');
}

/**
 * The export as lines, each ending in a line ending (`\n` for JSONL, `\r\n` for CSV as RFC
 * 4180 asks); CSV starts with the header even when no record matches.
 */
export function* exportLines(records: Iterable<AuditRecord>, opts: ExportOptions): Generator<string> {
  const keep = recordFilter(opts);
  if (opts.format === 'csv') {
    yield csvHeader() + '\r\n';
    for (const r of records) if (keep(r)) yield toCsvLine(r) + '\r\n';
  } else if (opts.format === 'jsonl') {
    for (const r of records) if (keep(r)) yield toJsonLine(r) + '\n';
  } else {
    throw new TypeError(`unknown export format ${String(opts.format)}`);
  }
}

/** The whole export as one string. */
export function formatExport(records: Iterable<AuditRecord>, opts: ExportOptions): string {
  return Array.from(exportLines(records, opts)).join('');
}
