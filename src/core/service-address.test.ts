/**
 * Service addresses (VIPs) over a real SQLite store, the real control plane, audit log and
 * controller: claimed with the service's creation, kept by updates and by the controller's
 * status writes, released with its deletion, given by the controller to a service stored
 * before addresses existed, refused with a stable code when the pool is used up.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../audit/log.js';
import type { AuditRecord } from '../audit/record.js';
import { WorkloadController } from '../control/controller.js';
import { CarapaceError } from '../model/errors.js';
import { objectKey, vipClaimKey } from '../model/keys.js';
import { parseManifest } from '../model/manifest.js';
import type { Service } from '../model/objects.js';
import { NETWORK_DEFAULTS, networkPools } from '../model/tenant-network.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { ControlPlane } from './control-plane.js';
import { Resources } from './resources.js';

let dir: string;
let store: SqliteStore;
let audit: AuditLog;
let resources: Resources;
let n = 0;
const env = { now: () => new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString(), newId: () => `id${++n}` };
const logger = pino({ level: 'silent' });
/** A service pool of two addresses (10.112.0.1 and .2). */
const small = networkPools({ ...NETWORK_DEFAULTS, servicePool: '10.112.0.0/30' });

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-vip-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  resources = new Resources(store, audit, env);
  await new ControlPlane(resources, env).handle({ type: 'apply', manifest: parseManifest({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} }) });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

const svc = (name: string, replicas = 1): ReturnType<typeof parseManifest> =>
  parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant: 'acme' }, spec: { image: 'r/web:1', isolation: 'host', replicas } });

async function records(): Promise<AuditRecord[]> {
  return (await audit.read()).records as AuditRecord[]; // written by this test's log: well-formed
}

describe('service addresses', () => {
  it('claims one with the creation, keeps it through updates and status writes, releases it with the deletion', async () => {
    const cp = new ControlPlane(resources, env, small);
    await cp.handle({ type: 'apply', manifest: svc('web') });
    const web = await resources.mustGet('Service', 'web', 'acme');
    expect(web.status.address).toBe('10.112.0.1');
    const claim = await store.get(vipClaimKey('10.112.0.1'));
    expect(claim?.value).toEqual({ tenant: 'acme', service: 'web', uid: web.metadata.uid });
    expect(claim?.version).toBe(web.metadata.resourceVersion); // one transaction
    expect((await records()).filter((r) => r.action === 'create' && r.target.kind === 'Service')).toHaveLength(1);

    await cp.handle({ type: 'apply', manifest: svc('web', 3) });
    expect((await resources.mustGet('Service', 'web', 'acme')).status.address).toBe('10.112.0.1');
    const controller = new WorkloadController({ resources, env, logger, pools: small });
    await controller.reconcile('Service/acme/web'); // writes the status (observedGeneration)
    const reconciled = await resources.mustGet('Service', 'web', 'acme');
    expect(reconciled.status).toMatchObject({ observedGeneration: 2, address: '10.112.0.1' });

    await cp.handle({ type: 'apply', manifest: svc('api') });
    expect((await resources.mustGet('Service', 'api', 'acme')).status.address).toBe('10.112.0.2');
    // The pool is used up: refused with its code, nothing written.
    const refused = await cp.handle({ type: 'apply', manifest: svc('db') }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(CarapaceError);
    expect((refused as CarapaceError).code).toBe('CARAPACE_E_NETWORK_POOL_EXHAUSTED'); // checked just above
    expect((refused as CarapaceError).message).toBe('service "db" in tenant "acme": no service address is left (every address of the service pool is taken); delete unused services');
    expect(await resources.get('Service', 'db', 'acme')).toBeUndefined();

    await cp.handle({ type: 'delete', kind: 'Service', name: 'web', tenant: 'acme' });
    expect(await store.get(vipClaimKey('10.112.0.1'))).toBeUndefined();
    await cp.handle({ type: 'apply', manifest: svc('db') });
    expect((await resources.mustGet('Service', 'db', 'acme')).status.address).toBe('10.112.0.1');
    expect((await audit.verify()).ok).toBe(true);
  });

  it('gives a service stored before addresses existed one at its next reconcile, audited', async () => {
    const cp = new ControlPlane(resources, env);
    await cp.handle({ type: 'apply', manifest: svc('old') });
    // As an older release stored it: no address, no claim.
    const stored = await resources.mustGet('Service', 'old', 'acme');
    const { address: _dropped, ...status } = stored.status;
    await store.put(objectKey('Service', 'old', 'acme'), { ...stored, status } satisfies Service);
    await store.delete(vipClaimKey('10.112.0.1'));

    await new WorkloadController({ resources, env, logger }).reconcile('Service/acme/old');
    const s = await resources.mustGet('Service', 'old', 'acme');
    expect(s.status.address).toBe('10.112.0.1');
    expect((await store.get(vipClaimKey('10.112.0.1')))?.value).toMatchObject({ service: 'old' });
    expect((await records()).filter((r) => r.action === 'service.addressed').map((r) => [r.target.name, r.detail])).toEqual([['old', { address: '10.112.0.1' }]]);
  });

  it('two services created at once get two addresses (the one that lost the claim picks another)', async () => {
    const cp = new ControlPlane(resources, env, small);
    await Promise.all(['a', 'b'].map((name) => cp.handle({ type: 'apply', manifest: svc(name), createOnly: true })));
    const addresses = (await resources.list('Service', 'acme')).items.map((s) => s.status.address).sort();
    expect(addresses).toEqual(['10.112.0.1', '10.112.0.2']);
  });

  it('a service without an address and none left still gets its instances', async () => {
    const cp = new ControlPlane(resources, env, small);
    await cp.handle({ type: 'apply', manifest: svc('a') });
    await cp.handle({ type: 'apply', manifest: svc('b') });
    await cp.handle({ type: 'delete', kind: 'Service', name: 'b', tenant: 'acme' });
    // An old service without an address, and the last address taken by someone else.
    await store.put(objectKey('Service', 'old', 'acme'), { ...(await resources.mustGet('Service', 'a', 'acme')), metadata: { ...(await resources.mustGet('Service', 'a', 'acme')).metadata, name: 'old', uid: 'old' }, status: { ready: 0, observedGeneration: 0 } } satisfies Service);
    await cp.handle({ type: 'apply', manifest: svc('c') });
    await new WorkloadController({ resources, env, logger, pools: small }).reconcile('Service/acme/old');
    expect((await resources.mustGet('Service', 'old', 'acme')).status.address).toBeUndefined();
    expect((await resources.mustGet('Instance', 'old-0', 'acme')).spec.owner.name).toBe('old');
  });
});
