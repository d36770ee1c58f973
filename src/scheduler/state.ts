/**
 * The scheduler's working state: indexes built once from a snapshot, then updated as plans are
 * made, so that each placement costs O(log hosts) (host heaps) plus a short walk of a
 * (tenant, group)'s free-room buckets, never a scan of the cluster.
 *
 * Pure: no I/O, no clock, no randomness. Every iteration order is fixed by sorting the input
 * (hosts, cells, placements by name/id) or by integer indexes assigned in that sorted order.
 */
import { IndexedHeap } from './heap.js';
import type {
  CellInfo,
  CellPolicy,
  CellState,
  ConsolidateRequest,
  Demand,
  HostConstraint,
  HostInfo,
  InstanceRequest,
  Isolation,
  Move,
  Plan,
  PlannedPlacement,
  RetireReason,
  ScheduleOptions,
  Snapshot,
  Spread,
  Unplaced,
} from './types.js';

/** An unplaced code: built-in, or a HostConstraint's own. */
type FailCode = Unplaced['code'];

/** The built-in cell policy: a 2 vCPU / 2 GiB cell of which the guest takes 0.25 / 256. */
export const DEFAULT_CELL_POLICY: CellPolicy = {
  cellCpu: 2,
  cellMemoryMiB: 2048,
  guestOverheadCpu: 0.25,
  guestOverheadMiB: 256,
  maxInstancesPerCell: 0,
};

/** Oversized cells are rounded up to these steps (millicores, MiB). */
const CPU_STEP = 250;
const MEM_STEP = 256;
/** Free-room buckets per (tenant, group): bucket b holds cells whose tighter free fraction is in [b/NB, (b+1)/NB). */
const NB = 64;
/** Host candidates taken from a zone heap before falling back to a scan of the zone. */
const HEAP_TRIES = 16;
/** Recent tenant hosts looked at for tenant affinity. */
const AFFINITY_TRIES = 8;
/** Candidates looked at when filling a cell from a batch (slot-aware packing). */
const PROBES = 32;

const TIER_BIT: Record<Isolation, number> = { host: 1, sandbox: 2, cell: 4, dedicated: 8, machine: 16 };
const ISOLATIONS = new Set<string>(['cell', 'dedicated', 'host', 'sandbox', 'machine']);
const SPREADS = new Set<string>(['required', 'preferred', 'none']);

/** Cores to integer millicores. */
export function milli(cpu: number): number {
  return Math.round(cpu * 1000);
}

/** Millicores back to cores for output. */
function cores(m: number): number {
  return m / 1000;
}

function roundUp(v: number, step: number): number {
  return Math.ceil(v / step) * step;
}

interface HostRec {
  idx: number;
  name: string;
  capCpu: number;
  capMem: number;
  usedCpu: number;
  usedMem: number;
  labels: Record<string, string>;
  zone: string;
  ready: boolean;
  schedulable: boolean;
  tiers: number;
}

interface TenantRec {
  name: string;
  qCpu: number;
  qMem: number;
  qCount: number;
  /** Most cells the tenant may hold (Infinity: no limit). */
  qCells: number;
  /** Cells the tenant holds (existing and planned, minus retired). */
  cellCount: number;
  usedCpu: number;
  usedMem: number;
  count: number;
  /** Cells of this tenant per host. */
  hostCells: Map<number, number>;
  /** Hosts that got a cell of this tenant, per zone, in the order they got it (may hold stale entries). */
  hostsByZone: Map<string, number[]>;
}

interface GroupRec {
  key: string;
  tenant: TenantRec;
  name: string;
  sizeCpu: number;
  sizeMem: number;
  ovCpu: number;
  ovMem: number;
  usableCpu: number;
  usableMem: number;
  maxPer: number;
  /** Heads of the free-room bucket lists (cell indexes, -1 = empty). */
  heads: Int32Array;
  hostCells: Map<number, number>;
  zoneCells: Map<string, number>;
  cells: number[];
}

interface CellRec {
  idx: number;
  id: string;
  g: GroupRec;
  host: number;
  sizeCpu: number;
  sizeMem: number;
  usableCpu: number;
  usableMem: number;
  usedCpu: number;
  usedMem: number;
  count: number;
  state: CellState;
  dedicated: boolean;
  retired: boolean;
  /** Temporarily closed while consolidation empties it. */
  closed: boolean;
  bucket: number;
  prev: number;
  next: number;
}

/** A warm (pre-booted, unassigned) cell: charged to its host, claimable by one group once running. */
interface WarmRec {
  id: string;
  host: number;
  sizeCpu: number;
  sizeMem: number;
  /** Running (booted): only such cells are claimed. */
  running: boolean;
  /** Claimed by a plan of this state: it left the pool. */
  taken: boolean;
}

interface SvcRec {
  cells: Map<number, number>;
  hosts: Map<number, number>;
  zones: Map<string, number>;
}

interface InstRec {
  req: InstanceRequest;
  cpu: number;
  mem: number;
  tenant: TenantRec;
  g: GroupRec;
  svc: SvcRec;
  /** Cell index, -1 for `host`/`sandbox` instances and machines. */
  cell: number;
  host: number;
  /** Counts towards the tenant's instance quota (machines do not). */
  counted: boolean;
}

/** Which hosts a request may use: its node selector plus its HostConstraints. */
interface Selector {
  key: string;
  pairs: [string, string][];
  /** Set when the selector names only a zone (or nothing) and no constraint: the fast heap path applies. */
  zoneOnly: boolean;
  zone: string | undefined;
  /** Host indexes every constraint admits; null without constraints. */
  hosts: Set<number> | null;
  constraints: HostConstraint[];
}

const NO_SELECTOR: Selector = { key: '', pairs: [], zoneOnly: true, zone: undefined, hosts: null, constraints: [] };

interface Pending {
  req: InstanceRequest;
  previous?: { host: string; cell?: string };
}

