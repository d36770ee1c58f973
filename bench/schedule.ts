/**
 * Scheduler benchmark: `npm run build && npm run bench -- schedule [--hosts N] [--tenants N]
 * [--instances N] [--batch N] [--seed N]`. Generates a simulated cluster (src/sim), then:
 *  1. incremental: fills a cluster to 150,000 instances, then places a new 10-replica service
 *     1,000 times, timing each plan (p99);
 *  2. full: places the whole workload in arrival-order batches (best-fit decreasing inside a
 *     batch) and measures placements/s, cells against the lower bound, hosts used;
 *  3. baseline: the same workload by plain first-fit in arrival order.
 * Progress goes to stderr; the last stdout line is one JSON object.
 */
import { ClusterState } from '../src/scheduler/state.js';
import { firstFit } from '../src/scheduler/baseline.js';
import type { InstanceRequest, Plan } from '../src/scheduler/types.js';
import { cellsLowerBound, generateCluster, instancesOf, rng, type SimService } from '../src/sim/sim.js';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : NaN;
  return Number.isFinite(v) ? v : dflt;
}

const seed = arg('seed', 42);
const hosts = arg('hosts', 10_000);
const tenants = arg('tenants', 1_000);
const total = arg('instances', 1_000_000);
const batch = arg('batch', 50_000);
const incrementalAt = Math.min(arg('incremental-at', 150_000), total);
const incrementalRuns = arg('incremental-runs', 1_000);

let rssPeak = 0;
function sampleRss(): void {
  // memoryUsage sampled between batches (the work is synchronous, a timer rarely fires), and the
  // kernel's own high-water mark (maxRSS, KiB), which catches peaks between samples.
  rssPeak = Math.max(rssPeak, process.memoryUsage.rss(), process.resourceUsage().maxRSS * 1024);
}
const timer = setInterval(sampleRss, 50);
timer.unref();

function log(msg: string): void {
  process.stderr.write(`[bench schedule] ${msg}\n`);
}

function ids(): () => string {
  let n = 0;
  return () => `cell-${(n++).toString(36)}`;
}

/** Yields the services' instances as arrival-order batches of about `size` instances. */
function* batches(services: SimService[], size: number, limit: number): Generator<InstanceRequest[]> {
  let cur: InstanceRequest[] = [];
  let count = 0;
  for (const s of services) {
    if (count >= limit) break;
    const inst = instancesOf(s).slice(0, limit - count);
    count += inst.length;
    for (const i of inst) cur.push(i);
    if (cur.length >= size) {
      yield cur;
      cur = [];
    }
  }
  if (cur.length > 0) yield cur;
}

const t0 = performance.now();
const sim = generateCluster({ seed, hosts, tenants, instances: total });
log(`generated ${sim.snapshot.hosts.length} hosts, ${tenants} tenants, ${sim.services.length} services, ${sim.instances} instances in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
sampleRss();

// 1. Incremental placement into a cluster at 150,000 instances.
function incrementalPhase(): { p50: number; p99: number; max: number; unplaced: number } {
  const state = ClusterState.fromSnapshot(sim.snapshot);
  const newId = ids();
  for (const b of batches(sim.services, batch, incrementalAt)) state.schedule({ place: b }, { now: 0, newId });
  sampleRss();
  log(`incremental: cluster at ${state.instanceCount} instances, ${state.cellCount} cells; placing ${incrementalRuns} new 10-replica services`);
  const r = rng(seed + 1);
  const times: number[] = [];
  let unplaced = 0;
  for (let k = 0; k < incrementalRuns; k++) {
    const tenant = `t${Math.floor(r() * tenants)}`;
    const spread = k % 2 === 0 ? 'required' : 'preferred';
    const place: InstanceRequest[] = [];
    for (let i = 0; i < 10; i++) place.push({ id: `${tenant}/inc${k}-${i}`, tenant, group: 'g0', service: `inc${k}`, isolation: 'cell', cpu: 0.25, memoryMiB: 256, spread });
    const s = performance.now();
    const plan: Plan = state.schedule({ place }, { now: k, newId });
    times.push(performance.now() - s);
    unplaced += plan.unplaced.length;
  }
  times.sort((a, b) => a - b);
  const p = (q: number): number => times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? NaN;
  const res = { p50: p(0.5), p99: p(0.99), max: times[times.length - 1] ?? NaN, unplaced };
  log(`incremental: p50 ${res.p50.toFixed(3)} ms, p99 ${res.p99.toFixed(3)} ms, max ${res.max.toFixed(3)} ms, unplaced ${unplaced}`);
  sampleRss();
  return res;
}
const incremental = incrementalPhase();

// 2. The full workload.
const state = ClusterState.fromSnapshot(sim.snapshot);
const newId = ids();
let placed = 0;
let unplacedTotal = 0;
let schedMs = 0;
const unplacedCodes: Record<string, number> = {};
for (const b of batches(sim.services, batch, total)) {
  const s = performance.now();
  const plan = state.schedule({ place: b }, { now: 0, newId });
  schedMs += performance.now() - s;
  placed += plan.placements.length;
  unplacedTotal += plan.unplaced.length;
  for (const u of plan.unplaced) unplacedCodes[u.code] = (unplacedCodes[u.code] ?? 0) + 1;
  sampleRss();
  log(`full: ${placed} placed, ${unplacedTotal} unplaced, ${state.cellCount} cells, ${(placed / (schedMs / 1000)).toFixed(0)} placements/s, rss ${(rssPeak / 2 ** 20).toFixed(0)} MiB`);
}
const cells = state.cellCount;
const hostsUsed = state.hostsUsed;
const allInstances = function* (): Generator<InstanceRequest> {
  for (const s of sim.services) yield* instancesOf(s);
};
const lower = cellsLowerBound(sim.snapshot, allInstances());
const lowerCount = cellsLowerBound(sim.snapshot, allInstances(), { countLimit: true });

// 3. Plain first-fit baseline on the same workload.
const ts = performance.now();
const ff = firstFit(sim.snapshot, allInstances());
log(`first-fit: ${ff.cells} cells, ${ff.hostsUsed} hosts, ${ff.unplaced} unplaced in ${((performance.now() - ts) / 1000).toFixed(1)} s`);
sampleRss();

const result = {
  bench: 'schedule',
  instances: placed,
  hosts,
  placements_per_s: Math.round(placed / (schedMs / 1000)),
  cells,
  cells_lower_bound: lower,
  cells_ratio: Number((cells / lower).toFixed(4)),
  hosts_used: hostsUsed,
  rss_peak_mib: Math.round(rssPeak / 2 ** 20),
  incremental_p99_ms: Number(incremental.p99.toFixed(3)),
  firstfit_cells_ratio: Number((ff.cells / lower).toFixed(4)),
  firstfit_cells: ff.cells,
  firstfit_hosts_used: ff.hostsUsed,
  cells_lower_bound_count_limit: lowerCount,
  cells_ratio_count_limit: Number((cells / lowerCount).toFixed(4)),
  unplaced: unplacedTotal,
  unplaced_codes: unplacedCodes,
  batch,
  seed,
  incremental_p50_ms: Number(incremental.p50.toFixed(3)),
};
clearInterval(timer);
console.log(JSON.stringify(result));
