/**
 * VolumeSnapshots and volumes restored from them through the control plane, over a real
 * SQLite store and audit log (no agents: the test writes a snapshot's Ready status as its
 * host's agent would): every refusal with its code and field path (unknown volume, another
 * tenant's volume or snapshot, snapshot not Ready, restore smaller than the original, a pin to
 * another host, a changed source), what a new snapshot and a restored volume start as, where
 * a restored volume's user is placed, and what deleting needs.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isCarapaceError } from '../model/errors.js';
import type { VolumeSnapshot } from '../model/volume-snapshots.js';
import { openControlHarness, type ControlHarness } from './testing.js';

let h: ControlHarness;

beforeEach(async () => {
  h = await openControlHarness('carapace-snapshots-');
  for (const t of ['acme', 'globex']) await h.apply({ kind: 'Tenant', metadata: { name: t }, spec: {} });
  await h.addHost('h1');
  await h.addHost('h2');
});

afterEach(async () => {
  await h.close();
});

async function refusal(p: Promise<unknown>): Promise<{ code: string; message: string; details: { path: string; message: string }[] }> {
  try {
    await p;
  } catch (e) {
    if (isCarapaceError(e)) return { code: e.code, message: e.message, details: e.details };
    throw e;
  }
  throw new Error('expected a refusal');
}

const volume = (name: string, spec: Record<string, unknown>, tenant = 'acme'): Promise<unknown> => h.apply({ kind: 'Volume', metadata: { name, tenant }, spec });
const snapshot = (name: string, vol: string, tenant = 'acme', labels: Record<string, string> = {}): Promise<unknown> => h.apply({ kind: 'VolumeSnapshot', metadata: { name, tenant, labels }, spec: { volume: vol } });
const snap = (name: string, tenant = 'acme'): Promise<VolumeSnapshot> => h.resources.mustGet('VolumeSnapshot', name, tenant);

/** pgdata (1Gi) bound to h2 by the placement of its user. */
async function boundVolume(): Promise<void> {
  await volume('pgdata', { size: '1Gi', host: 'h2' });
  await h.apply({ kind: 'Service', metadata: { name: 'pg', tenant: 'acme' }, spec: { image: 'reg/pg:16', isolation: 'host', volumes: [{ volume: 'pgdata', mountPath: '/data' }] } });
  await h.controller.reconcile('Service/acme/pg');
  expect((await h.resources.mustGet('Volume', 'pgdata', 'acme')).status).toMatchObject({ phase: 'Bound', host: 'h2' });
}

/** What the host's agent writes once it has taken the copy. */
async function agentTakes(name: string, sizeBytes = 1024 * 1024 * 1024): Promise<void> {
  await h.resources.mutate('VolumeSnapshot', name, 'acme', (x) => ((x.status = { ...x.status, phase: 'Ready', reason: 'Taken', sizeBytes, takenAt: h.env.now() }), x));
}

