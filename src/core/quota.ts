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

export interface TenantUsage {
  cpu: number;
  memory: number;
  instances: number;
  machines: number;
}

/** What a tenant's workloads request in total. */
export function requestedBy(services: readonly Service[], jobs: readonly Job[], machines: readonly Machine[]): TenantUsage {
  const u: TenantUsage = { cpu: 0, memory: 0, instances: 0, machines: 0 };
  for (const s of services) {
    u.cpu += s.spec.cpu * s.spec.replicas;
    u.memory += s.spec.memory * s.spec.replicas;
    u.instances += s.spec.replicas;
  }
  for (const j of jobs) {
    if (j.status.phase === 'Succeeded' || j.status.phase === 'Failed') continue;
    const n = Math.min(j.spec.parallelism, j.spec.completions);
    u.cpu += j.spec.cpu * n;
    u.memory += j.spec.memory * n;
    u.instances += n;
  }
  for (const m of machines) {
    u.cpu += m.spec.cpu;
    u.memory += m.spec.memory;
    u.machines += 1;
  }
  u.cpu = Math.round(u.cpu * 1000) / 1000;
  return u;
}

const LIMITS = [
  ['cpu', 'cpu'],
  ['memory', 'memory (MiB)'],
  ['instances', 'instances'],
  ['machines', 'machines'],
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
