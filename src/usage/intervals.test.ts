/**
 * Interval records: what objects hold, the level-based write plan, and a round trip through a
 * real (in-memory SQLite) store: writes land atomically, a second close conflicts, and the
 * records read back give the expected reserved usage.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { ConflictError, type Entry } from '../store/store.js';
import type { Cell, Instance, Machine } from '../model/objects.js';
import { INTERVALS_PREFIX, intervalKey } from '../model/keys.js';
import { allocationOf, closeInterval, openInterval, parseInterval, planIntervalChange, reservedUsage, type AllocationInterval } from './index.js';

const meta = (name: string, tenant?: string) => ({ name, ...(tenant ? { tenant } : {}), uid: `uid-${name}`, labels: {}, resourceVersion: 1, generation: 1, createdAt: '', updatedAt: '' });

function instance(host: string, phase: Instance['status']['phase'], cell?: string, cpu = 0.5): Instance {
  return {
    kind: 'Instance',
    metadata: meta('web-0', 'acme'),
    // Only the fields allocationOf reads matter; the cast fills a full ContainerSpec's other fields.
    spec: { owner: { kind: 'Service', name: 'web', uid: 'u' }, index: 0, container: { cpu, memory: 256, group: 'front', isolation: 'cell' } as Instance['spec']['container'], restartPolicy: 'Always', maxRestarts: -1, host, ...(cell ? { cell } : {}), ownerGeneration: 1 },
    status: { phase, restarts: 0, ready: false },
  };
}
const cell = (tenant: string, phase: Cell['status']['phase'] = 'Ready'): Cell => ({
  kind: 'Cell',
  metadata: meta('c1'),
  spec: { tenant, group: tenant ? 'front' : '', host: 'h1', cpu: 2, memoryMiB: 1024, dedicated: false, warm: tenant === '' },
  status: { phase },
});
const machine = (phase: Machine['status']['phase']): Machine => ({
  kind: 'Machine',
  metadata: meta('vm', 'acme'),
  // Only cpu and memory are read.
  spec: { cpu: 2, memory: 512 } as Machine['spec'],
  status: { phase, host: 'h1', restarts: 0 },
});

describe('allocationOf', () => {
  it('follows the scheduler: placed, non-terminal instances; placed cells; running machines', () => {
    expect(allocationOf(instance('', 'Pending'))).toBeUndefined();
    expect(allocationOf(instance('h1', 'Succeeded'))).toBeUndefined();
    expect(allocationOf(instance('h1', 'Backoff', 'c1'))).toEqual({ subject: { kind: 'instance', tenant: 'acme', group: 'front', cell: 'c1', name: 'web-0', uid: 'uid-web-0' }, cpu: 0.5, memoryMiB: 256 });
    expect(allocationOf(instance('h1', 'Running'))?.subject.cell).toBeUndefined();
    expect(allocationOf(cell(''))?.subject).toEqual({ kind: 'cell', tenant: '', group: '', name: 'c1', uid: 'uid-c1' });
    expect(allocationOf(cell('acme', 'Retiring'))).toEqual({ subject: { kind: 'cell', tenant: 'acme', group: 'front', name: 'c1', uid: 'uid-c1' }, cpu: 2, memoryMiB: 1024 });
    expect(allocationOf(machine('Running'))).toEqual({ subject: { kind: 'machine', tenant: 'acme', name: 'vm', uid: 'uid-vm' }, cpu: 2, memoryMiB: 512 });
    expect(allocationOf(machine('Stopped'))).toBeUndefined();
  });
});

describe('interval records', () => {
  it('closes once, never before start', () => {
    const r = openInterval('x', { subject: { kind: 'machine', tenant: 'a', name: 'm', uid: 'u' }, cpu: 1, memoryMiB: 64 }, '2024-01-01T00:00:10.000Z');
    const closed = closeInterval(r, '2024-01-01T00:00:20.000Z');
    expect(closed.end).toBe('2024-01-01T00:00:20.000Z');
    expect(r.end).toBeUndefined();
    expect(() => closeInterval(closed, '2024-01-01T00:00:30.000Z')).toThrow(/already closed/);
    expect(() => closeInterval(r, '2024-01-01T00:00:00.000Z')).toThrow(/before start/);
    expect(parseInterval(JSON.parse(JSON.stringify(closed)))).toEqual(closed);
    expect(() => parseInterval({ ...closed, end: '2024-01-01T00:00:00.000Z' })).toThrow(/end must not be before start/);
    expect(() => parseInterval({ ...closed, extra: 1 })).toThrow();
  });

  it('plans nothing when the record already matches, close+open when the allocation changes', () => {
    const want = allocationOf(instance('h1', 'Running', 'c1'));
    const rec = openInterval('i1', want!, '2024-01-01T00:00:00.000Z');
    const open: Entry<AllocationInterval> = { key: intervalKey('i1'), value: rec, version: 7, createRevision: 7 };
    expect(planIntervalChange(open, want, '2024-01-01T00:01:00.000Z', 'i2')).toEqual([]);
    expect(planIntervalChange(undefined, undefined, '2024-01-01T00:01:00.000Z', 'i2')).toEqual([]);
    const resized = allocationOf(instance('h1', 'Running', 'c1', 1));
    const ops = planIntervalChange(open, resized, '2024-01-01T00:01:00.000Z', 'i2');
    expect(ops.map((o) => [o.op, o.key, o.expect])).toEqual([
      ['put', 'usage/intervals/i1', { version: 7 }],
      ['put', 'usage/intervals/i2', { absent: true }],
    ]);
  });
});

describe('interval records in a real store', () => {
  let store: SqliteStore | undefined;
  afterEach(async () => {
    await store?.close();
    store = undefined;
  });

  it('round-trips a lifecycle and gives its reserved usage', async () => {
    store = await openSqliteStore({ path: ':memory:' });
    const t = (s: number): string => new Date(Date.parse('2024-01-01T00:00:00.000Z') + s * 1000).toISOString();
    const openOf = async (): Promise<Entry<AllocationInterval> | undefined> => {
      const all = await store!.list<AllocationInterval>(INTERVALS_PREFIX);
      return all.items.find((e) => e.value.end === undefined);
    };
    // Placed at 0 with 0.5 cores, resized to 1 core at 100, finished at 160.
    await store.txn(planIntervalChange(await openOf(), allocationOf(instance('h1', 'Starting')), t(0), 'a'));
    await store.txn(planIntervalChange(await openOf(), allocationOf(instance('h1', 'Running')), t(50), 'unused'));
    const before = await openOf();
    await store.txn(planIntervalChange(before, allocationOf(instance('h1', 'Running', undefined, 1)), t(100), 'b'));
    await store.txn(planIntervalChange(await openOf(), allocationOf(instance('h1', 'Succeeded')), t(160), 'c'));
    // A second writer that still saw the old open record cannot close it again.
    await expect(store.txn(planIntervalChange(before, undefined, t(170), 'd'))).rejects.toBeInstanceOf(ConflictError);
    const records = (await store.list(INTERVALS_PREFIX)).items.map((e) => parseInterval(e.value));
    expect(records.map((r) => [r.id, r.cpu, r.start, r.end])).toEqual([
      ['a', 0.5, t(0), t(100)],
      ['b', 1, t(100), t(160)],
    ]);
    const [u] = reservedUsage(records, { since: Date.parse(t(-10)), until: Date.parse(t(1000)), now: Date.parse(t(1000)) });
    // 0.5 x 100 s + 1 x 60 s = 110 core-s; 256 MiB x 160 s.
    expect(u!.cpuUs).toBe(110_000_000n);
    expect(u!.memByteMs).toBe(256n * 1_048_576n * 160_000n);
  });
});
