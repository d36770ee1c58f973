/**
 * `sim`: a simulated cluster for the scheduler benchmark and property tests. Hosts, tenants,
 * groups and services are generated from a seed; nothing runs (no processes, no I/O). The same
 * options always give the same cluster.
 */
import type { CellPolicy, GroupPolicy, HostInfo, InstanceRequest, Isolation, Snapshot, Spread, TenantQuota } from '../scheduler/types.js';
import { DEFAULT_CELL_POLICY } from '../scheduler/state.js';

/** A small, fast, seedable PRNG (mulberry32); returns floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What to generate. */
export interface SimOptions {
  seed: number;
  hosts: number;
  tenants: number;
  /** Total instances across all services (the last service is trimmed to hit it exactly). */
  instances: number;
  /** Number of zones (default 4). */
  zones?: number;
  /** Fraction of tenants with a quota below their demand (default 0: every quota is generous). */
  tightQuotaFraction?: number;
  /** Fraction of hosts not ready (default 0). */
  notReadyFraction?: number;
  /** `small` hosts (2-6 cores, 4-12 GiB) put tiny clusters under pressure for property tests. */
  hostSize?: 'large' | 'small';
  /** Fraction of services that are not `cell` (default 0.04); property tests raise it. */
  nonCellFraction?: number;
  /** `varied` adds cpu-heavy and memory-heavy instance shapes (default: the benchmark's mix). */
  sizeMix?: 'default' | 'varied';
  /** Machines (plain VMs) to generate, as requests of isolation `machine` (default 0). */
  machines?: number;
  /** Warm (pre-booted, unassigned) cells already on the hosts (default 0). */
  warmCells?: number;
}

/** A generated service: `replicas` identical instances. */
export interface SimService {
  tenant: string;
  group: string;
  service: string;
  isolation: Isolation;
  cpu: number;
  memoryMiB: number;
  spread: Spread;
  nodeSelector?: Record<string, string>;
  replicas: number;
}

/**
 * A generated cluster: a snapshot with no placements (hosts, quotas, policies, warm cells), the
 * services in arrival order and the machines to place.
 */
export interface SimCluster {
  snapshot: Snapshot;
  services: SimService[];
  instances: number;
  machines: InstanceRequest[];
}

/** Instance sizes, many small and few large; the last one is larger than a default cell's room. */
const SIZES: { w: number; cpu: number; mem: number }[] = [
  { w: 55, cpu: 0.1, mem: 128 },
  { w: 25, cpu: 0.25, mem: 256 },
  { w: 12, cpu: 0.5, mem: 512 },
  { w: 6, cpu: 1, mem: 1024 },
  { w: 2, cpu: 2, mem: 3072 },
];

/** Adds cpu-heavy and memory-heavy shapes so both dimensions bind (property tests). */
const VARIED_SIZES: { w: number; cpu: number; mem: number }[] = [
  ...SIZES,
  { w: 10, cpu: 0.6, mem: 64 },
  { w: 5, cpu: 1.2, mem: 256 },
  { w: 5, cpu: 0.05, mem: 700 },
];

function pickWeighted<T extends { w: number }>(items: T[], r: number): T {
  const total = items.reduce((s, i) => s + i.w, 0);
  let x = r * total;
  for (const i of items) {
    x -= i.w;
    if (x < 0) return i;
  }
  // Float rounding can leave x at 0 after the loop; the last item is the right answer then.
  return items[items.length - 1] as T;
}

function replicaCount(r: () => number): number {
  const x = r();
  if (x < 0.3) return 1;
  if (x < 0.6) return 2 + Math.floor(r() * 2);
  if (x < 0.85) return 4 + Math.floor(r() * 7);
  if (x < 0.97) return 11 + Math.floor(r() * 40);
  return 51 + Math.floor(r() * 150);
}

