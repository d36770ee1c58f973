import { describe, expect, it } from 'vitest';
import { parseManifest } from '../model/manifest.js';
import type { Instance, Job, Service } from '../model/objects.js';
import { planJob, planService, type Change, type PlanContext } from './workload-plan.js';

const NOW = '2026-01-01T00:00:00.000Z';

function service(spec: Record<string, unknown>, generation = 1): Service {
  const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'r/web:1', isolation: 'host', ...spec } });
  if (m.kind !== 'Service') throw new Error('not a service');
  return {
    kind: 'Service',
    metadata: { name: 'web', tenant: 'acme', uid: 'svc-uid', labels: {}, resourceVersion: 5, generation, createdAt: NOW, updatedAt: NOW },
    spec: m.spec,
    status: { ready: 0, observedGeneration: 0 },
  };
}

function job(spec: Record<string, unknown>, phase: Job['status']['phase'] = 'Pending'): Job {
  const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Job', metadata: { name: 'batch', tenant: 'acme' }, spec: { image: 'r/b:1', isolation: 'host', ...spec } });
  if (m.kind !== 'Job') throw new Error('not a job');
  return {
    kind: 'Job',
    metadata: { name: 'batch', tenant: 'acme', uid: 'job-uid', labels: {}, resourceVersion: 5, generation: 1, createdAt: NOW, updatedAt: NOW },
    spec: m.spec,
    status: { phase, succeeded: 0, failed: 0, observedGeneration: 1 },
  };
}

let ids = 0;
function ctx(): PlanContext {
  return { now: NOW, newId: () => `id-${++ids}` };
}

function created(changes: Change[]): Instance[] {
  return changes.flatMap((c) => (c.op === 'create' ? [c.instance] : []));
}

/** The created instances as they are once the placement pipeline put them on host h1. */
function materialise(changes: Change[]): Instance[] {
  return created(changes).map((i) => ({ ...i, spec: { ...i.spec, host: 'h1' } }));
}

