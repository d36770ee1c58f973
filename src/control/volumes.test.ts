/**
 * Volumes through the control plane and the one placement pipeline, over a real SQLite store
 * and audit log (no agents): binding at first placement in the placement's transaction,
 * placement only on a bound volume's host (VolumeHostNotReady while it is down, also after a
 * failover), VolumeInUse, template volumes made with the service and kept on scale down and
 * deletion, attachedTo, deletion refused while in use, and machines' disks (placed with their
 * volumes; another tenant's volume is not found).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isCarapaceError } from '../model/errors.js';
import type { Instance } from '../model/objects.js';
import { openControlHarness, type ControlHarness } from './testing.js';

let h: ControlHarness;

beforeEach(async () => {
  h = await openControlHarness('carapace-volumes-');
  await h.apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: {} });
});

afterEach(async () => {
  await h.close();
});

async function instance(name: string): Promise<Instance> {
  return h.resources.mustGet('Instance', name, 'acme');
}

async function setHostState(name: string, state: 'Ready' | 'NotReady', fenced = false): Promise<void> {
  await h.resources.mutate('Host', name, undefined, (x) => ((x.status = { ...x.status, state, ...(state === 'NotReady' ? { lostAt: h.env.now(), ...(fenced ? { fencedAt: h.env.now() } : {}) } : {}) }), x));
}

async function refusal(p: Promise<unknown>): Promise<{ code: string; message: string; details: { path: string; message: string }[] }> {
  try {
    await p;
  } catch (e) {
    if (isCarapaceError(e)) return { code: e.code, message: e.message, details: e.details };
    throw e;
  }
  throw new Error('expected a refusal');
}

const pg = (spec: Record<string, unknown> = {}): Record<string, unknown> => ({
  kind: 'Service',
  metadata: { name: 'pg', tenant: 'acme' },
  spec: { image: 'reg/pg:16', isolation: 'host', volumes: [{ volume: 'pgdata', mountPath: '/var/lib/postgresql' }], ...spec },
});

describe('volume placement', () => {
  it('binds an unbound volume to the host of its first placement, in the same transaction, and keeps its users there', async () => {
    await h.addHost('h1');
    await h.addHost('h2');
    await h.apply({ kind: 'Volume', metadata: { name: 'pgdata', tenant: 'acme' }, spec: { size: '1Gi' } });
    await h.apply(pg());
    await h.controller.reconcile('Service/acme/pg');
    const i = await instance('pg-0');
    expect(i.spec.mounts).toEqual([{ volume: 'pgdata', mountPath: '/var/lib/postgresql', readOnly: false }]);
    const v = await h.resources.mustGet('Volume', 'pgdata', 'acme');
    expect(v.status).toMatchObject({ phase: 'Bound', host: i.spec.host });
    // One transaction: the volume and the instance carry the same revision.
    expect(v.metadata.resourceVersion).toBe(i.metadata.resourceVersion);
    const bound = (await h.records()).filter((r) => r.action === 'volume.bound');
    expect(bound.map((r) => [r.target.name, r.detail])).toEqual([['pgdata', { host: i.spec.host, instance: 'pg-0' }]]);

    await h.controller.reconcileVolumes();
    expect((await h.resources.mustGet('Volume', 'pgdata', 'acme')).status.attachedTo).toEqual(['pg-0']);

    // Its host is lost: the instance is failed over, and its replacement waits for that host
    // (its data is there) instead of going to the other, ready host.
    const first = i.spec.host;
    await setHostState(first, 'NotReady');
    // Not before the host is fenced (its fencing is `stop`, the default with a volume).
    await h.controller.reconcile('Service/acme/pg');
    expect((await instance('pg-0')).metadata.uid).toBe(i.metadata.uid);
    await setHostState(first, 'NotReady', true);
    await h.controller.reconcile('Service/acme/pg');
    const waiting = await instance('pg-0');
    expect(waiting.metadata.uid).not.toBe(i.metadata.uid);
    expect(waiting.spec.host).toBe('');
    expect(waiting.status).toMatchObject({ phase: 'Pending', reason: 'VolumeHostNotReady' });
    expect(waiting.status.message).toBe(`volume acme/pgdata lives on host ${first}, which is NotReady; the instance waits for it (its data is there)`);
    await h.controller.reconcileVolumes();
    expect((await h.resources.mustGet('Volume', 'pgdata', 'acme')).status.attachedTo).toEqual([]);

    await setHostState(first, 'Ready');
    await h.controller.reconcilePlacement();
    expect((await instance('pg-0')).spec.host).toBe(first);
  });

  it('places the users of a pinned volume on its host only', async () => {
    await h.addHost('h1');
    await h.addHost('h2');
    await h.apply({ kind: 'Volume', metadata: { name: 'pgdata', tenant: 'acme' }, spec: { size: '1Gi', host: 'h2' } });
    await h.apply(pg());
    await h.controller.reconcile('Service/acme/pg');
    expect((await instance('pg-0')).spec.host).toBe('h2');
    expect((await h.resources.mustGet('Volume', 'pgdata', 'acme')).status).toMatchObject({ phase: 'Bound', host: 'h2' });
  });

  it('leaves instances with a volume bound to a draining host where they are (their data is there)', async () => {
    await h.addHost('h1');
    await h.apply({ kind: 'Volume', metadata: { name: 'pgdata', tenant: 'acme' }, spec: { size: '1Gi' } });
    await h.apply(pg());
    await h.apply({ kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'reg/web:1', isolation: 'host' } });
    await h.controller.reconcile('Service/acme/pg');
    await h.controller.reconcile('Service/acme/web');
    // Running and ready, so the drain's disruption budget lets web-0 go.
    await h.resources.mutate('Instance', 'web-0', 'acme', (x) => ((x.status = { ...x.status, phase: 'Running', ready: true }), x));
    await h.cp.handle({ type: 'hostOp', op: 'drain', name: 'h1' });
    await h.controller.reconcileDrain();
    expect((await instance('web-0')).metadata.deletionRequestedAt).toBeDefined();
    expect((await instance('pg-0')).metadata.deletionRequestedAt).toBeUndefined();
    await h.resources.remove('Instance', 'web-0', 'acme');
    await h.controller.reconcileDrain();
    expect((await h.resources.mustGet('Host', 'h1')).status.message).toBe('drained (1 instance(s) stay: their volumes live here)');
  });

  it("places a machine where its disks' volumes live and binds an unbound one with it; refuses a missing one and deleting one in use", async () => {
    await h.addHost('h1');
    await h.addHost('h2');
    await h.apply({ kind: 'Volume', metadata: { name: 'pinned', tenant: 'acme' }, spec: { size: '1Gi', host: 'h2' } });
    await h.apply({ kind: 'Volume', metadata: { name: 'fresh', tenant: 'acme' }, spec: { size: '1Gi' } });
    const machine = (disks: { volume: string }[]): Record<string, unknown> => ({ kind: 'Machine', metadata: { name: 'legacy', tenant: 'acme' }, spec: { kernel: 'host', initrd: 'x.cpio.gz', disks } });
    const missing = await refusal(h.apply(machine([{ volume: 'pinned' }, { volume: 'nope' }])));
    expect(missing).toMatchObject({ code: 'CARAPACE_E_VOLUME_NOT_FOUND', details: [{ path: 'spec.disks[1].volume', message: 'tenant "acme" has no volume "nope"' }] });
    await h.apply(machine([{ volume: 'pinned' }, { volume: 'fresh' }]));
    await h.controller.reconcilePlacement();
    const m = await h.resources.mustGet('Machine', 'legacy', 'acme');
    expect(m.status.host).toBe('h2');
    const fresh = await h.resources.mustGet('Volume', 'fresh', 'acme');
    expect(fresh.status).toMatchObject({ phase: 'Bound', host: 'h2' });
    expect(fresh.metadata.resourceVersion).toBe(m.metadata.resourceVersion); // one transaction
    const del = await refusal(h.cp.handle({ type: 'delete', kind: 'Volume', name: 'fresh', tenant: 'acme' }));
    expect(del).toMatchObject({ code: 'CARAPACE_E_VOLUME_IN_USE', message: 'volume "fresh" in tenant "acme" is a disk of machine "legacy" (spec.disks); change or delete the machine first' });
    // Another tenant's machine cannot name acme's volume: names are per tenant, so it is not found.
    await h.apply({ kind: 'Tenant', metadata: { name: 'globex' }, spec: {} });
    const theirs = await refusal(h.apply({ kind: 'Machine', metadata: { name: 'thief', tenant: 'globex' }, spec: { kernel: 'host', initrd: 'x.cpio.gz', disks: [{ volume: 'pinned' }] } }));
    expect(theirs).toMatchObject({ code: 'CARAPACE_E_VOLUME_NOT_FOUND', details: [{ path: 'spec.disks[0].volume', message: 'tenant "globex" has no volume "pinned"' }] });
    expect(await h.resources.get('Machine', 'thief', 'globex')).toBeUndefined();
  });

  it("never lets a machine's disk be written by anything else: containers never, other machines read-only only", async () => {
    await h.apply({ kind: 'Volume', metadata: { name: 'shared', tenant: 'acme' }, spec: { size: '1Gi' } });
    await h.apply({ kind: 'Volume', metadata: { name: 'pgdata', tenant: 'acme' }, spec: { size: '1Gi' } });
    const machine = (name: string, disks: { volume: string; readOnly?: boolean }[]): Record<string, unknown> => ({ kind: 'Machine', metadata: { name, tenant: 'acme' }, spec: { kernel: 'host', initrd: 'x.cpio.gz', disks } });
    await h.apply(pg());
    // A machine cannot take a volume a service mounts (read-only or not).
    const taken = await refusal(h.apply(machine('m1', [{ volume: 'shared' }, { volume: 'pgdata', readOnly: true }])));
    expect(taken).toMatchObject({ code: 'CARAPACE_E_VOLUME_IN_USE', details: [{ path: 'spec.disks[1].volume', message: 'volume "pgdata" is used by service pg (spec.volumes[0])' }] });
    await h.apply(machine('m1', [{ volume: 'shared' }]));
    // Nor a service a machine's disk.
    const svc = await refusal(h.apply({ kind: 'Service', metadata: { name: 'reader', tenant: 'acme' }, spec: { image: 'reg/x:1', isolation: 'host', volumes: [{ volume: 'shared', mountPath: '/d', readOnly: true }] } }));
    expect(svc).toMatchObject({ code: 'CARAPACE_E_VOLUME_IN_USE', details: [{ path: 'spec.volumes[0].volume', message: 'volume "shared" is a disk of machine m1' }] });
    // Another machine: only when both read it only.
    const rw = await refusal(h.apply(machine('m2', [{ volume: 'shared', readOnly: true }])));
    expect(rw).toMatchObject({ code: 'CARAPACE_E_VOLUME_IN_USE', details: [{ path: 'spec.disks[0].volume', message: 'volume "shared" is used by machine m1 (spec.disks[0])' }] });
    await h.apply(machine('m1', [{ volume: 'shared', readOnly: true }]));
    await h.apply(machine('m2', [{ volume: 'shared', readOnly: true }]));
    const back = await refusal(h.apply(machine('m1', [{ volume: 'shared' }])));
    expect(back).toMatchObject({ code: 'CARAPACE_E_VOLUME_IN_USE', details: [{ path: 'spec.disks[0].volume', message: 'volume "shared" is used by machine m2 (spec.disks[0], read-only)' }] });
  });

  it('keeps an instance Pending with VolumeInUse while another live instance holds its volume read-write', async () => {
    await h.addHost('h1');
    await h.apply({ kind: 'Volume', metadata: { name: 'pgdata', tenant: 'acme' }, spec: { size: '1Gi' } });
    await h.apply({ kind: 'Job', metadata: { name: 'restore', tenant: 'acme' }, spec: { image: 'reg/pg:16', isolation: 'host', volumes: [{ volume: 'pgdata', mountPath: '/d' }] } });
    await h.controller.reconcile('Job/acme/restore');
    expect((await instance('restore-0')).spec.host).toBe('h1');
    // The job is deleted; its instance still stops (it holds the volume until its record is gone).
    await h.cp.handle({ type: 'delete', kind: 'Job', name: 'restore', tenant: 'acme' });
    await h.controller.reconcile('Job/acme/restore');
    expect((await instance('restore-0')).metadata.deletionRequestedAt).toBeDefined();
    await h.apply(pg());
    await h.controller.reconcile('Service/acme/pg');
    const w = await instance('pg-0');
    expect(w.status).toMatchObject({ phase: 'Pending', reason: 'VolumeInUse', message: 'volume acme/pgdata is in use read-write by instance restore-0 on host h1; waiting for it to stop' });
    // The agent removes the stopped instance: the waiting one goes where the volume is.
    await h.resources.remove('Instance', 'restore-0', 'acme');
    await h.controller.reconcilePlacement();
    expect((await instance('pg-0')).spec.host).toBe('h1');
  });

  it('makes one volume per replica from a template, with audit records, keeps them on scale down and deletion, reuses them on scale up', async () => {
    await h.addHost('h1');
    await h.addHost('h2');
    const web = (replicas: number): Record<string, unknown> => ({
      kind: 'Service',
      metadata: { name: 'kv', tenant: 'acme' },
      spec: { image: 'reg/kv:1', isolation: 'host', replicas, volumeTemplates: [{ name: 'data', size: '256Mi', mountPath: '/data' }] },
    });
    await h.apply(web(2));
    const vols = (await h.resources.list('Volume', 'acme')).items;
    expect(vols.map((v) => [v.metadata.name, v.spec.size, v.metadata.labels, v.status.phase])).toEqual([
      ['data-0', '256Mi', { 'carapace/service': 'kv', 'carapace/volume-template': 'data' }, 'Pending'],
      ['data-1', '256Mi', { 'carapace/service': 'kv', 'carapace/volume-template': 'data' }, 'Pending'],
    ]);
    const svc = await h.resources.mustGet('Service', 'kv', 'acme');
    // Written with the service, in its transaction.
    expect(vols.every((v) => v.metadata.resourceVersion === svc.metadata.resourceVersion)).toBe(true);
    expect((await h.records()).filter((r) => r.target.kind === 'Volume' && r.action === 'create').map((r) => r.target.name)).toEqual(['data-0', 'data-1']);

    await h.controller.reconcile('Service/acme/kv');
    const hostOf = async (n: string): Promise<string> => (await instance(n)).spec.host;
    expect(await Promise.all([hostOf('kv-0'), hostOf('kv-1')])).toEqual([
      (await h.resources.mustGet('Volume', 'data-0', 'acme')).status.host,
      (await h.resources.mustGet('Volume', 'data-1', 'acme')).status.host,
    ]);
    expect((await instance('kv-1')).spec.mounts).toEqual([{ volume: 'data-1', mountPath: '/data', readOnly: false }]);
    const host1 = await hostOf('kv-1');

    await h.apply(web(1));
    await h.controller.reconcile('Service/acme/kv');
    await h.resources.remove('Instance', 'kv-1', 'acme'); // its agent, once stopped
    expect((await h.resources.list('Volume', 'acme')).items.map((v) => v.metadata.name)).toEqual(['data-0', 'data-1']);

    await h.apply(web(2));
    await h.controller.reconcile('Service/acme/kv');
    expect(await hostOf('kv-1')).toBe(host1);
    expect((await h.records()).filter((r) => r.target.kind === 'Volume' && r.action === 'create')).toHaveLength(2);

    await h.cp.handle({ type: 'delete', kind: 'Service', name: 'kv', tenant: 'acme' });
    expect((await h.resources.list('Volume', 'acme')).items.map((v) => v.metadata.name)).toEqual(['data-0', 'data-1']);
  });

  it('refuses deleting a volume a live instance mounts or a spec references, naming the user', async () => {
    await h.addHost('h1');
    await h.apply({ kind: 'Volume', metadata: { name: 'pgdata', tenant: 'acme' }, spec: { size: '1Gi' } });
    await h.apply(pg());
    await h.controller.reconcile('Service/acme/pg');
    const del = (): Promise<unknown> => h.cp.handle({ type: 'delete', kind: 'Volume', name: 'pgdata', tenant: 'acme' });
    const inUse = await refusal(del());
    expect(inUse.code).toBe('CARAPACE_E_VOLUME_IN_USE');
    expect(inUse.message).toBe('volume "pgdata" in tenant "acme" is mounted by instance "pg-0" on host h1; stop its users first');
    await h.cp.handle({ type: 'delete', kind: 'Service', name: 'pg', tenant: 'acme' });
    await h.controller.reconcile('Service/acme/pg');
    await h.resources.remove('Instance', 'pg-0', 'acme');
    await del();
    expect(await h.resources.get('Volume', 'pgdata', 'acme')).toBeUndefined();
    expect((await h.records()).filter((r) => r.target.kind === 'Volume' && r.action === 'delete' && r.outcome === 'success')).toHaveLength(1);
  });
});
