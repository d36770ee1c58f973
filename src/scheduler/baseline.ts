/**
 * Plain first-fit, the baseline the benchmark compares against: instances in arrival order, each
 * into the first (oldest) cell of its (tenant, group) with room, else a new cell on the first host
 * (by name) with room. It obeys the same hard constraints as the scheduler (capacity, one
 * (tenant, group) per cell, `spread: required`, `maxInstancesPerCell`, tiers, selectors) but has
 * no preferences. Pure; for measurement only, never for real placement.
 */
import { DEFAULT_CELL_POLICY, milli } from './state.js';
import type { CellPolicy, HostInfo, InstanceRequest, Isolation, Snapshot } from './types.js';

/** What first-fit produced. */
export interface FirstFitResult {
  cells: number;
  hostsUsed: number;
  placed: number;
  unplaced: number;
}

interface FfCell {
  freeCpu: number;
  freeMem: number;
  count: number;
  host: number;
  services: Set<string> | null;
}

/**
 * Places `instances` (in the given order) onto the empty cluster of `snapshot.hosts`, using the
 * snapshot's cell policies. Hosts are tried from the first one that could still take a default
 * cell, so the cost stays near linear. May be called anywhere.
 */
export function firstFit(snapshot: Pick<Snapshot, 'hosts' | 'groupPolicies' | 'defaults'>, instances: Iterable<InstanceRequest>): FirstFitResult {
  const defaults: CellPolicy = { ...DEFAULT_CELL_POLICY, ...(snapshot.defaults ?? {}) };
  const policies = new Map<string, CellPolicy>();
  for (const p of snapshot.groupPolicies ?? []) policies.set(`${p.tenant}\0${p.group}`, { ...defaults, ...p });
  const hosts: HostInfo[] = [...snapshot.hosts].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const freeCpu = hosts.map((h) => Math.floor(milli(h.cpu) * (h.overcommit?.cpu ?? 1)));
  const freeMem = hosts.map((h) => Math.floor(h.memoryMiB * (h.overcommit?.memory ?? 1)));
  const used = new Uint8Array(hosts.length);
  const groups = new Map<string, FfCell[]>();
  let first = 0;
  let cells = 0;
  let placed = 0;
  let unplaced = 0;
  const ok = (i: number, cpu: number, mem: number, tier: Isolation, sel: Record<string, string> | undefined): boolean => {
    const h = hosts[i];
    if (h === undefined || !h.ready || !h.schedulable || !h.isolation.includes(tier)) return false;
    if ((freeCpu[i] ?? 0) < cpu || (freeMem[i] ?? 0) < mem) return false;
    if (sel !== undefined) for (const [k, v] of Object.entries(sel)) if (h.labels[k] !== v) return false;
    return true;
  };
  const takeHost = (cpu: number, mem: number, tier: Isolation, sel: Record<string, string> | undefined, minCpu: number, minMem: number): number => {
    while (first < hosts.length && ((freeCpu[first] ?? 0) < minCpu || (freeMem[first] ?? 0) < minMem)) first++;
    for (let i = first; i < hosts.length; i++) {
      if (ok(i, cpu, mem, tier, sel)) {
        freeCpu[i] = (freeCpu[i] ?? 0) - cpu;
        freeMem[i] = (freeMem[i] ?? 0) - mem;
        used[i] = 1;
        return i;
      }
    }
    return -1;
  };
  // Hosts that cannot take a default cell any more are skipped for good (free room only shrinks).
  const minCpu = milli(defaults.cellCpu);
  const minMem = defaults.cellMemoryMiB;
  for (const r of instances) {
    const cpu = milli(r.cpu);
    const mem = Math.ceil(r.memoryMiB);
    const key = `${r.tenant}\0${r.group}`;
    const p = policies.get(key) ?? defaults;
    const ovCpu = milli(p.guestOverheadCpu);
    const ovMem = p.guestOverheadMiB;
    if (r.isolation === 'host' || r.isolation === 'sandbox') {
      if (takeHost(cpu, mem, r.isolation, r.nodeSelector, minCpu, minMem) >= 0) placed++;
      else unplaced++;
      continue;
    }
    const svcKey = `${r.tenant}\0${r.service}`;
    let list = groups.get(key);
    if (list === undefined) {
      list = [];
      groups.set(key, list);
    }
    let target: FfCell | undefined;
    if (r.isolation === 'cell') {
      for (const c of list) {
        if (c.freeCpu < cpu || c.freeMem < mem) continue;
        if (p.maxInstancesPerCell > 0 && c.count >= p.maxInstancesPerCell) continue;
        if (r.spread === 'required' && c.services?.has(svcKey)) continue;
        if (r.nodeSelector !== undefined && !Object.entries(r.nodeSelector).every(([k, v]) => hosts[c.host]?.labels[k] === v)) continue;
        target = c;
        break;
      }
    }
    if (target === undefined) {
      const dedicated = r.isolation === 'dedicated';
      const sizeCpu = dedicated ? cpu + ovCpu : Math.max(milli(p.cellCpu), Math.ceil((cpu + ovCpu) / 250) * 250);
      const sizeMem = dedicated ? mem + ovMem : Math.max(p.cellMemoryMiB, Math.ceil((mem + ovMem) / 256) * 256);
      const h = takeHost(sizeCpu, sizeMem, r.isolation, r.nodeSelector, minCpu, minMem);
      if (h < 0) {
        unplaced++;
        continue;
      }
      cells++;
      target = { freeCpu: sizeCpu - ovCpu, freeMem: sizeMem - ovMem, count: 0, host: h, services: null };
      if (!dedicated) list.push(target);
    }
    target.freeCpu -= cpu;
    target.freeMem -= mem;
    target.count++;
    if (r.spread === 'required') (target.services ??= new Set()).add(svcKey);
    placed++;
  }
  let hostsUsed = 0;
  for (const u of used) hostsUsed += u;
  return { cells, hostsUsed, placed, unplaced };
}
