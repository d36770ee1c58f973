/**
 * Pure planning for services and jobs: from the owner, its instances and the hosts, the
 * changes that bring actual instances to the desired set. Returns data; the controller
 * writes it. Deterministic instance names (`web-0`, `web-1`…) make every step idempotent:
 * running the plan twice creates nothing twice.
 */
import { instanceName, instanceReady, TERMINAL_PHASES, type Cell, type Host, type Instance, type InstanceSpec, type Job, type JobStatus, type Service } from '../model/objects.js';
import type { PlannedCell, TenantQuota, UnplacedCode } from '../scheduler/types.js';
import { containerSpecOf } from '../model/schemas.js';
import { placePending } from '../scheduler/model-adapter.js';

export type Change =
  /** A new cell (VM) for a (tenant, group); the controller may claim a warm cell instead. */
  | { op: 'createCell'; cell: PlannedCell }
  /** `unplaced`: why the scheduler could not place it (the instance is created waiting). */
  | { op: 'create'; instance: Instance; unplaced?: UnplacedCode }
  /** Replace the instance's spec (the owner changed); the agent restarts the container. */
  | { op: 'updateSpec'; name: string; spec: InstanceSpec }
  | { op: 'place'; name: string; host: string; cell?: string }
  | { op: 'unschedulable'; name: string; message: string; code?: UnplacedCode }
  | { op: 'requestDeletion'; name: string }
  /** Drop an instance record that no agent holds (never placed). */
  | { op: 'forget'; name: string }
  | { op: 'serviceStatus'; ready: number; observedGeneration: number }
  | { op: 'jobStatus'; status: JobStatus };

export interface PlanContext {
  now: string;
  newId: () => string;
  hosts: Host[];
  /** Every instance in the cluster, for capacity accounting. */
  allInstances: Instance[];
  /** Every cell in the cluster. */
  cells?: Cell[];
  /** Fresh cell names. */
  newCellId?: () => string;
  /** Tenant quotas the scheduler must not exceed. */
  quotas?: TenantQuota[];
}

/** A new, not yet placed instance; `placeAll` then gives it a host or a reason. */
function newInstance(owner: Service | Job, index: number, ctx: PlanContext, restart: Pick<InstanceSpec, 'restartPolicy' | 'maxRestarts'>): Instance {
  const tenant = owner.metadata.tenant ?? '';
  const spec: InstanceSpec = {
    owner: { kind: owner.kind, name: owner.metadata.name, uid: owner.metadata.uid },
    index,
    // The agent runs the probes from the instance's own spec: a probe change is a spec change.
    container: containerSpecOf(owner.spec),
    ...restart,
    host: '',
    ownerGeneration: owner.metadata.generation,
  };
  return {
    kind: 'Instance',
    metadata: {
      name: instanceName(owner.metadata.name, index),
      tenant,
      uid: ctx.newId(),
      labels: { [`carapace/${owner.kind.toLowerCase()}`]: owner.metadata.name },
      resourceVersion: 0,
      generation: 1,
      createdAt: ctx.now,
      updatedAt: ctx.now,
    },
    spec,
    status: { phase: 'Pending', reason: 'Scheduling', restarts: 0, ready: false },
  };
}

/**
 * Places new and still-unplaced instances in one scheduler call (so replicas spread and
 * capacity is shared fairly): new instances get their host (or an Unschedulable reason)
 * before they are written; existing ones get `place`/`unschedulable` changes.
 */
function placeAll(created: Instance[], waiting: Instance[], ctx: PlanContext): Change[] {
  const pending = [...created, ...waiting.filter((i) => i.spec.host === '' && !i.metadata.deletionRequestedAt)];
  if (pending.length === 0) return [];
  const r = placePending(ctx.hosts, ctx.allInstances, pending, Date.parse(ctx.now), ctx.cells ?? [], ctx.newCellId, ctx.quotas ?? []);
  const out: Change[] = r.plan.createCells.map((cell) => ({ op: 'createCell' as const, cell }));
  const isNew = new Set(created.map((i) => i.metadata.name));
  for (const i of pending) {
    const host = r.hosts.get(i.metadata.name);
    const cell = r.cells.get(i.metadata.name);
    const reason = r.reasons.get(i.metadata.name) ?? 'not placed';
    const where = cell !== undefined ? `cell ${cell} on host ${host ?? '?'}` : `host ${host ?? '?'}`;
    if (isNew.has(i.metadata.name)) {
      if (host !== undefined) {
        i.spec.host = host;
        if (cell !== undefined) i.spec.cell = cell;
        i.status = { ...i.status, reason: 'Scheduled', message: `placed in ${where}` };
        out.push({ op: 'create', instance: i });
      } else {
        i.status = { ...i.status, reason: 'Unschedulable', message: reason };
        const code = r.codes.get(i.metadata.name);
        out.push({ op: 'create', instance: i, ...(code ? { unplaced: code } : {}) });
      }
    } else if (host !== undefined) {
      out.push({ op: 'place', name: i.metadata.name, host, ...(cell !== undefined ? { cell } : {}) });
    } else if (i.status.message !== reason) {
      const code = r.codes.get(i.metadata.name);
      out.push({ op: 'unschedulable', name: i.metadata.name, message: reason, ...(code ? { code } : {}) });
    }
  }
  return out;
}

function ownedBy(owner: { metadata: { name: string } }, kind: 'Service' | 'Job', instances: Instance[]): Instance[] {
  return instances.filter((i) => i.spec.owner.kind === kind && i.spec.owner.name === owner.metadata.name);
}

