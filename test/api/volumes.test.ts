/**
 * Volumes over the real HTTP edge, control plane and SQLite store: apply/get/list/delete of
 * `kind: Volume`, every refusal with its code and field path (unknown volume, mount path
 * collision, read-write sharing, another workload's read-write volume, another service's
 * template volume, resizing a bound volume, deleting one in use), the storage quota, names
 * per tenant (another tenant's volume is not found, nor readable), and storage GiB-hours in
 * the usage report per volume and per tenant.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifest, openApiWorld, type ApiWorld } from './helpers.js';

const T0 = Date.parse('2026-03-01T00:00:00.000Z');
const H = 3_600_000;
const IMG = '127.0.0.1:5000/x/pg:16';
let w: ApiWorld;

const vol = (name: string, tenant: string, spec: Record<string, unknown>): Record<string, unknown> => manifest('Volume', name, tenant, spec);
const svc = (name: string, tenant: string, spec: Record<string, unknown>): Record<string, unknown> => manifest('Service', name, tenant, { image: IMG, isolation: 'host', ...spec });

/** The error of a refused request: status, code and field issues. */
async function refused(method: 'PUT' | 'DELETE', url: string, body?: unknown, token?: string): Promise<{ status: number; code: string; message: string; details: { path: string; message: string }[] }> {
  const r = await w.call(method, url, body, token);
  expect(r.status, r.text).toBeGreaterThanOrEqual(400);
  return { status: r.status, ...r.json.error };
}

beforeAll(async () => {
  w = await openApiWorld(T0);
  await w.addHost('h1');
  for (const t of ['acme', 'globex']) expect((await w.call('PUT', `/v1/tenants/${t}`, manifest('Tenant', t, undefined, {}))).status).toBe(201);
});

afterAll(async () => {
  await w.close();
});

