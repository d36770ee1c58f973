import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { parseManifest } from '../model/manifest.js';
import { instanceReady, type Instance, type Service } from '../model/objects.js';
import { planService, type Change } from './workload-plan.js';

const T0 = Date.parse('2026-01-01T00:00:00.000Z');

function spec(extra: Record<string, unknown>): Service['spec'] {
  const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'r/web:1', isolation: 'host', ...extra } });
  if (m.kind !== 'Service') throw new Error('not a service');
  return m.spec;
}

/**
 * A service and its instances, stepped the way the controller and agents do: each `plan()`
 * applies the planner's changes (creations placed at once, Pending and not ready); events
 * make a new instance ready or a deleted one go.
 */
class Sim {
  service: Service;
  instances = new Map<string, Instance>();
  now = T0;
  ids = 0;
  rolledBack: Change[] = [];

  constructor(s: Record<string, unknown>) {
    this.service = {
      kind: 'Service',
      metadata: { name: 'web', tenant: 'acme', uid: 'svc', labels: {}, resourceVersion: 1, generation: 1, createdAt: '', updatedAt: '' },
      spec: spec(s),
      status: { ready: 0, observedGeneration: 0 },
    };
  }

  get list(): Instance[] {
    return [...this.instances.values()];
  }

  plan(): Change[] {
    const changes = planService('web', this.service, this.list, { now: new Date(this.now).toISOString(), newId: () => `id-${++this.ids}` });
    for (const c of changes) {
      switch (c.op) {
        case 'create':
          this.instances.set(c.instance.metadata.name, { ...c.instance, spec: { ...c.instance.spec, host: 'h1' } });
          break;
        case 'requestDeletion': {
          const i = this.instances.get(c.name);
          if (i) this.instances.set(c.name, { ...i, metadata: { ...i.metadata, deletionRequestedAt: 'x' } });
          break;
        }
        case 'forget':
          this.instances.delete(c.name);
          break;
        case 'updateSpec': {
          const i = this.instances.get(c.name);
          if (i) this.instances.set(c.name, { ...i, spec: c.spec, status: c.replace ? { ...i.status, phase: 'Pending', ready: false } : i.status });
          break;
        }
        case 'serviceStatus':
          this.service = { ...this.service, status: { ...this.service.status, ...c.status } };
          break;
        case 'rollback':
          this.rolledBack.push(c);
          this.service = { ...this.service, spec: c.spec, metadata: { ...this.service.metadata, generation: this.service.metadata.generation + 1 }, status: { ...this.service.status, ...c.status } };
          break;
        default:
          break;
      }
    }
    return changes;
  }

  /** Changes the spec (a new generation), as `apply` does. */
  update(s: Record<string, unknown>): void {
    this.service = { ...this.service, spec: spec(s), metadata: { ...this.service.metadata, generation: this.service.metadata.generation + 1 } };
  }

  ready(name: string): void {
    const i = this.instances.get(name);
    if (i) this.instances.set(name, { ...i, status: { ...i.status, phase: 'Running', ready: true } });
  }

  gone(name: string): void {
    this.instances.delete(name);
  }

  /** Makes every instance ready and removes deleted ones, planning after each, until nothing changes. */
  settle(canBeReady: (i: Instance) => boolean = () => true): void {
    for (let n = 0; n < 200; n++) {
      this.plan();
      const pending = this.list.filter((i) => (i.metadata.deletionRequestedAt ? true : !instanceReady(i) && canBeReady(i)));
      if (pending.length === 0) {
        this.plan();
        return;
      }
      const i = pending[0];
      if (!i) return;
      if (i.metadata.deletionRequestedAt) this.gone(i.metadata.name);
      else this.ready(i.metadata.name);
    }
    throw new Error('did not settle');
  }

  /** The instances not being deleted. */
  live(): Instance[] {
    return this.list.filter((i) => !i.metadata.deletionRequestedAt).sort((a, b) => a.spec.index - b.spec.index);
  }

  /** What the live instances run, without their names: `image:rN`, sorted. */
  revisions(): string[] {
    return this.live()
      .map((i) => `${i.spec.container.image}:r${i.spec.revision ?? '-'}`)
      .sort();
  }

  readyCount(): number {
    return this.list.filter(instanceReady).length;
  }

