/**
 * Pure planning for services and jobs: from the owner, its instances and the hosts, the
 * changes that bring actual instances to the desired set. Returns data; the controller
 * writes it. Deterministic instance names (`web-0`, `web-1`…) make every step idempotent:
 * running the plan twice creates nothing twice.
 */
import { instanceName, instanceReady, TERMINAL_PHASES, type Instance, type InstanceSpec, type Job, type JobStatus, type Service, type ServiceStatus } from '../model/objects.js';
import { containerSpecOf, type ServiceSpec } from '../model/schemas.js';
import { isOfRevision, nextRevision, rolloutBounds, rolloutOf, sameJson, specWithTemplate, templateOf, waitingReplicas, type ProgressingCondition, type ProgressingReason, type RolloutProgress } from '../model/rollout.js';
import { mountsOf } from '../model/volumes.js';
import { fencingOf } from '../model/fencing.js';
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
  /** The service's status (merged: the address stays). */
  | { op: 'serviceStatus'; status: ServiceStatusUpdate }
  /**
   * The rollout missed its deadline: write `spec` (the last complete revision's template) and
   * `status` (that template as a new revision) together, audited `service.rolledBack`.
   */
  | { op: 'rollback'; from: number; to: number; generation: number; spec: ServiceSpec; status: ServiceStatusUpdate; message: string }
  /** Plan this owner again after `afterMs` even if nothing changes (the progress deadline). */
  | { op: 'requeue'; afterMs: number }
  | { op: 'jobStatus'; status: JobStatus };

export interface PlanContext {
  now: string;
  newId: () => string;
}

/** The instance fields that say how the agent restarts and stops its container, from the owner's spec. */
type RestartFields = Pick<InstanceSpec, 'restartPolicy' | 'maxRestarts' | 'stopGracePeriodSeconds' | 'fencing'>;

/** The stop grace of the owner's spec, as an instance carries it (absent when the owner sets none). */
function stopGraceOf(spec: { stopGracePeriodSeconds?: number | undefined }): Pick<InstanceSpec, 'stopGracePeriodSeconds'> {
  return spec.stopGracePeriodSeconds !== undefined ? { stopGracePeriodSeconds: spec.stopGracePeriodSeconds } : {};
}

