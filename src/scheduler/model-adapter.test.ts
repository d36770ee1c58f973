import { describe, expect, it } from 'vitest';
import type { Cell, Host, Instance, Machine, Metadata, Tenant } from '../model/objects.js';
import type { ContainerSpec } from '../model/schemas.js';
import { schedule } from './index.js';
import { instanceRequestFromModel, machineRequestFromModel, snapshotFromModel, type ModelView } from './model-adapter.js';

function meta(name: string, tenant?: string): Metadata {
  const m: Metadata = { name, uid: `uid-${name}`, labels: {}, resourceVersion: 1, generation: 1, createdAt: 'now', updatedAt: 'now' };
  if (tenant !== undefined) m.tenant = tenant;
  return m;
}

function host(name: string, cpu: number, isolation: string[], state: 'Ready' | 'NotReady' = 'Ready', memoryMiB = 4096): Host {
  return { kind: 'Host', metadata: meta(name), spec: { labels: {}, unschedulable: false }, status: { state, lastHeartbeatAt: 'now', isolation, capacity: { cpu, memoryMiB }, agentVersion: '0' } };
}

function instance(name: string, hostName: string, c: Partial<ContainerSpec> = {}): Instance {
  const container: ContainerSpec = { image: 'reg/app:1', env: {}, cpu: 0.5, memory: 256, pids: 1024, readOnlyRootfs: false, isolation: 'host', group: 'default', ports: [], ...c };
  return {
    kind: 'Instance',
    metadata: meta(name, 'acme'),
    spec: { owner: { kind: 'Service', name: 'web', uid: 'u' }, index: 0, container, restartPolicy: 'Always', maxRestarts: -1, host: hostName, ownerGeneration: 1 },
    status: { phase: hostName === '' ? 'Pending' : 'Running', restarts: 0, ready: hostName !== '' },
  };
}

function machine(name: string, hostName: string, memory: number, cpu = 1): Machine {
  return {
    kind: 'Machine',
    metadata: meta(name, 'acme'),
    spec: { kernel: 'host', cpu, memory, ports: [], restartPolicy: 'Always', running: true },
    status: { phase: hostName === '' ? 'Pending' : 'Running', host: hostName, restarts: 0 },
  };
}

function warmCell(name: string, hostName: string, phase: Cell['status']['phase'] = 'Ready'): Cell {
  return { kind: 'Cell', metadata: meta(name), spec: { tenant: '', group: '', host: hostName, cpu: 2, memoryMiB: 2048, dedicated: false, warm: true }, status: { phase } };
}

function view(v: Partial<ModelView>): ModelView {
  return { hosts: [], instances: [], cells: [], machines: [], tenants: [], ...v };
}

const newId = (): (() => string) => {
  let n = 0;
  return () => `new-${n++}`;
};