/** Generates a cluster. O(hosts + services); `instances` only sizes the service list. */
export function generateCluster(o: SimOptions): SimCluster {
  const r = rng(o.seed);
  const zones = Array.from({ length: o.zones ?? 4 }, (_, i) => `zone-${String.fromCharCode(97 + i)}`);
  const hosts: HostInfo[] = [];
  const width = String(Math.max(1, o.hosts - 1)).length;
  for (let i = 0; i < o.hosts; i++) {
    const x = r();
    const small = o.hostSize === 'small';
    const [cpu, mem] = x < 0.5 ? (small ? [2, 4096] : [32, 131072]) : x < 0.85 ? (small ? [4, 8192] : [64, 262144]) : small ? [6, 12288] : [96, 393216];
    const labels: Record<string, string> = { zone: zones[i % zones.length] ?? 'zone-a', rack: `r${Math.floor(i / 40)}` };
    if (r() < 0.3) labels['ssd'] = 'true';
    const isolation: Isolation[] = r() < 0.05 ? ['cell', 'dedicated', 'host', 'machine'] : ['cell', 'dedicated', 'host', 'machine', 'sandbox'];
    hosts.push({
      name: `host-${String(i).padStart(width, '0')}`,
      cpu,
      memoryMiB: mem,
      overcommit: r() < 0.5 ? { cpu: 2 } : {},
      labels,
      ready: r() >= (o.notReadyFraction ?? 0),
      schedulable: true,
      isolation,
    });
  }
  // Tenant sizes follow a power law: a few big tenants, a long tail of small ones.
  const tenantW: number[] = [];
  let tw = 0;
  for (let i = 0; i < o.tenants; i++) {
    tw += 1 / Math.pow(i + 1, 0.8);
    tenantW.push(tw);
  }
  const tenantNames = Array.from({ length: o.tenants }, (_, i) => `t${i}`);
  const groupsOf = tenantNames.map(() => 1 + Math.floor(r() * 5));
  const groupPolicies: GroupPolicy[] = [];
  tenantNames.forEach((t, i) => {
    for (let g = 0; g < (groupsOf[i] ?? 1); g++) {
      const x = r();
      const p: GroupPolicy = { tenant: t, group: `g${g}`, maxInstancesPerCell: x < 0.2 ? 8 : 32 };
      if (r() < 0.1) {
        p.cellCpu = 4;
        p.cellMemoryMiB = 4096;
      }
      groupPolicies.push(p);
    }
  });
  const services: SimService[] = [];
  const perTenant = new Map<string, { cpu: number; mem: number; n: number }>();
  let total = 0;
  let k = 0;
  while (total < o.instances) {
    const x = r() * tw;
    let lo = 0;
    let hi = o.tenants - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((tenantW[mid] ?? 0) < x) lo = mid + 1;
      else hi = mid;
    }
    const tenant = tenantNames[lo] ?? 't0';
    const group = `g${Math.floor(r() * (groupsOf[lo] ?? 1))}`;
    const size = pickWeighted(o.sizeMix === 'varied' ? VARIED_SIZES : SIZES, r());
    // Non-cell services split 3:3:2 between dedicated, sandbox and host.
    const nonCell = o.nonCellFraction ?? 0.04;
    const iso = r();
    const isolation: Isolation = iso >= nonCell ? 'cell' : iso < nonCell * 0.375 ? 'dedicated' : iso < nonCell * 0.75 ? 'sandbox' : 'host';
    let replicas = Math.min(replicaCount(r), o.instances - total);
    const sp = r();
    const spread: Spread = sp < 0.2 && replicas <= 50 ? 'required' : sp < 0.5 ? 'preferred' : 'none';
    const svc: SimService = { tenant, group, service: `s${k++}`, isolation, cpu: size.cpu, memoryMiB: size.mem, spread, replicas };
    const sel = r();
    if (sel < 0.05) svc.nodeSelector = { zone: zones[Math.floor(r() * zones.length)] ?? 'zone-a' };
    else if (sel < 0.06) svc.nodeSelector = { ssd: 'true' };
    replicas = Math.max(1, replicas);
    svc.replicas = replicas;
    services.push(svc);
    total += replicas;
    const u = perTenant.get(tenant) ?? { cpu: 0, mem: 0, n: 0 };
    u.cpu += size.cpu * replicas;
    u.mem += size.mem * replicas;
    u.n += replicas;
    perTenant.set(tenant, u);
  }
  const quotas: TenantQuota[] = [];
  for (const t of tenantNames) {
    const u = perTenant.get(t);
    if (u === undefined) continue;
    const tight = r() < (o.tightQuotaFraction ?? 0);
    const f = tight ? 0.8 : 1.5;
    // Tight tenants also get a cells quota (about six instances per cell), so the property tests
    // see the scheduler refuse new cells; generous ones get none (the benchmark is unchanged).
    quotas.push({ tenant: t, cpu: Math.ceil(u.cpu * f), memoryMiB: Math.ceil(u.mem * f), instances: Math.ceil(u.n * f), ...(tight ? { cells: Math.max(1, Math.ceil(u.n / 6)) } : {}) });
  }
  // Machines and warm cells draw from a generator of their own, so the clusters the
  // benchmark generates (without them) stay the same.
  const r2 = rng(o.seed ^ 0x5bd1e995);
  const machines: InstanceRequest[] = [];
  for (let i = 0; i < (o.machines ?? 0); i++) {
    const tenant = tenantNames[Math.floor(r2() * tenantNames.length)] ?? 't0';
    const [cpu, mem] = r2() < 0.5 ? [1, 1024] : r2() < 0.5 ? [2, 2048] : [4, 6144];
    const m: InstanceRequest = { id: `m:${tenant}/vm${i}`, tenant, group: '', service: `machine/vm${i}`, isolation: 'machine', cpu, memoryMiB: mem };
    if (r2() < 0.1) m.nodeSelector = { zone: zones[Math.floor(r2() * zones.length)] ?? 'zone-a' };
    machines.push(m);
    const u = perTenant.get(tenant);
    const q = quotas.find((x) => x.tenant === tenant);
    // Generous quotas leave room for the tenant's machines too.
    if (q !== undefined && u !== undefined && q.cells === undefined) {
      q.cpu = (q.cpu ?? 0) + cpu;
      q.memoryMiB = (q.memoryMiB ?? 0) + mem;
    }
  }
  const cells: Snapshot['cells'] = [];
  const warmUse = new Map<string, { cpu: number; mem: number }>();
  for (let i = 0; i < (o.warmCells ?? 0) && hosts.length > 0; i++) {
    const h = hosts[Math.floor(r2() * hosts.length)];
    if (h === undefined) continue;
    const big = r2() < 0.3;
    const [cpu, mem] = big ? [4, 4096] : [2, 2048];
    const running = r2() < 0.8;
    // Only where it fits: the snapshot must start sound.
    const u = warmUse.get(h.name) ?? { cpu: 0, mem: 0 };
    if (u.cpu + cpu > h.cpu * (h.overcommit?.cpu ?? 1) || u.mem + mem > h.memoryMiB * (h.overcommit?.memory ?? 1)) continue;
    warmUse.set(h.name, { cpu: u.cpu + cpu, mem: u.mem + mem });
    cells.push({ id: `warm-${i}`, tenant: '', group: '', host: h.name, cpu, memoryMiB: mem, state: running ? 'running' : 'creating', warm: true });
  }
  return { snapshot: { hosts, cells, placements: [], quotas, groupPolicies }, services, instances: total, machines };
}

