/**
 * Volume snapshots and restores over the real HTTP edge, control plane and SQLite store:
 * create/get/list/delete of `kind: VolumeSnapshot`, every refusal with its HTTP status, code
 * and field path (unknown volume, another tenant's volume, immutable spec, restore from a
 * missing, foreign or unfinished snapshot, restore smaller than the original, deleting a
 * volume that has snapshots), the restored volume as the API shows it, tenants' isolation and
 * roles, the audit records, and the OpenAPI document. No agent runs: the test writes a
 * snapshot's Ready status as its host's agent would.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifest, openApiWorld, type ApiWorld } from './helpers.js';

const IMG = '127.0.0.1:5000/x/pg:16';
let w: ApiWorld;

const snap = (name: string, tenant: string, volume: string): Record<string, unknown> => manifest('VolumeSnapshot', name, tenant, { volume });
const vol = (name: string, tenant: string, spec: Record<string, unknown>): Record<string, unknown> => manifest('Volume', name, tenant, spec);

async function refused(method: 'PUT' | 'POST' | 'DELETE', url: string, body?: unknown, token?: string): Promise<{ status: number; code: string; message: string; details: { path: string; message: string }[] }> {
  const r = await w.call(method, url, body, token);
  expect(r.status, r.text).toBeGreaterThanOrEqual(400);
  return { status: r.status, ...r.json.error };
}

/** What the snapshot's host agent writes once the copy is taken. */
async function taken(tenant: string, name: string, sizeBytes: number): Promise<void> {
  await w.resources.mutate('VolumeSnapshot', name, tenant, (x) => ((x.status = { ...x.status, phase: 'Ready', reason: 'Taken', sizeBytes, takenAt: '2026-03-01T00:00:05.000Z' }), x));
}

beforeAll(async () => {
  w = await openApiWorld();
  await w.addHost('h1');
  for (const t of ['acme', 'globex']) expect((await w.call('PUT', `/v1/tenants/${t}`, manifest('Tenant', t, undefined, {}))).status).toBe(201);
  // pgdata: bound to h1 by its user's placement.
  expect((await w.call('PUT', '/v1/tenants/acme/volumes/pgdata', vol('pgdata', 'acme', { size: '1Gi' }))).status).toBe(201);
  expect((await w.call('PUT', '/v1/tenants/acme/services/pg', manifest('Service', 'pg', 'acme', { image: IMG, isolation: 'host', volumes: [{ volume: 'pgdata', mountPath: '/var/lib/postgresql' }] }))).status).toBe(201);
  await w.controller.reconcile('Service/acme/pg');
});

afterAll(async () => {
  await w.close();
});