describe('planService', () => {
  it('creates one deterministically named instance per replica, waiting for the placement pipeline', () => {
    const s = service({ replicas: 3 });
    const out = created(planService('web', s, [], ctx()));
    expect(out.map((i) => i.metadata.name)).toEqual(['web-0', 'web-1', 'web-2']);
    expect(out.every((i) => i.spec.host === '' && i.status.phase === 'Pending' && i.status.reason === 'Scheduling')).toBe(true);
  });

  it('is idempotent: planning again over its own result creates nothing', () => {
    const s = service({ replicas: 2 });
    const first = materialise(planService('web', s, [], ctx()));
    const again = planService('web', s, first, ctx());
    expect(created(again)).toEqual([]);
    expect(again.filter((c) => c.op === 'requestDeletion')).toEqual([]);
  });

  it('scales down by removing the highest ordinals', () => {
    const insts = materialise(planService('web', service({ replicas: 3 }), [], ctx()));
    const down = planService('web', service({ replicas: 1 }), insts, ctx());
    expect(down.flatMap((c) => (c.op === 'requestDeletion' ? [c.name] : [])).sort()).toEqual(['web-1', 'web-2']);
  });

  it('a service without revision history (stored before rollouts) adopts its instances as revision 1: a difference is updated in place', () => {
    const insts = materialise(planService('web', service({ replicas: 1 }), [], ctx()));
    const changes = planService('web', service({ replicas: 1, image: 'r/web:2' }, 2), insts, ctx());
    const upd = changes.find((c) => c.op === 'updateSpec');
    expect(upd && upd.op === 'updateSpec' && upd.spec.container.image).toBe('r/web:2');
    expect(upd && upd.op === 'updateSpec' && upd.replace).toBe(true);
  });

  it('scaling records the new generation on the replicas that stay without replacing their containers', () => {
    const insts = materialise(planService('web', service({ replicas: 2 }), [], ctx()));
    const up = planService('web', service({ replicas: 3 }, 2), insts, ctx());
    const upd = up.flatMap((c) => (c.op === 'updateSpec' ? [c] : []));
    expect(upd.map((c) => [c.name, c.spec.ownerGeneration, c.replace])).toEqual([
      ['web-0', 2, false],
      ['web-1', 2, false],
    ]);
    expect(created(up).map((i) => i.metadata.name)).toEqual(['web-2']);
  });

  it('onChange restart: new instances carry the versions; a changed version updates the spec (restarting the container), the same ones change nothing', () => {
    const s = service({ replicas: 2, secrets: [{ secret: 'db' }] });
    const v1 = { 'secret/db': 'u1:1' };
    const first = planService('web', s, [], ctx(), v1);
    expect(created(first).map((i) => i.spec.restartOn)).toEqual([v1, v1]);
    const insts = materialise(first);
    expect(planService('web', s, insts, ctx(), v1).filter((c) => c.op === 'updateSpec')).toEqual([]);
    const v2 = { 'secret/db': 'u1:2' };
    const upd = planService('web', s, insts, ctx(), v2).flatMap((c) => (c.op === 'updateSpec' ? [c] : []));
    expect(upd.map((c) => [c.name, c.spec.restartOn])).toEqual([['web-0', v2], ['web-1', v2]]);
    // No restart object any more (onChange switched to update): the field goes, once.
    const none = planService('web', s, insts, ctx(), {}).flatMap((c) => (c.op === 'updateSpec' ? [c] : []));
    expect(none.map((c) => 'restartOn' in c.spec)).toEqual([false, false]);
    // Instances without restart objects keep specs without the field (stored specs compare equal).
    const plain = materialise(planService('web', service({ replicas: 1 }), [], ctx()));
    expect('restartOn' in (plain[0]?.spec ?? {})).toBe(false);
  });

  it('copies stopGracePeriodSeconds into each instance; a change updates it, a removal drops it; absent stays absent', () => {
    const insts = materialise(planService('web', service({ replicas: 1, stopGracePeriodSeconds: 1 }), [], ctx()));
    expect(insts[0]?.spec.stopGracePeriodSeconds).toBe(1);
    const upd = planService('web', service({ replicas: 1, stopGracePeriodSeconds: 30 }, 2), insts, ctx()).flatMap((c) => (c.op === 'updateSpec' ? [c] : []));
    expect(upd.map((c) => c.spec.stopGracePeriodSeconds)).toEqual([30]);
    const dropped = planService('web', service({ replicas: 1 }, 3), insts, ctx()).flatMap((c) => (c.op === 'updateSpec' ? [c] : []));
    expect(dropped.map((c) => 'stopGracePeriodSeconds' in c.spec)).toEqual([false]);
    const plain = materialise(planService('web', service({ replicas: 1 }), [], ctx()));
    expect('stopGracePeriodSeconds' in (plain[0]?.spec ?? {})).toBe(false);
    const [j] = created(planJob('batch', job({ stopGracePeriodSeconds: 0 }), [], ctx()));
    expect(j?.spec.stopGracePeriodSeconds).toBe(0);
  });

  it('removes every instance when the service is gone', () => {
    const insts = materialise(planService('web', service({ replicas: 2 }), [], ctx()));
    expect(planService('web', undefined, insts, ctx()).map((c) => c.op)).toEqual(['requestDeletion', 'requestDeletion']);
  });

  it('replaces instances of an older service with the same name (different uid)', () => {
    const insts = materialise(planService('web', service({ replicas: 1 }), [], ctx()));
    const recreated = { ...service({ replicas: 1 }), metadata: { ...service({}).metadata, uid: 'new-uid' } };
    const ops = planService('web', recreated, insts, ctx()).map((c) => c.op);
    expect(ops).toContain('requestDeletion');
  });



  it("copies the service's probes into each instance's container spec (a probe change without revision history updates in place)", () => {
    const probes = { livenessProbe: { httpGet: { path: '/healthz', port: 8080 } }, readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 2 } };
    const [inst] = created(planService('web', service({ ...probes }), [], ctx()));
    expect(inst?.spec.container.livenessProbe).toEqual({ httpGet: { path: '/healthz', port: 8080 }, initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 1, failureThreshold: 3, successThreshold: 1 });
    expect(inst?.spec.container.readinessProbe?.periodSeconds).toBe(2);
    expect(inst?.status.ready).toBe(false);
    const changes = planService('web', service({ ...probes, readinessProbe: { tcpSocket: { port: 9090 } } }, 2), inst ? [inst] : [], ctx());
    const upd = changes.find((c) => c.op === 'updateSpec');
    expect(upd?.op === 'updateSpec' && upd.spec.container.readinessProbe?.tcpSocket).toEqual({ port: 9090 });
  });

  it('counts as ready only Running instances whose readiness probe passes (or that have none)', () => {
    const run = (i: Instance, ready: boolean, phase: Instance['status']['phase'] = 'Running'): Instance => ({ ...i, status: { ...i.status, phase, ready } });
    const withProbe = service({ replicas: 4, readinessProbe: { httpGet: { port: 8080 } } });
    const insts = materialise(planService('web', withProbe, [], ctx()));
    const [a, b, c, d] = insts;
    if (!a || !b || !c || !d) throw new Error('expected four');
    const mixed = [run(a, true), run(b, false), run(c, true, 'Backoff'), { ...run(d, true), metadata: { ...d.metadata, deletionRequestedAt: NOW } }];
    const st = planService('web', withProbe, mixed, ctx()).find((ch) => ch.op === 'serviceStatus');
    expect(st?.op === 'serviceStatus' && st.status.ready).toBe(1);
    // Records written before `status.ready` existed: Running without a readiness probe is ready, with one it is not.
    const legacy = (i: Instance): Instance => {
      const { ready: _ready, ...status } = { ...i.status, phase: 'Running' as const };
      return { ...i, status: status as Instance['status'] }; // `as`: deliberately an old record without `ready`
    };
    const plain = service({ replicas: 1 });
    const old = materialise(planService('web', plain, [], ctx())).map(legacy);
    const st2 = planService('web', plain, old, ctx()).find((ch) => ch.op === 'serviceStatus');
    expect(st2?.op === 'serviceStatus' && st2.status.ready).toBe(1);
    const oldProbed = [legacy(a)];
    const st3 = planService('web', withProbe, oldProbed, ctx()).find((ch) => ch.op === 'serviceStatus');
    expect(st3?.op === 'serviceStatus' && st3.status.ready).toBe(0);
  });

});

