/**
 * Pure planning for services and jobs: from the owner, its instances and the hosts, the
 * changes that bring actual instances to the desired set. Returns data; the controller
 * writes it. Deterministic instance names (`web-0`, `web-1`…) make every step idempotent:
 * running the plan twice creates nothing twice.
 */
import { instanceName, instanceReady, TERMINAL_PHASES, type Instance, type InstanceSpec, type Job, type JobStatus, type Service } from '../model/objects.js';
import { containerSpecOf } from '../model/schemas.js';
import { mountsOf, type InstanceMount } from '../model/volumes.js';
import { isDeepStrictEqual } from 'node:util';

export type Change =
  /** A new instance, not placed yet: the placement pipeline writes it with its host or why it waits. */
  | { op: 'create'; instance: Instance }
  /**
   * Replace the instance's spec (the owner changed). `replace`: what the container runs
   * changed, so its generation moves and the agent replaces the container; otherwise only the
   * owner's generation is recorded (e.g. the service was scaled: its other replicas run on).
   */
  | { op: 'updateSpec'; name: string; spec: InstanceSpec; replace: boolean }
  | { op: 'requestDeletion'; name: string }
  /** Drop an instance record that no agent holds (never placed). */
  | { op: 'forget'; name: string }
  | { op: 'serviceStatus'; ready: number; observedGeneration: number }
  | { op: 'jobStatus'; status: JobStatus };

export interface PlanContext {
  now: string;
  newId: () => string;
}

/** The instance fields that say how the agent restarts and stops its container, from the owner's spec. */
type RestartFields = Pick<InstanceSpec, 'restartPolicy' | 'maxRestarts' | 'stopGracePeriodSeconds'>;

/** The stop grace of the owner's spec, as an instance carries it (absent when the owner sets none). */
function stopGraceOf(spec: { stopGracePeriodSeconds?: number | undefined }): Pick<InstanceSpec, 'stopGracePeriodSeconds'> {
  return spec.stopGracePeriodSeconds !== undefined ? { stopGracePeriodSeconds: spec.stopGracePeriodSeconds } : {};
}

/** A new, not yet placed instance; the placement pipeline then gives it a host or a reason. */
function newInstance(owner: Service | Job, index: number, ctx: PlanContext, restart: RestartFields, restartOn: Record<string, string> = {}): Instance {
  const tenant = owner.metadata.tenant ?? '';
  const spec: InstanceSpec = {
    owner: { kind: owner.kind, name: owner.metadata.name, uid: owner.metadata.uid },
    index,
    // The agent runs the probes from the instance's own spec: a probe change is a spec change.
    container: containerSpecOf(owner.spec),
    ...restart,
    host: '',
    ownerGeneration: owner.metadata.generation,
    // Templates resolved here (`data-2` for replica 2), so agents never resolve them.
    mounts: mountsOf(owner.spec, index),
    ...(Object.keys(restartOn).length > 0 ? { restartOn } : {}),
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

/** True when two mount lists are the same (absent: none, as on instances stored before volumes). */
function sameMounts(a: InstanceMount[] | undefined, b: InstanceMount[]): boolean {
  return isDeepStrictEqual(a ?? [], b);
}

/** True when two `restartOn` maps (absent: empty) name the same versions. */
function sameVersions(a: Record<string, string> | undefined, b: Record<string, string>): boolean {
  const ka = Object.keys(a ?? {});
  return ka.length === Object.keys(b).length && ka.every((k) => a?.[k] === b[k]);
}

/**
 * A service keeps `replicas` instances, one per ordinal. `tenant`'s instances are passed in;
 * `service` undefined means it was deleted: all its instances go. `restartOn`: the current
 * content versions of the `onChange: restart` Secrets and Configs the service uses
 * (core/secrets.ts restartVersions); an instance made with other versions gets its spec
 * updated, which restarts its container (the same path as a change of the service's spec).
 */
export function planService(serviceName: string, service: Service | undefined, instances: Instance[], ctx: PlanContext, restartOn: Record<string, string> = {}): Change[] {
  const mine = instances.filter((i) => i.spec.owner.kind === 'Service' && i.spec.owner.name === serviceName);
  if (!service) return removals(mine);
  const changes: Change[] = [];
  const current = mine.filter((i) => i.spec.owner.uid === service.metadata.uid);
  changes.push(...removals(mine.filter((i) => i.spec.owner.uid !== service.metadata.uid || i.spec.index >= service.spec.replicas)));
  const planned: Instance[] = [];
  const byIndex = new Map(current.map((i) => [i.spec.index, i]));
  const container = containerSpecOf(service.spec);
  const restart: RestartFields = { restartPolicy: service.spec.restartPolicy, maxRestarts: -1, ...stopGraceOf(service.spec) };
  for (let index = 0; index < service.spec.replicas; index++) {
    const existing = byIndex.get(index);
    if (!existing) {
      planned.push(newInstance(service, index, ctx, restart, restartOn));
      continue;
    }
    if (existing.metadata.deletionRequestedAt) continue; // its agent is removing it; recreated once gone
    if (existing.spec.ownerGeneration !== service.metadata.generation && !sameMounts(existing.spec.mounts, mountsOf(service.spec, index))) {
      // Other volumes may live on another host: the instance is re-created (and placed where
      // its volumes are) instead of being changed in place.
      changes.push(existing.spec.host === '' ? { op: 'forget', name: existing.metadata.name } : { op: 'requestDeletion', name: existing.metadata.name });
      continue;
    }
    if (existing.spec.ownerGeneration !== service.metadata.generation || !sameVersions(existing.spec.restartOn, restartOn)) {
      // The owner's current restartOn and stop grace replace the old ones (absent ones included).
      const { restartOn: _old, stopGracePeriodSeconds: _oldGrace, ...rest } = existing.spec;
      const spec: InstanceSpec = { ...rest, container, ...restart, ownerGeneration: service.metadata.generation, ...(Object.keys(restartOn).length > 0 ? { restartOn } : {}) };
      // The container is replaced only when what it runs changed: a new owner generation or a
      // new stop grace alone is recorded on the instance and leaves its container running.
      const { ownerGeneration: _was, stopGracePeriodSeconds: _graceWas, ...before } = existing.spec;
      const { ownerGeneration: _now, stopGracePeriodSeconds: _graceNow, ...after } = spec;
      changes.push({ op: 'updateSpec', name: existing.metadata.name, spec, replace: !isDeepStrictEqual(before, after) });
    }
  }
  changes.push(...planned.map((instance) => ({ op: 'create' as const, instance })));
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
    const restart: RestartFields = { restartPolicy: 'OnFailure', maxRestarts: job.spec.backoffLimit, ...stopGraceOf(job.spec) };
    for (let index = 0; index < job.spec.completions && running < job.spec.parallelism; index++) {
      if (used.has(index)) continue;
      planned.push(newInstance(job, index, ctx, restart));
      running++;
    }
    changes.push(...planned.map((instance) => ({ op: 'create' as const, instance })));
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
