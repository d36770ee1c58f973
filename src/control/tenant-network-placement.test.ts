/**
 * Tenant networks handed out by the one placement pipeline, over a real SQLite store, the
 * real control plane, audit log and controller (no agents: hosts are registered by the
 * test). The network record, its claim and the host's block land in the transaction of the
 * placement that needs them; two tenants never share a CIDR or a VNI, even when two passes
 * race; a used-up pool refuses the placement with a stable code, audited.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../audit/log.js';
import type { AuditRecord } from '../audit/record.js';
import { ControlPlane } from '../core/control-plane.js';
import { Resources } from '../core/resources.js';
import { isCarapaceError } from '../model/errors.js';
import { cidrClaimKey, tenantNetworkKey } from '../model/keys.js';
import { parseManifest } from '../model/manifest.js';
import type { Host } from '../model/objects.js';
import { NETWORK_DEFAULTS, networkPools, type TenantNetwork } from '../model/tenant-network.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { WorkloadController } from './controller.js';
import { Placement } from './placement.js';

let dir: string;
let store: SqliteStore;
let audit: AuditLog;
let resources: Resources;
let cp: ControlPlane;
let controller: WorkloadController;
let n = 0;
const env = { now: () => new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString(), newId: () => `id${++n}` };
const logger = pino({ level: 'silent' });

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-tenant-net-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  resources = new Resources(store, audit, env);
  cp = new ControlPlane(resources, env);
  controller = new WorkloadController({ resources, env, logger });
  for (const t of ['acme', 'globex']) await apply({ kind: 'Tenant', metadata: { name: t }, spec: {} });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

async function apply(m: Record<string, unknown>): Promise<void> {
  await cp.handle({ type: 'apply', manifest: parseManifest({ apiVersion: 'carapace/v1', ...m }) });
}

async function addHost(name: string, cpu = 8, memoryMiB = 16384): Promise<void> {
  const host: Host = {
    kind: 'Host',
    metadata: { name, uid: name, labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() },
    spec: { labels: {}, unschedulable: false, overcommit: { cpu: 1, memory: 1 } },
    status: { state: 'Ready', lastHeartbeatAt: env.now(), isolation: ['cell', 'dedicated', 'host', 'machine', 'sandbox'], capacity: { cpu, memoryMiB }, agentVersion: 'test' },
  };
  await resources.write(host, 0);
}

async function network(tenant: string): Promise<{ value: TenantNetwork; version: number } | undefined> {
  return store.get<TenantNetwork>(tenantNetworkKey(tenant));
}

async function records(): Promise<AuditRecord[]> {
  return (await audit.read()).records as AuditRecord[]; // written by this test's log: well-formed
}

const web = (tenant: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  kind: 'Service',
  metadata: { name: 'web', tenant },
  spec: { image: 'r/web:1', isolation: 'host', replicas: 1, cpu: 0.5, memory: '64Mi', ...extra },
});

describe('tenant networks in the placement pipeline', () => {
  it('creates the network, its claim and the host block in the transaction of the first placement, audited in the same batch', async () => {
    await addHost('h1');
    await apply(web('acme'));
    await controller.reconcile('Service/acme/web');
    const inst = await resources.mustGet('Instance', 'web-0', 'acme');
    expect(inst.spec.host).toBe('h1');
    const net = await network('acme');
    expect(net?.value).toEqual({ tenant: 'acme', cidr: '10.128.0.0/18', vni: 1000, blocks: { h1: '10.128.0.0/24' }, createdAt: expect.any(String) as string });
    const claim = await store.get(cidrClaimKey(0));
    const tenant = await resources.mustGet('Tenant', 'acme');
    expect(tenant.status?.network).toEqual({ cidr: '10.128.0.0/18', vni: 1000 });
    // One transaction: the record, its claim, the tenant's status and the placement share one revision.
    expect(new Set([net?.version, claim?.version, tenant.metadata.resourceVersion, inst.metadata.resourceVersion]).size).toBe(1);
    const recs = (await records()).filter((r) => ['network.allocated', 'instance.placed'].includes(r.action));
    expect(recs.map((r) => [r.action, r.target.kind, r.target.name, r.detail])).toEqual([
      ['network.allocated', 'TenantNetwork', 'acme', { cidr: '10.128.0.0/18', vni: 1000, host: 'h1', block: '10.128.0.0/24' }],
      ['instance.placed', 'Instance', 'web-0', { host: 'h1' }],
    ]);
    expect(recs[1]?.seq).toBe((recs[0]?.seq ?? 0) + 1);

    // More work of the tenant on the same host changes nothing.
    await apply(web('acme', { replicas: 2 }));
    await controller.reconcile('Service/acme/web');
    expect((await resources.mustGet('Instance', 'web-1', 'acme')).spec.host).toBe('h1');
    expect((await network('acme'))?.version).toBe(net?.version);
    expect((await audit.verify()).ok).toBe(true);
  });

  it('adds a second block for a second host, in the transaction of the placement there', async () => {
    await addHost('h1', 1, 4096);
    await apply(web('acme'));
    await controller.reconcile('Service/acme/web');
    await addHost('h2', 1, 4096);
    // spread: one replica per host, so the second lands on h2.
    await apply(web('acme', { replicas: 2 }));
    await controller.reconcile('Service/acme/web');
    const second = await resources.mustGet('Instance', 'web-1', 'acme');
    expect(second.spec.host).toBe('h2');
    const net = await network('acme');
    expect(net?.value.blocks).toEqual({ h1: '10.128.0.0/24', h2: '10.128.1.0/24' });
    expect(net?.version).toBe(second.metadata.resourceVersion);
    const added = (await records()).filter((r) => r.action === 'network.allocated').map((r) => r.detail);
    expect(added).toEqual([
      { cidr: '10.128.0.0/18', vni: 1000, host: 'h1', block: '10.128.0.0/24' },
      { host: 'h2', block: '10.128.1.0/24' },
    ]);
  });

  it('gives cells and machines their tenant network too, and two tenants never share a CIDR or a VNI', async () => {
    await addHost('h1');
    await apply({ kind: 'Service', metadata: { name: 'api', tenant: 'acme' }, spec: { image: 'r/api:1', isolation: 'cell', cpu: 0.25, memory: '128Mi' } });
    await apply({ kind: 'Machine', metadata: { name: 'vm', tenant: 'globex' }, spec: { kernel: 'host', cpu: 1, memory: 512 } });
    await controller.reconcile('Service/acme/api');
    await controller.reconcilePlacement();
    expect((await resources.mustGet('Machine', 'vm', 'globex')).status.host).toBe('h1');
    const a = (await network('acme'))?.value;
    const g = (await network('globex'))?.value;
    expect(a?.blocks).toEqual({ h1: '10.128.0.0/24' });
    expect(g).toMatchObject({ cidr: '10.128.64.0/18', vni: 1001, blocks: { h1: '10.128.64.0/24' } });
    expect((await store.get(cidrClaimKey(1)))?.value).toEqual({ tenant: 'globex' });
  });

  it('two passes racing for two tenants: one loses on the claim and re-plans, the networks differ', async () => {
    await addHost('h1');
    const other = new WorkloadController({ resources, env, logger });
    await apply(web('acme'));
    await apply(web('globex'));
    const outcomes = await Promise.allSettled([controller.reconcile('Service/acme/web'), other.reconcile('Service/globex/web')]);
    // A loser failed on a precondition (the other's claim or record); its next pass succeeds.
    for (const o of outcomes) if (o.status === 'rejected') expect(isCarapaceError(o.reason, 'CARAPACE_E_CONFLICT') || isCarapaceError(o.reason, 'CARAPACE_E_ALREADY_EXISTS')).toBe(true);
    await controller.reconcilePlacement();
    await controller.reconcile('Service/acme/web');
    await controller.reconcile('Service/globex/web');
    const a = (await network('acme'))?.value;
    const g = (await network('globex'))?.value;
    expect(a && g).toBeTruthy();
    expect(new Set([a?.cidr, g?.cidr]).size).toBe(2);
    expect(new Set([a?.vni, g?.vni]).size).toBe(2);
    for (const t of ['acme', 'globex']) expect((await resources.mustGet('Instance', 'web-0', t)).spec.host).toBe('h1');
  });

  it('refuses a placement when no tenant network is left (CARAPACE_E_NETWORK_POOL_EXHAUSTED, audited), and places it once a tenant is gone', async () => {
    await addHost('h1');
    // A pool with room for one tenant network.
    const pools = networkPools({ ...NETWORK_DEFAULTS, tenantPool: '10.128.0.0/18' });
    const placement = new Placement({ resources, env, logger, pools });
    await apply(web('acme'));
    await controller.reconcile('Service/acme/web'); // acme holds the only network
    await apply({ kind: 'Machine', metadata: { name: 'vm', tenant: 'globex' }, spec: { kernel: 'host', cpu: 1, memory: 512 } });
    const out = await placement.place(await placement.view());
    expect(out).toMatchObject({ placed: 0, refused: 1 });
    const m = await resources.mustGet('Machine', 'vm', 'globex');
    expect(m.status).toMatchObject({ host: '', reason: 'Unschedulable', message: 'no tenant network is left for tenant globex: every /18 of the tenant pool is taken; delete unused tenants' });
    const refusal = (await records()).filter((r) => r.action === 'network.refused');
    expect(refusal.map((r) => [r.outcome, r.target.name, r.detail])).toEqual([['failure', 'vm', { code: 'CARAPACE_E_NETWORK_POOL_EXHAUSTED', message: m.status.message }]]);
    // The same refusal again writes nothing new.
    await placement.place(await placement.view());
    expect((await records()).filter((r) => r.action === 'network.refused')).toHaveLength(1);
    // acme goes (its network with it): globex's machine gets the network.
    await cp.handle({ type: 'delete', kind: 'Service', name: 'web', tenant: 'acme' });
    await resources.remove('Instance', 'web-0', 'acme');
    await cp.handle({ type: 'delete', kind: 'Tenant', name: 'acme' });
    expect(await network('acme')).toBeUndefined();
    expect(await store.get(cidrClaimKey(0))).toBeUndefined();
    expect((await placement.place(await placement.view())).placed).toBe(1);
    expect((await network('globex'))?.value).toMatchObject({ cidr: '10.128.0.0/18', vni: 1000, blocks: { h1: '10.128.0.0/24' } });
  });
});