describe('planJob', () => {
  it('starts at most `parallelism` instances', () => {
    const out = created(planJob('batch', job({ completions: 5, parallelism: 2 }), [], ctx()));
    expect(out.map((i) => i.metadata.name)).toEqual(['batch-0', 'batch-1']);
    expect(out[0]?.spec.restartPolicy).toBe('OnFailure');
  });

  it('continues with the next indexes as instances succeed, then succeeds', () => {
    const j = job({ completions: 3, parallelism: 2 });
    let insts = materialise(planJob('batch', j, [], ctx()));
    insts = insts.map((i) => ({ ...i, status: { ...i.status, phase: 'Succeeded' as const } }));
    const next = created(planJob('batch', j, insts, ctx()));
    expect(next.map((i) => i.metadata.name)).toEqual(['batch-2']);
    const all = [...insts, ...next.map((i) => ({ ...i, status: { ...i.status, phase: 'Succeeded' as const } }))];
    const done = planJob('batch', j, all, ctx()).find((c) => c.op === 'jobStatus');
    expect(done && done.op === 'jobStatus' && done.status.phase).toBe('Succeeded');
  });

  it('fails the job when an instance exhausts its retries, and stops the rest', () => {
    const j = job({ completions: 2, parallelism: 2, backoffLimit: 1 });
    const insts = materialise(planJob('batch', j, [], ctx()));
    const [a, b] = insts;
    if (!a || !b) throw new Error('expected two');
    const failed = [{ ...a, status: { ...a.status, phase: 'Failed' as const, restarts: 1, message: 'exited with code 3' } }, { ...b, status: { ...b.status, phase: 'Running' as const } }];
    const changes = planJob('batch', j, failed, ctx());
    const st = changes.find((c) => c.op === 'jobStatus');
    expect(st && st.op === 'jobStatus' && st.status.phase).toBe('Failed');
    expect(st && st.op === 'jobStatus' && st.status.reason).toMatch(/exited with code 3/);
    expect(changes.some((c) => c.op === 'requestDeletion' && c.name === 'batch-1')).toBe(true);
  });
});