describe('volume snapshots', () => {
  it('counts snapshots in the tenant\'s storage quota at their volume\'s size (Failed ones hold nothing)', async () => {
    await h.apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: { quota: { storage: '2560Mi' } } });
    await boundVolume();
    await snapshot('s1', 'pgdata');
    await volume('spare', { size: '64Mi' });
    await snapshot('never', 'spare'); // Failed at once (never used): counts nothing
    // 1Gi volume + 1Gi snapshot + 64Mi: another 1Gi snapshot would be 3136Mi > 2560Mi.
    const over = await refusal(snapshot('s2', 'pgdata'));
    expect(over).toMatchObject({ code: 'CARAPACE_E_QUOTA_EXCEEDED', details: [{ path: 'spec.volume', message: expect.stringContaining('2560Mi') }] });
    expect(await h.resources.get('VolumeSnapshot', 's2', 'acme')).toBeUndefined();
    // Nor may a volume take the room the snapshot holds.
    const vol = await refusal(volume('big', { size: '512Mi' }));
    expect(vol).toMatchObject({ code: 'CARAPACE_E_QUOTA_EXCEEDED', details: [{ path: 'spec.size' }] });
    // Deleting the snapshot gives the room back.
    await h.cp.handle({ type: 'delete', kind: 'VolumeSnapshot', name: 's1', tenant: 'acme' });
    await snapshot('s2', 'pgdata');
    expect((await snap('s2')).status.phase).toBe('Pending');
  });

  it('refuses a snapshot of a volume the tenant does not have (another tenant\'s included), with the field path', async () => {
    await boundVolume();
    const unknown = await refusal(snapshot('s1', 'nope'));
    expect(unknown).toMatchObject({ code: 'CARAPACE_E_VOLUME_NOT_FOUND', details: [{ path: 'spec.volume', message: 'volume "nope" not found' }] });
    // Names are per tenant: globex cannot name acme's volume.
    const theirs = await refusal(snapshot('steal', 'pgdata', 'globex'));
    expect(theirs).toMatchObject({ code: 'CARAPACE_E_VOLUME_NOT_FOUND', details: [{ path: 'spec.volume', message: 'volume "pgdata" not found' }] });
    expect((await h.resources.list('VolumeSnapshot', 'globex')).items).toEqual([]);
  });

  it('starts Pending on the volume\'s host with its uid; an unbound volume\'s snapshot is Failed at once', async () => {
    await boundVolume();
    const pgdata = await h.resources.mustGet('Volume', 'pgdata', 'acme');
    await snapshot('s1', 'pgdata');
    expect((await snap('s1')).status).toEqual({ phase: 'Pending', host: 'h2', volumeUid: pgdata.metadata.uid, sizeBytes: 1024 * 1024 * 1024 });
    await volume('spare', { size: '64Mi' });
    await snapshot('s2', 'spare');
    expect((await snap('s2')).status).toMatchObject({ phase: 'Failed', reason: 'VolumeNotBound', message: expect.stringContaining('never used') });
    // Audited with the volume and the host.
    const created = (await h.records()).filter((r) => r.target.kind === 'VolumeSnapshot' && r.action === 'create');
    expect(created.map((r) => [r.target.name, r.detail])).toEqual([
      ['s1', { volume: 'pgdata', host: 'h2', phase: 'Pending' }],
      ['s2', { volume: 'spare', phase: 'Failed' }],
    ]);
    // The spec is immutable; labels may change; an unchanged apply changes nothing.
    const again = await snapshot('s1', 'pgdata');
    expect(again).toMatchObject({ changed: false });
    expect(await refusal(snapshot('s1', 'spare'))).toMatchObject({ code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.volume', message: 'is "pgdata" (immutable)' }] });
    await snapshot('s1', 'pgdata', 'acme', { keep: 'weekly' });
    expect((await snap('s1')).metadata.labels).toEqual({ keep: 'weekly' });
    expect((await snap('s1')).status.phase).toBe('Pending');
  });

  it('keeps a volume with live snapshots (and the tenant) from deletion; Failed snapshots hold nothing', async () => {
    await boundVolume();
    await h.cp.handle({ type: 'delete', kind: 'Service', name: 'pg', tenant: 'acme' });
    for (const i of (await h.resources.list('Instance', 'acme')).items) await h.resources.remove('Instance', i.metadata.name, 'acme');
    await snapshot('s1', 'pgdata');
    const del = (): Promise<unknown> => h.cp.handle({ type: 'delete', kind: 'Volume', name: 'pgdata', tenant: 'acme' });
    const busy = await refusal(del());
    expect(busy).toMatchObject({ code: 'CARAPACE_E_VOLUME_IN_USE', details: [{ path: 'metadata.name', message: 'has snapshots: s1' }] });
    expect(busy.message).toMatch(/delete them first/);
    await h.cp.handle({ type: 'delete', kind: 'VolumeSnapshot', name: 's1', tenant: 'acme' });
    await h.resources.mutate('Volume', 'pgdata', 'acme', (v) => ((v.status = { ...v.status, phase: 'Pending' }), delete v.status.host, v));
    await snapshot('s2', 'pgdata');
    expect((await snap('s2')).status.phase).toBe('Failed');
    await del();
    expect(await h.resources.get('Volume', 'pgdata', 'acme')).toBeUndefined();
    // The tenant still owns the Failed snapshot object: it must go before the tenant does.
    expect((await refusal(h.cp.handle({ type: 'delete', kind: 'Tenant', name: 'acme' }))).message).toMatch(/1 volume snapshot\(s\)/);
  });
});

