/**
 * What `rollout status` and `rollout history` show of a service (model/rollout.ts RolloutReport), read from its status and
 * joined with the audit log (who made each revision and when). Pure: the caller reads the
 * records (the HTTP edge exports the tenant's audit records since the oldest revision) and the
 * tenant's instances (for the replicas that wait for a place).
 */
import type { Instance, Service } from '../model/objects.js';
import { rolloutOf, templateSummary, waitingReplicas, type RolloutReport } from '../model/rollout.js';

export { waitingReplicas };
import type { AuditEntry } from '../audit/record.js';

/**
 * Builds the report; `records`: audit records of the service's tenant (any; others are
 * ignored); `instances`: the tenant's instances (any; the service's own are picked out).
 */
export function rolloutReport(s: Service, records: readonly AuditEntry[], instances: readonly Instance[] = []): RolloutReport {
  const tenant = s.metadata.tenant ?? '';
  const waiting = waitingReplicas(s, instances);
  const mine = records.filter((r) => r.outcome === 'success' && r.target.kind === 'Service' && r.target.name === s.metadata.name && (r.target.tenant ?? '') === tenant && typeof r.detail?.['generation'] === 'number');
  const condition = s.status.conditions?.find((c) => c.type === 'Progressing');
  return {
    tenant,
    name: s.metadata.name,
    generation: s.metadata.generation,
    observedGeneration: s.status.observedGeneration,
    replicas: s.spec.replicas,
    revision: s.status.revision,
    updatedReplicas: s.status.updatedReplicas ?? 0,
    readyReplicas: s.status.readyReplicas ?? s.status.ready,
    availableReplicas: s.status.availableReplicas ?? s.status.ready,
    settings: rolloutOf(s.spec),
    ...(condition ? { condition } : {}),
    complete: s.status.observedGeneration === s.metadata.generation && (condition?.reason === 'RolloutComplete' || (condition?.reason === 'RolledBack' && condition.message.includes('is rolled out'))),
    ...(waiting.length > 0 ? { waiting } : {}),
    history: (s.status.history ?? []).map((h) => {
      // The latest record of the generation that made the revision (a rollback's is the controller's).
      const by = [...mine].reverse().find((r) => r.detail?.['generation'] === h.generation);
      return {
        revision: h.revision,
        cause: h.cause,
        summary: templateSummary(h.template),
        template: h.template,
        generation: h.generation,
        createdAt: h.createdAt,
        ...(h.completedAt ? { completedAt: h.completedAt } : {}),
        ...(by ? { changedBy: by.actor.id, changedAt: by.time, action: by.action } : {}),
        current: h.revision === s.status.revision,
      };
    }),
  };
}