  images(): string[] {
    return this.list
      .filter((i) => !i.metadata.deletionRequestedAt)
      .sort((a, b) => a.spec.index - b.spec.index)
      .map((i) => `${i.metadata.name}:${i.spec.container.image}:r${i.spec.revision ?? '-'}`);
  }
}

describe('rolling updates (planService)', () => {
  it('starts at revision 1 and completes; instances carry their revision', () => {
    const sim = new Sim({ replicas: 3 });
    sim.settle();
    expect(sim.service.status.revision).toBe(1);
    expect(sim.images()).toEqual(['web-0:r/web:1:r1', 'web-1:r/web:1:r1', 'web-2:r/web:1:r1']);
    expect(sim.service.status.conditions?.[0]).toMatchObject({ type: 'Progressing', status: 'True', reason: 'RolloutComplete' });
    expect(sim.service.status).toMatchObject({ updatedReplicas: 3, readyReplicas: 3, availableReplicas: 3, stableRevision: 1 });
    expect(sim.service.status.history?.map((h) => [h.revision, h.template.image, h.cause])).toEqual([[1, 'r/web:1', 'update']]);
  });

  it('maxSurge 1 / maxUnavailable 0: one surge replica first, then one old replica at a time, only once a new one is ready', () => {
    const sim = new Sim({ replicas: 4 });
    sim.settle();
    sim.update({ replicas: 4, image: 'r/web:2' });
    sim.plan();
    expect(sim.service.status.revision).toBe(2);
    // The surge: web-4 of revision 2; nothing old goes before it is ready.
    expect(sim.list.map((i) => i.metadata.name).sort()).toEqual(['web-0', 'web-1', 'web-2', 'web-3', 'web-4']);
    expect(sim.list.filter((i) => i.metadata.deletionRequestedAt)).toEqual([]);
    expect(sim.service.status.conditions?.[0]?.reason).toBe('NewReplicasRolling');
    sim.ready('web-4');
    sim.plan();
    // web-4 ready: web-0 goes and, in the same pass, its replacement is made under the lowest
    // ordinal no record holds (web-0 still drains): the deleting one does not count.
    expect(sim.list.filter((i) => i.metadata.deletionRequestedAt).map((i) => i.metadata.name)).toEqual(['web-0']);
    expect(sim.instances.get('web-5')?.spec.container.image).toBe('r/web:2');
    expect(sim.live().length).toBe(5);
    sim.plan(); // nothing more until web-5 is ready
    expect(sim.list.filter((i) => i.metadata.deletionRequestedAt).map((i) => i.metadata.name)).toEqual(['web-0']);
    expect(sim.live().length).toBe(5);
    sim.gone('web-0');
    sim.ready('web-5');
    sim.plan();
    // Then web-1 goes and web-0, free again, is the next replacement.
    expect(sim.list.filter((i) => i.metadata.deletionRequestedAt).map((i) => i.metadata.name)).toEqual(['web-1']);
    expect(sim.instances.get('web-0')?.spec.container.image).toBe('r/web:2');
    sim.settle();
    expect(sim.images()).toEqual(['web-0:r/web:2:r2', 'web-1:r/web:2:r2', 'web-4:r/web:2:r2', 'web-5:r/web:2:r2']);
    expect(sim.service.status.conditions?.[0]?.reason).toBe('RolloutComplete');
    expect(sim.service.status.stableRevision).toBe(2);
    expect(sim.service.status.history?.map((h) => h.revision)).toEqual([1, 2]);
  });

  it('an old replica that stopped being ready (a flap under load) is not removed while the new ones are not ready yet: it may serve again', () => {
    const sim = new Sim({ replicas: 3 });
    sim.settle();
    sim.update({ replicas: 3, image: 'r/web:2' });
    sim.plan(); // the surge, web-3, not ready yet
    const flap = (name: string, ready: boolean): void => {
      const i = sim.instances.get(name);
      if (i) sim.instances.set(name, { ...i, status: { ...i.status, ready } });
    };
    flap('web-1', false);
    flap('web-2', false);
    sim.plan();
    expect(sim.list.filter((i) => i.metadata.deletionRequestedAt)).toEqual([]);
    // web-3 ready: 4 alive, 1 not ready old may go (3 stay alive), and with it its replacement comes.
    sim.ready('web-3');
    sim.plan();
    expect(sim.list.filter((i) => i.metadata.deletionRequestedAt).map((i) => i.metadata.name)).toEqual(['web-1']);
    flap('web-2', true);
    sim.settle();
    expect(sim.revisions()).toEqual(['r/web:2:r2', 'r/web:2:r2', 'r/web:2:r2']);
  });

  it('a replica the placement pipeline refused is named in the Progressing condition while the rollout waits for it', () => {
    const sim = new Sim({ replicas: 2 });
    sim.settle();
    sim.update({ replicas: 2, image: 'r/web:2' });
    sim.plan();
    const surge = sim.instances.get('web-2');
    if (!surge) throw new Error('no surge');
    sim.instances.set('web-2', { ...surge, spec: { ...surge.spec, host: '' }, status: { ...surge.status, phase: 'Pending', reason: 'Unschedulable', message: 'no host has room for 1 cpu' } });
    sim.plan();
    expect(sim.service.status.conditions?.[0]?.message).toBe('revision 2: 1 of 2 replicas updated, 2 ready; web-2 waits: Unschedulable: no host has room for 1 cpu');
  });

  it('maxSurge 0 / maxUnavailable 2: two old replicas at a time, never a surge', () => {
    const sim = new Sim({ replicas: 4, rollout: { maxSurge: 0, maxUnavailable: 2 } });
    sim.settle();
    sim.update({ replicas: 4, image: 'r/web:2', rollout: { maxSurge: 0, maxUnavailable: 2 } });
    sim.plan();
    expect(sim.list.filter((i) => i.metadata.deletionRequestedAt).map((i) => i.metadata.name)).toEqual(['web-0', 'web-1']);
    // Their replacements start at once, under ordinals no record holds; never more than 4 alive.
    expect(sim.live().map((i) => i.metadata.name)).toEqual(['web-2', 'web-3', 'web-4', 'web-5']);
  });

  it('scaling and rollout settings make no new revision; a restart (restartedAt) does', () => {
    const sim = new Sim({ replicas: 2 });
    sim.settle();
    sim.update({ replicas: 3, rollout: { maxSurge: '50%' } });
    sim.settle();
    expect(sim.service.status.revision).toBe(1);
    expect(sim.images()).toEqual(['web-0:r/web:1:r1', 'web-1:r/web:1:r1', 'web-2:r/web:1:r1']);
    sim.update({ replicas: 3, rollout: { maxSurge: '50%' }, restartedAt: '2026-01-01T00:00:00.000Z' });
    sim.settle();
    expect(sim.service.status.revision).toBe(2);
    expect(sim.revisions()).toEqual(['r/web:1:r2', 'r/web:1:r2', 'r/web:1:r2']);
  });

  it('paused: no replacement, condition Paused; resumed: rolls on', () => {
    const sim = new Sim({ replicas: 2 });
    sim.settle();
    sim.update({ replicas: 2, image: 'r/web:2', rollout: { paused: true } });
    sim.settle();
    expect(sim.images()).toEqual(['web-0:r/web:1:r1', 'web-1:r/web:1:r1']);
    expect(sim.service.status.conditions?.[0]).toMatchObject({ status: 'Unknown', reason: 'Paused' });
    sim.update({ replicas: 2, image: 'r/web:2' });
    sim.settle();
    expect(sim.revisions()).toEqual(['r/web:2:r2', 'r/web:2:r2']);
  });

  it('undo to an earlier template renumbers it (history keeps one entry per template) and replaces what runs', () => {
    const sim = new Sim({ replicas: 2 });
    sim.settle();
    sim.update({ replicas: 2, image: 'r/web:2' });
    sim.settle();
    sim.update({ replicas: 2 });
    sim.settle();
    expect(sim.service.status.history?.map((h) => [h.revision, h.template.image, h.cause])).toEqual([
      [2, 'r/web:2', 'update'],
      [3, 'r/web:1', 'undo'],
    ]);
    expect(sim.images()).toEqual(['web-0:r/web:1:r3', 'web-1:r/web:1:r3']);
  });

  it('a template change back to the revision being replaced takes its instances over without replacing them', () => {
    const sim = new Sim({ replicas: 3 });
    sim.settle();
    sim.update({ replicas: 3, image: 'r/web:2' });
    sim.plan(); // surge web-3 made; the old ones wait
    sim.update({ replicas: 3 });
    sim.plan();
    // Revision 3 (= revision 1's template) takes revision 1's instances over: only the surge goes.
    expect(sim.service.status.revision).toBe(3);
    expect(sim.list.filter((i) => i.metadata.deletionRequestedAt || i.spec.index >= 3).every((i) => i.spec.container.image === 'r/web:2')).toBe(true);
    sim.settle();
    expect(sim.images()).toEqual(['web-0:r/web:1:r3', 'web-1:r/web:1:r3', 'web-2:r/web:1:r3']);
  });

  it('progress deadline: a revision whose replicas never become ready stops and rolls back to the last complete one', () => {
    const sim = new Sim({ replicas: 2, rollout: { progressDeadlineSeconds: 30 } });
    sim.settle();
    sim.update({ replicas: 2, image: 'r/broken:1', rollout: { progressDeadlineSeconds: 30 } });
    const first = sim.plan();
    const requeue = first.find((c) => c.op === 'requeue');
    expect(requeue?.op === 'requeue' && requeue.afterMs).toBeGreaterThanOrEqual(30_000);
    sim.settle((i) => i.spec.container.image !== 'r/broken:1');
    expect(sim.images()).toEqual(['web-0:r/web:1:r1', 'web-1:r/web:1:r1', 'web-2:r/broken:1:r2']);
    expect(sim.readyCount()).toBe(2);
    sim.now += 31_000;
    sim.plan();
    expect(sim.rolledBack.length).toBe(1);
    expect(sim.service.spec.image).toBe('r/web:1');
    expect(sim.service.status.conditions?.[0]).toMatchObject({ status: 'True', reason: 'RolledBack' });
    sim.settle();
    // Revision 3 is revision 1's template: its instances ran on; the broken surge is gone.
    expect(sim.images()).toEqual(['web-0:r/web:1:r3', 'web-1:r/web:1:r3']);
    expect(sim.service.status.revision).toBe(3);
    expect(sim.service.status.conditions?.[0]?.reason).toBe('RolledBack');
    expect(sim.service.status.history?.map((h) => [h.revision, h.template.image, h.cause])).toEqual([
      [2, 'r/broken:1', 'update'],
      [3, 'r/web:1', 'rollback'],
    ]);
  });

  it('progress deadline with autoRollback false: stops with ProgressDeadlineExceeded and stays', () => {
    const r = { progressDeadlineSeconds: 30, autoRollback: false, maxSurge: 0, maxUnavailable: 1 };
    const sim = new Sim({ replicas: 2, rollout: r });
    sim.settle();
    sim.update({ replicas: 2, image: 'r/broken:1', rollout: r });
    sim.settle((i) => i.spec.container.image !== 'r/broken:1');
    sim.now += 31_000;
    const changes = sim.plan();
    expect(changes.some((c) => c.op === 'rollback' || c.op === 'requestDeletion' || c.op === 'requeue')).toBe(false);
    expect(sim.service.status.conditions?.[0]).toMatchObject({ status: 'False', reason: 'ProgressDeadlineExceeded' });
    expect(sim.service.spec.image).toBe('r/broken:1');
    expect(sim.readyCount()).toBe(1);
  });

  it('keeps at most 10 revisions', () => {
    const sim = new Sim({ replicas: 1 });
    for (let v = 1; v <= 13; v++) {
      sim.update({ replicas: 1, image: `r/web:${v}` });
      sim.settle();
    }
    expect(sim.service.status.history?.map((h) => h.revision)).toEqual([4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  });

  it('property: across random readiness and removal orders, never more than replicas+surge instances nor fewer than replicas-unavailable ready; always completes', () => {
    const setting = fc.record({
      replicas: fc.integer({ min: 1, max: 6 }),
      maxSurge: fc.oneof(fc.integer({ min: 0, max: 3 }), fc.constantFrom('0%', '25%', '50%', '100%')),
      maxUnavailable: fc.oneof(fc.integer({ min: 0, max: 3 }), fc.constantFrom('0%', '25%', '50%')),
    });
    fc.assert(
      fc.property(setting, fc.array(fc.nat(1000), { minLength: 1, maxLength: 400 }), fc.integer({ min: 1, max: 3 }), ({ replicas, maxSurge, maxUnavailable }, picks, changesOfTemplate) => {
        const zero = (v: number | string): boolean => v === 0 || v === '0%';
        const rollout = zero(maxSurge) && zero(maxUnavailable) ? { maxSurge, maxUnavailable: 1 } : { maxSurge, maxUnavailable };
        const sim = new Sim({ replicas, rollout });
        sim.settle();
        const surge = typeof maxSurge === 'number' ? maxSurge : Math.ceil((replicas * Number(maxSurge.slice(0, -1))) / 100);
        const unavRaw = typeof rollout.maxUnavailable === 'number' ? rollout.maxUnavailable : Math.floor((replicas * Number(rollout.maxUnavailable.slice(0, -1))) / 100);
        const unavailable = surge === 0 && unavRaw === 0 ? 1 : unavRaw;
        let p = 0;
        for (let version = 2; version <= changesOfTemplate + 1; version++) {
          sim.update({ replicas, rollout, image: `r/web:${version}` });
          for (let step = 0; step < 200; step++) {
            sim.plan();
            // Replicas being deleted do not count (they are on their way out, as in Kubernetes).
            if (sim.live().length > replicas + surge) return false;
            if (sim.readyCount() < replicas - unavailable) return false;
            // Random event: one not-ready instance becomes ready, or one deleted one goes.
            const movable = sim.list.filter((i) => i.metadata.deletionRequestedAt || !instanceReady(i));
            if (movable.length === 0) break;
            // A template change in the middle of a rollout, sometimes.
            if (version <= changesOfTemplate && (picks[p % picks.length] ?? 0) % 17 === 0) break;
            const pick = movable[(picks[p++ % picks.length] ?? 0) % movable.length];
            if (!pick) break;
            if (pick.metadata.deletionRequestedAt) sim.gone(pick.metadata.name);
            else sim.ready(pick.metadata.name);
          }
        }
        sim.settle();
        const last = `r/web:${changesOfTemplate + 1}`;
        return sim.list.length === replicas && sim.list.every((i) => instanceReady(i) && i.spec.container.image === last) && sim.service.status.conditions?.[0]?.reason === 'RolloutComplete';
      }),
      { numRuns: 300 },
    );
  });
});

describe('rolling updates of replicas that cannot run side by side', () => {
  it('a volume mounted read-write (one replica): replaced in place of the old one, no surge; read-only: with a surge', () => {
    const rw = { volumes: [{ volume: 'shared', mountPath: '/data' }] };
    const sim = new Sim({ replicas: 1, ...rw });
    sim.settle();
    sim.update({ replicas: 1, image: 'r/web:2', ...rw });
    sim.plan();
    expect(sim.list.map((i) => [i.metadata.name, i.metadata.deletionRequestedAt !== undefined])).toEqual([['web-0', true]]);
    sim.settle();
    expect(sim.images()).toEqual(['web-0:r/web:2:r2']);
    const ro = { volumes: [{ volume: 'shared', mountPath: '/data', readOnly: true }] };
    const sim2 = new Sim({ replicas: 2, ...ro });
    sim2.settle();
    sim2.update({ replicas: 2, image: 'r/web:2', ...ro });
    sim2.plan();
    expect(sim2.list.map((i) => i.metadata.name).sort()).toEqual(['web-0', 'web-1', 'web-2']);
  });

  it('a published host port or per-replica volumes: no surge, one ordinal at a time', () => {
    for (const extra of [{ ports: [{ containerPort: 80, hostPort: 8080 }] }, { volumeTemplates: [{ name: 'data', size: '64Mi', mountPath: '/data' }] }]) {
      const sim = new Sim({ replicas: 2, ...extra });
      sim.settle();
      sim.update({ replicas: 2, image: 'r/web:2', ...extra });
      sim.plan();
      expect(sim.list.length).toBe(2);
      expect(sim.list.filter((i) => i.metadata.deletionRequestedAt).map((i) => i.metadata.name)).toEqual(['web-0']);
      sim.settle();
      expect(sim.images()).toEqual(['web-0:r/web:2:r2', 'web-1:r/web:2:r2']);
    }
  });
});