describe('restoring a snapshot into a new volume', () => {
  it('refuses a source that is missing, another tenant\'s, not Ready, too large for the volume, or on another host', async () => {
    await boundVolume();
    const missing = await refusal(volume('back', { size: '1Gi', source: { snapshot: 'nope' } }));
    expect(missing).toMatchObject({ code: 'CARAPACE_E_SNAPSHOT_NOT_FOUND', details: [{ path: 'spec.source.snapshot', message: 'volume snapshot "nope" not found' }] });
    await snapshot('s1', 'pgdata');
    const pending = await refusal(volume('back', { size: '1Gi', source: { snapshot: 's1' } }));
    expect(pending).toMatchObject({ code: 'CARAPACE_E_SNAPSHOT_NOT_READY', details: [{ path: 'spec.source.snapshot', message: 'volume snapshot "s1" is Pending' }] });
    await agentTakes('s1');
    const theirs = await refusal(volume('back', { size: '1Gi', source: { snapshot: 's1' } }, 'globex'));
    expect(theirs).toMatchObject({ code: 'CARAPACE_E_SNAPSHOT_NOT_FOUND', details: [{ path: 'spec.source.snapshot' }] });
    const small = await refusal(volume('back', { size: '512Mi', source: { snapshot: 's1' } }));
    expect(small).toMatchObject({ code: 'CARAPACE_E_VOLUME_TOO_SMALL', details: [{ path: 'spec.size', message: "must be at least 1Gi (the size of the snapshot's volume)" }] });
    const elsewhere = await refusal(volume('back', { size: '1Gi', host: 'h1', source: { snapshot: 's1' } }));
    expect(elsewhere).toMatchObject({ code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.host', message: "must be h2 (the snapshot's host) or left out" }] });
    await volume('spare', { size: '64Mi' });
    await snapshot('s2', 'spare');
    const failed = await refusal(volume('back', { size: '1Gi', source: { snapshot: 's2' } }));
    expect(failed).toMatchObject({ code: 'CARAPACE_E_SNAPSHOT_NOT_READY', details: [{ path: 'spec.source.snapshot', message: 'volume snapshot "s2" is Failed' }] });
    expect(failed.message).toMatch(/VolumeNotBound/);
    expect(await h.resources.get('Volume', 'back', 'acme')).toBeUndefined();
  });

  it('makes a new volume bound to the snapshot\'s host at once; its source never changes; its users go there', async () => {
    await boundVolume();
    const pgdata = await h.resources.mustGet('Volume', 'pgdata', 'acme');
    await snapshot('s1', 'pgdata');
    await agentTakes('s1');
    const s1 = await snap('s1');
    await volume('back', { size: '2Gi', source: { snapshot: 's1' } });
    const back = await h.resources.mustGet('Volume', 'back', 'acme');
    expect(back.spec).toEqual({ size: '2Gi', filesystem: 'ext4', host: 'h2', source: { snapshot: 's1' } });
    expect(back.status).toEqual({ phase: 'Bound', host: 'h2', attachedTo: [], restoredFrom: { snapshot: 's1', snapshotUid: s1.metadata.uid, volumeUid: pgdata.metadata.uid } });
    // The manifest as the user wrote it (no host) is the same volume.
    expect(await volume('back', { size: '2Gi', source: { snapshot: 's1' } })).toMatchObject({ changed: false });
    const changed = await refusal(volume('back', { size: '2Gi', source: { snapshot: 's9' } }));
    expect(changed).toMatchObject({ code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.source.snapshot', message: 'was made from snapshot "s1"' }] });
    const dropped = await refusal(volume('back', { size: '2Gi' }));
    expect(dropped).toMatchObject({ code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.source' }] });
    // Restoring never rewrites an existing volume, bound or not.
    const inPlace = await refusal(volume('pgdata', { size: '1Gi', host: 'h2', source: { snapshot: 's1' } }));
    expect(inPlace).toMatchObject({ code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.source.snapshot', message: 'the volume exists; restore into a new volume' }] });
    // A restored volume needs its snapshot no more: the snapshot may go, then its volume.
    await h.cp.handle({ type: 'delete', kind: 'VolumeSnapshot', name: 's1', tenant: 'acme' });
    // Its user is placed where its data is.
    await h.apply({ kind: 'Service', metadata: { name: 'check', tenant: 'acme' }, spec: { image: 'reg/pg:16', isolation: 'host', volumes: [{ volume: 'back', mountPath: '/data' }] } });
    await h.controller.reconcile('Service/acme/check');
    expect((await h.resources.mustGet('Instance', 'check-0', 'acme')).spec.host).toBe('h2');
    // Counted in the storage quota like any volume (1Gi pgdata + 2Gi back + 1Gi snapshot s3).
    await h.apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: { quota: { storage: '4Gi' } } });
    await snapshot('s3', 'pgdata');
    await agentTakes('s3');
    const over = await refusal(volume('back2', { size: '1Gi', source: { snapshot: 's3' } }));
    expect(over).toMatchObject({ code: 'CARAPACE_E_QUOTA_EXCEEDED', details: [{ path: 'spec.size' }] });
  });
});
