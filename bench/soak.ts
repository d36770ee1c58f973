/**
 * `npm run soak`: the reliability suite (test/reliability) at soak sizes, one part after the
 * other, with progress on stderr and one final JSON line on stdout:
 *
 * - crash consistency: 20 rounds of 500 operations with a kill -9 each, on SQLite (`carapace
 *   up`) and on etcd (`carapace server` + `carapace agent`; the victim is the server, the
 *   agent or the etcd member); lost writes, versions gone backwards, duplicates and orphans;
 * - a checked history on each store with servers and the etcd member killed meanwhile;
 * - fuzzing: 100,000 API cases and the parser, the cell protocol and the agent join path;
 * - load: 1,000 event-stream watchers and 100 writes/s for 5 minutes (after a minute's warm-up);
 * - security probes in a container of each isolation tier.
 *
 * Final line: {"bench":"soak","crash_rounds","lost_writes","duplicates","history_ops",
 * "history_violations","fuzz_cases","fuzz_failures","watchers","write_p99_ms",
 * "mem_growth_pct","probe_failures", …details}. A part that could not run is reported in
 * `part_errors` and its figures are null. Targets: zero everywhere; p99 within 100 ms and
 * memory growth within 10% over the load run.
 */
import { loadavg } from 'node:os';
import { runCrashConsistency, type CrashResult } from '../test/reliability/crash.js';
import { runFuzz, type FuzzResult } from '../test/reliability/fuzz-suite.js';
import { runCheckedHistory, type HistoryResult } from '../test/reliability/history.js';
import { runLoad, type LoadResult } from '../test/reliability/load.js';
import { runProbes, type ProbeResult } from '../test/reliability/probes.js';
import { SOAK } from '../test/reliability/sizes.js';

const log = (s: string): boolean => process.stderr.write(`${s}\n`);
const started = Date.now();
const partErrors: string[] = [];

async function part<T>(name: string, f: () => Promise<T>): Promise<T | undefined> {
  const t0 = Date.now();
  log(`soak: ${name} …`);
  try {
    const r = await f();
    log(`soak: ${name} done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    return r;
  } catch (e) {
    log(`soak: ${name} could not run: ${(e as Error).stack ?? String(e)}`);
    partErrors.push(`${name}: ${(e as Error).message.split('\n')[0] ?? ''}`);
    return undefined;
  }
}

const sum = <T>(xs: (T | undefined)[], f: (x: T) => number): number | null => (xs.every((x) => x !== undefined) ? xs.reduce((a, x) => a + f(x as T), 0) : null);
const list = (title: string, xs: string[]): void => {
  for (const x of xs.slice(0, 20)) log(`soak: ${title}: ${x}`);
};

const crash: (CrashResult | undefined)[] = [];
for (const store of ['sqlite', 'etcd'] as const) crash.push(await part(`crash consistency (${store})`, () => runCrashConsistency({ store, ...SOAK.crash, seed: store === 'sqlite' ? 1701 : 1702, convergeTimeoutMs: 600_000, log })));
const history: (HistoryResult | undefined)[] = [];
for (const store of ['sqlite', 'etcd'] as const) history.push(await part(`checked history (${store})`, () => runCheckedHistory({ store, ...SOAK.history, seed: store === 'sqlite' ? 2701 : 2702, log })));
const fuzz: FuzzResult | undefined = await part('fuzzing', () => runFuzz(SOAK.fuzz, 3701, log));
const load: LoadResult | undefined = await part('load', () => runLoad({ ...SOAK.load, log }));
const probes: ProbeResult | undefined = await part('security probes', () => runProbes({ log }));

for (const c of crash) {
  if (!c) continue;
  list(`crash ${c.store} lost write`, c.lostWrites);
  list(`crash ${c.store} version regression`, c.versionRegressions);
  list(`crash ${c.store} duplicate`, c.duplicates);
  list(`crash ${c.store} orphan`, c.orphans);
  list(`crash ${c.store} unexpected`, c.unexpected);
}
for (const h of history) if (h) list(`history ${h.store} violation`, h.violations);
if (fuzz) for (const [name, p] of Object.entries(fuzz.parts)) list(`fuzz ${name} failure`, p.examples);
if (probes) for (const t of probes.tiers) list(`probe ${t.tier} failure`, t.failures);

const result = {
  bench: 'soak',
  crash_rounds: sum(crash, (c) => c.kills.length),
  lost_writes: sum(crash, (c) => c.lostWrites.length),
  duplicates: sum(crash, (c) => c.duplicates.length + c.orphans.length),
  history_ops: sum(history, (h) => h.ops),
  history_violations: sum(history, (h) => h.violations.length),
  fuzz_cases: fuzz?.cases ?? null,
  fuzz_failures: fuzz?.failures ?? null,
  watchers: load?.watchersAlive ?? null,
  write_p99_ms: load?.writeP99Ms ?? null,
  mem_growth_pct: load?.memGrowthPct ?? null,
  probe_failures: probes?.failures ?? null,
  // Details behind the figures.
  crash_ops: sum(crash, (c) => c.ops),
  crash_acked: sum(crash, (c) => c.acked),
  crash_cut_by_kills: sum(crash, (c) => c.unknown),
  version_regressions: sum(crash, (c) => c.versionRegressions.length),
  orphans: sum(crash, (c) => c.orphans.length),
  crash_unexpected: sum(crash, (c) => c.unexpected.length),
  crash_converge_s: crash.map((c) => (c ? Math.round(c.convergeMs / 100) / 10 : null)),
  history_unknown_outcomes: sum(history, (h) => h.unknown),
  history_faults: sum(history, (h) => h.faults.length),
  fuzz_api_cases: fuzz?.parts['api']?.cases ?? null,
  write_p50_ms: load?.writeP50Ms ?? null,
  writes: load?.writes ?? null,
  write_errors: load?.writeErrors ?? null,
  watcher_errors: load?.watcherErrors ?? null,
  events: load?.events ?? null,
  rss_mib: load ? [load.rssStartMiB, load.rssEndMiB] : null,
  mem_growth_second_half_pct: load?.memGrowthSecondHalfPct ?? null,
  heap_mib: load ? [load.heapStartMiB, load.heapEndMiB] : null,
  heap_growth_pct: load?.heapGrowthPct ?? null,
  rss_peak_mib: load?.rssPeakMiB ?? null,
  probe_checks: probes?.checks ?? null,
  part_errors: partErrors,
  load_1m_at_end: Math.round((loadavg()[0] ?? 0) * 100) / 100,
  minutes: Math.round((Date.now() - started) / 6_000) / 10,
};
process.stdout.write(`${JSON.stringify(result)}\n`);
