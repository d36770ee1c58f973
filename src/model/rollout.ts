/**
 * Rolling updates of services, the pure part: the `spec.rollout` schema, its bounds resolved
 * against a replica count, what a service's "template" is (what a revision names), the
 * revision history kept on the service's status, and the `Progressing` condition. The
 * planner (control/workload-plan.ts) decides the waves from these; nothing here does I/O.
 */
import { z } from 'zod';
import type { Instance, Service } from './objects.js';
import type { ServiceSpec } from './schemas.js';

/** An absolute count (0-10000) or a percentage of the replicas ("25%", 0-100%), as Kubernetes takes them. */
export const IntOrPercentSchema = z.union([
  z.number().int().min(0).max(10_000),
  z
    .string()
    .regex(/^(100|[1-9]?[0-9])%$/, 'must be a whole number from 0 to 10000 or a percentage from "0%" to "100%"'),
]);
export type IntOrPercent = z.infer<typeof IntOrPercentSchema>;

/** Revisions kept in a service's `status.history` (Kubernetes' revisionHistoryLimit default). */
export const REVISION_HISTORY_LIMIT = 10;

/** Defaults of `spec.rollout`: one extra replica at a time, none taken down before its replacement is ready. */
export const ROLLOUT_DEFAULTS = { maxSurge: 1, maxUnavailable: 0, progressDeadlineSeconds: 600, autoRollback: true, paused: false } as const;

/**
 * `spec.rollout` of a service: how a change of its template replaces its replicas. Absent
 * fields take ROLLOUT_DEFAULTS (resolved by `rolloutOf`, not by the schema, so specs stored
 * before rollouts existed compare equal).
 */
export const RolloutSchema = z
  .strictObject({
    /** Replicas that may exist above `replicas` during a rollout; a percentage rounds up. */
    maxSurge: IntOrPercentSchema.optional(),
    /** Ready replicas that may be missing below `replicas` during a rollout; a percentage rounds down. */
    maxUnavailable: IntOrPercentSchema.optional(),
    /** Seconds without a new replica becoming ready after which the rollout has failed. */
    progressDeadlineSeconds: z.number().int().min(1).max(86_400).optional(),
    /** Return to the last complete revision when the deadline passes (default true). */
    autoRollback: z.boolean().optional(),
    /** No replacements while true (scaling still happens); the deadline does not run. */
    paused: z.boolean().optional(),
  })
  .superRefine((r, ctx) => {
    if (isZero(r.maxSurge ?? ROLLOUT_DEFAULTS.maxSurge) && isZero(r.maxUnavailable ?? ROLLOUT_DEFAULTS.maxUnavailable)) {
      ctx.addIssue({ code: 'custom', path: ['maxUnavailable'], message: 'must not be 0 when maxSurge is 0 (the rollout could never replace a replica)' });
    }
  });
export type Rollout = z.infer<typeof RolloutSchema>;

function isZero(v: IntOrPercent): boolean {
  return v === 0 || v === '0%';
}

/** `spec.rollout` with its defaults filled in. */
export interface RolloutSettings {
  maxSurge: IntOrPercent;
  maxUnavailable: IntOrPercent;
  progressDeadlineSeconds: number;
  autoRollback: boolean;
  paused: boolean;
}

/** The rollout settings of a service spec, defaults filled in. */
export function rolloutOf(spec: { rollout?: Rollout | undefined }): RolloutSettings {
  const r = spec.rollout ?? {};
  return {
    maxSurge: r.maxSurge ?? ROLLOUT_DEFAULTS.maxSurge,
    maxUnavailable: r.maxUnavailable ?? ROLLOUT_DEFAULTS.maxUnavailable,
    progressDeadlineSeconds: r.progressDeadlineSeconds ?? ROLLOUT_DEFAULTS.progressDeadlineSeconds,
    autoRollback: r.autoRollback ?? ROLLOUT_DEFAULTS.autoRollback,
    paused: r.paused ?? ROLLOUT_DEFAULTS.paused,
  };
}

function resolve(v: IntOrPercent, replicas: number, roundUp: boolean): number {
  if (typeof v === 'number') return v;
  const pct = Number(v.slice(0, -1));
  const exact = (replicas * pct) / 100;
  return roundUp ? Math.ceil(exact) : Math.floor(exact);
}

/**
 * The bounds of a rollout of `replicas` replicas as counts: `surge` above `replicas`,
 * `unavailable` below. As in Kubernetes, when both come out 0 (a small percentage of few
 * replicas), `unavailable` is 1 so that the rollout can move.
 */
