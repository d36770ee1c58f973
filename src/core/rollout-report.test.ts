import { describe, expect, it } from 'vitest';
import { parseManifest } from '../model/manifest.js';
import type { Instance, Service } from '../model/objects.js';
import { planService } from '../control/workload-plan.js';
import { rolloutReport, waitingReplicas } from './rollout-report.js';

const NOW = '2026-01-01T00:00:00.000Z';

function service(uid = 'svc-uid'): Service {
  const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'cweb', tenant: 'acme' }, spec: { image: 'r/web:1', isolation: 'cell', replicas: 3, ports: [{ containerPort: 8080 }] } });
  if (m.kind !== 'Service') throw new Error('not a service');
  return { kind: 'Service', metadata: { name: 'cweb', tenant: 'acme', uid, labels: {}, resourceVersion: 5, generation: 1, createdAt: NOW, updatedAt: NOW }, spec: m.spec, status: { ready: 0, observedGeneration: 0 } };
}

/** The service's replicas as the planner makes them (`cweb-0`…), with the fields a test sets. */
function replicas(s: Service, n: number): Instance[] {
  let id = 0;
  const made = planService('cweb', { ...s, spec: { ...s.spec, replicas: n } }, [], { now: NOW, newId: () => `i${++id}` });
  return made.flatMap((c) => (c.op === 'create' ? [c.instance] : []));
}

describe('rolloutReport', () => {
  it('names the replicas the placement pipeline refused, with the reason and sentence of their status; placed, new and deleting ones are not listed', () => {
    const s = service();
    const [placed, fresh, refused, deleting] = replicas(s, 4) as [Instance, Instance, Instance, Instance];
    const all: Instance[] = [
      { ...placed, spec: { ...placed.spec, host: 'h1', cell: 'cell-1' }, status: { ...placed.status, phase: 'Running', reason: 'Started', ready: true } },
      fresh, // `Scheduling`: no placement pass has seen it yet
      { ...refused, status: { ...refused.status, reason: 'Unschedulable', message: 'no host has room for a cell of 2 cpu / 2048 MiB: 1 hosts considered; 1 short of cpu, 0 short of memory' } },
      { ...deleting, metadata: { ...deleting.metadata, deletionRequestedAt: NOW }, status: { ...deleting.status, reason: 'Unschedulable', message: 'x' } },
    ];
    const r = rolloutReport(s, [], all);
    expect(r.waiting).toEqual([{ name: 'cweb-2', reason: 'Unschedulable', message: 'no host has room for a cell of 2 cpu / 2048 MiB: 1 hosts considered; 1 short of cpu, 0 short of memory' }]);
    // Another incarnation's (same name, other uid) or another service's instances are not this one's.
    expect(waitingReplicas(service('other-uid'), all)).toEqual([]);
    // Nothing waits: no `waiting` field at all.
    expect('waiting' in rolloutReport(s, [], all.slice(0, 2))).toBe(false);
    expect('waiting' in rolloutReport(s, [])).toBe(false);
  });
});
