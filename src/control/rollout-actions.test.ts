/**
 * The rollout operations (undo, restart, pause, resume) through the control plane's front
 * door, over a real SQLite store and audit log, with the controller's passes in between:
 * each is a spec change with its audit record, the controller turns it into a revision, and
 * the report joins the history with the audit log.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isCarapaceError } from '../model/errors.js';
import type { Service } from '../model/objects.js';
import { rolloutReport } from '../core/rollout-report.js';
import { openControlHarness, type ControlHarness } from './testing.js';

let h: ControlHarness;
beforeEach(async () => {
  h = await openControlHarness();
  await h.apply({ kind: 'Tenant', metadata: { name: 'acme' } });
  await h.addHost('h1');
});
afterEach(async () => {
  await h.close();
});

const web = (image: string): Record<string, unknown> => ({ kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image, isolation: 'host', replicas: 2 } });

async function svc(): Promise<Service> {
  const s = await h.resources.get('Service', 'web', 'acme');
  if (!s) throw new Error('no service');
  return s;
}

async function pass(): Promise<void> {
  await h.controller.reconcile('Service/acme/web');
}

describe('rollout operations', () => {
  it('undo, restart, pause and resume are audited spec changes that the controller makes revisions of; the report says who made each', async () => {
    await h.apply(web('r/web:1'));
    await pass();
    await h.apply(web('r/web:2'));
    await pass();
    expect((await svc()).status.history?.map((x) => [x.revision, x.template.image])).toEqual([
      [1, 'r/web:1'],
      [2, 'r/web:2'],
    ]);

    await h.cp.handle({ type: 'rollout', op: 'undo', tenant: 'acme', name: 'web' });
    expect((await svc()).spec.image).toBe('r/web:1');
    await pass();
    await h.cp.handle({ type: 'rollout', op: 'restart', tenant: 'acme', name: 'web' });
    expect((await svc()).spec.restartedAt).toBeDefined();
    await pass();
    await h.cp.handle({ type: 'rollout', op: 'pause', tenant: 'acme', name: 'web' });
    expect((await svc()).spec.rollout?.paused).toBe(true);
    await pass();
    expect((await svc()).status.conditions?.[0]?.reason).toBe('Paused');
    // Pausing again changes nothing (no new generation, no audit record).
    const gen = (await svc()).metadata.generation;
    const again = await h.cp.handle({ type: 'rollout', op: 'pause', tenant: 'acme', name: 'web' });
    expect(again.type === 'object' && again.changed).toBe(false);
    expect((await svc()).metadata.generation).toBe(gen);
    await h.cp.handle({ type: 'rollout', op: 'resume', tenant: 'acme', name: 'web' });
    await pass();

    const s = await svc();
    expect(s.status.history?.map((x) => [x.revision, x.cause, x.template.image])).toEqual([
      [2, 'update', 'r/web:2'],
      [3, 'undo', 'r/web:1'],
      [4, 'restart', 'r/web:1'],
    ]);
    const actions = (await h.records()).filter((r) => r.target.kind === 'Service').map((r) => r.action);
    expect(actions).toEqual(['create', 'update', 'service.rollout.undo', 'service.rollout.restart', 'service.rollout.pause', 'service.rollout.resume']);
    const report = rolloutReport(s, await h.records());
    expect(report.history.map((x) => [x.revision, x.action, x.current])).toEqual([
      [2, 'update', false],
      [3, 'service.rollout.undo', false],
      [4, 'service.rollout.restart', true],
    ]);
  });

  it('an undo to a revision that is not kept, or with nothing before, is CARAPACE_E_REVISION_NOT_FOUND with the revisions kept', async () => {
    await h.apply(web('r/web:1'));
    await pass();
    const refused = async (toRevision?: number): Promise<unknown> =>
      h.cp.handle({ type: 'rollout', op: 'undo', tenant: 'acme', name: 'web', ...(toRevision !== undefined ? { toRevision } : {}) }).then(
        () => 'accepted',
        (e: unknown) => (isCarapaceError(e, 'CARAPACE_E_REVISION_NOT_FOUND') ? [e.message, e.details] : e),
      );
    expect(await refused()).toEqual(['service acme/web has no earlier revision to return to (revisions kept: 1)', [{ path: 'name', message: 'revisions kept: 1' }]]);
    expect(await refused(7)).toEqual(['service acme/web has no revision 7 (revisions kept: 1)', [{ path: 'query.toRevision', message: 'revisions kept: 1' }]]);
    await expect(h.cp.handle({ type: 'rollout', op: 'restart', tenant: 'acme', name: 'nope' })).rejects.toMatchObject({ code: 'CARAPACE_E_NOT_FOUND' });
  });

  it('undo and restart pass the same admission as an apply, against the tenant as it is now: a template its policy or quota no longer allows is refused and nothing is written', async () => {
    await h.apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: { allowedRegistries: ['reg.a', 'reg.b'], quota: { cpu: 4 } } });
    const at = (image: string, cpu: number): Record<string, unknown> => ({ kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image, isolation: 'host', replicas: 2, cpu } });
    await h.apply(at('reg.a/web:1', 1));
    await pass();
    await h.apply(at('reg.b/web:2', 1));
    await pass();
    await h.apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: { allowedRegistries: ['reg.b'], quota: { cpu: 4 } } });
    const before = await svc();
    const audited = (await h.records()).length;
    await expect(h.cp.handle({ type: 'rollout', op: 'undo', tenant: 'acme', name: 'web' })).rejects.toMatchObject({
      code: 'CARAPACE_E_POLICY_VIOLATION',
      details: [{ path: 'spec.image', message: 'registry "reg.a" is not in the tenant\'s allowedRegistries' }],
    });
    // Quota: revision 3 asks 1.5 CPU a replica; the tenant then allows 2 CPUs. Undo to it is refused; restart of the current one (2 x 0.5) passes.
    await h.apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: { allowedRegistries: ['reg.b'], quota: { cpu: 4 } } });
    await h.apply(at('reg.b/web:3', 1.5));
    await pass();
    await h.apply(at('reg.b/web:4', 0.5));
    await pass();
    await h.apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: { allowedRegistries: ['reg.b'], quota: { cpu: 2 } } });
    await expect(h.cp.handle({ type: 'rollout', op: 'undo', tenant: 'acme', name: 'web', toRevision: 3 })).rejects.toMatchObject({ code: 'CARAPACE_E_QUOTA_EXCEEDED' });
    expect((await svc()).spec.image).toBe('reg.b/web:4');
    expect((await svc()).metadata.generation).toBe(before.metadata.generation + 2);
    expect((await h.records()).slice(audited).map((r) => r.action)).not.toContain('service.rollout.undo');
    await h.cp.handle({ type: 'rollout', op: 'restart', tenant: 'acme', name: 'web' });
    expect((await h.records()).at(-1)).toMatchObject({ action: 'service.rollout.restart', detail: { generation: before.metadata.generation + 3 } });
  });
});