export function rolloutBounds(r: RolloutSettings, replicas: number): { surge: number; unavailable: number } {
  const surge = resolve(r.maxSurge, replicas, true);
  const unavailable = resolve(r.maxUnavailable, replicas, false);
  return { surge, unavailable: surge === 0 && unavailable === 0 ? 1 : unavailable };
}

/**
 * A service's template: everything of its spec that says what a replica is. Not in it: how
 * many (`replicas`), how to roll (`rollout`) and the drain budget (`maxUnavailable`), whose
 * changes make no new revision.
 */
export type ServiceTemplate = Omit<ServiceSpec, 'replicas' | 'rollout' | 'maxUnavailable' | 'fencing'>;

/** The template of a service spec (see ServiceTemplate). */
export function templateOf(spec: ServiceSpec): ServiceTemplate {
  const { replicas: _r, rollout: _ro, maxUnavailable: _mu, fencing: _f, ...template } = spec;
  return template;
}

/** The spec with `template` as its template and `spec`'s own replicas, rollout, drain budget and fencing (undo, rollback). */
export function specWithTemplate(spec: ServiceSpec, template: ServiceTemplate): ServiceSpec {
  return {
    ...template,
    replicas: spec.replicas,
    ...(spec.rollout !== undefined ? { rollout: spec.rollout } : {}),
    ...(spec.maxUnavailable !== undefined ? { maxUnavailable: spec.maxUnavailable } : {}),
    ...(spec.fencing !== undefined ? { fencing: spec.fencing } : {}),
  };
}

/** Deep equality of JSON data (templates as stored), key order ignored. */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  // `as`: both are non-null objects here; compared by their own enumerable keys.
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  const ka = Object.keys(ra).filter((k) => ra[k] !== undefined);
  const kb = Object.keys(rb).filter((k) => rb[k] !== undefined);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(rb, k) && sameJson(ra[k], rb[k]));
}

/** Why a revision was made. */
export type RevisionCause = 'update' | 'rollback' | 'undo' | 'restart';

/** One revision of a service: a template it ran (or tried to run), kept in `status.history`. */
export interface ServiceRevision {
  revision: number;
  template: ServiceTemplate;
  /** When the controller first saw this template (or the rollback made it). */
  createdAt: string;
  /** The service's generation when it was made: the audit log's `update` record with this generation says who. */
  generation: number;
  cause: RevisionCause;
  /**
   * Earlier revision numbers with the same template, which this one took over (an undo or a
   * rollback renumbers, as Kubernetes does): their instances count as this revision's.
   */
  replaces?: number[];
  /** When all of its replicas were first ready (the rollout completed). */
  completedAt?: string;
  /** For a rollback: why (which revision missed its deadline), kept in the condition's message while it rolls and after. */
  message?: string;
}

/** Reasons of the `Progressing` condition. */
export const PROGRESSING_REASONS = ['NewReplicasRolling', 'RolloutComplete', 'ProgressDeadlineExceeded', 'RolledBack', 'Paused'] as const;
export type ProgressingReason = (typeof PROGRESSING_REASONS)[number];

/** A service's `Progressing` condition (Kubernetes' Deployment condition of that type). */
export interface ProgressingCondition {
  type: 'Progressing';
  status: 'True' | 'False' | 'Unknown';
  reason: ProgressingReason;
  message: string;
  lastTransitionTime: string;
}

/** What a service's pass remembers between passes to judge the progress deadline. */
export interface RolloutProgress {
  /** The revision being judged. */
  revision: number;
  /** When a replica of it last became ready (or the revision started, or the rollout resumed). */
  at: string;
  /** How many of its replicas were ready then. */
  ready: number;
}

/**
 * The revision a spec's template is, given the service's status: the current one when the
 * template is unchanged; else a new number (one above every number used), taking over an
 * earlier revision with the same template (removed from the history, its number listed in
 * `replaces`). History is bounded to REVISION_HISTORY_LIMIT, oldest first out.
 */
