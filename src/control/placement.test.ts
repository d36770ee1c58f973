/**
 * The one placement pipeline over a real SQLite store, the real control plane, audit log and
 * controller (no agents: hosts are registered by the test, nothing runs). Machines, cells and
 * host-run instances share the hosts' capacity; warm cells are claimed by the plan; a plan is
 * written with its audit records in transactions the store accepts; the kept scheduler state
 * follows the store.
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
import { parseManifest } from '../model/manifest.js';
import type { Cell, Host } from '../model/objects.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import type { TxnOp } from '../store/store.js';
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
  dir = await mkdtemp(join(tmpdir(), 'carapace-placement-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  resources = new Resources(store, audit, env);
  cp = new ControlPlane(resources, env);
  controller = new WorkloadController({ resources, env, logger });
  await apply({ kind: 'Tenant', metadata: { name: 'acme' }, spec: {} });
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

async function apply(m: Record<string, unknown>): Promise<void> {
  await cp.handle({ type: 'apply', manifest: parseManifest({ apiVersion: 'carapace/v1', ...m }) });
}

async function addHost(name: string, cpu: number, memoryMiB: number, isolation = ['cell', 'dedicated', 'host', 'machine', 'sandbox']): Promise<void> {
  const host: Host = {
    kind: 'Host',
    metadata: { name, uid: name, labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() },
    spec: { labels: {}, unschedulable: false, overcommit: { cpu: 4, memory: 1 } },
    status: { state: 'Ready', lastHeartbeatAt: env.now(), isolation, capacity: { cpu, memoryMiB }, agentVersion: 'test' },
  };
  await resources.write(host, 0);
}

async function records(): Promise<AuditRecord[]> {
  return (await audit.read()).records as AuditRecord[]; // written by this test's log: well-formed
}

describe('placement pipeline', () => {
  it('refuses a cell on a host whose memory a machine holds, with the usual sentence', async () => {
    await addHost('h1', 4, 4096);
    await apply({ kind: 'Machine', metadata: { name: 'legacy', tenant: 'acme' }, spec: { kernel: 'host', cpu: 2, memory: 3072 } });
    await controller.reconcilePlacement();
    const m = await resources.mustGet('Machine', 'legacy', 'acme');
    expect(m.status).toMatchObject({ host: 'h1', reason: 'Scheduled', message: 'placed on host h1' });
    expect((await records()).filter((r) => r.action === 'machine.placed').map((r) => [r.target.name, r.detail])).toEqual([['legacy', { host: 'h1' }]]);

    await apply({ kind: 'Service', metadata: { name: 'api', tenant: 'acme' }, spec: { image: 'r/api:1', isolation: 'cell', cpu: 0.25, memory: '128Mi' } });
    await controller.reconcile('Service/acme/api');
    const i = await resources.mustGet('Instance', 'api-0', 'acme');
    expect(i.spec.host).toBe('');
    expect(i.status).toMatchObject({ phase: 'Pending', reason: 'Unschedulable', message: 'no host has room for a cell of 2 cpu / 2048 MiB: 1 hosts considered; 0 short of cpu, 1 short of memory' });
    expect((await resources.list('Cell')).items).toEqual([]);

    // The machine goes (an unplaced one would be removed at once; this one is placed, so its
    // agent removes it): once its record is gone, the waiting cell instance gets the room.
    await resources.remove('Machine', 'legacy', 'acme');
    await controller.reconcilePlacement();
    const placed = await resources.mustGet('Instance', 'api-0', 'acme');
    expect(placed.spec.host).toBe('h1');
    expect(placed.spec.cell).toMatch(/^cell-/);
  });

  it('refuses a machine whose memory does not fit next to a cell, and places it when the host grows', async () => {
    await addHost('h1', 4, 3072);
    await apply({ kind: 'Service', metadata: { name: 'api', tenant: 'acme' }, spec: { image: 'r/api:1', isolation: 'cell', cpu: 0.25, memory: '128Mi' } });
    await controller.reconcile('Service/acme/api');
    await apply({ kind: 'Machine', metadata: { name: 'legacy', tenant: 'acme' }, spec: { kernel: 'host', cpu: 1, memory: 2048 } });
    await controller.reconcilePlacement();
    const m = await resources.mustGet('Machine', 'legacy', 'acme');
    expect(m.status).toMatchObject({ host: '', reason: 'Unschedulable', message: 'no host has room for a machine of 1 cpu / 2048 MiB: 1 hosts considered; 0 short of cpu, 1 short of memory' });
    await resources.mutate('Host', 'h1', undefined, (h) => ((h.status.capacity.memoryMiB = 8192), h));
    await controller.reconcilePlacement();
    expect((await resources.mustGet('Machine', 'legacy', 'acme')).status.host).toBe('h1');
  });

  it("claims a Ready warm cell named by the plan, with the cell's claim and the placement in one transaction", async () => {
    await addHost('h1', 8, 16384);
    const now = env.now();
    const warm: Cell = {
      kind: 'Cell',
      metadata: { name: 'warm-1', uid: 'w1', labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
      spec: { tenant: '', group: '', host: 'h1', cpu: 2, memoryMiB: 2048, dedicated: false, warm: true },
      status: { phase: 'Ready' },
    };
    await resources.write(warm, 0);
    await apply({ kind: 'Service', metadata: { name: 'api', tenant: 'acme' }, spec: { image: 'r/api:1', isolation: 'cell', replicas: 2, cpu: 0.25, memory: '128Mi' } });
    await controller.reconcile('Service/acme/api');
    const cells = (await resources.list('Cell')).items;
    expect(cells.map((c) => [c.metadata.name, c.spec.tenant, c.spec.group])).toEqual([['warm-1', 'acme', 'default']]);
    const insts = (await resources.list('Instance', 'acme')).items;
    expect(insts.map((i) => [i.metadata.name, i.spec.cell, i.status.message])).toEqual([
      ['api-0', 'warm-1', 'placed in cell warm-1 on host h1'],
      ['api-1', 'warm-1', 'placed in cell warm-1 on host h1'],
    ]);
    // One transaction: the claimed cell and both instances carry the same store revision.
    expect(new Set([cells[0]?.metadata.resourceVersion, ...insts.map((i) => i.metadata.resourceVersion)]).size).toBe(1);
    const recs = await records();
    const plan = recs.filter((r) => ['cell.assigned', 'instance.placed', 'cell.created'].includes(r.action));
    expect(plan.map((r) => [r.action, r.target.name])).toEqual([
      ['cell.assigned', 'warm-1'],
      ['instance.placed', 'api-0'],
      ['instance.placed', 'api-1'],
    ]);
    expect(plan[0]?.detail).toEqual({ group: 'default', host: 'h1', fromWarmPool: true });
    // Consecutive records of one commit.
    expect(plan.map((r) => r.seq)).toEqual([plan[0]!.seq, plan[0]!.seq + 1, plan[0]!.seq + 2]); // filtered from a non-empty list above
  });

  it('writes a large plan in transactions the store accepts (etcd allows 128 operations)', async () => {
    await addHost('h1', 64, 65536);
    const sizes: number[] = [];
    const txn = store.txn.bind(store);
    store.txn = async (ops: TxnOp[]) => {
      sizes.push(ops.length);
      return txn(ops);
    };
    await apply({ kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'r/web:1', isolation: 'host', replicas: 60, cpu: 0.1, memory: '16Mi' } });
    await apply({ kind: 'Service', metadata: { name: 'api', tenant: 'acme' }, spec: { image: 'r/api:1', isolation: 'cell', replicas: 40, cpu: 0.1, memory: '16Mi' } });
    await controller.reconcile('Service/acme/web');
    await controller.reconcile('Service/acme/api');
    const insts = (await resources.list('Instance', 'acme')).items;
    expect(insts).toHaveLength(100);
    expect(insts.every((i) => i.spec.host === 'h1')).toBe(true);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(128);
    expect((await audit.verify()).ok).toBe(true);
  });

  it('keeps its scheduler state between passes and rebuilds it only when the cluster changed under it', async () => {
    await addHost('h1', 1, 4096, ['host']);
    const placement = new Placement({ resources, env, logger });
    await apply({ kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'r/web:1', isolation: 'host', replicas: 1, cpu: 2, memory: '64Mi' } });
    await controller.reconcile('Service/acme/web'); // writes web-0, waiting: 2 cpu of 4 allocatable is fine
    await apply({ kind: 'Service', metadata: { name: 'big', tenant: 'acme' }, spec: { image: 'r/big:1', isolation: 'host', replicas: 1, cpu: 3, memory: '64Mi' } });
    await controller.reconcile('Service/acme/big');
    expect((await resources.mustGet('Instance', 'big-0', 'acme')).status.reason).toBe('Unschedulable');

    expect((await placement.place(await placement.view())).rebuilt).toBe(true); // first pass builds
    expect((await placement.place(await placement.view())).rebuilt).toBe(false); // nothing changed: kept
    // An instance that goes away is removed from the kept state, which then finds room for big-0.
    await resources.remove('Instance', 'web-0', 'acme');
    const after = await placement.place(await placement.view());
    expect(after).toEqual({ placed: 1, refused: 0, rebuilt: false });
    expect((await resources.mustGet('Instance', 'big-0', 'acme')).spec.host).toBe('h1');
    // A host changed by someone else: rebuilt from the store.
    await resources.mutate('Host', 'h1', undefined, (h) => ((h.spec.unschedulable = true), h));
    await apply({ kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'r/web:1', isolation: 'host', replicas: 2, cpu: 0.5, memory: '64Mi' } });
    await controller.reconcile('Service/acme/web');
    const waiting = await placement.place(await placement.view());
    expect(waiting.rebuilt).toBe(true);
    expect((await resources.list('Instance', 'acme')).items.filter((i) => i.spec.host === '').map((i) => i.metadata.name)).toEqual(['web-0', 'web-1']);
  });
});