function byString(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function inc<K>(m: Map<K, number>, k: K, d: number): number {
  const v = (m.get(k) ?? 0) + d;
  if (v === 0) m.delete(k);
  else m.set(k, v);
  return v;
}

/** Why an instance request is malformed, or undefined when it is fine. */
function invalidReason(r: InstanceRequest): string | undefined {
  if (typeof r.id !== 'string' || r.id === '') return 'instance id must be a non-empty string';
  if (typeof r.tenant !== 'string' || r.tenant === '') return 'tenant must be a non-empty string';
  if (typeof r.group !== 'string' || (r.group === '' && r.isolation !== 'machine')) return 'group must be a non-empty string';
  if (typeof r.service !== 'string') return 'service must be a string';
  if (!ISOLATIONS.has(r.isolation)) return `isolation must be one of cell, dedicated, host, sandbox, machine (got ${String(r.isolation)})`;
  if (!Number.isFinite(r.cpu) || milli(r.cpu) < 1) return `cpu must be at least 0.001 cores (got ${String(r.cpu)})`;
  if (!Number.isFinite(r.memoryMiB) || r.memoryMiB < 1) return `memory must be at least 1 MiB (got ${String(r.memoryMiB)})`;
  if (r.spread !== undefined && !SPREADS.has(r.spread)) return `spread must be required, preferred or none (got ${String(r.spread)})`;
  for (const c of r.constraints ?? []) {
    if (typeof c.name !== 'string' || c.name === '' || typeof c.code !== 'string' || c.code === '' || typeof c.reason !== 'string' || !Array.isArray(c.hosts)) return 'every constraint needs a name, a code, a reason and a list of hosts';
  }
  return undefined;
}

/**
 * The scheduler's indexes over one cluster. Build it with `ClusterState.fromSnapshot`, then call
 * `schedule` any number of times: each call plans against the state left by the previous plans
 * (it assumes they were applied), which is what makes incremental placement cheap.
 */
export class ClusterState {
  private readonly hosts: HostRec[] = [];
  private readonly hostByName = new Map<string, number>();
  private readonly load: Float64Array;
  private readonly heapPos: Int32Array;
  private readonly zoneHeaps = new Map<string, IndexedHeap>();
  private readonly zoneHosts = new Map<string, number[]>();
  private readonly zoneNames: string[] = [];
  private readonly tenants = new Map<string, TenantRec>();
  private readonly groups = new Map<string, GroupRec>();
  private readonly policies = new Map<string, Partial<CellPolicy>>();
  private readonly defaults: CellPolicy;
  private readonly cells: CellRec[] = [];
  private readonly cellById = new Map<string, number>();
  /** Warm cells by id order; claimed ones stay, marked taken. */
  private readonly warm: WarmRec[] = [];
  private readonly services = new Map<string, SvcRec>();
  private readonly instances = new Map<string, InstRec>();
  private readonly selectors = new Map<string, Selector>();
  /** Cells lost with their host, retired by the next plan. */
  private lost: { id: string; host: string; reason: RetireReason }[] = [];
  /** Instances whose cell or host was lost, re-placed by the next plan. */
  private displaced: Pending[] = [];
  /** Cells that may be empty, checked at the end of the next plan. */
  private maybeEmpty = new Set<number>();
  private lastConsolidationAt: number | undefined;

  private constructor(hostCount: number, defaults: CellPolicy) {
    this.load = new Float64Array(hostCount);
    this.heapPos = new Int32Array(hostCount).fill(-1);
    this.defaults = defaults;
  }

  /** Builds the indexes from a snapshot (O(size of the snapshot)). The snapshot is not modified. */
  static fromSnapshot(snapshot: Snapshot): ClusterState {
    const defaults: CellPolicy = { ...DEFAULT_CELL_POLICY, ...(snapshot.defaults ?? {}) };
    const s = new ClusterState(snapshot.hosts.length, defaults);
    s.lastConsolidationAt = snapshot.lastConsolidationAt;
    const hosts = [...snapshot.hosts].sort((a, b) => byString(a.name, b.name));
    for (const h of hosts) s.addHost(h);
    const zones = [...s.zoneHosts.keys()].sort(byString);
    s.zoneNames.push(...zones);
    for (const q of [...(snapshot.quotas ?? [])].sort((a, b) => byString(a.tenant, b.tenant))) {
      const t = s.tenant(q.tenant);
      t.qCpu = q.cpu === undefined ? Infinity : milli(q.cpu);
      t.qMem = q.memoryMiB ?? Infinity;
      t.qCount = q.instances ?? Infinity;
      t.qCells = q.cells ?? Infinity;
    }
    for (const p of snapshot.groupPolicies ?? []) s.policies.set(`${p.tenant}\0${p.group}`, p);
    const cells = [...snapshot.cells].sort((a, b) => byString(a.id, b.id));
    const lostCellIds = new Set<string>();
    const warmIds = new Set<string>();
    for (const c of cells) {
      if (s.cellById.has(c.id) || lostCellIds.has(c.id) || warmIds.has(c.id)) continue;
      const h = s.hostByName.get(c.host);
      const host = h === undefined ? undefined : s.hosts[h];
      if (c.warm === true || c.tenant === '') {
        warmIds.add(c.id);
        if (host === undefined || !host.ready) {
          s.lost.push({ id: c.id, host: c.host, reason: host === undefined ? 'HostMissing' : 'HostNotReady' });
          continue;
        }
        const w: WarmRec = { id: c.id, host: host.idx, sizeCpu: milli(c.cpu), sizeMem: Math.ceil(c.memoryMiB), running: c.state === 'running', taken: false };
        s.warm.push(w);
        s.charge(host, w.sizeCpu, w.sizeMem);
        continue;
      }
      if (host === undefined || !host.ready) {
        lostCellIds.add(c.id);
        s.lost.push({ id: c.id, host: c.host, reason: host === undefined ? 'HostMissing' : 'HostNotReady' });
        continue;
      }
      s.addExistingCell(c, host.idx);
    }
    const placements = [...snapshot.placements].sort((a, b) => byString(a.instance.id, b.instance.id));
    const seen = new Set<string>();
    for (const p of placements) {
      const r = p.instance;
      if (seen.has(r.id)) continue;
      seen.add(r.id);
      const previous = p.cell === undefined ? { host: p.host } : { host: p.host, cell: p.cell };
      if (invalidReason(r) !== undefined) continue;
      if (p.cell !== undefined) {
        const ci = s.cellById.get(p.cell);
        const cell = ci === undefined ? undefined : s.cells[ci];
        // A placement into a cell of another (tenant, group) would break invariant 1: treat it as lost.
        if (cell === undefined || cell.g.tenant.name !== r.tenant || cell.g.name !== r.group) {
          s.displaced.push({ req: r, previous });
          continue;
        }
        s.commit(r, cell.idx, cell.host);
      } else {
        const h = s.hostByName.get(p.host);
        const host = h === undefined ? undefined : s.hosts[h];
        if (host === undefined || !host.ready) {
          s.displaced.push({ req: r, previous });
          continue;
        }
        s.commit(r, -1, host.idx);
      }
    }
    for (const c of s.cells) {
      s.rebucket(c);
      if (c.count === 0) s.maybeEmpty.add(c.idx);
    }
    return s;
  }

  /**
   * Plans `demand` against this state and updates the state as if the plan were applied.
   * Same state + same demand + same `newId` sequence gives the same plan.
   * Throws only on a programming error (`newId` returning an id already in use).
   */
  schedule(demand: Demand, opts: ScheduleOptions): Plan {
    const plan: Plan = {
      now: opts.now,
      createCells: [],
      placements: [],
      moves: [],
      retireCells: [],
      unplaced: [],
      removed: [],
      consolidated: false,
    };
    for (const l of this.lost) plan.retireCells.push({ id: l.id, host: l.host, reason: l.reason });
    this.lost = [];

    const removeIds = [...new Set(demand.remove ?? [])].sort(byString);
    const removeSet = new Set(removeIds);
    for (const id of removeIds) {
      if (this.instances.has(id)) {
        this.uncommit(id);
        plan.removed.push(id);
      }
    }

    const pending = new Map<string, Pending>();
    for (const d of this.displaced) {
      if (removeSet.has(d.req.id)) plan.removed.push(d.req.id);
      else pending.set(d.req.id, d);
    }
    this.displaced = [];
    plan.removed.sort(byString);

    const requests = [...demand.place].sort((a, b) => byString(a.id, b.id));
    for (let i = 0; i < requests.length; i++) {
      const r = requests[i];
      if (r === undefined) continue;
      const bad = invalidReason(r);
      if (bad !== undefined) {
        plan.unplaced.push({ instance: r, code: 'InvalidRequest', reason: `invalid request: ${bad}` });
        continue;
      }
      if (i > 0 && requests[i - 1]?.id === r.id) {
        plan.unplaced.push({ instance: r, code: 'DuplicateInstance', reason: `instance ${r.id} appears more than once in this request; only the first is placed` });
        continue;
      }
      if (this.instances.has(r.id) || removeSet.has(r.id)) continue;
      const prev = pending.get(r.id);
      pending.set(r.id, prev === undefined ? { req: r } : { req: r, previous: prev.previous });
    }

    this.placeAll([...pending.values()], plan, opts);
    if (demand.consolidate !== undefined) this.consolidate(demand.consolidate, plan, opts.now);
    if (demand.keepEmptyCells === true) this.maybeEmpty.clear();
    else this.retireEmpty(plan);
    return plan;
  }

  /** Number of live cells (for benchmarks and tests). */
  get cellCount(): number {
    let n = 0;
    for (const c of this.cells) if (!c.retired) n++;
    return n;
  }

  /** Number of hosts that run at least one cell or instance (for benchmarks). */
  get hostsUsed(): number {
    let n = 0;
    for (const h of this.hosts) if (h.usedCpu > 0 || h.usedMem > 0) n++;
    return n;
  }

  /** Number of placed instances. */
  get instanceCount(): number {
    return this.instances.size;
  }

  // ---- building -------------------------------------------------------------------------

  private addHost(h: HostInfo): void {
    if (this.hostByName.has(h.name)) return;
    const idx = this.hosts.length;
    let tiers = 0;
    for (const t of h.isolation) tiers |= TIER_BIT[t] ?? 0;
    const rec: HostRec = {
      idx,
      name: h.name,
      capCpu: Math.floor(milli(h.cpu) * (h.overcommit?.cpu ?? 1)),
      capMem: Math.floor(h.memoryMiB * (h.overcommit?.memory ?? 1)),
      usedCpu: 0,
      usedMem: 0,
      labels: h.labels,
      zone: h.labels['zone'] ?? '',
      ready: h.ready,
      schedulable: h.schedulable,
      tiers,
    };
    this.hosts.push(rec);
    this.hostByName.set(h.name, idx);
    let zh = this.zoneHosts.get(rec.zone);
    if (zh === undefined) {
      zh = [];
      this.zoneHosts.set(rec.zone, zh);
    }
    zh.push(idx);
    if (rec.ready && rec.schedulable) {
      let heap = this.zoneHeaps.get(rec.zone);
      if (heap === undefined) {
        heap = new IndexedHeap(this.load, this.heapPos);
        this.zoneHeaps.set(rec.zone, heap);
      }
      heap.push(idx);
    }
  }

  private tenant(name: string): TenantRec {
    let t = this.tenants.get(name);
    if (t === undefined) {
      t = { name, qCpu: Infinity, qMem: Infinity, qCount: Infinity, qCells: Infinity, cellCount: 0, usedCpu: 0, usedMem: 0, count: 0, hostCells: new Map(), hostsByZone: new Map() };
      this.tenants.set(name, t);
    }
    return t;
  }

  private group(tenant: string, group: string): GroupRec {
    const key = `${tenant}\0${group}`;
    let g = this.groups.get(key);
    if (g === undefined) {
      const p: CellPolicy = { ...this.defaults, ...(this.policies.get(key) ?? {}) };
      const sizeCpu = milli(p.cellCpu);
      const sizeMem = Math.ceil(p.cellMemoryMiB);
      const ovCpu = milli(p.guestOverheadCpu);
      const ovMem = Math.ceil(p.guestOverheadMiB);
      g = {
        key,
        tenant: this.tenant(tenant),
        name: group,
        sizeCpu,
        sizeMem,
        ovCpu,
        ovMem,
        usableCpu: Math.max(1, sizeCpu - ovCpu),
        usableMem: Math.max(1, sizeMem - ovMem),
        maxPer: p.maxInstancesPerCell > 0 ? p.maxInstancesPerCell : Infinity,
        heads: new Int32Array(NB + 1).fill(-1),
        hostCells: new Map(),
        zoneCells: new Map(),
        cells: [],
      };
      this.groups.set(key, g);
    }
    return g;
  }

  private service(tenant: string, service: string): SvcRec {
    const key = `${tenant}\0${service}`;
    let s = this.services.get(key);
    if (s === undefined) {
      s = { cells: new Map(), hosts: new Map(), zones: new Map() };
      this.services.set(key, s);
    }
    return s;
  }

  /** The hosts `r` may use: its node selector and its constraints, interned by key. */
  private selector(r: Pick<InstanceRequest, 'nodeSelector' | 'constraints'>): Selector {
    const pairs = Object.entries(r.nodeSelector ?? {}).sort((a, b) => byString(a[0], b[0]));
    const constraints = r.constraints ?? [];
    if (pairs.length === 0 && constraints.length === 0) return NO_SELECTOR;
    const labelKey = pairs.map(([k, v]) => `${k}=${v}`).join(',');
    const key = constraints.length === 0 ? labelKey : `${labelKey}|${constraints.map((c) => `${c.name}:${[...c.hosts].sort(byString).join(',')}`).join(';')}`;
    let s = this.selectors.get(key);
    if (s === undefined) {
      let hosts: Set<number> | null = null;
      for (const c of constraints) {
        const allowed = new Set<number>();
        for (const name of c.hosts) {
          const i = this.hostByName.get(name);
          if (i !== undefined && (hosts === null || hosts.has(i))) allowed.add(i);
        }
        hosts = allowed;
      }
      const zoneOnly = hosts === null && pairs.length === 1 && pairs[0]?.[0] === 'zone';
      s = { key, pairs, zoneOnly, zone: zoneOnly ? pairs[0]?.[1] : undefined, hosts, constraints };
      this.selectors.set(key, s);
    }
    return s;
  }

  private addExistingCell(c: CellInfo, host: number): void {
    const g = this.group(c.tenant, c.group);
    const rec = this.newCellRec(c.id, g, host, milli(c.cpu), Math.ceil(c.memoryMiB), c.dedicated === true);
    rec.state = c.state;
  }

  /** A cell of group `g`; `charged` when its size already weighs on the host (a claimed warm cell). */
  private newCellRec(id: string, g: GroupRec, host: number, sizeCpu: number, sizeMem: number, dedicated: boolean, charged = false): CellRec {
    const idx = this.cells.length;
    const rec: CellRec = {
      idx,
      id,
      g,
      host,
      sizeCpu,
      sizeMem,
      usableCpu: Math.max(0, sizeCpu - g.ovCpu),
      usableMem: Math.max(0, sizeMem - g.ovMem),
      usedCpu: 0,
      usedMem: 0,
      count: 0,
      state: 'creating',
      dedicated,
      retired: false,
      closed: false,
      bucket: -1,
      prev: -1,
      next: -1,
    };
    this.cells.push(rec);
    g.tenant.cellCount++;
    this.cellById.set(id, idx);
    g.cells.push(idx);
    const h = this.hostAt(host);
    if (!charged) this.charge(h, sizeCpu, sizeMem);
    inc(g.hostCells, host, 1);
    inc(g.zoneCells, h.zone, 1);
    const t = g.tenant;
    if (inc(t.hostCells, host, 1) === 1) {
      let list = t.hostsByZone.get(h.zone);
      if (list === undefined) {
        list = [];
        t.hostsByZone.set(h.zone, list);
      }
      list.push(host);
    }
    return rec;
  }

  private hostAt(i: number): HostRec {
    const h = this.hosts[i];
    if (h === undefined) throw new Error(`scheduler: no host #${i}`);
    return h;
  }

  private cellAt(i: number): CellRec {
    const c = this.cells[i];
    if (c === undefined) throw new Error(`scheduler: no cell #${i}`);
    return c;
  }

  private charge(h: HostRec, cpu: number, mem: number): void {
    h.usedCpu += cpu;
    h.usedMem += mem;
    this.load[h.idx] = Math.max(h.capCpu > 0 ? h.usedCpu / h.capCpu : 1, h.capMem > 0 ? h.usedMem / h.capMem : 1);
    this.zoneHeaps.get(h.zone)?.update(h.idx);
  }

  // ---- instance bookkeeping --------------------------------------------------------------

  /** Records `r` as running in cell `cell` (or on `host` when cell is -1) and charges everything. */
  private commit(r: InstanceRequest, cell: number, host: number): void {
    const t = this.tenant(r.tenant);
    const g = this.group(r.tenant, r.group);
    const svc = this.service(r.tenant, r.service);
    const cpu = milli(r.cpu);
    const mem = Math.ceil(r.memoryMiB);
    const counted = r.isolation !== 'machine';
    const rec: InstRec = { req: r, cpu, mem, tenant: t, g, svc, cell, host, counted };
    this.instances.set(r.id, rec);
    t.usedCpu += cpu;
    t.usedMem += mem;
    if (counted) t.count++;
    const h = this.hostAt(host);
    if (cell >= 0) {
      this.enterCell(rec, cell);
    } else {
      this.charge(h, cpu, mem);
      inc(svc.hosts, host, 1);
      inc(svc.zones, h.zone, 1);
    }
  }

  private uncommit(id: string): void {
    const rec = this.instances.get(id);
    if (rec === undefined) return;
    this.instances.delete(id);
    const t = rec.tenant;
    t.usedCpu -= rec.cpu;
    t.usedMem -= rec.mem;
    if (rec.counted) t.count--;
    if (rec.cell >= 0) {
      this.leaveCell(rec);
    } else {
      const h = this.hostAt(rec.host);
      this.charge(h, -rec.cpu, -rec.mem);
      inc(rec.svc.hosts, rec.host, -1);
      inc(rec.svc.zones, h.zone, -1);
    }
  }

  private enterCell(rec: InstRec, cell: number): void {
    const c = this.cellAt(cell);
    rec.cell = cell;
    rec.host = c.host;
    c.usedCpu += rec.cpu;
    c.usedMem += rec.mem;
    c.count++;
    inc(rec.svc.cells, cell, 1);
    this.rebucket(c);
  }

  private leaveCell(rec: InstRec): void {
    const c = this.cellAt(rec.cell);
    c.usedCpu -= rec.cpu;
    c.usedMem -= rec.mem;
    c.count--;
    inc(rec.svc.cells, rec.cell, -1);
    if (c.count === 0) this.maybeEmpty.add(c.idx);
    this.rebucket(c);
  }

  // ---- free-room buckets -----------------------------------------------------------------

  private isOpen(c: CellRec): boolean {
    if (c.retired || c.closed || c.dedicated || c.state === 'draining' || c.count >= c.g.maxPer) return false;
    const h = this.hostAt(c.host);
    return h.ready && h.schedulable;
  }

  private bucketOf(c: CellRec): number {
    const g = c.g;
    const f = Math.min((c.usableCpu - c.usedCpu) / g.usableCpu, (c.usableMem - c.usedMem) / g.usableMem);
    if (f <= 0) return 0;
    return Math.min(NB, Math.floor(f * NB));
  }

  private rebucket(c: CellRec): void {
    const b = this.isOpen(c) ? this.bucketOf(c) : -1;
    if (b === c.bucket) return;
    const heads = c.g.heads;
    if (c.bucket >= 0) {
      if (c.prev >= 0) this.cellAt(c.prev).next = c.next;
      else heads[c.bucket] = c.next;
      if (c.next >= 0) this.cellAt(c.next).prev = c.prev;
    }
    c.bucket = b;
    c.prev = -1;
    c.next = -1;
    if (b >= 0) {
      // Head insertion: the walk order follows the (deterministic) order of earlier operations.
      const head = heads[b] ?? -1;
      c.next = head;
      if (head >= 0) this.cellAt(head).prev = c.idx;
      heads[b] = c.idx;
    }
  }

  private matches(h: HostRec, sel: Selector): boolean {
    if (sel.hosts !== null && !sel.hosts.has(h.idx)) return false;
    for (const [k, v] of sel.pairs) if (h.labels[k] !== v) return false;
    return true;
  }

  /** Best-fit search among the group's open cells; -1 when none fits. */
  private findCell(g: GroupRec, cpu: number, mem: number, svc: SvcRec, spread: Spread, sel: Selector, exclude: number): number {
    const start = Math.min(NB, Math.floor(Math.min(cpu / g.usableCpu, mem / g.usableMem) * NB));
    let fallback = -1;
    for (let b = start; b <= NB; b++) {
      for (let ci = g.heads[b] ?? -1; ci >= 0; ) {
        const c = this.cellAt(ci);
        ci = c.next;
        if (c.usableCpu - c.usedCpu < cpu || c.usableMem - c.usedMem < mem || c.idx === exclude) continue;
        if (sel !== NO_SELECTOR && !this.matches(this.hostAt(c.host), sel)) continue;
        if (spread !== 'none' && svc.cells.has(c.idx)) {
          if (spread === 'preferred' && fallback < 0) fallback = c.idx;
          continue;
        }
        return c.idx;
      }
    }
    return fallback;
  }

  // ---- host choice ------------------------------------------------------------------------

  private fits(h: HostRec, cpu: number, mem: number, tier: number): boolean {
    return h.ready && h.schedulable && (h.tiers & tier) !== 0 && h.capCpu - h.usedCpu >= cpu && h.capMem - h.usedMem >= mem;
  }

  /**
   * Chooses a host for a new cell (or a host/sandbox instance). Order of preference: the zone
   * with fewest of `zoneCounts`; in it a host with none of `hostCounts` (required when
   * `hostRequired`), first among the tenant's recent hosts (affinity), then the least loaded.
   */
  private pickHost(cpu: number, mem: number, tier: number, sel: Selector, zoneCounts: Map<string, number> | null, hostCounts: Map<number, number> | null, hostRequired: boolean, affinity: TenantRec | null): number {
    const count = (h: number): number => (hostCounts === null ? 0 : (hostCounts.get(h) ?? 0));
    if (!sel.zoneOnly) return this.scanHosts(this.hostsMatching(sel), cpu, mem, tier, zoneCounts, count, hostRequired);
    let zones: string[];
    if (sel.zone !== undefined) zones = this.zoneHeaps.has(sel.zone) ? [sel.zone] : [];
    else if (zoneCounts === null || zoneCounts.size === 0) zones = this.zoneNames;
    else zones = [...this.zoneNames].sort((a, b) => (zoneCounts.get(a) ?? 0) - (zoneCounts.get(b) ?? 0) || byString(a, b));
    for (const zone of zones) {
      const heap = this.zoneHeaps.get(zone);
      if (heap === undefined) continue;
      if (affinity !== null) {
        const list = affinity.hostsByZone.get(zone);
        if (list !== undefined) {
          for (let i = list.length - 1, n = 0; i >= 0 && n < AFFINITY_TRIES; i--, n++) {
            const hi = list[i] ?? -1;
            if ((affinity.hostCells.get(hi) ?? 0) === 0 || count(hi) > 0) continue;
            if (this.fits(this.hostAt(hi), cpu, mem, tier)) return hi;
          }
        }
      }
      const popped: number[] = [];
      let best = -1;
      let bestCount = Infinity;
      while (popped.length < HEAP_TRIES && heap.size > 0) {
        const hi = heap.pop();
        popped.push(hi);
        if (!this.fits(this.hostAt(hi), cpu, mem, tier)) continue;
        const n = count(hi);
        if (n < bestCount) {
          best = hi;
          bestCount = n;
          if (n === 0) break;
        }
      }
      for (const hi of popped) heap.push(hi);
      if (best >= 0 && (bestCount === 0 || !hostRequired)) return best;
      const scanned = this.scanHosts(this.zoneHosts.get(zone) ?? [], cpu, mem, tier, null, count, hostRequired);
      if (scanned >= 0) return scanned;
    }
    return -1;
  }

  private hostsMatching(sel: Selector): number[] {
    const out: number[] = [];
    if (sel.hosts !== null) {
      for (const hi of [...sel.hosts].sort((a, b) => a - b)) if (this.matches(this.hostAt(hi), sel)) out.push(hi);
      return out;
    }
    for (const h of this.hosts) if (this.matches(h, sel)) out.push(h.idx);
    return out;
  }

  /** Linear fallback: best host of `list` by (host count, zone count, load, index). */
  private scanHosts(list: number[], cpu: number, mem: number, tier: number, zoneCounts: Map<string, number> | null, count: (h: number) => number, hostRequired: boolean): number {
    let best = -1;
    let bc = Infinity;
    let bz = Infinity;
    let bl = Infinity;
    for (const hi of list) {
      const h = this.hostAt(hi);
      if (!this.fits(h, cpu, mem, tier)) continue;
      const c = count(hi);
      if (hostRequired && c > 0) continue;
      const z = zoneCounts === null ? 0 : (zoneCounts.get(h.zone) ?? 0);
      const l = this.load[hi] ?? 0;
      if (c < bc || (c === bc && (z < bz || (z === bz && l < bl)))) {
        best = hi;
        bc = c;
        bz = z;
        bl = l;
      }
    }
    return best;
  }

  // ---- placing ------------------------------------------------------------------------------

  private placeAll(items: Pending[], plan: Plan, opts: ScheduleOptions): void {
    // Best-fit decreasing per (tenant, group): order groups by key, then larger instances first.
    const n = items.length;
    const rank = new Map<string, number>();
    const keys: string[] = [];
    for (const it of items) {
      const k = `${it.req.tenant}\0${it.req.group}`;
      if (!rank.has(k)) {
        rank.set(k, 0);
        keys.push(k);
      }
    }
    keys.sort(byString);
    keys.forEach((k, i) => rank.set(k, i));
    const gr = new Int32Array(n);
    const size = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const it = items[i];
      if (it === undefined) continue;
      const r = it.req;
      const g = this.group(r.tenant, r.group);
      gr[i] = rank.get(g.key) ?? 0;
      size[i] = Math.max(milli(r.cpu) / g.usableCpu, Math.ceil(r.memoryMiB) / g.usableMem);
    }
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    order.sort((a, b) => {
      const d = (gr[a] ?? 0) - (gr[b] ?? 0);
      if (d !== 0) return d;
      const s = (size[b] ?? 0) - (size[a] ?? 0);
      if (s !== 0) return s;
      return byString(items[a]?.req.id ?? '', items[b]?.req.id ?? '');
    });
    const failures = new Map<string, { code: FailCode; reason: string }>();
    let start = 0;
    while (start < n) {
      const rank = gr[order[start] ?? 0] ?? 0;
      let end = start + 1;
      while (end < n && (gr[order[end] ?? 0] ?? 0) === rank) end++;
      const first = items[order[start] ?? 0];
      const g = first === undefined ? undefined : this.group(first.req.tenant, first.req.group);
      if (g !== undefined && g.maxPer !== Infinity && end - start > 1) {
        this.placeSlotAware(order.subarray(start, end), items, size, g, plan, opts, failures);
      } else {
        for (let k = start; k < end; k++) {
          const it = items[order[k] ?? 0];
          if (it !== undefined) this.placeOne(it, plan, opts, failures);
        }
      }
      start = end;
    }
  }

  /**
   * Cell-centric packing for a group with `maxInstancesPerCell` (its instances in `seg`, largest
   * first). Plain best-fit decreasing would leave the small instances for last, where they fill
   * cells by count long before by size. Here the largest remaining instance is placed as usual,
   * then its cell is filled from the rest: each time with the largest instance that still leaves
   * room for enough of the smallest ones to reach the group's target count per cell (remaining
   * instances / cells their size needs), or else the largest that fits.
   */
  private placeSlotAware(seg: Uint32Array, items: Pending[], size: Float64Array, g: GroupRec, plan: Plan, opts: ScheduleOptions, failures: Map<string, { code: FailCode; reason: string }>): void {
    const m = seg.length;
    const nextFree = new Int32Array(m + 1);
    for (let i = 0; i <= m; i++) nextFree[i] = i;
    const find = (i: number): number => {
      let r = i;
      while ((nextFree[r] ?? m) !== r) r = nextFree[r] ?? m;
      while ((nextFree[i] ?? m) !== r) {
        const nx = nextFree[i] ?? m;
        nextFree[i] = r;
        i = nx;
      }
      return r;
    };
    let remaining = 0;
    let remainingSize = 0;
    const take = (i: number): void => {
      nextFree[i] = i + 1;
      remaining--;
      remainingSize -= size[seg[i] ?? 0] ?? 0;
    };
    const itemAt = (i: number): Pending => {
      const it = items[seg[i] ?? 0];
      if (it === undefined) throw new Error('scheduler: segment index out of range');
      return it;
    };
    // Non-cell instances of the group go first, as they come; the rest is packed below.
    for (let i = 0; i < m; i++) {
      const it = itemAt(i);
      if (it.req.isolation === 'cell') {
        remaining++;
        remainingSize += size[seg[i] ?? 0] ?? 0;
        continue;
      }
      nextFree[i] = i + 1;
      this.placeOne(it, plan, opts, failures);
    }
    let last = m - 1;
    for (let i = find(0); i < m; i = find(i)) {
      const it = itemAt(i);
      take(i);
      const ci = this.placeOne(it, plan, opts, failures);
      if (ci < 0) continue;
      const c = this.cellAt(ci);
      for (;;) {
        while (last >= 0 && find(last) !== last) last--;
        if (last < 0 || !this.isOpen(c)) break;
        const small = itemAt(last).req;
        const freeCpu = c.usableCpu - c.usedCpu;
        const freeMem = c.usableMem - c.usedMem;
        const cellsNeeded = Math.max(1, Math.ceil(remainingSize - 1e-9));
        const target = Math.min(g.maxPer, Math.max(1, Math.ceil(remaining / cellsNeeded)));
        const want = Math.max(1, Math.min(g.maxPer - c.count, target - c.count));
        let pick = this.probe(c, seg, items, size, find, freeCpu - (want - 1) * milli(small.cpu), freeMem - (want - 1) * Math.ceil(small.memoryMiB));
        if (pick < 0) pick = this.probe(c, seg, items, size, find, freeCpu, freeMem);
        if (pick < 0) break;
        const p = itemAt(pick);
        take(pick);
        this.emit(p, c.host, c.idx, plan);
      }
    }
  }

  /**
   * The first (largest) free segment item that fits `cell` within the given bounds and every
   * rule (spread, selector, quota), or -1. Items are sorted by dominant size, so one that is too
   * large lets the search jump past every item of its size.
   */
  private probe(c: CellRec, seg: Uint32Array, items: Pending[], size: Float64Array, find: (i: number) => number, boundCpu: number, boundMem: number): number {
    if (boundCpu <= 0 || boundMem <= 0) return -1;
    const g = c.g;
    const m = seg.length;
    const host = this.hostAt(c.host);
    // First segment position whose size is below `bound` (strict) or at most it (sizes descend).
    const firstPos = (bound: number, strict: boolean): number => {
      let lo = 0;
      let hi = m;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        const v = size[seg[mid] ?? 0] ?? 0;
        if (strict ? v < bound : v <= bound) hi = mid;
        else lo = mid + 1;
      }
      return lo;
    };
    let j = find(firstPos(Math.max(boundCpu / g.usableCpu, boundMem / g.usableMem) + 1e-12, false));
    for (let probes = 0; j < m && probes < PROBES; probes++) {
      const r = items[seg[j] ?? 0]?.req;
      if (r === undefined) break;
      const cpu = milli(r.cpu);
      const mem = Math.ceil(r.memoryMiB);
      if (cpu > boundCpu || mem > boundMem) {
        j = find(firstPos(size[seg[j] ?? 0] ?? 0, true));
        continue;
      }
      const t = g.tenant;
      const blocked =
        ((r.spread ?? 'none') !== 'none' && this.service(r.tenant, r.service).cells.has(c.idx)) ||
        ((r.nodeSelector !== undefined || r.constraints !== undefined) && !this.matches(host, this.selector(r))) ||
        t.usedCpu + cpu > t.qCpu ||
        t.usedMem + mem > t.qMem ||
        t.count + 1 > t.qCount;
      if (!blocked) return j;
      j = find(j + 1);
    }
    return -1;
  }

  /** Commits `it` to `cell` on `host` (cell -1 for host/sandbox) and records the placement. */
  private emit(it: Pending, host: number, cell: number, plan: Plan): void {
    const r = it.req;
    this.commit(r, cell, host);
    const p: PlannedPlacement = cell >= 0 ? { instance: r, host: this.hostAt(host).name, cell: this.cellAt(cell).id } : { instance: r, host: this.hostAt(host).name };
    if (it.previous !== undefined) p.previous = it.previous;
    plan.placements.push(p);
  }

  /** Places one instance or machine (quota, then cell or host); returns the cell used, or -1. */
  private placeOne(it: Pending, plan: Plan, opts: ScheduleOptions, failures: Map<string, { code: FailCode; reason: string }>): number {
    const r = it.req;
    const t = this.tenant(r.tenant);
    const cpu = milli(r.cpu);
    const mem = Math.ceil(r.memoryMiB);
    const counted = r.isolation !== 'machine';
    if (t.usedCpu + cpu > t.qCpu || t.usedMem + mem > t.qMem || (counted && t.count + 1 > t.qCount)) {
      plan.unplaced.push({ instance: r, code: 'QuotaExceeded', reason: this.quotaReason(t, cpu, mem) });
      return -1;
    }
    const g = this.group(r.tenant, r.group);
    const svc = this.service(r.tenant, r.service);
    const sel = this.selector(r);
    const spread: Spread = r.spread ?? 'none';
    const out = (host: number, cell: number): number => {
      this.emit(it, host, cell, plan);
      return cell;
    };
    // Within one plan hosts only fill up, so a (tier, selector, size[, service]) that found no
    // host once finds none later either: remembered failures skip the search.
    const failKey = (needCpu: number, needMem: number, tier: Isolation, spreadNote: boolean): string => `${tier}|${sel.key}|${needCpu}|${needMem}|${spreadNote ? r.tenant + '\0' + r.service : ''}`;
    const fail = (needCpu: number, needMem: number, tier: Isolation, what: string, spreadNote: boolean): number => {
      const key = failKey(needCpu, needMem, tier, spreadNote);
      let f = failures.get(key);
      if (f === undefined) {
        f = this.diagnose(needCpu, needMem, tier, sel, what, spreadNote ? svc : null);
        failures.set(key, f);
      }
      plan.unplaced.push({ instance: r, code: f.code, reason: f.reason });
      return -1;
    };

    if (r.isolation === 'host' || r.isolation === 'sandbox' || r.isolation === 'machine') {
      // A machine is placed like a host-run instance: its vCPUs are time-shared under the
      // host's cpu overcommit like every other cpu request, its memory must fit.
      const bit = TIER_BIT[r.isolation];
      const known = failures.has(failKey(cpu, mem, r.isolation, spread === 'required'));
      const h = known ? -1 : this.pickHost(cpu, mem, bit, sel, spread === 'none' ? null : svc.zones, spread === 'none' ? null : svc.hosts, spread === 'required', null);
      if (h < 0) return fail(cpu, mem, r.isolation, `${r.isolation} ${r.isolation === 'machine' ? '' : 'instance '}of ${cores(cpu)} cpu / ${mem} MiB`, spread === 'required');
      return out(h, -1);
    }

    if (r.isolation === 'cell') {
      const ci = this.findCell(g, cpu, mem, svc, spread, sel, -1);
      if (ci >= 0) return out(this.cellAt(ci).host, ci);
    }
    const dedicated = r.isolation === 'dedicated';
    if (g.tenant.cellCount + 1 > g.tenant.qCells) {
      plan.unplaced.push({ instance: r, code: 'QuotaExceeded', reason: `tenant ${r.tenant} cell quota exceeded: ${g.tenant.cellCount} of ${g.tenant.qCells} cells in use and none of them has room for this ${dedicated ? 'dedicated ' : ''}instance` });
      return -1;
    }
    const sizeCpu = dedicated ? cpu + g.ovCpu : Math.max(g.sizeCpu, roundUp(cpu + g.ovCpu, CPU_STEP));
    const sizeMem = dedicated ? mem + g.ovMem : Math.max(g.sizeMem, roundUp(mem + g.ovMem, MEM_STEP));
    const bit = TIER_BIT[r.isolation];
    const warm = this.pickWarm(sizeCpu, sizeMem, bit, sel, g);
    if (warm !== undefined) {
      // A booted cell of no tenant yet is faster than a new one: it becomes this group's for good.
      warm.taken = true;
      const c = this.newCellRec(warm.id, g, warm.host, warm.sizeCpu, warm.sizeMem, dedicated, true);
      plan.createCells.push({ id: warm.id, tenant: r.tenant, group: r.group, host: this.hostAt(warm.host).name, cpu: cores(warm.sizeCpu), memoryMiB: warm.sizeMem, dedicated, fromWarmPool: true });
      return out(warm.host, c.idx);
    }
    const known = failures.has(failKey(sizeCpu, sizeMem, r.isolation, false));
    const h = known ? -1 : this.pickHost(sizeCpu, sizeMem, bit, sel, g.zoneCells, g.hostCells, false, g.tenant);
    if (h < 0) return fail(sizeCpu, sizeMem, r.isolation, `${dedicated ? 'dedicated ' : ''}cell of ${cores(sizeCpu)} cpu / ${sizeMem} MiB`, false);
    const id = opts.newId();
    if (this.cellById.has(id) || this.warm.some((w) => w.id === id)) throw new Error(`scheduler: newId returned ${id}, which is already a cell id`);
    const c = this.newCellRec(id, g, h, sizeCpu, sizeMem, dedicated);
    plan.createCells.push({ id, tenant: r.tenant, group: r.group, host: this.hostAt(h).name, cpu: cores(sizeCpu), memoryMiB: sizeMem, dedicated });
    return out(h, c.idx);
  }

  /**
   * The warm cell to claim for a new cell of group `g` needing `cpu`/`mem`, or undefined: a
   * running, unclaimed one at least that large on a ready, schedulable host that runs the tier
   * and matches the selector. Preferred: the zone, then the host, with the fewest cells of the
   * group (the group's spread), then the smallest cell, then the id.
   */
  private pickWarm(cpu: number, mem: number, tier: number, sel: Selector, g: GroupRec): WarmRec | undefined {
    let best: WarmRec | undefined;
    let rank: [number, number, number, number] = [Infinity, Infinity, Infinity, Infinity];
    for (const w of this.warm) {
      if (w.taken || !w.running || w.sizeCpu < cpu || w.sizeMem < mem) continue;
      const h = this.hostAt(w.host);
      if (!h.ready || !h.schedulable || (h.tiers & tier) === 0 || !this.matches(h, sel)) continue;
      const r: [number, number, number, number] = [g.zoneCells.get(h.zone) ?? 0, g.hostCells.get(w.host) ?? 0, w.sizeCpu, w.sizeMem];
      if (best === undefined || r[0] < rank[0] || (r[0] === rank[0] && (r[1] < rank[1] || (r[1] === rank[1] && (r[2] < rank[2] || (r[2] === rank[2] && (r[3] < rank[3] || (r[3] === rank[3] && w.id < best.id)))))))) {
        best = w;
        rank = r;
      }
    }
    return best;
  }

  private quotaReason(t: TenantRec, cpu: number, mem: number): string {
    if (t.usedCpu + cpu > t.qCpu) return `tenant ${t.name} cpu quota exceeded: ${cores(t.usedCpu)} of ${cores(t.qCpu)} cores in use, this instance needs ${cores(cpu)}`;
    if (t.usedMem + mem > t.qMem) return `tenant ${t.name} memory quota exceeded: ${t.usedMem} of ${t.qMem} MiB in use, this instance needs ${mem} MiB`;
    return `tenant ${t.name} instance quota exceeded: ${t.count} of ${t.qCount} instances in use`;
  }

  /** Explains, by counting every host once, why nothing could take `what`. */
  private diagnose(cpu: number, mem: number, tier: Isolation, sel: Selector, what: string, svc: SvcRec | null): { code: FailCode; reason: string } {
    const bit = TIER_BIT[tier];
    let usable = 0;
    let withTier = 0;
    let matching = 0;
    let bigEnough = 0;
    let shortCpu = 0;
    let shortMem = 0;
    let spreadBlocked = 0;
    for (const h of this.hosts) {
      if (!h.ready || !h.schedulable) continue;
      usable++;
      if ((h.tiers & bit) === 0) continue;
      withTier++;
      if (!this.matches(h, sel)) continue;
      matching++;
      if (h.capCpu < cpu || h.capMem < mem) continue;
      bigEnough++;
      if (h.capCpu - h.usedCpu < cpu) shortCpu++;
      else if (h.capMem - h.usedMem < mem) shortMem++;
      else if (svc !== null && (svc.hosts.get(h.idx) ?? 0) > 0) spreadBlocked++;
    }
    const total = this.hosts.length;
    if (usable === 0) return { code: 'NoReadyHost', reason: `no host is ready and schedulable (${total} known) for a ${what}` };
    if (withTier === 0) return { code: 'IsolationUnavailable', reason: `no ready host supports isolation ${tier} (${usable} ready hosts)` };
    if (matching === 0 && sel.constraints.length > 0) return this.constraintFailure(bit, sel);
    const labels = sel.pairs.map(([k, v]) => `${k}=${v}`).join(',');
    if (matching === 0) return { code: 'NoMatchingHost', reason: `no ready host with isolation ${tier} matches node selector ${labels} (${withTier} considered)` };
    const limited = sel.constraints.length > 0 ? ` (as allowed by ${sel.constraints.map((c) => c.name).join(', ')})` : '';
    if (bigEnough === 0) return { code: 'TooLarge', reason: `a ${what} is larger than any matching host can allocate (${matching} hosts considered${limited})` };
    const parts = [`${shortCpu} short of cpu`, `${shortMem} short of memory`];
    if (svc !== null) parts.push(`${spreadBlocked} already run a replica (spread: required)`);
    return { code: 'NoCapacity', reason: `no host has room for a ${what}: ${bigEnough} hosts considered${limited}; ${parts.join(', ')}` };
  }

  /**
   * The constraint to blame when no usable host (ready, schedulable, with the tier, matching
   * the labels) is left by the constraints: the first one that admits none of them on its
   * own, else (each admits some, but no host is admitted by all) the first one.
   */
  private constraintFailure(tier: number, sel: Selector): { code: FailCode; reason: string } {
    const usable = this.hosts.filter((h) => h.ready && h.schedulable && (h.tiers & tier) !== 0 && sel.pairs.every(([k, v]) => h.labels[k] === v)).map((h) => h.name);
    const blame = sel.constraints.find((c) => !c.hosts.some((name) => usable.includes(name))) ?? sel.constraints[0];
    // Only called with at least one constraint, so `blame` is set.
    return { code: blame!.code, reason: blame!.reason };
  }

  // ---- retiring and consolidation ----------------------------------------------------------

  private retire(c: CellRec, reason: RetireReason, plan: Plan): void {
    c.retired = true;
    this.rebucket(c);
    const h = this.hostAt(c.host);
    this.charge(h, -c.sizeCpu, -c.sizeMem);
    inc(c.g.hostCells, c.host, -1);
    inc(c.g.zoneCells, h.zone, -1);
    inc(c.g.tenant.hostCells, c.host, -1);
    c.g.tenant.cellCount--;
    this.cellById.delete(c.id);
    plan.retireCells.push({ id: c.id, host: h.name, reason });
  }

  private retireEmpty(plan: Plan): void {
    const ids = [...this.maybeEmpty].sort((a, b) => a - b);
    this.maybeEmpty.clear();
    for (const i of ids) {
      const c = this.cellAt(i);
      if (!c.retired && c.count === 0) this.retire(c, 'Empty', plan);
    }
  }

  private consolidate(req: ConsolidateRequest, plan: Plan, now: number): void {
    const interval = req.minIntervalMs ?? 0;
    if (this.lastConsolidationAt !== undefined && now - this.lastConsolidationAt < interval) return;
    plan.consolidated = true;
    this.lastConsolidationAt = now;
    let budget = Math.max(0, Math.floor(req.maxMoves));
    const frac = req.nearlyEmptyFraction ?? 0.25;
    const candidates: CellRec[] = [];
    const fill = new Map<number, number>();
    for (const c of this.cells) {
      if (c.retired || c.dedicated || c.count === 0 || c.state === 'draining') continue;
      const f = Math.max(c.usedCpu / Math.max(1, c.usableCpu), c.usedMem / Math.max(1, c.usableMem));
      if (f <= frac) {
        candidates.push(c);
        fill.set(c.idx, f);
      }
    }
    if (candidates.length === 0 || budget === 0) return;
    candidates.sort((a, b) => (fill.get(a.idx) ?? 0) - (fill.get(b.idx) ?? 0) || byString(a.id, b.id));
    const members = new Map<number, InstRec[]>();
    for (const c of candidates) members.set(c.idx, []);
    for (const rec of this.instances.values()) if (rec.cell >= 0) members.get(rec.cell)?.push(rec);
    const received = new Set<number>();
    for (const c of candidates) {
      if (received.has(c.idx) || c.retired) continue;
      const list = (members.get(c.idx) ?? []).filter((m) => m.cell === c.idx).sort((a, b) => byString(a.req.id, b.req.id));
      if (list.length === 0 || list.length > budget) continue;
      c.closed = true;
      this.rebucket(c);
      const moved: { rec: InstRec; to: number }[] = [];
      let ok = true;
      for (const rec of list) {
        const r = rec.req;
        const to = this.findCell(rec.g, rec.cpu, rec.mem, rec.svc, r.spread ?? 'none', this.selector(r), c.idx);
        if (to < 0) {
          ok = false;
          break;
        }
        this.leaveCell(rec);
        this.enterCell(rec, to);
        moved.push({ rec, to });
      }
      if (!ok) {
        for (const m of moved.reverse()) {
          this.leaveCell(m.rec);
          this.enterCell(m.rec, c.idx);
        }
        c.closed = false;
        this.rebucket(c);
        continue;
      }
      for (const m of moved) {
        const to = this.cellAt(m.to);
        received.add(m.to);
        const mv: Move = { instance: m.rec.req, fromCell: c.id, toCell: to.id, host: this.hostAt(to.host).name };
        plan.moves.push(mv);
      }
      budget -= moved.length;
      c.closed = false;
      this.retire(c, 'Consolidated', plan);
      this.maybeEmpty.delete(c.idx);
      if (budget === 0) break;
    }
  }
}