describe('volume snapshots API', () => {
  it('creates, reads, lists and deletes a snapshot; refuses bad ones with codes and field paths', async () => {
    const pgdata = (await w.call('GET', '/v1/tenants/acme/volumes/pgdata')).json;
    const created = await w.call('POST', '/v1/tenants/acme/volumesnapshots', snap('nightly', 'acme', 'pgdata'));
    expect(created.status, created.text).toBe(201);
    expect(created.json).toMatchObject({ kind: 'VolumeSnapshot', metadata: { name: 'nightly', tenant: 'acme' }, spec: { volume: 'pgdata' }, status: { phase: 'Pending', host: 'h1', volumeUid: pgdata.metadata.uid } });
    expect((await w.call('GET', '/v1/tenants/acme/volumesnapshots/nightly')).json.status.phase).toBe('Pending');
    expect((await w.call('GET', '/v1/tenants/acme/volumesnapshots')).json.items.map((x: any) => x.metadata.name)).toEqual(['nightly']);
    expect((await w.call('GET', '/v1/volumesnapshots')).json.items.map((x: any) => `${x.metadata.tenant}/${x.metadata.name}`)).toEqual(['acme/nightly']);
    // Create-only: a second POST of the name is refused; an unchanged PUT changes nothing.
    expect(await refused('POST', '/v1/tenants/acme/volumesnapshots', snap('nightly', 'acme', 'pgdata'))).toMatchObject({ status: 409, code: 'CARAPACE_E_ALREADY_EXISTS' });
    const again = await w.call('PUT', '/v1/tenants/acme/volumesnapshots/nightly', snap('nightly', 'acme', 'pgdata'));
    expect(again.status).toBe(200);
    expect(again.json.metadata.resourceVersion).toBe(created.json.metadata.resourceVersion);

    expect(await refused('PUT', '/v1/tenants/acme/volumesnapshots/x', snap('x', 'acme', 'nope'))).toMatchObject({ status: 422, code: 'CARAPACE_E_VOLUME_NOT_FOUND', details: [{ path: 'spec.volume', message: 'volume "nope" not found' }] });
    expect(await refused('PUT', '/v1/tenants/acme/volumesnapshots/x', manifest('VolumeSnapshot', 'x', 'acme', {}))).toMatchObject({ status: 400, code: 'CARAPACE_E_VALIDATION', details: [{ path: 'spec.volume', message: 'is required' }] });
    expect(await refused('PUT', '/v1/tenants/acme/volumesnapshots/nightly', snap('nightly', 'acme', 'other'))).toMatchObject({ status: 422, code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.volume' }] });
    // Names are per tenant: globex's snapshot of "pgdata" names a volume globex does not have.
    expect(await refused('PUT', '/v1/tenants/globex/volumesnapshots/steal', snap('steal', 'globex', 'pgdata'))).toMatchObject({ status: 422, code: 'CARAPACE_E_VOLUME_NOT_FOUND', details: [{ path: 'spec.volume' }] });

    // A volume with a live snapshot is not deleted (its copy lives with the volume's storage).
    await w.call('DELETE', '/v1/tenants/acme/services/pg');
    for (const i of (await w.resources.list('Instance', 'acme')).items) await w.resources.remove('Instance', i.metadata.name, 'acme');
    expect(await refused('DELETE', '/v1/tenants/acme/volumes/pgdata')).toMatchObject({ status: 409, code: 'CARAPACE_E_VOLUME_IN_USE', details: [{ path: 'metadata.name', message: 'has snapshots: nightly' }] });

    const audit = (await w.call('GET', '/v1/audit/records?format=jsonl')).text.trim().split('\n').map((l) => JSON.parse(l));
    // Successes name the kind; refusals the route they came by.
    const mine = audit.filter((r: any) => r.target.kind === 'VolumeSnapshot' || r.target.kind.includes('/volumesnapshots'));
    expect(mine.filter((r: any) => r.outcome === 'success').map((r: any) => [r.action, r.target.name, r.detail])).toEqual([['create', 'nightly', { volume: 'pgdata', host: 'h1', phase: 'Pending' }]]);
    expect(mine.filter((r: any) => r.outcome === 'failure').map((r: any) => r.detail.code)).toEqual(['CARAPACE_E_ALREADY_EXISTS', 'CARAPACE_E_VOLUME_NOT_FOUND', 'CARAPACE_E_VALIDATION', 'CARAPACE_E_IMMUTABLE_FIELD', 'CARAPACE_E_VOLUME_NOT_FOUND']);
  });

  it('restores a Ready snapshot into a new volume on its host; refuses what cannot be restored', async () => {
    const url = '/v1/tenants/acme/volumes/restored';
    expect(await refused('PUT', url, vol('restored', 'acme', { size: '1Gi', source: { snapshot: 'none' } }))).toMatchObject({ status: 422, code: 'CARAPACE_E_SNAPSHOT_NOT_FOUND', details: [{ path: 'spec.source.snapshot', message: 'volume snapshot "none" not found' }] });
    expect(await refused('PUT', url, vol('restored', 'acme', { size: '1Gi', source: { snapshot: 'nightly' } }))).toMatchObject({ status: 409, code: 'CARAPACE_E_SNAPSHOT_NOT_READY', details: [{ path: 'spec.source.snapshot', message: 'volume snapshot "nightly" is Pending' }] });
    await taken('acme', 'nightly', 1024 * 1048576);
    expect(await refused('PUT', url, vol('restored', 'acme', { size: '1023Mi', source: { snapshot: 'nightly' } }))).toMatchObject({ status: 422, code: 'CARAPACE_E_VOLUME_TOO_SMALL', details: [{ path: 'spec.size', message: "must be at least 1Gi (the size of the snapshot's volume)" }] });
    expect(await refused('PUT', '/v1/tenants/globex/volumes/restored', vol('restored', 'globex', { size: '1Gi', source: { snapshot: 'nightly' } }))).toMatchObject({ status: 422, code: 'CARAPACE_E_SNAPSHOT_NOT_FOUND' });
    expect(await refused('PUT', url, vol('restored', 'acme', { size: '1Gi', source: { snapshot: 'nightly' }, host: 'h9' }))).toMatchObject({ status: 422, code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.host' }] });
    // Restoring never touches an existing volume.
    expect(await refused('PUT', '/v1/tenants/acme/volumes/pgdata', vol('pgdata', 'acme', { size: '1Gi', source: { snapshot: 'nightly' } }))).toMatchObject({ status: 422, code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.source.snapshot' }] });

    const nightly = (await w.call('GET', '/v1/tenants/acme/volumesnapshots/nightly')).json;
    const made = await w.call('POST', '/v1/tenants/acme/volumes', vol('restored', 'acme', { size: '1Gi', source: { snapshot: 'nightly' } }));
    expect(made.status, made.text).toBe(201);
    expect(made.json.spec).toEqual({ size: '1Gi', filesystem: 'ext4', host: 'h1', source: { snapshot: 'nightly' } });
    expect(made.json.status).toEqual({ phase: 'Bound', host: 'h1', attachedTo: [], restoredFrom: { snapshot: 'nightly', snapshotUid: nightly.metadata.uid, volumeUid: nightly.status.volumeUid } });
    expect((await w.call('PUT', url, vol('restored', 'acme', { size: '1Gi', source: { snapshot: 'nightly' } }))).status).toBe(200);
    const audit = (await w.call('GET', '/v1/audit/records?format=jsonl')).text.trim().split('\n').map((l) => JSON.parse(l));
    expect(audit.filter((r: any) => r.target.kind === 'Volume' && r.target.name === 'restored' && r.outcome === 'success').map((r: any) => r.detail)).toEqual([{ generation: 1, size: '1Gi', source: 'nightly', host: 'h1' }]);

    // The snapshot may go (the restored volume does not need it), and then its volume.
    expect((await w.call('DELETE', '/v1/tenants/acme/volumesnapshots/nightly')).status).toBe(200);
    expect((await w.call('GET', '/v1/tenants/acme/volumesnapshots/nightly')).status).toBe(404);
    expect((await w.call('DELETE', '/v1/tenants/acme/volumes/pgdata')).status).toBe(200);
    expect((await w.call('GET', url)).json.status.phase).toBe('Bound');
  });

  it('keeps tenants apart and follows roles', async () => {
    expect((await w.call('PUT', '/v1/tenants/acme/volumesnapshots/weekly', snap('weekly', 'acme', 'restored'))).status).toBe(201);
    const globexAdmin = await w.token('tenant-admin', 'globex');
    expect((await w.call('GET', '/v1/tenants/acme/volumesnapshots/weekly', undefined, globexAdmin)).status).toBe(403);
    expect((await w.call('GET', '/v1/volumesnapshots', undefined, globexAdmin)).json.items).toEqual([]);
    expect((await w.call('DELETE', '/v1/tenants/acme/volumesnapshots/weekly', undefined, globexAdmin)).status).toBe(403);
    const acmeViewer = await w.token('tenant-viewer', 'acme');
    expect((await w.call('GET', '/v1/tenants/acme/volumesnapshots/weekly', undefined, acmeViewer)).status).toBe(200);
    expect((await w.call('POST', '/v1/tenants/acme/volumesnapshots', snap('mine', 'acme', 'restored'), acmeViewer)).status).toBe(403);
    const acmeAdmin = await w.token('tenant-admin', 'acme');
    expect((await w.call('POST', '/v1/tenants/acme/volumesnapshots', snap('mine', 'acme', 'restored'), acmeAdmin)).status).toBe(201);
    expect((await w.call('DELETE', '/v1/tenants/acme/volumesnapshots/mine', undefined, acmeAdmin)).status).toBe(200);
  });

  it('is in the OpenAPI document, whose request bodies all resolve', async () => {
    const doc = (await w.call('GET', '/openapi.json')).json;
    expect(doc.paths['/v1/tenants/{tenant}/volumesnapshots/{name}'].put.requestBody.content['application/json'].schema.$ref).toBe('#/components/schemas/VolumeSnapshotManifest');
    expect(doc.components.schemas.VolumeSnapshotManifest.properties.spec.properties.volume).toBeDefined();
    expect(doc.components.schemas.VolumeManifest.properties.spec.properties.source.properties.snapshot).toBeDefined();
    // Every reference names a schema the document has (Machine, Volume, Secret and Config bodies included).
    const refs = [...JSON.stringify(doc.paths).matchAll(/"\$ref":"#\/components\/schemas\/(\w+)"/g)].map((m) => m[1] as string);
    expect(refs.length).toBeGreaterThan(10);
    expect(refs.filter((r) => !(r in doc.components.schemas))).toEqual([]);
  });
});
