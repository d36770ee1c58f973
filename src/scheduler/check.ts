/**
 * An independent checker of the scheduler's hard rules over a snapshot (typically
 * `applyPlan(snapshot, plan)`). Written separately from the scheduler's indexes, by plain
 * counting, so tests can hold one against the other; callers may also run it as an assertion
 * before acting on a plan. Pure.
 */
import { DEFAULT_CELL_POLICY, milli } from './state.js';
import type { CellPolicy, Snapshot } from './types.js';

/**
 * Returns one sentence per violated rule (empty when the snapshot is sound): host capacity with
 * overcommit (instances, cells, warm cells and machines all charged), cell room and
 * `maxInstancesPerCell`, one (tenant, group) per cell and nothing placed in a warm cell, `spread:
 * required`, tiers, node selectors, host constraints, tenant quotas (machines count cpu and
 * memory, not instances), and no cell, instance or machine on a host that is missing or not ready.
 */
export function checkSnapshot(s: Snapshot): string[] {
  const out: string[] = [];
  const defaults: CellPolicy = { ...DEFAULT_CELL_POLICY, ...(s.defaults ?? {}) };
  const policy = new Map<string, CellPolicy>();
  for (const p of s.groupPolicies ?? []) policy.set(`${p.tenant}\0${p.group}`, { ...defaults, ...p });
  const hosts = new Map(s.hosts.map((h) => [h.name, h]));
  const hostUse = new Map<string, { cpu: number; mem: number }>();
  const use = (host: string, cpu: number, mem: number): void => {
    const u = hostUse.get(host) ?? { cpu: 0, mem: 0 };
    u.cpu += cpu;
    u.mem += mem;
    hostUse.set(host, u);
  };
  const cells = new Map(s.cells.map((c) => [c.id, c]));
  if (cells.size !== s.cells.length) out.push('two cells share an id');
  for (const c of s.cells) {
    const h = hosts.get(c.host);
    const warm = c.warm === true || c.tenant === '';
    if (h === undefined || !h.ready) out.push(`cell ${c.id} is on host ${c.host}, which is missing or not ready`);
    else if (!warm && !h.isolation.includes(c.dedicated === true ? 'dedicated' : 'cell')) out.push(`cell ${c.id} is on host ${c.host}, which cannot run it`);
    if (warm && (c.tenant !== '' || c.group !== '')) out.push(`warm cell ${c.id} names tenant ${c.tenant} / group ${c.group}`);
    use(c.host, milli(c.cpu), Math.ceil(c.memoryMiB));
  }
  const cellUse = new Map<string, { cpu: number; mem: number; n: number }>();
  const spreadSeen = new Set<string>();
  const tenantUse = new Map<string, { cpu: number; mem: number; n: number }>();
  const ids = new Set<string>();
  for (const p of s.placements) {
    const r = p.instance;
    if (ids.has(r.id)) out.push(`instance ${r.id} is placed twice`);
    ids.add(r.id);
    const t = tenantUse.get(r.tenant) ?? { cpu: 0, mem: 0, n: 0 };
    t.cpu += milli(r.cpu);
    t.mem += Math.ceil(r.memoryMiB);
    if (r.isolation !== 'machine') t.n++;
    tenantUse.set(r.tenant, t);
    const h = hosts.get(p.host);
    if (h === undefined || !h.ready) out.push(`instance ${r.id} is on host ${p.host}, which is missing or not ready`);
    for (const [k, v] of Object.entries(r.nodeSelector ?? {})) {
      if (h !== undefined && h.labels[k] !== v) out.push(`instance ${r.id} is on host ${p.host}, which does not match ${k}=${v}`);
    }
    for (const c of r.constraints ?? []) {
      if (!c.hosts.includes(p.host)) out.push(`instance ${r.id} is on host ${p.host}, which ${c.name} does not allow`);
    }
    if (p.cell === undefined) {
      if (r.isolation !== 'host' && r.isolation !== 'sandbox' && r.isolation !== 'machine') out.push(`instance ${r.id} (isolation ${r.isolation}) has no cell`);
      else if (h !== undefined && !h.isolation.includes(r.isolation)) out.push(`instance ${r.id} is on host ${p.host}, which lacks ${r.isolation}`);
      use(p.host, milli(r.cpu), Math.ceil(r.memoryMiB));
      if (r.spread === 'required') {
        const k = `${p.host}\0${r.tenant}\0${r.service}`;
        if (spreadSeen.has(k)) out.push(`two replicas of ${r.tenant}/${r.service} (spread: required) on host ${p.host}`);
        spreadSeen.add(k);
      }
      continue;
    }
    const c = cells.get(p.cell);
    if (c === undefined) {
      out.push(`instance ${r.id} is in missing cell ${p.cell}`);
      continue;
    }
    if (r.isolation !== 'cell' && r.isolation !== 'dedicated') out.push(`instance ${r.id} (isolation ${r.isolation}) is in a cell`);
    if ((r.isolation === 'dedicated') !== (c.dedicated === true)) out.push(`instance ${r.id} (isolation ${r.isolation}) is in cell ${c.id} (dedicated ${String(c.dedicated)})`);
    if (c.tenant !== r.tenant || c.group !== r.group) out.push(`cell ${c.id} of ${c.tenant}/${c.group} holds ${r.id} of ${r.tenant}/${r.group}`);
    if (c.host !== p.host) out.push(`instance ${r.id} says host ${p.host} but its cell ${c.id} is on ${c.host}`);
    const u = cellUse.get(c.id) ?? { cpu: 0, mem: 0, n: 0 };
    u.cpu += milli(r.cpu);
    u.mem += Math.ceil(r.memoryMiB);
    u.n++;
    cellUse.set(c.id, u);
    if (r.spread === 'required') {
      const k = `${c.id}\0${r.tenant}\0${r.service}`;
      if (spreadSeen.has(k)) out.push(`two replicas of ${r.tenant}/${r.service} (spread: required) in cell ${c.id}`);
      spreadSeen.add(k);
    }
  }
  for (const [id, u] of cellUse) {
    const c = cells.get(id);
    if (c === undefined) continue;
    const p = policy.get(`${c.tenant}\0${c.group}`) ?? defaults;
    const roomCpu = milli(c.cpu) - milli(p.guestOverheadCpu);
    const roomMem = Math.ceil(c.memoryMiB) - Math.ceil(p.guestOverheadMiB);
    if (u.cpu > roomCpu) out.push(`cell ${id} holds ${u.cpu}m cpu, room ${roomCpu}m`);
    if (u.mem > roomMem) out.push(`cell ${id} holds ${u.mem} MiB, room ${roomMem} MiB`);
    if (p.maxInstancesPerCell > 0 && u.n > p.maxInstancesPerCell) out.push(`cell ${id} holds ${u.n} instances, limit ${p.maxInstancesPerCell}`);
    if (c.dedicated === true && u.n > 1) out.push(`dedicated cell ${id} holds ${u.n} instances`);
  }
  for (const [name, u] of hostUse) {
    const h = hosts.get(name);
    if (h === undefined) continue;
    const capCpu = Math.floor(milli(h.cpu) * (h.overcommit?.cpu ?? 1));
    const capMem = Math.floor(h.memoryMiB * (h.overcommit?.memory ?? 1));
    if (u.cpu > capCpu) out.push(`host ${name} allocates ${u.cpu}m cpu of ${capCpu}m`);
    if (u.mem > capMem) out.push(`host ${name} allocates ${u.mem} MiB of ${capMem} MiB`);
  }
  for (const q of s.quotas ?? []) {
    const u = tenantUse.get(q.tenant);
    if (u === undefined) continue;
    if (q.cpu !== undefined && u.cpu > milli(q.cpu)) out.push(`tenant ${q.tenant} uses ${u.cpu}m cpu over quota ${q.cpu}`);
    if (q.memoryMiB !== undefined && u.mem > q.memoryMiB) out.push(`tenant ${q.tenant} uses ${u.mem} MiB over quota ${q.memoryMiB}`);
    if (q.instances !== undefined && u.n > q.instances) out.push(`tenant ${q.tenant} runs ${u.n} instances over quota ${q.instances}`);
  }
  for (const q of s.quotas ?? []) {
    const n = s.cells.filter((c) => c.tenant === q.tenant).length;
    if (q.cells !== undefined && n > q.cells) out.push(`tenant ${q.tenant} holds ${n} cells over quota ${q.cells}`);
  }
  return out;
}