export function nextRevision(
  status: { revision?: number | undefined; history?: ServiceRevision[] | undefined },
  template: ServiceTemplate,
  at: { now: string; generation: number; cause: RevisionCause },
): { revision: number; history: ServiceRevision[]; changed: boolean } {
  const history = status.history ?? [];
  const current = history.find((h) => h.revision === status.revision);
  if (current && sameJson(current.template, template)) return { revision: current.revision, history, changed: false };
  const top = Math.max(0, status.revision ?? 0, ...history.map((h) => h.revision));
  const same = history.find((h) => sameJson(h.template, template));
  const revision = top + 1;
  const entry: ServiceRevision = {
    revision,
    template,
    createdAt: at.now,
    generation: at.generation,
    // What an update was, from what changed: an earlier template (undo), or only `restartedAt` (restart).
    cause: at.cause !== 'update' ? at.cause : same ? 'undo' : current && sameJson({ ...current.template, restartedAt: undefined }, { ...template, restartedAt: undefined }) ? 'restart' : 'update',
    ...(same ? { replaces: [...(same.replaces ?? []), same.revision] } : {}),
  };
  const kept = [...history.filter((h) => h !== same), entry];
  return { revision, history: kept.slice(Math.max(0, kept.length - REVISION_HISTORY_LIMIT)), changed: true };
}

/** True when an instance made from revision `made` (absent: 1, made before rollouts existed) is of revision `entry`. */
export function isOfRevision(made: number | undefined, entry: Pick<ServiceRevision, 'revision' | 'replaces'> | undefined, revision: number): boolean {
  const m = made ?? 1;
  return m === revision || (entry?.replaces ?? []).includes(m);
}

/** One revision as `rollout history` lists it. */
export interface RevisionReport {
  revision: number;
  cause: RevisionCause;
  /** One line: image, command, args, env, restart time. */
  summary: string;
  template: ServiceTemplate;
  /** The service generation that made it; the audit record of that generation says who. */
  generation: number;
  createdAt: string;
  completedAt?: string;
  /** Who made it (the audit record's actor: a user id, or `controller` for a rollback); absent when the log has no record of it. */
  changedBy?: string;
  /** When that record was written. */
  changedAt?: string;
  /** The audit action (`update`, `create`, `service.rollout.undo`, `service.rolledBack`…). */
  action?: string;
  current: boolean;
}

/** A service's rollout, as the API answers `GET …/services/NAME/rollout` (built by core/rollout-report.ts). */
export interface RolloutReport {
  tenant: string;
  name: string;
  generation: number;
  observedGeneration: number;
  replicas: number;
  revision: number | undefined;
  updatedReplicas: number;
  readyReplicas: number;
  availableReplicas: number;
  settings: RolloutSettings;
  condition?: ProgressingCondition;
  /** True when the controller has seen the current spec and the rollout of its revision is complete. */
  complete: boolean;
  /**
   * Replicas that wait for a place (no host or cell has room, a quota or a volume holds them),
   * with why: what a rollout that stands still waits for (a surge replica that cannot be placed
   * holds a rollout with maxUnavailable 0 until its deadline). Absent when none waits.
   */
  waiting?: WaitingReplica[];
  history: RevisionReport[];
}

/** A replica of a service that the placement pipeline could not place, as its status says. */
export interface WaitingReplica {
  name: string;
  /** `Unschedulable`, or a volume's wait reason (`VolumeInUse`, `VolumeHostNotReady`…). */
  reason: string;
  /** The scheduler's sentence (e.g. `no host has room for a cell of 2 cpu / 2048 MiB: …`). */
  message: string;
}

/** One line saying what a template runs, for `rollout history`. */
export function templateSummary(t: ServiceTemplate): string {
  const parts = [t.image];
  if (t.command) parts.push(`command=${JSON.stringify(t.command)}`);
  if (t.args) parts.push(`args=${JSON.stringify(t.args)}`);
  const env = Object.entries(t.env ?? {});
  if (env.length > 0) parts.push(`env=${env.map(([k, v]) => `${k}=${v.length > 24 ? `${v.slice(0, 21)}...` : v}`).join(',')}`);
  if (t.restartedAt) parts.push(`restartedAt=${t.restartedAt}`);
  return parts.join(' ');
}

/**
 * The service's replicas (this incarnation's, not being deleted) that the placement pipeline
 * refused (`status.reason` other than `Scheduling`, which a new instance has until its first
 * placement pass), by name.
 */
export function waitingReplicas(s: Service, instances: readonly Instance[]): WaitingReplica[] {
  return instances
    .filter((i) => i.spec.owner.kind === 'Service' && i.spec.owner.uid === s.metadata.uid && (i.metadata.tenant ?? '') === (s.metadata.tenant ?? ''))
    .filter((i) => i.spec.host === '' && !i.metadata.deletionRequestedAt && i.status.phase === 'Pending' && i.status.reason !== undefined && i.status.reason !== 'Scheduling')
    .sort((a, b) => a.spec.index - b.spec.index)
    .map((i) => ({ name: i.metadata.name, reason: i.status.reason ?? '', message: i.status.message ?? '' }));
}
