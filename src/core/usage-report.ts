/**
 * Builds a usage report from what the store holds: allocation records (closed ones under
 * `usage/intervals/`, open ones under `usage/open/`, written with every state change by
 * core/allocations.ts) and the hosts' sample batches (`usage/samples/<day>/`, written by
 * agent/usage-sampler.ts). The arithmetic is src/usage's (exact integers). Reads only.
 */
import { CarapaceError } from '../model/errors.js';
import type { Store } from '../store/store.js';
import { parseInterval } from '../usage/intervals.js';
import { DEFAULT_MAX_GAP_MS, report, type ReportBy, type ReportRow } from '../usage/index.js';
import type { AllocationInterval, UsageSample } from '../usage/types.js';
import type { SampleBatch } from '../usage/samples.js';
import { INTERVALS_PREFIX, OPEN_PREFIX, sampleDayPrefixes } from '../model/keys.js';

export interface UsageQuery {
  /** Window [since, until) in epoch ms. */
  since: number;
  until: number;
  /** Open allocations count up to now. */
  now: number;
  by: ReportBy;
  /** Only this tenant's usage (forced for tenant tokens). */
  tenant?: string;
}

/** Longest window a report may span (a year): bounds the work one request can cause. */
const MAX_WINDOW_MS = 366 * 86_400_000;

/** Loads the records a window needs and computes its report. */
export async function usageReport(store: Store, q: UsageQuery): Promise<ReportRow[]> {
  if (!(q.until > q.since)) throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'until must be after since', [{ path: 'query.until', message: 'must be after since' }]);
  if (q.until - q.since > MAX_WINDOW_MS) throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'a usage report spans at most 366 days', [{ path: 'query.since', message: 'window longer than 366 days' }]);
  const [closed, open] = await Promise.all([store.list<unknown>(INTERVALS_PREFIX), store.list<unknown>(OPEN_PREFIX)]);
  const intervals: AllocationInterval[] = [];
  for (const e of [...closed.items, ...open.items]) {
    const r = parseInterval(e.value);
    if (q.tenant !== undefined && r.subject.tenant !== q.tenant) continue;
    if (r.end !== undefined && Date.parse(r.end) <= q.since) continue;
    if (Date.parse(r.start) >= q.until) continue;
    intervals.push(r);
  }
  // CPU counters need the sample before the window as a baseline: read a day earlier too.
  const to = Math.min(q.until, q.now) + DEFAULT_MAX_GAP_MS;
  const samples: UsageSample[] = [];
  for (const prefix of sampleDayPrefixes(q.since - 86_400_000, to)) {
    for (const e of (await store.list<SampleBatch>(prefix)).items) {
      for (const s of e.value.samples) if (q.tenant === undefined || s.subject.tenant === q.tenant) samples.push(s);
    }
  }
  return report({ intervals, samples, since: q.since, until: q.until, now: q.now, by: q.by, ...(q.tenant !== undefined ? { tenant: q.tenant } : {}) });
}