/** The instances of one service, ids `tenant/service-i`. */
export function instancesOf(s: SimService): InstanceRequest[] {
  const out: InstanceRequest[] = [];
  for (let i = 0; i < s.replicas; i++) {
    const r: InstanceRequest = { id: `${s.tenant}/${s.service}-${i}`, tenant: s.tenant, group: s.group, service: s.service, isolation: s.isolation, cpu: s.cpu, memoryMiB: s.memoryMiB, spread: s.spread };
    if (s.nodeSelector !== undefined) r.nodeSelector = s.nodeSelector;
    out.push(r);
  }
  return out;
}

/**
 * The benchmark's lower bound on cells: for each (tenant, group), the larger of
 * ceil(total cpu / cell room) and ceil(total memory / cell room), raised to the most replicas
 * of one `spread: required` service; plus one cell per `dedicated` instance. Cell room is the
 * group's cell size minus the guest overhead. With `countLimit`, also raised to
 * ceil(instances / maxInstancesPerCell) (a tighter bound; the definition omits it).
 * Instances larger than a cell's room count by their size, so the bound only holds when every
 * instance fits a default cell.
 */
export function cellsLowerBound(snapshot: Pick<Snapshot, 'groupPolicies' | 'defaults'>, instances: Iterable<InstanceRequest>, opts: { countLimit?: boolean } = {}): number {
  const defaults: CellPolicy = { ...DEFAULT_CELL_POLICY, ...(snapshot.defaults ?? {}) };
  const policies = new Map<string, CellPolicy>();
  for (const p of snapshot.groupPolicies ?? []) policies.set(`${p.tenant}\0${p.group}`, { ...defaults, ...p });
  const acc = new Map<string, { cpu: number; mem: number; n: number; req: Map<string, number> }>();
  let dedicated = 0;
  for (const r of instances) {
    if (r.isolation === 'dedicated') {
      dedicated++;
      continue;
    }
    if (r.isolation !== 'cell') continue;
    const key = `${r.tenant}\0${r.group}`;
    let a = acc.get(key);
    if (a === undefined) {
      a = { cpu: 0, mem: 0, n: 0, req: new Map() };
      acc.set(key, a);
    }
    a.cpu += Math.round(r.cpu * 1000);
    a.mem += Math.ceil(r.memoryMiB);
    a.n++;
    if (r.spread === 'required') a.req.set(r.service, (a.req.get(r.service) ?? 0) + 1);
  }
  let total = dedicated;
  for (const [key, a] of acc) {
    const p = policies.get(key) ?? defaults;
    const roomCpu = Math.round(p.cellCpu * 1000) - Math.round(p.guestOverheadCpu * 1000);
    const roomMem = p.cellMemoryMiB - p.guestOverheadMiB;
    let lb = Math.max(Math.ceil(a.cpu / roomCpu), Math.ceil(a.mem / roomMem));
    for (const n of a.req.values()) lb = Math.max(lb, n);
    if (opts.countLimit === true && p.maxInstancesPerCell > 0) lb = Math.max(lb, Math.ceil(a.n / p.maxInstancesPerCell));
    total += lb;
  }
  return total;
}
