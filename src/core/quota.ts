/**
 * Tenant quotas and registry policy, checked when workloads are applied. Pure. What counts:
 * services by replicas, jobs that have not finished by parallelism, machines by their vCPUs
 * and memory. A change is refused only when it takes a dimension over its limit AND raises it:
 * after a quota was tightened below current use, shrinking or unrelated changes still go
 * through (the tightening is reported, running work is not stopped).
 */
import type { FieldIssue } from '../model/errors.js';
import type { Job, Machine, Service } from '../model/objects.js';
import type { TenantSpec } from '../model/schemas.js';
import { DEFAULT_CELL_POLICY } from '../scheduler/state.js';

export interface TenantUsage {
  cpu: number;
  memory: number;
  instances: number;
  machines: number;
  /**
   * The fewest cells the cell and dedicated instances can occupy (a lower bound: each dedicated
   * instance needs one; a group's instances pack by cpu and memory into default-sized cells;
   * an instance larger than a default cell's room gets a cell of its own). The scheduler
   * enforces the quota on the cells it really creates.
   */
  cells: number;
}

interface GroupNeed {
  cpu: number;
  mem: number;
  oversized: number;
}

/** Adds `n` instances of one workload to the per-group cell needs. */
function addCellNeed(needs: Map<string, GroupNeed>, u: TenantUsage, spec: { isolation: string; group: string; cpu: number; memory: number }, n: number): void {
  if (n <= 0) return;
  if (spec.isolation === 'dedicated') {
    u.cells += n;
    return;
  }
  if (spec.isolation !== 'cell') return;
  const p = DEFAULT_CELL_POLICY;
  const g = needs.get(spec.group) ?? { cpu: 0, mem: 0, oversized: 0 };
  if (spec.cpu > p.cellCpu - p.guestOverheadCpu || spec.memory > p.cellMemoryMiB - p.guestOverheadMiB) g.oversized += n;
  else {
    g.cpu += spec.cpu * n;
    g.mem += spec.memory * n;
  }
  needs.set(spec.group, g);
}

/** What a tenant's workloads request in total. */
export function requestedBy(services: readonly Service[], jobs: readonly Job[], machines: readonly Machine[]): TenantUsage {
  const u: TenantUsage = { cpu: 0, memory: 0, instances: 0, machines: 0, cells: 0 };
  const needs = new Map<string, GroupNeed>();
  for (const s of services) {
    u.cpu += s.spec.cpu * s.spec.replicas;
    u.memory += s.spec.memory * s.spec.replicas;
    u.instances += s.spec.replicas;
    addCellNeed(needs, u, s.spec, s.spec.replicas);
  }
  for (const j of jobs) {
    if (j.status.phase === 'Succeeded' || j.status.phase === 'Failed') continue;
    const n = Math.min(j.spec.parallelism, j.spec.completions);
    u.cpu += j.spec.cpu * n;
    u.memory += j.spec.memory * n;
    u.instances += n;
    addCellNeed(needs, u, j.spec, n);
  }
  for (const m of machines) {
    u.cpu += m.spec.cpu;
    u.memory += m.spec.memory;
    u.machines += 1;
  }
  const p = DEFAULT_CELL_POLICY;
  for (const g of needs.values()) {
    const packed = Math.max(Math.ceil(g.cpu / (p.cellCpu - p.guestOverheadCpu) - 1e-9), Math.ceil(g.mem / (p.cellMemoryMiB - p.guestOverheadMiB) - 1e-9));
    u.cells += g.oversized + packed;
  }
  u.cpu = Math.round(u.cpu * 1000) / 1000;
  return u;
}

const LIMITS = [
  ['cpu', 'cpu'],
  ['memory', 'memory (MiB)'],
  ['instances', 'instances'],
  ['machines', 'machines'],
  ['cells', 'cells (at least this many are needed)'],
] as const;

/** The limits `after` breaks that `before` did not already break as much; one issue each. */
export function quotaProblems(quota: TenantSpec['quota'], before: TenantUsage, after: TenantUsage, path: string): FieldIssue[] {
  if (!quota) return [];
  const out: FieldIssue[] = [];
  for (const [k, label] of LIMITS) {
    const limit = quota[k];
    if (limit === undefined) continue;
    if (after[k] > limit + 1e-9 && after[k] > before[k] + 1e-9) {
      out.push({ path, message: `tenant quota for ${label} is ${limit}; this would bring the total to ${after[k]} (now ${before[k]})` });
    }
  }
  return out;
}

/** Dimensions where current use is above the quota (reported when a quota is tightened). */
export function overQuota(quota: TenantSpec['quota'], use: TenantUsage): string[] {
  if (!quota) return [];
  return LIMITS.flatMap(([k, label]) => {
    const limit = quota[k];
    return limit !== undefined && use[k] > limit + 1e-9 ? [`${label}: ${use[k]} in use, quota ${limit}`] : [];
  });
}

/** The registry an image reference pulls from (`docker.io` when it names none). */
export function registryOf(image: string): string {
  const first = image.split('/')[0] ?? '';
  return image.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost') ? first : 'docker.io';
}