/** Requests removal of instances that no longer belong (wrong owner uid or index out of range). */
function removals(stale: Instance[]): Change[] {
  const out: Change[] = [];
  for (const i of stale) {
    if (i.metadata.deletionRequestedAt) {
      if (i.spec.host === '') out.push({ op: 'forget', name: i.metadata.name });
      continue;
    }
    out.push(i.spec.host === '' ? { op: 'forget', name: i.metadata.name } : { op: 'requestDeletion', name: i.metadata.name });
  }
  return out;
}

/**
 * A service keeps `replicas` instances, one per ordinal. `tenant`'s instances are passed in;
 * `service` undefined means it was deleted: all its instances go.
 */
export function planService(serviceName: string, service: Service | undefined, instances: Instance[], ctx: PlanContext): Change[] {
  const mine = instances.filter((i) => i.spec.owner.kind === 'Service' && i.spec.owner.name === serviceName);
  if (!service) return removals(mine);
  const changes: Change[] = [];
  const current = mine.filter((i) => i.spec.owner.uid === service.metadata.uid);
  changes.push(...removals(mine.filter((i) => i.spec.owner.uid !== service.metadata.uid || i.spec.index >= service.spec.replicas)));
  const planned: Instance[] = [];
  const byIndex = new Map(current.map((i) => [i.spec.index, i]));
  const container = containerSpecOf(service.spec);
  const restart = { restartPolicy: service.spec.restartPolicy, maxRestarts: -1 };
  for (let index = 0; index < service.spec.replicas; index++) {
    const existing = byIndex.get(index);
    if (!existing) {
      planned.push(newInstance(service, index, ctx, restart));
      continue;
    }
    if (existing.metadata.deletionRequestedAt) continue; // its agent is removing it; recreated once gone
    if (existing.spec.ownerGeneration !== service.metadata.generation) {
      changes.push({
        op: 'updateSpec',
        name: existing.metadata.name,
        spec: { ...existing.spec, container, ...restart, ownerGeneration: service.metadata.generation },
      });
    }
  }
  changes.push(...placeAll(planned, current.filter((i) => i.spec.index < service.spec.replicas), ctx));
  const ready = current.filter(instanceReady).length;
  if (ready !== service.status.ready || service.status.observedGeneration !== service.metadata.generation) {
    changes.push({ op: 'serviceStatus', ready, observedGeneration: service.metadata.generation });
  }
  return changes;
}

/**
 * A job runs `completions` successful instances, at most `parallelism` at once; an instance
 * that fails after `backoffLimit` retries fails the job (and stops its other instances).
 */
export function planJob(jobName: string, job: Job | undefined, instances: Instance[], ctx: PlanContext): Change[] {
  const mine = ownedBy({ metadata: { name: jobName } }, 'Job', instances);
  if (!job) return removals(mine);
  const changes: Change[] = [];
  const current = mine.filter((i) => i.spec.owner.uid === job.metadata.uid);
  changes.push(...removals(mine.filter((i) => i.spec.owner.uid !== job.metadata.uid)));
  const succeeded = current.filter((i) => i.status.phase === 'Succeeded').length;
  const failedInstances = current.filter((i) => i.status.phase === 'Failed');
  const failed = current.reduce((n, i) => n + i.status.restarts + (i.status.phase === 'Failed' ? 1 : 0), 0);
  const active = current.filter((i) => !TERMINAL_PHASES.includes(i.status.phase) && !i.metadata.deletionRequestedAt);
  const status: JobStatus = { ...job.status, succeeded, failed, observedGeneration: job.metadata.generation };
  const planned: Instance[] = [];

  if (job.status.phase === 'Succeeded' || job.status.phase === 'Failed') {
    // Terminal: nothing more runs. Completed instances are kept for their logs.
    changes.push(...removals(active));
  } else if (failedInstances.length > 0) {
    const first = failedInstances[0];
    status.phase = 'Failed';
    status.reason = `instance ${first?.metadata.name ?? '?'} failed ${job.spec.backoffLimit + 1} time(s) (backoffLimit ${job.spec.backoffLimit}): ${first?.status.message ?? first?.status.reason ?? 'exited'}`;
    status.finishedAt = ctx.now;
    changes.push(...removals(active));
  } else if (succeeded >= job.spec.completions) {
    status.phase = 'Succeeded';
    status.finishedAt = ctx.now;
  } else {
    const used = new Set(current.map((i) => i.spec.index));
    let running = active.length;
    const restart = { restartPolicy: 'OnFailure' as const, maxRestarts: job.spec.backoffLimit };
    for (let index = 0; index < job.spec.completions && running < job.spec.parallelism; index++) {
      if (used.has(index)) continue;
      planned.push(newInstance(job, index, ctx, restart));
      running++;
    }
    changes.push(...placeAll(planned, active, ctx));
    if (status.phase === 'Pending' && (running > 0 || succeeded > 0)) {
      status.phase = 'Running';
      status.startedAt = ctx.now;
    }
  }
  if (!sameJobStatus(status, job.status)) changes.push({ op: 'jobStatus', status });
  return changes;
}

function sameJobStatus(a: JobStatus, b: JobStatus): boolean {
  return (
    a.phase === b.phase &&
    a.succeeded === b.succeeded &&
    a.failed === b.failed &&
    a.reason === b.reason &&
    a.observedGeneration === b.observedGeneration
  );
}