describe('volumes API', () => {
  it('applies, reads, lists and deletes a volume; an unchanged apply changes nothing', async () => {
    const created = await w.call('PUT', '/v1/tenants/acme/volumes/scratch', vol('scratch', 'acme', { size: '512Mi' }));
    expect(created.status).toBe(201);
    expect(created.json).toMatchObject({ kind: 'Volume', metadata: { name: 'scratch', tenant: 'acme' }, spec: { size: '512Mi', filesystem: 'ext4' }, status: { phase: 'Pending', attachedTo: [] } });
    const again = await w.call('PUT', '/v1/tenants/acme/volumes/scratch', vol('scratch', 'acme', { size: 512 }));
    expect(again.status).toBe(200);
    expect(again.json.metadata.resourceVersion).toBe(created.json.metadata.resourceVersion);
    expect((await w.call('GET', '/v1/tenants/acme/volumes/scratch')).json.spec.size).toBe('512Mi');
    expect((await w.call('GET', '/v1/tenants/acme/volumes')).json.items.map((v: any) => v.metadata.name)).toEqual(['scratch']);
    expect((await w.call('DELETE', '/v1/tenants/acme/volumes/scratch')).status).toBe(200);
    expect((await w.call('GET', '/v1/tenants/acme/volumes/scratch')).status).toBe(404);
    const bad = await refused('PUT', '/v1/tenants/acme/volumes/tiny', vol('tiny', 'acme', { size: '1Mi' }));
    expect(bad).toMatchObject({ status: 400, code: 'CARAPACE_E_VALIDATION', details: [{ path: 'spec.size', message: 'must be at least 16Mi' }] });
  });

  it('refuses bad volume use with stable codes and field paths', async () => {
    expect((await w.call('PUT', '/v1/tenants/acme/volumes/pgdata', vol('pgdata', 'acme', { size: '1Gi' }))).status).toBe(201);

    const unknown = await refused('PUT', '/v1/tenants/acme/services/a', svc('a', 'acme', { volumes: [{ volume: 'nope', mountPath: '/data' }] }));
    expect(unknown).toMatchObject({ status: 422, code: 'CARAPACE_E_VOLUME_NOT_FOUND', details: [{ path: 'spec.volumes[0].volume', message: 'volume "nope" not found' }] });

    const collide = await refused('PUT', '/v1/tenants/acme/services/a', svc('a', 'acme', { volumes: [{ volume: 'pgdata', mountPath: '/data' }], volumeTemplates: [{ name: 'x', size: '64Mi', mountPath: '/data' }] }));
    expect(collide).toMatchObject({ status: 400, code: 'CARAPACE_E_VALIDATION', details: [{ path: 'spec.volumeTemplates[0].mountPath', message: 'mount path "/data" is already used by spec.volumes[0]' }] });

    const shared = await refused('PUT', '/v1/tenants/acme/services/a', svc('a', 'acme', { replicas: 2, volumes: [{ volume: 'pgdata', mountPath: '/data' }] }));
    expect(shared).toMatchObject({ status: 400, code: 'CARAPACE_E_VALIDATION' });
    expect(shared.details).toEqual([{ path: 'spec.volumes[0].readOnly', message: expect.stringContaining('set readOnly: true to share it, or use volumeTemplates') }]);

    // pg writes pgdata; nobody else may mount it, read-only or not.
    expect((await w.call('PUT', '/v1/tenants/acme/services/pg', svc('pg', 'acme', { volumes: [{ volume: 'pgdata', mountPath: '/var/lib/postgresql' }] }))).status).toBe(201);
    const taken = await refused('PUT', '/v1/tenants/acme/jobs/dump', manifest('Job', 'dump', 'acme', { image: IMG, isolation: 'host', volumes: [{ volume: 'pgdata', mountPath: '/in', readOnly: true }] }));
    expect(taken).toMatchObject({ status: 409, code: 'CARAPACE_E_VOLUME_IN_USE', details: [{ path: 'spec.volumes[0].volume', message: 'volume "pgdata" is used read-write by service pg' }] });

    // Template volumes belong to their service.
    expect((await w.call('PUT', '/v1/tenants/acme/services/kv', svc('kv', 'acme', { replicas: 2, volumeTemplates: [{ name: 'data', size: '64Mi', mountPath: '/data' }] }))).status).toBe(201);
    const theirs = await refused('PUT', '/v1/tenants/acme/services/kv2', svc('kv2', 'acme', { volumeTemplates: [{ name: 'data', size: '64Mi', mountPath: '/data' }] }));
    expect(theirs).toMatchObject({ status: 409, code: 'CARAPACE_E_VOLUME_IN_USE', details: [{ path: 'spec.volumeTemplates[0].name', message: 'volume "data-0" belongs to service "kv"' }] });

    // Placed: pgdata is bound to h1, so its size is fixed; in use, it cannot be deleted.
    await w.controller.reconcile('Service/acme/pg');
    expect((await w.call('GET', '/v1/tenants/acme/volumes/pgdata')).json.status).toMatchObject({ phase: 'Bound', host: 'h1' });
    const shrink = await refused('PUT', '/v1/tenants/acme/volumes/pgdata', vol('pgdata', 'acme', { size: '512Mi' }));
    expect(shrink).toMatchObject({ status: 422, code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.size', message: 'cannot shrink a bound volume (now 1Gi)' }] });
    const grow = await refused('PUT', '/v1/tenants/acme/volumes/pgdata', vol('pgdata', 'acme', { size: '2Gi' }));
    expect(grow).toMatchObject({ status: 422, code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.size', message: 'cannot grow a bound volume yet (now 1Gi)' }] });
    const repin = await refused('PUT', '/v1/tenants/acme/volumes/pgdata', vol('pgdata', 'acme', { size: '1Gi', host: 'h2' }));
    expect(repin).toMatchObject({ status: 422, code: 'CARAPACE_E_IMMUTABLE_FIELD', details: [{ path: 'spec.host', message: 'the volume is bound to host h1' }] });
    const busy = await refused('DELETE', '/v1/tenants/acme/volumes/pgdata');
    expect(busy).toMatchObject({ status: 409, code: 'CARAPACE_E_VOLUME_IN_USE', message: 'volume "pgdata" in tenant "acme" is mounted by instance "pg-0" on host h1; stop its users first' });
    const referenced = await refused('DELETE', '/v1/tenants/acme/volumes/data-1');
    expect(referenced).toMatchObject({ status: 409, code: 'CARAPACE_E_VOLUME_IN_USE', message: 'volume "data-1" in tenant "acme" is referenced by service kv (spec.volumeTemplates[0]); change or delete it first' });
    // The refusals are in the audit log, like every refused write.
    const audit = await w.call('GET', '/v1/audit/records?format=jsonl');
    expect(audit.text).toContain('CARAPACE_E_VOLUME_IN_USE');
    // A tenant with volumes cannot be deleted.
    expect((await refused('DELETE', '/v1/tenants/acme')).message).toMatch(/volume\(s\)/);
  });

  it('names volumes per tenant: another tenant neither mounts nor reads them', async () => {
    const other = await refused('PUT', '/v1/tenants/globex/services/thief', svc('thief', 'globex', { volumes: [{ volume: 'pgdata', mountPath: '/steal', readOnly: true }] }));
    expect(other).toMatchObject({ status: 422, code: 'CARAPACE_E_VOLUME_NOT_FOUND', details: [{ path: 'spec.volumes[0].volume', message: 'volume "pgdata" not found' }] });
    const globexAdmin = await w.token('tenant-admin', 'globex');
    expect((await w.call('GET', '/v1/tenants/acme/volumes/pgdata', undefined, globexAdmin)).status).toBe(403);
    expect((await w.call('GET', '/v1/volumes', undefined, globexAdmin)).json.items).toEqual([]);
    expect((await w.call('DELETE', '/v1/tenants/acme/volumes/pgdata', undefined, globexAdmin)).status).toBe(403);
    const acmeViewer = await w.token('tenant-viewer', 'acme');
    expect((await w.call('GET', '/v1/tenants/acme/volumes/pgdata', undefined, acmeViewer)).status).toBe(200);
    expect((await w.call('PUT', '/v1/tenants/acme/volumes/v2', vol('v2', 'acme', { size: '64Mi' }), acmeViewer)).status).toBe(403);
  });

  it('keeps the sum of volume sizes (templates once per replica) within the storage quota', async () => {
    expect((await w.call('PUT', '/v1/tenants/quota', manifest('Tenant', 'quota', undefined, { quota: { storage: '1Gi' } }))).status).toBe(201);
    expect((await w.call('PUT', '/v1/tenants/quota/volumes/a', vol('a', 'quota', { size: '768Mi' }))).status).toBe(201);
    const over = await refused('PUT', '/v1/tenants/quota/volumes/b', vol('b', 'quota', { size: '512Mi' }));
    expect(over).toMatchObject({ status: 403, code: 'CARAPACE_E_QUOTA_EXCEEDED', details: [{ path: 'spec.size', message: 'tenant quota for storage is 1Gi; this would bring the total to 1280Mi (now 768Mi)' }] });
    const templates = await refused('PUT', '/v1/tenants/quota/services/kv', svc('kv', 'quota', { replicas: 3, volumeTemplates: [{ name: 'd', size: '128Mi', mountPath: '/d' }] }));
    expect(templates).toMatchObject({ status: 403, code: 'CARAPACE_E_QUOTA_EXCEEDED', details: [{ path: 'spec.volumeTemplates', message: 'tenant quota for storage is 1Gi; this would bring the total to 1152Mi (now 768Mi)' }] });
    expect((await w.call('PUT', '/v1/tenants/quota/services/kv', svc('kv', 'quota', { replicas: 2, volumeTemplates: [{ name: 'd', size: '128Mi', mountPath: '/d' }] }))).status).toBe(201);
    expect((await w.call('GET', '/v1/tenants/quota/volumes')).json.items.map((v: any) => v.metadata.name)).toEqual(['a', 'd-0', 'd-1']);
  });

  it('reports storage GiB-hours per volume and per tenant', async () => {
    expect((await w.call('PUT', '/v1/tenants/store', manifest('Tenant', 'store', undefined, {}))).status).toBe(201);
    expect((await w.call('PUT', '/v1/tenants/store/volumes/big', vol('big', 'store', { size: '2Gi' }))).status).toBe(201);
    w.setClock(T0 + H);
    expect((await w.call('PUT', '/v1/tenants/store/volumes/small', vol('small', 'store', { size: '512Mi' }))).status).toBe(201);
    w.setClock(T0 + 2 * H);
    expect((await w.call('DELETE', '/v1/tenants/store/volumes/small')).status).toBe(200);
    w.setClock(T0 + 3 * H);
    const q = `since=${new Date(T0).toISOString()}&until=${new Date(T0 + 3 * H).toISOString()}&tenant=store`;
    const GIB_H = 1_073_741_824n * 3_600_000n;
    const byVolume = (await w.call('GET', `/v1/usage?${q}&by=volume`)).json.rows as { volume: string; storageByteMs: string }[];
    // big: 2 GiB for 3 h; small: 0.5 GiB for 1 h.
    expect(byVolume.map((r) => [r.volume, BigInt(r.storageByteMs)])).toEqual([
      ['big', 6n * GIB_H],
      ['small', GIB_H / 2n],
    ]);
    const byTenant = (await w.call('GET', `/v1/usage?${q}`)).json.rows as { tenant: string; storageByteMs: string }[];
    expect(byTenant.map((r) => [r.tenant, BigInt(r.storageByteMs)])).toEqual([['store', 6n * GIB_H + GIB_H / 2n]]);
    const table = (await w.call('GET', `/v1/usage?${q}&by=volume&format=table`)).text;
    expect(table).toMatch(/VOLUME/);
    expect(table).toMatch(/big .* 6\.000\b/);
  });
});
