/**
 * Failover and fencing through the controller, over a real SQLite store (no agents): an
 * instance with `fencing: stop` on a host that is NotReady stays placed there (not replaced,
 * its cell's record kept) until the host monitor says the host is fenced (`fencedAt`, the
 * fence wait W); a `fencing: keep` instance is replaced at once, as before. Instances carry
 * their owner's effective fencing, and a change of it reaches them without a restart.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Instance } from '../model/objects.js';
import { openControlHarness, type ControlHarness } from './testing.js';

let h: ControlHarness;

beforeEach(async () => {
  h = await openControlHarness('carapace-fencing-');
  await h.apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: {} });
  await h.addHost('h1');
});

afterEach(async () => {
  await h.close();
});

async function instance(name: string): Promise<Instance> {
  return h.resources.mustGet('Instance', name, 'acme');
}

async function lose(host: string, fenced: boolean): Promise<void> {
  await h.resources.mutate('Host', host, undefined, (x) => ((x.status = { ...x.status, state: 'NotReady', reason: 'LeaseExpired', lostAt: h.env.now(), ...(fenced ? { fencedAt: h.env.now() } : {}) }), x));
}

const svc = (name: string, spec: Record<string, unknown>): Record<string, unknown> => ({ kind: 'Service', metadata: { name, tenant: 'acme' }, spec: { image: 'reg/app:1', ...spec } });

describe('fencing in failover', () => {
  it('replaces a fencing=stop instance of a lost host only once the host is fenced (W), a fencing=keep one at once', async () => {
    await h.apply(svc('db', { isolation: 'host', fencing: 'stop' }));
    await h.apply(svc('web', { isolation: 'host' }));
    await h.controller.reconcile('Service/acme/db');
    await h.controller.reconcile('Service/acme/web');
    const db0 = await instance('db-0');
    const web0 = await instance('web-0');
    expect([db0.spec.host, web0.spec.host]).toEqual(['h1', 'h1']);
    expect([db0.spec.fencing, web0.spec.fencing]).toEqual(['stop', 'keep']);
    await h.addHost('h2');

    // h1 is NotReady (lease silent past the TTL), not yet fenced: web moves, db stays.
    await lose('h1', false);
    await h.controller.reconcile('Service/acme/db');
    await h.controller.reconcile('Service/acme/web');
    const dbWaiting = await instance('db-0');
    expect({ uid: dbWaiting.metadata.uid, host: dbWaiting.spec.host }).toEqual({ uid: db0.metadata.uid, host: 'h1' });
    const webMoved = await instance('web-0');
    expect(webMoved.metadata.uid).not.toBe(web0.metadata.uid);
    expect(webMoved.spec.host).toBe('h2');

    // Past W: db is replaced on h2, audited as a failover like any other.
    await lose('h1', true);
    await h.controller.reconcile('Service/acme/db');
    const dbMoved = await instance('db-0');
    expect(dbMoved.metadata.uid).not.toBe(db0.metadata.uid);
    expect(dbMoved.spec.host).toBe('h2');
    const records = await h.records();
    expect(records.filter((r) => r.action === 'instance.failover').map((r) => r.target.name)).toEqual(['web-0', 'db-0']);
  });

  it('keeps the cell of a lost, unfenced host while it holds fencing=stop instances', async () => {
    await h.apply(svc('db', { isolation: 'dedicated', fencing: 'stop', cpu: 0.5, memory: 128 }));
    await h.controller.reconcile('Service/acme/db');
    const db0 = await instance('db-0');
    const cell = db0.spec.cell ?? '';
    expect(cell).not.toBe('');
    await h.addHost('h2');
    await lose('h1', false);
    await h.controller.reconcileCells();
    await h.controller.reconcile('Service/acme/db');
    expect(await h.resources.get('Cell', cell)).toBeDefined();
    expect((await instance('db-0')).metadata.uid).toBe(db0.metadata.uid);
    await lose('h1', true);
    await h.controller.reconcileCells();
    await h.controller.reconcile('Service/acme/db');
    expect(await h.resources.get('Cell', cell)).toBeUndefined();
    const moved = await instance('db-0');
    expect(moved.metadata.uid).not.toBe(db0.metadata.uid);
    expect(moved.spec.host).toBe('h2');
  });

  it('gives instances their effective fencing (stop with a volume), and a change of it without replacing them', async () => {
    await h.apply({ kind: 'Volume', metadata: { name: 'data', tenant: 'acme' }, spec: { size: '64Mi' } });
    await h.apply(svc('pg', { isolation: 'host', volumes: [{ volume: 'data', mountPath: '/data' }] }));
    await h.controller.reconcile('Service/acme/pg');
    const pg0 = await instance('pg-0');
    expect(pg0.spec.fencing).toBe('stop');
    await h.apply(svc('pg', { isolation: 'host', volumes: [{ volume: 'data', mountPath: '/data' }], fencing: 'keep' }));
    await h.controller.reconcile('Service/acme/pg');
    const after = await instance('pg-0');
    expect({ uid: after.metadata.uid, generation: after.metadata.generation, fencing: after.spec.fencing }).toEqual({ uid: pg0.metadata.uid, generation: pg0.metadata.generation, fencing: 'keep' });
    // Not a new revision: nothing rolls.
    expect((await h.resources.mustGet('Service', 'pg', 'acme')).status.revision).toBe(1);
  });
});