describe('snapshotFromModel and the scheduler', () => {
  it("puts replicas of a cell service with ports in cells of their own (they share a cell's network), and packs those without", () => {
    const hosts = [host('h1', 16, ['cell'], 'Ready', 16384)];
    const replicas = (ports: ContainerSpec['ports']): Instance[] => [0, 1, 2].map((n) => ({ ...instance(`web-${n}`, '', { isolation: 'cell', cpu: 0.1, memory: 64, ports }), spec: { ...instance(`web-${n}`, '', { isolation: 'cell', cpu: 0.1, memory: 64, ports }).spec, index: n } }));
    const cellsOf = (pending: Instance[]): number => {
      const plan = schedule(snapshotFromModel(view({ hosts, instances: pending })), { place: pending.map(instanceRequestFromModel) }, { now: 1, newId: newId() });
      expect(plan.placements).toHaveLength(3);
      return new Set(plan.placements.map((p) => p.cell)).size;
    };
    expect(cellsOf(replicas([{ containerPort: 8080, protocol: 'tcp' }]))).toBe(3);
    expect(cellsOf(replicas([]))).toBe(1);
  });

  it('places onto hosts that support the tier, counts running instances, and explains the rest', () => {
    const hosts = [host('a', 1, ['host', 'sandbox']), host('b', 1, ['host']), host('c', 8, ['host', 'sandbox'], 'NotReady')];
    const running = [instance('web-0', 'a')];
    const pending = [instance('web-1', '', { isolation: 'sandbox' }), instance('web-2', ''), instance('web-3', '', { isolation: 'sandbox' })];
    const plan = schedule(snapshotFromModel(view({ hosts, instances: [...running, ...pending] })), { place: pending.map(instanceRequestFromModel) }, { now: 5, newId: newId() });
    const where = new Map(plan.placements.map((p) => [p.instance.id, p.host]));
    // a has 0.5 of 1 cpu left: one sandbox fits there; web-2 spreads to b; the second sandbox has nowhere to go.
    expect(where.get('acme/web-1')).toBe('a');
    expect(where.get('acme/web-2')).toBe('b');
    expect(where.has('acme/web-3')).toBe(false);
    expect(plan.unplaced.find((u) => u.instance.id === 'acme/web-3')?.reason).toMatch(/no host has room for a sandbox instance of 0.5 cpu \/ 256 MiB/);
  });

  it('charges a placed machine to its host: a cell that no longer fits is refused with the usual sentence', () => {
    const hosts = [host('h1', 4, ['cell', 'dedicated', 'host', 'machine'])];
    const machines = [machine('legacy', 'h1', 3072)];
    const cellInstance = instance('api-0', '', { isolation: 'cell', cpu: 0.25, memory: 128 });
    const plan = schedule(snapshotFromModel(view({ hosts, machines, instances: [cellInstance] })), { place: [instanceRequestFromModel(cellInstance)] }, { now: 1, newId: newId() });
    expect(plan.placements).toEqual([]);
    expect(plan.createCells).toEqual([]);
    expect(plan.unplaced).toEqual([
      expect.objectContaining({ code: 'NoCapacity', reason: 'no host has room for a cell of 2 cpu / 2048 MiB: 1 hosts considered; 0 short of cpu, 1 short of memory' }),
    ]);
    // Without the machine the same cell fits.
    const free = schedule(snapshotFromModel(view({ hosts, instances: [cellInstance] })), { place: [instanceRequestFromModel(cellInstance)] }, { now: 1, newId: newId() });
    expect(free.createCells).toHaveLength(1);
  });

  it('places a machine where its memory fits, time-sharing vCPUs under the cpu overcommit, and counts it in the quota', () => {
    const overcommitted = (h: Host): Host => ({ ...h, spec: { ...h.spec, overcommit: { cpu: 4, memory: 1 } } });
    const hosts = [overcommitted(host('small', 2, ['machine'], 'Ready', 2048)), overcommitted(host('big', 2, ['machine'], 'Ready', 8192)), host('novm', 64, ['host'], 'Ready', 65536)];
    // 6 vCPUs on 2 cores: time-shared, within 2 x 4 allocatable; only `big` has the memory.
    const m = machine('db', '', 4096, 6);
    const ok = schedule(snapshotFromModel(view({ hosts, machines: [m] })), { place: [machineRequestFromModel(m)] }, { now: 1, newId: newId() });
    expect(ok.placements.map((p) => [p.instance.id, p.host, p.cell])).toEqual([['m:acme/db', 'big', undefined]]);
    const huge = machine('db', '', 4096, 12);
    const tooLarge = schedule(snapshotFromModel(view({ hosts, machines: [huge] })), { place: [machineRequestFromModel(huge)] }, { now: 1, newId: newId() });
    expect(tooLarge.unplaced).toEqual([expect.objectContaining({ code: 'TooLarge', reason: 'a machine of 12 cpu / 4096 MiB is larger than any matching host can allocate (2 hosts considered)' })]);
    // A second one finds big's memory held by the first.
    const second = machine('db2', '', 6144, 1);
    const full = schedule(snapshotFromModel(view({ hosts, machines: [{ ...m, status: { ...m.status, host: 'big' } }, second] })), { place: [machineRequestFromModel(second)] }, { now: 1, newId: newId() });
    expect(full.unplaced[0]?.reason).toBe('no host has room for a machine of 1 cpu / 6144 MiB: 1 hosts considered; 0 short of cpu, 1 short of memory');
    const quota = { kind: 'Tenant', metadata: meta('acme'), spec: { quota: { memory: 2048 } } } as Tenant; // `as`: only spec.quota is read
    const over = schedule(snapshotFromModel(view({ hosts, machines: [m], tenants: [quota] })), { place: [machineRequestFromModel(m)] }, { now: 1, newId: newId() });
    expect(over.unplaced[0]?.code).toBe('QuotaExceeded');
  });

  it('claims a Ready warm cell in the plan instead of creating one; a booting one is only charged', () => {
    const hosts = [host('h1', 8, ['cell', 'dedicated'], 'Ready', 8192)];
    const i = instance('api-0', '', { isolation: 'cell', cpu: 0.25, memory: 128 });
    const claimed = schedule(snapshotFromModel(view({ hosts, cells: [warmCell('warm-a', 'h1')], instances: [i] })), { place: [instanceRequestFromModel(i)] }, { now: 1, newId: newId() });
    expect(claimed.createCells).toEqual([{ id: 'warm-a', tenant: 'acme', group: 'default', host: 'h1', cpu: 2, memoryMiB: 2048, dedicated: false, fromWarmPool: true }]);
    expect(claimed.placements[0]?.cell).toBe('warm-a');
    const booting = schedule(snapshotFromModel(view({ hosts, cells: [warmCell('warm-b', 'h1', 'Booting')], instances: [i] })), { place: [instanceRequestFromModel(i)] }, { now: 1, newId: newId() });
    expect(booting.createCells).toEqual([expect.objectContaining({ id: 'new-0' })]);
    expect(booting.createCells[0]?.fromWarmPool).toBeUndefined();
    // Four booting warm cells fill an 8 GiB host: nothing is left for a new cell.
    const full = [warmCell('w1', 'h1', 'Booting'), warmCell('w2', 'h1', 'Booting'), warmCell('w3', 'h1', 'Booting'), warmCell('w4', 'h1', 'Booting')];
    const none = schedule(snapshotFromModel(view({ hosts: [host('h1', 16, ['cell'], 'Ready', 8192)], cells: full, instances: [i] })), { place: [instanceRequestFromModel(i)] }, { now: 1, newId: newId() });
    expect(none.unplaced[0]?.reason).toMatch(/1 short of memory/);
  });

  it('leaves out what is on a host that is not ready', () => {
    const hosts = [host('a', 4, ['host', 'cell', 'machine']), host('gone', 4, ['host', 'cell', 'machine'], 'NotReady')];
    const s = snapshotFromModel(view({ hosts, instances: [instance('web-0', 'gone'), instance('web-1', 'a')], machines: [machine('m', 'gone', 1024)], cells: [warmCell('w', 'gone')] }));
    expect(s.placements.map((p) => p.instance.id)).toEqual(['acme/web-1']);
    expect(s.cells).toEqual([]);
    expect(s.hosts.map((h) => [h.name, h.ready])).toEqual([['a', true], ['gone', false]]);
  });
});