/** A new, not yet placed instance; the placement pipeline then gives it a host or a reason. */
function newInstance(owner: Service | Job, index: number, ctx: PlanContext, restart: RestartFields, restartOn: Record<string, string> = {}, revision?: number): Instance {
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
    ...(revision !== undefined ? { revision } : {}),
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

/** True when two `restartOn` maps (absent: empty) name the same versions. */
function sameVersions(a: Record<string, string> | undefined, b: Record<string, string>): boolean {
  const ka = Object.keys(a ?? {});
  return ka.length === Object.keys(b).length && ka.every((k) => a?.[k] === b[k]);
}

/** The service status fields a pass writes (merged into the stored status; the address is not the controller's). */
export type ServiceStatusUpdate = Omit<ServiceStatus, 'address'>;

/**
 * A service keeps `replicas` instances, one per ordinal. `tenant`'s instances are passed in;
 * `service` undefined means it was deleted: all its instances go. `restartOn`: the current
 * content versions of the `onChange: restart` Secrets and Configs the service uses
 * (core/secrets.ts restartVersions); an instance made with other versions gets its spec
 * updated, which restarts its container (the same path as a change of the service's spec).
 *
 * A change of the template (model/rollout.ts `templateOf`) is a new revision, rolled out in
 * waves: an instance of an older revision is removed only while the ready instances left stay
 * at least `replicas - unavailable`, and new ones are made (up to `replicas`) while no more
 * than `replicas + surge` are alive. Instances being deleted are not alive (as terminating pods
 * in Kubernetes): a replacement starts while its predecessor drains, so waves overlap stops.
 * A new instance takes the lowest ordinal no record holds; after a rollout the names may skip
 * numbers. Replicas that cannot run side by side take only ordinals below `replicas` (their
 * ordinal's volumes and ports) and wait for their predecessor to be gone. A rollout whose new
 * replicas make no progress for `progressDeadlineSeconds` stops and (autoRollback) returns to
 * the last complete revision's template: a `rollback` change.
 */
export function planService(serviceName: string, service: Service | undefined, instances: Instance[], ctx: PlanContext, restartOn: Record<string, string> = {}): Change[] {
  const mine = instances.filter((i) => i.spec.owner.kind === 'Service' && i.spec.owner.name === serviceName);
  if (!service) return removals(mine);
  const changes: Change[] = [];
  const current = mine.filter((i) => i.spec.owner.uid === service.metadata.uid);
  changes.push(...removals(mine.filter((i) => i.spec.owner.uid !== service.metadata.uid)));
  const R = service.spec.replicas;
  const settings = rolloutOf(service.spec);
  const bounds = rolloutBounds(settings, R);
  // Replicas that cannot run twice side by side: a published host port (a second container
  // on the host could not bind it), per-replica volumes (`data-<ordinal>`; a surge ordinal
  // has none) or a volume mounted read-write (one replica may: a block device in a cell is
  // attached to one VM at a time).
  // They are replaced one ordinal at a time, without a surge (as a StatefulSet is).
  const exclusive = service.spec.ports.some((p) => p.hostPort !== undefined) || (service.spec.volumeTemplates?.length ?? 0) > 0 || (service.spec.volumes ?? []).some((v) => v.readOnly !== true);
  const { surge, unavailable } = exclusive ? { surge: 0, unavailable: Math.max(1, bounds.unavailable) } : bounds;
  const rev = nextRevision(service.status, templateOf(service.spec), { now: ctx.now, generation: service.metadata.generation, cause: 'update' });
  const entry = rev.history.find((h) => h.revision === rev.revision);
  const isNew = (i: Instance): boolean => isOfRevision(i.spec.revision, entry, rev.revision);
  const container = containerSpecOf(service.spec);
  const restart: RestartFields = { restartPolicy: service.spec.restartPolicy, maxRestarts: -1, ...stopGraceOf(service.spec), fencing: fencingOf(service.spec) };
  const live = current.filter((i) => !i.metadata.deletionRequestedAt);
  const old = live.filter((i) => !isNew(i));

  // The progress deadline: progress is a new replica becoming ready; the clock starts with
  // the revision, and again when the rollout is resumed.
  const newReady = live.filter((i) => isNew(i) && instanceReady(i)).length;
  const was = service.status.progress;
  const wasPaused = service.status.conditions?.[0]?.reason === 'Paused';
  const resumed = wasPaused && !settings.paused;
  const progress: RolloutProgress = !was || was.revision !== rev.revision || newReady > was.ready || resumed || settings.paused ? { revision: rev.revision, at: ctx.now, ready: newReady } : was;
  const updated = Math.min(R, live.filter(isNew).length);
  const ready = current.filter(instanceReady).length;
  const complete = old.length === 0 && live.length === R && live.every(instanceReady);
  const deadlineAt = Date.parse(progress.at) + settings.progressDeadlineSeconds * 1000;
  const exceeded = !complete && !settings.paused && Date.parse(ctx.now) > deadlineAt;
  const stable = service.status.stableRevision;
  const stableEntry = rev.history.find((h) => h.revision === stable);

  if (exceeded && settings.autoRollback && stableEntry && stable !== rev.revision) {
    // Back to the last complete revision's template, as a new revision that takes it over
    // (its instances, still there, count as new); the next pass rolls the rest back.
    const back = nextRevision({ revision: rev.revision, history: rev.history }, stableEntry.template, { now: ctx.now, generation: service.metadata.generation + 1, cause: 'rollback' });
    const message = `revision ${rev.revision} made no progress for ${settings.progressDeadlineSeconds}s; rolled back to revision ${stableEntry.revision}'s template as revision ${back.revision}`;
    changes.push({
      op: 'rollback',
      from: rev.revision,
      to: stableEntry.revision,
      generation: service.metadata.generation,
      spec: specWithTemplate(service.spec, stableEntry.template),
      status: {
        ...statusCounts(service, updated, ready),
        revision: back.revision,
        history: back.history.map((h) => (h.revision === back.revision ? { ...h, message } : h)),
        stableRevision: stableEntry.revision,
        progress: { revision: back.revision, at: ctx.now, ready: 0 },
        conditions: [condition(service, 'True', 'RolledBack', message, ctx.now)],
      },
      message,
    });
    return changes;
  }

  // Replacing: not while paused or past the deadline (which then waits for a new revision,
  // or for the new replicas to become ready after all).
  const rolling = !settings.paused && !exceeded;
  const minReady = Math.max(0, R - unavailable);
  let budget = ready - minReady;
  const fresh = live.filter(isNew);
  const removeNow = new Set<string>();
  const remove = (i: Instance): void => {
    removeNow.add(i.metadata.name);
    changes.push(i.spec.host === '' ? { op: 'forget', name: i.metadata.name } : { op: 'requestDeletion', name: i.metadata.name });
  };
  // Not-ready first (they serve nothing), then the highest ordinals.
  const removalOrder = (xs: Instance[]): Instance[] => [...xs].sort((a, b) => Number(instanceReady(a)) - Number(instanceReady(b)) || b.spec.index - a.spec.index);
  // Old replicas: the ready ones while enough stay ready (lowest ordinals first); the not-ready
  // ones first: those not running (pending, crash-looping, failed) at once, running ones only
  // while the replicas left alive still cover `replicas - unavailable` plus the new ones not
  // ready yet (Kubernetes' cleanup bound): a running replica that missed a few checks under
  // load may be ready again in a moment, and removing every one that flapped at once would
  // empty the service.
  if (rolling) {
    let cleanup = live.length - minReady - live.filter((i) => isNew(i) && !instanceReady(i)).length;
    for (const i of [...old].sort((a, b) => Number(instanceReady(a)) - Number(instanceReady(b)) || a.spec.index - b.spec.index)) {
      if (instanceReady(i)) {
        if (budget <= 0) break;
        budget--;
      } else if (i.status.phase === 'Running') {
        if (cleanup <= 0) continue;
        cleanup--;
      }
      remove(i);
    }
  }
  // Scaled down: new replicas beyond `replicas`, then anything beyond the rollout's bound (a
  // scale-down is not bounded by maxUnavailable; it lowers the bound itself).
  for (const i of removalOrder(fresh).slice(0, Math.max(0, fresh.length - R))) remove(i);
  const oldLeft = old.filter((i) => !removeNow.has(i.metadata.name));
  const cap = R + (oldLeft.length > 0 ? surge : 0);
  const kept = live.filter((i) => !removeNow.has(i.metadata.name));
  for (const i of [...removalOrder(oldLeft), ...removalOrder(kept.filter(isNew))].slice(0, Math.max(0, kept.length - cap))) remove(i);
  const freshLeft = fresh.filter((i) => !removeNow.has(i.metadata.name));

  // The same template with other settings (scaled, rollout settings changed, a restart object
  // changed, a revision renumbered by an undo): the owner's current restartOn and stop grace
  // replace the old ones; the container is replaced only when what it runs changed.
  for (const existing of freshLeft) {
    if (existing.spec.ownerGeneration !== service.metadata.generation || !sameVersions(existing.spec.restartOn, restartOn) || existing.spec.revision !== rev.revision || existing.spec.fencing !== restart.fencing) {
      const { restartOn: _old, stopGracePeriodSeconds: _oldGrace, ...rest } = existing.spec;
      const spec: InstanceSpec = { ...rest, container, ...restart, ownerGeneration: service.metadata.generation, revision: rev.revision, ...(Object.keys(restartOn).length > 0 ? { restartOn } : {}) };
      // The fencing goes to the agent with the spec; it changes nothing the container runs.
      const { ownerGeneration: _was, stopGracePeriodSeconds: _graceWas, revision: _revWas, fencing: _fenceWas, ...before } = existing.spec;
      const { ownerGeneration: _now, stopGracePeriodSeconds: _graceNow, revision: _revNow, fencing: _fenceNow, ...after } = spec;
      changes.push({ op: 'updateSpec', name: existing.metadata.name, spec, replace: !isDeepStrictEqual(before, after) });
    }
  }

  // New replicas from the new revision: up to `replicas` of them, never more than the bound
  // alive at once (replicas being deleted do not count: they are on their way out, as in
  // Kubernetes, so a replacement starts while its predecessor drains). Paused or past the
  // deadline: only what is missing below `replicas` (a replica lost meanwhile).
  const alive = live.filter((i) => !removeNow.has(i.metadata.name)).length;
  const room = rolling ? Math.min(R + surge - alive, R - freshLeft.length) : R - alive;
  // Each takes the lowest ordinal no record holds. Replicas that cannot run side by side take
  // only ordinals below `replicas` (their volumes and ports are the ordinal's): a replacement
  // waits until its predecessor is gone.
  const held = new Set(current.filter((i) => !removeNow.has(i.metadata.name) || i.spec.host !== '').map((i) => i.spec.index));
  const limit = exclusive ? R : Number.POSITIVE_INFINITY;
  const planned: Instance[] = [];
  for (let index = 0; planned.length < room && index < limit; index++) {
    if (held.has(index)) continue;
    planned.push(newInstance(service, index, ctx, restart, restartOn, rev.revision));
  }
  changes.push(...planned.map((instance) => ({ op: 'create' as const, instance })));

  const why = entry?.cause === 'rollback' && entry.message ? `${entry.message}; ` : '';
  // Replicas the placement pipeline refused (no room, no host of the tier…): the rollout waits for them, and says so.
  const waitingNote = waitingReplicas(service, current)
    .map((w) => `; ${w.name} waits: ${w.reason}${w.message ? `: ${w.message}` : ''}`)
    .join('');
  const [reason, status, message]: [ProgressingReason, ProgressingCondition['status'], string] = settings.paused
    ? ['Paused', 'Unknown', `paused at revision ${rev.revision}: ${updated} of ${R} replicas updated`]
    : exceeded
      ? ['ProgressDeadlineExceeded', 'False', `revision ${rev.revision} made no progress for ${settings.progressDeadlineSeconds}s (${updated} of ${R} replicas updated, ${newReady} ready)${settings.autoRollback ? (stableEntry ? '' : '; no complete revision to roll back to') : '; autoRollback is off'}`]
      : complete
        ? [entry?.cause === 'rollback' ? 'RolledBack' : 'RolloutComplete', 'True', `${why}revision ${rev.revision} is rolled out: ${R} of ${R} replicas updated and ready`]
        : [entry?.cause === 'rollback' ? 'RolledBack' : 'NewReplicasRolling', 'True', `${why}revision ${rev.revision}: ${updated} of ${R} replicas updated, ${ready} ready${waitingNote}`];
  const history = complete && entry && !entry.completedAt ? rev.history.map((h) => (h === entry ? { ...h, completedAt: ctx.now } : h)) : rev.history;
  const next: ServiceStatusUpdate = {
    ...statusCounts(service, updated, ready),
    revision: rev.revision,
    history,
    ...(complete ? { stableRevision: rev.revision } : stable !== undefined ? { stableRevision: stable } : {}),
    progress,
    conditions: [condition(service, status, reason, message, ctx.now)],
  };
  const { address: _a, ...before } = service.status;
  if (!sameJson(before, next)) changes.push({ op: 'serviceStatus', status: next });
  // Come back at the deadline (nothing else may happen by then).
  if (!complete && !settings.paused && !exceeded) changes.push({ op: 'requeue', afterMs: Math.max(0, deadlineAt - Date.parse(ctx.now)) + 10 });
  return changes;
}

function statusCounts(service: Service, updated: number, ready: number): Pick<ServiceStatusUpdate, 'ready' | 'observedGeneration' | 'updatedReplicas' | 'readyReplicas' | 'availableReplicas'> {
  return { ready, observedGeneration: service.metadata.generation, updatedReplicas: updated, readyReplicas: ready, availableReplicas: ready };
}

/** The Progressing condition, its transition time kept while its status and reason stay. */
function condition(service: Service, status: ProgressingCondition['status'], reason: ProgressingReason, message: string, now: string): ProgressingCondition {
  const was = service.status.conditions?.find((c) => c.type === 'Progressing');
  const lastTransitionTime = was && was.status === status && was.reason === reason ? was.lastTransitionTime : now;
  return { type: 'Progressing', status, reason, message, lastTransitionTime };
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
    const restart: RestartFields = { restartPolicy: 'OnFailure', maxRestarts: job.spec.backoffLimit, ...stopGraceOf(job.spec), fencing: fencingOf(job.spec) };
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
