import { describe, expect, it } from 'vitest';
import { applyPlan, schedule } from './index.js';
import { checkSnapshot } from './check.js';
import type { CellInfo, HostInfo, InstanceRequest, Placement, Plan, Snapshot } from './types.js';

function host(name: string, o: Partial<HostInfo> = {}): HostInfo {
  return { name, cpu: 16, memoryMiB: 65536, labels: { zone: 'a' }, ready: true, schedulable: true, isolation: ['cell', 'dedicated', 'host', 'sandbox'], ...o };
}

function inst(id: string, o: Partial<InstanceRequest> = {}): InstanceRequest {
  return { id, tenant: 'acme', group: 'default', service: 'web', isolation: 'cell', cpu: 0.1, memoryMiB: 128, ...o };
}

function snap(hosts: HostInfo[], o: Partial<Snapshot> = {}): Snapshot {
  return { hosts, cells: [], placements: [], ...o };
}

function ids(prefix = 'c'): () => string {
  let n = 0;
  return () => `${prefix}${n++}`;
}

function run(s: Snapshot, place: InstanceRequest[], extra: Partial<Parameters<typeof schedule>[1]> = {}): { plan: Plan; next: Snapshot } {
  const plan = schedule(s, { place, ...extra }, { now: 1000, newId: ids() });
  const next = applyPlan(s, plan);
  expect(checkSnapshot(next)).toEqual([]);
  return { plan, next };
}

function cellOf(plan: Plan, id: string): string | undefined {
  return plan.placements.find((p) => p.instance.id === id)?.cell;
}

function hostOf(plan: Plan, id: string): string | undefined {
  return plan.placements.find((p) => p.instance.id === id)?.host;
}

function range<T>(n: number, f: (i: number) => T): T[] {
  return Array.from({ length: n }, (_, i) => f(i));
}

describe('host capacity and overcommit', () => {
  it('places host instances until cpu runs out and says why the rest could not go', () => {
    const { plan } = run(snap([host('h1', { cpu: 1 }), host('h2', { cpu: 1 })]), range(3, (i) => inst(`i${i}`, { isolation: 'host', cpu: 0.6 })));
    expect(plan.placements).toHaveLength(2);
    expect(new Set(plan.placements.map((p) => p.host))).toEqual(new Set(['h1', 'h2']));
    expect(plan.unplaced).toHaveLength(1);
    expect(plan.unplaced[0]?.code).toBe('NoCapacity');
    expect(plan.unplaced[0]?.reason).toContain('2 short of cpu');
  });

  it('allocates cpu x overcommit', () => {
    const { plan } = run(snap([host('h1', { cpu: 1, overcommit: { cpu: 2 } })]), range(4, (i) => inst(`i${i}`, { isolation: 'sandbox', cpu: 0.6 })));
    expect(plan.placements).toHaveLength(3);
    expect(plan.unplaced).toHaveLength(1);
  });

  it('charges a cell its full size on the host', () => {
    // 3 cpu: room for one 2-cpu cell only; the second cell does not fit.
    const { plan } = run(snap([host('h1', { cpu: 3 })]), range(2, (i) => inst(`i${i}`, { spread: 'required' })));
    expect(plan.createCells).toHaveLength(1);
    expect(plan.unplaced.map((u) => u.code)).toEqual(['NoCapacity']);
    expect(plan.unplaced[0]?.reason).toMatch(/no host has room for a cell of 2 cpu \/ 2048 MiB/);
  });
});

describe('cells', () => {
  it('fills a cell to its room (size minus guest overhead) before creating another', () => {
    // Room 1792 MiB: 14 x 128 MiB fit, the 15th needs a second cell.
    const a = run(snap([host('h1')]), range(14, (i) => inst(`i${i}`)));
    expect(a.plan.createCells).toHaveLength(1);
    expect(a.plan.createCells[0]).toMatchObject({ cpu: 2, memoryMiB: 2048, dedicated: false, tenant: 'acme', group: 'default' });
    const b = run(snap([host('h1')]), range(15, (i) => inst(`i${i}`)));
    expect(b.plan.createCells).toHaveLength(2);
  });

  it('never mixes tenants or groups in a cell', () => {
    const { plan } = run(snap([host('h1')]), [inst('a1'), inst('b1', { tenant: 'beta' }), inst('a2', { group: 'batch' }), inst('a3')]);
    expect(plan.createCells).toHaveLength(3);
    expect(cellOf(plan, 'a1')).toBe(cellOf(plan, 'a3'));
    expect(new Set([cellOf(plan, 'a1'), cellOf(plan, 'b1'), cellOf(plan, 'a2')]).size).toBe(3);
  });

  it('puts at most one replica per cell with spread: required', () => {
    const req = run(snap([host('h1')]), range(3, (i) => inst(`i${i}`, { spread: 'required' })));
    expect(req.plan.createCells).toHaveLength(3);
    const none = run(snap([host('h1')]), range(3, (i) => inst(`i${i}`, { spread: 'none' })));
    expect(none.plan.createCells).toHaveLength(1);
  });

  it('spread: preferred uses a cell without a replica when one fits, and packs otherwise', () => {
    const first = run(snap([host('h1')]), [inst('x0', { service: 'other', spread: 'required' }), inst('x1', { service: 'other', spread: 'required' })]);
    expect(first.plan.createCells).toHaveLength(2);
    const second = run(first.next, range(2, (i) => inst(`w${i}`, { spread: 'preferred' })));
    expect(second.plan.createCells).toHaveLength(0);
    expect(cellOf(second.plan, 'w0')).not.toBe(cellOf(second.plan, 'w1'));
    const third = run(second.next, range(2, (i) => inst(`v${i}`, { service: 'web', spread: 'preferred' })));
    expect(third.plan.createCells).toHaveLength(0);
  });

  it('honours maxInstancesPerCell', () => {
    const { plan } = run(snap([host('h1')], { groupPolicies: [{ tenant: 'acme', group: 'default', maxInstancesPerCell: 2 }] }), range(5, (i) => inst(`i${i}`)));
    expect(plan.createCells).toHaveLength(3);
  });

  it('best-fit: the tightest existing cell that fits wins', () => {
    const cells: CellInfo[] = [
      { id: 'loose', tenant: 'acme', group: 'default', host: 'h1', cpu: 2, memoryMiB: 2048, state: 'running' },
      { id: 'tight', tenant: 'acme', group: 'default', host: 'h1', cpu: 2, memoryMiB: 2048, state: 'running' },
    ];
    const placements: Placement[] = [
      { instance: inst('l', { service: 'db', memoryMiB: 792, cpu: 0.5 }), host: 'h1', cell: 'loose' },
      { instance: inst('t', { service: 'db', memoryMiB: 1492, cpu: 0.5 }), host: 'h1', cell: 'tight' },
    ];
    const { plan } = run(snap([host('h1')], { cells, placements }), [inst('n', { memoryMiB: 256 })]);
    expect(plan.createCells).toHaveLength(0);
    expect(cellOf(plan, 'n')).toBe('tight');
  });

  it('sizes cells by group policy and grows a cell for an instance larger than the default', () => {
    const s = snap([host('h1')], { groupPolicies: [{ tenant: 'acme', group: 'big', cellCpu: 4, cellMemoryMiB: 4096 }] });
    const { plan } = run(s, [inst('a', { group: 'big' }), inst('b', { cpu: 3, memoryMiB: 3000 })]);
    expect(plan.createCells.find((c) => c.group === 'big')).toMatchObject({ cpu: 4, memoryMiB: 4096 });
    // 3 cpu + 0.25 overhead -> 3.25; 3000 + 256 MiB rounded up to 256 MiB steps -> 3328.
    expect(plan.createCells.find((c) => c.group === 'default')).toMatchObject({ cpu: 3.25, memoryMiB: 3328 });
  });

  it('gives a dedicated instance a cell of its own sized to it', () => {
    const { plan } = run(snap([host('h1')]), [inst('d1', { isolation: 'dedicated', cpu: 1, memoryMiB: 512 }), inst('d2', { isolation: 'dedicated', cpu: 1, memoryMiB: 512 })]);
    expect(plan.createCells).toHaveLength(2);
    expect(plan.createCells[0]).toMatchObject({ cpu: 1.25, memoryMiB: 768, dedicated: true });
  });
});

describe('packing under maxInstancesPerCell', () => {
  it('mixes small instances with large ones instead of leaving them to fill cells by count', () => {
    // 6 x 1024, 12 x 512, 25 x 256, 55 x 128 MiB, at most 8 per cell, 1792 MiB of room:
    // 25728 MiB needs at least 15 cells (14.4 by memory), and 15 is reachable (e.g. 1024 + 6 x 128).
    const mix: [number, number, number][] = [[6, 1, 1024], [12, 0.5, 512], [25, 0.25, 256], [55, 0.1, 128]];
    const place: InstanceRequest[] = [];
    for (const [n, cpu, memoryMiB] of mix) for (let i = 0; i < n; i++) place.push(inst(`i${memoryMiB}-${i}`, { service: `s${i % 7}`, cpu, memoryMiB }));
    const s = snap([host('h1', { cpu: 64 })], { groupPolicies: [{ tenant: 'acme', group: 'default', maxInstancesPerCell: 8 }] });
    const { plan } = run(s, place);
    expect(plan.unplaced).toEqual([]);
    expect(plan.createCells).toHaveLength(15);
  });
});

describe('host choice', () => {
  it('spreads a group\'s cells across hosts and zones', () => {
    const hosts = [host('h1', { labels: { zone: 'a' } }), host('h2', { labels: { zone: 'a' } }), host('h3', { labels: { zone: 'b' } })];
    const { plan } = run(snap(hosts), range(3, (i) => inst(`i${i}`, { spread: 'required' })));
    expect(new Set(plan.createCells.map((c) => c.host)).size).toBe(3);
    const zoneOf = (h: string): string | undefined => hosts.find((x) => x.name === h)?.labels['zone'];
    const two = run(snap(hosts), range(2, (i) => inst(`i${i}`, { spread: 'required' })));
    expect(new Set(two.plan.createCells.map((c) => zoneOf(c.host))).size).toBe(2);
  });

  it('prefers a host that already runs the tenant\'s cells, unless that breaks the group\'s spread', () => {
    // h1 is busier than h2, but runs acme's cell of group g1.
    const hosts = [host('h1'), host('h2')];
    const cells: CellInfo[] = [
      { id: 'g1cell', tenant: 'acme', group: 'g1', host: 'h1', cpu: 2, memoryMiB: 2048, state: 'running' },
      { id: 'other', tenant: 'zeta', group: 'default', host: 'h1', cpu: 2, memoryMiB: 2048, state: 'running' },
    ];
    const placements: Placement[] = [
      { instance: inst('a', { group: 'g1' }), host: 'h1', cell: 'g1cell' },
      { instance: inst('z', { tenant: 'zeta' }), host: 'h1', cell: 'other' },
    ];
    const s = snap(hosts, { cells, placements });
    const g2 = run(s, [inst('n', { group: 'g2' })]);
    expect(g2.plan.createCells[0]?.host).toBe('h1');
    const g1 = run(s, [inst('m', { group: 'g1', service: 'api', memoryMiB: 1792 })]);
    expect(g1.plan.createCells[0]?.host).toBe('h2');
  });

  it('follows node selectors and explains when none match', () => {
    const hosts = [host('h1', { labels: { zone: 'a' } }), host('h2', { labels: { zone: 'b', ssd: 'true' } })];
    const { plan } = run(snap(hosts), [
      inst('z', { nodeSelector: { zone: 'b' } }),
      inst('s', { service: 'db', group: 'db', nodeSelector: { ssd: 'true' } }),
      inst('h', { isolation: 'host', nodeSelector: { zone: 'b' } }),
      inst('x', { service: 'x', group: 'x', nodeSelector: { zone: 'mars' } }),
    ]);
    expect(hostOf(plan, 'z')).toBe('h2');
    expect(hostOf(plan, 's')).toBe('h2');
    expect(hostOf(plan, 'h')).toBe('h2');
    expect(plan.unplaced).toEqual([expect.objectContaining({ code: 'NoMatchingHost', reason: expect.stringContaining('zone=mars') })]);
  });

  it('skips cordoned hosts and reports tiers no host supports', () => {
    const hosts = [host('h1', { schedulable: false }), host('h2', { isolation: ['cell', 'host'] })];
    const { plan } = run(snap(hosts), [inst('c'), inst('s', { isolation: 'sandbox' })]);
    expect(hostOf(plan, 'c')).toBe('h2');
    expect(plan.unplaced).toEqual([expect.objectContaining({ code: 'IsolationUnavailable' })]);
  });

  it('spread: required on host instances means one replica per host', () => {
    const { plan } = run(snap([host('h1'), host('h2')]), range(3, (i) => inst(`i${i}`, { isolation: 'host', spread: 'required' })));
    expect(plan.placements).toHaveLength(2);
    expect(plan.unplaced[0]?.reason).toContain('already run a replica');
  });

  it('says when an instance is larger than any host', () => {
    const { plan } = run(snap([host('h1')]), [inst('big', { cpu: 64 })]);
    expect(plan.unplaced[0]?.code).toBe('TooLarge');
    const none = run(snap([]), [inst('x')]);
    expect(none.plan.unplaced[0]?.code).toBe('NoReadyHost');
  });
});

describe('quota and bad input', () => {
  it('stops at the tenant quota with a readable reason', () => {
    const { plan } = run(snap([host('h1')], { quotas: [{ tenant: 'acme', cpu: 0.25 }] }), range(3, (i) => inst(`i${i}`)));
    expect(plan.placements).toHaveLength(2);
    expect(plan.unplaced[0]).toMatchObject({ code: 'QuotaExceeded' });
    expect(plan.unplaced[0]?.reason).toBe('tenant acme cpu quota exceeded: 0.2 of 0.25 cores in use, this instance needs 0.1');
  });

  it('creates no cell past the tenant cells quota, but still fills the cells it has', () => {
    // Two groups want a cell each and three dedicated instances want one each; the quota is 2.
    const reqs = [inst('a'), inst('b'), inst('c', { group: 'other' }), ...range(3, (i) => inst(`d${i}`, { isolation: 'dedicated', service: 'db' }))];
    const { plan, next } = run(snap([host('h1'), host('h2')], { quotas: [{ tenant: 'acme', cells: 2 }] }), reqs);
    expect(plan.createCells).toHaveLength(2);
    // Larger requests are placed first, so which of c and the dedicated ones wins is the scheduler's order.
    expect(plan.placements).toHaveLength(3);
    expect(plan.placements.map((p) => p.instance.id)).toEqual(expect.arrayContaining(['a', 'b']));
    expect(plan.unplaced.map((u) => u.code)).toEqual(['QuotaExceeded', 'QuotaExceeded', 'QuotaExceeded']);
    expect(plan.unplaced[0]?.reason).toMatch(/^tenant acme cell quota exceeded: 2 of 2 cells in use/);
    expect(checkSnapshot(next)).toEqual([]);
    // Another tenant is not held back by acme's quota.
    const other = schedule(next, { place: [inst('x', { tenant: 'globex' })] }, { now: 1000, newId: ids('g') });
    expect(other.createCells).toHaveLength(1);
  });

  it('rejects malformed and duplicate requests without throwing', () => {
    const { plan } = run(snap([host('h1')]), [inst('a', { cpu: -1 }), inst('b'), inst('b'), inst('c', { isolation: 'vm' as never })]); // `as never`: a caller bypassing the types, on purpose
    expect(plan.unplaced.map((u) => u.code).sort()).toEqual(['DuplicateInstance', 'InvalidRequest', 'InvalidRequest']);
    expect(plan.placements).toHaveLength(1);
  });
});

describe('changes over time', () => {
  it('re-places instances of a failed host and retires its cells', () => {
    const first = run(snap([host('h1'), host('h2')]), [inst('a'), inst('h', { isolation: 'host' })]);
    const failed = first.plan.createCells[0]?.host ?? '';
    const hosts = first.next.hosts.map((h) => (h.name === failed ? { ...h, ready: false } : h));
    const { plan } = run({ ...first.next, hosts }, []);
    expect(plan.retireCells).toEqual([expect.objectContaining({ reason: 'HostNotReady', host: failed })]);
    const re = plan.placements.find((p) => p.instance.id === 'a');
    expect(re?.host).not.toBe(failed);
    expect(re?.previous?.host).toBe(failed);
  });

  it('retires cells emptied by removals and leaves the others', () => {
    const first = run(snap([host('h1')]), [inst('a', { group: 'g1' }), inst('b', { group: 'g2' })]);
    const { plan } = run(first.next, [], { remove: ['a', 'nope'] });
    expect(plan.removed).toEqual(['a']);
    expect(plan.retireCells).toEqual([{ id: cellOf(first.plan, 'a'), host: 'h1', reason: 'Empty' }]);
  });

  it('moves an instance found in a cell of another tenant out of it (invariant 1 holds even on a bad snapshot)', () => {
    const cells: CellInfo[] = [{ id: 'acme-cell', tenant: 'acme', group: 'default', host: 'h1', cpu: 2, memoryMiB: 2048, state: 'running' }];
    const placements: Placement[] = [
      { instance: inst('mine'), host: 'h1', cell: 'acme-cell' },
      { instance: inst('intruder', { tenant: 'beta' }), host: 'h1', cell: 'acme-cell' },
    ];
    const plan = schedule(snap([host('h1')], { cells, placements }), { place: [] }, { now: 1, newId: ids() });
    const re = plan.placements.find((p) => p.instance.id === 'intruder');
    expect(re?.previous).toEqual({ host: 'h1', cell: 'acme-cell' });
    expect(re?.cell).not.toBe('acme-cell');
    expect(plan.createCells).toEqual([expect.objectContaining({ tenant: 'beta' })]);
  });

  it('leaves placed instances alone when asked again', () => {
    const first = run(snap([host('h1')]), [inst('a')]);
    const { plan } = run(first.next, [inst('a')]);
    expect(plan.placements).toEqual([]);
    expect(plan.unplaced).toEqual([]);
  });
});

describe('consolidation', () => {
  function sparse(): Snapshot {
    const cells: CellInfo[] = ['c1', 'c2', 'c3'].map((id) => ({ id, tenant: 'acme', group: 'default', host: 'h1', cpu: 2, memoryMiB: 2048, state: 'running' as const }));
    const placements: Placement[] = [
      { instance: inst('a', { memoryMiB: 1024, cpu: 1 }), host: 'h1', cell: 'c1' },
      { instance: inst('b'), host: 'h1', cell: 'c2' },
      { instance: inst('c'), host: 'h1', cell: 'c3' },
    ];
    return snap([host('h1')], { cells, placements });
  }

  it('never runs unless asked', () => {
    const { plan } = run(sparse(), []);
    expect(plan.moves).toEqual([]);
    expect(plan.consolidated).toBe(false);
  });

  it('moves instances out of nearly empty cells and retires them, within the move budget', () => {
    const { plan, next } = run(sparse(), [], { consolidate: { maxMoves: 10 } });
    expect(plan.consolidated).toBe(true);
    expect(plan.moves.map((m) => [m.instance.id, m.fromCell, m.toCell])).toEqual([
      ['b', 'c2', 'c1'],
      ['c', 'c3', 'c1'],
    ]);
    expect(plan.retireCells.map((c) => [c.id, c.reason])).toEqual([
      ['c2', 'Consolidated'],
      ['c3', 'Consolidated'],
    ]);
    expect(next.cells.map((c) => c.id)).toEqual(['c1']);
    expect(next.lastConsolidationAt).toBe(1000);
    const limited = run(sparse(), [], { consolidate: { maxMoves: 1 } });
    expect(limited.plan.moves).toHaveLength(1);
  });

  it('is rate limited by minIntervalMs', () => {
    const s = { ...sparse(), lastConsolidationAt: 500 };
    const { plan } = run(s, [], { consolidate: { maxMoves: 10, minIntervalMs: 1000 } });
    expect(plan.consolidated).toBe(false);
    expect(plan.moves).toEqual([]);
  });

  it('does not move a replica next to another under spread: required', () => {
    const s = sparse();
    s.placements = s.placements.map((p) => ({ ...p, instance: { ...p.instance, spread: 'required' as const } }));
    const { plan } = run(s, [], { consolidate: { maxMoves: 10 } });
    expect(plan.moves).toEqual([]);
  });
});

describe('determinism', () => {
  it('gives the same plan for the same input, whatever the input order', () => {
    const hosts = range(6, (i) => host(`h${i}`, { labels: { zone: `z${i % 3}` }, cpu: 4 }));
    const place = range(40, (i) => inst(`i${i}`, { tenant: `t${i % 3}`, group: `g${i % 2}`, service: `s${i % 5}`, cpu: 0.1 * (1 + (i % 4)), memoryMiB: 128 * (1 + (i % 4)), spread: i % 3 === 0 ? 'required' : 'preferred' }));
    const a = schedule(snap(hosts), { place }, { now: 1, newId: ids() });
    const b = schedule(snap([...hosts].reverse()), { place: [...place].reverse() }, { now: 1, newId: ids() });
    expect(b).toEqual(a);
    expect(a.placements).toHaveLength(40);
  });
});

describe('machines', () => {
  const vm = (id: string, o: Partial<InstanceRequest> = {}): InstanceRequest => inst(id, { group: '', service: `machine/${id}`, isolation: 'machine', cpu: 2, memoryMiB: 4096, ...o });

  it('go only to hosts with the machine tier, charge their host, and count towards cpu and memory quota but not instances', () => {
    const hosts = [host('nomachine', { cpu: 64, isolation: ['host', 'sandbox'] }), host('vmhost', { cpu: 4, memoryMiB: 8192, isolation: ['cell', 'machine'] })];
    const { plan, next } = run(snap(hosts, { quotas: [{ tenant: 'acme', instances: 1, cpu: 5 }] }), [vm('m1'), vm('m2')]);
    expect(plan.placements.map((p) => [p.instance.id, p.host])).toEqual([
      ['m1', 'vmhost'],
      ['m2', 'vmhost'],
    ]);
    // The host's memory is now held by the machines: no cell fits; the instance quota is untouched.
    const after = run(next, [inst('c1')]).plan;
    expect(after.unplaced[0]?.code).toBe('NoCapacity');
    expect(after.unplaced[0]?.reason).toBe('no host has room for a cell of 2 cpu / 2048 MiB: 1 hosts considered; 1 short of cpu, 0 short of memory');
    const quota = run(next, [vm('m3', { memoryMiB: 1 })]).plan;
    expect(quota.unplaced[0]?.code).toBe('QuotaExceeded');
  });
});

describe('warm cells', () => {
  const warm = (id: string, hostName: string, o: Partial<CellInfo> = {}): CellInfo => ({ id, tenant: '', group: '', host: hostName, cpu: 2, memoryMiB: 2048, state: 'running', warm: true, ...o });

  it('are claimed by a plan (the group spread first, then the smallest) instead of creating cells, once each', () => {
    const hosts = [host('h1', { labels: { zone: 'a' } }), host('h2', { labels: { zone: 'b' } })];
    const s = snap(hosts, { cells: [warm('w-big', 'h1', { cpu: 4, memoryMiB: 4096 }), warm('w-small', 'h1'), warm('w-b', 'h2')] });
    const { plan, next } = run(s, [inst('a0', { spread: 'required' }), inst('a1', { spread: 'required' }), inst('g0', { tenant: 'globex' })]);
    const claimed = plan.createCells.filter((c) => c.fromWarmPool === true).map((c) => [c.id, c.tenant]);
    // acme's two replicas spread over two zones, each taking the smallest warm cell there; globex gets the last one.
    expect(claimed).toEqual([
      ['w-b', 'acme'],
      ['w-small', 'acme'],
      ['w-big', 'globex'],
    ]);
    expect(plan.createCells.every((c) => c.fromWarmPool === true)).toBe(true);
    expect(next.cells.filter((c) => c.warm === true)).toEqual([]);
  });

  it('are charged to their host but never claimed while booting, or on a cordoned host', () => {
    const s = snap([host('h1', { cpu: 4 }), host('h2', { cpu: 4, schedulable: false })], { cells: [warm('booting', 'h1', { state: 'creating' }), warm('cordoned', 'h2')] });
    const { plan } = run(s, [inst('a0')]);
    expect(plan.createCells).toEqual([expect.objectContaining({ id: 'c0', host: 'h1' })]);
    expect(plan.createCells[0]?.fromWarmPool).toBeUndefined();
    // h1 (4 cpu) now holds the booting warm cell and the new one: a third cell has no room.
    const full = run(applyPlan(s, plan), [inst('b0', { tenant: 'globex' })]).plan;
    expect(full.unplaced[0]?.reason).toContain('1 short of cpu');
  });
});

describe('host constraints (extension point)', () => {
  const pin = (hosts: string[], name = 'volume acme/db-0'): NonNullable<InstanceRequest['constraints']>[number] => ({ name, hosts, code: 'VolumeHostNotReady', reason: `${name} lives on host ${hosts.join(',')}, which is not ready` });

  it('keep an instance to the hosts they allow, in every tier', () => {
    const hosts = [host('h1'), host('h2'), host('h3')];
    const { plan } = run(snap(hosts), [inst('web', { isolation: 'host', constraints: [pin(['h3'])] }), inst('api', { constraints: [pin(['h2'])] }), inst('both', { isolation: 'sandbox', constraints: [pin(['h1', 'h2']), pin(['h2', 'h3'], 'network acme')] })]);
    expect(hostOf(plan, 'web')).toBe('h3');
    expect(hostOf(plan, 'api')).toBe('h2');
    expect(hostOf(plan, 'both')).toBe('h2');
  });

  it("refuse with the constraint's own code and reason when none of its hosts is usable, and name it when they are full", () => {
    const hosts = [host('h1'), host('h2', { ready: false }), host('h3', { cpu: 1 })];
    const { plan } = run(snap(hosts), [inst('db', { constraints: [pin(['h2'])] }), inst('nowhere', { constraints: [pin(['h1']), pin(['h3'], 'network acme')] }), inst('full', { isolation: 'host', cpu: 2, constraints: [pin(['h3'])] })]);
    const why = new Map(plan.unplaced.map((u) => [u.instance.id, u]));
    expect(why.get('db')).toMatchObject({ code: 'VolumeHostNotReady', reason: 'volume acme/db-0 lives on host h2, which is not ready' });
    expect(why.get('nowhere')?.code).toBe('VolumeHostNotReady');
    expect(why.get('full')).toMatchObject({ code: 'TooLarge', reason: 'a host instance of 2 cpu / 128 MiB is larger than any matching host can allocate (1 hosts considered (as allowed by volume acme/db-0))' });
  });

  it('also bind an instance to the existing cells on allowed hosts', () => {
    const hosts = [host('h1'), host('h2')];
    const first = run(snap(hosts), [inst('a', { constraints: [pin(['h1'])] })]);
    const plan = schedule(first.next, { place: [inst('b', { constraints: [pin(['h2'])] }), inst('c', { constraints: [pin(['h1'])] })] }, { now: 1, newId: ids('d') });
    expect(checkSnapshot(applyPlan(first.next, plan))).toEqual([]);
    const second = { plan };
    expect(cellOf(second.plan, 'c')).toBe(cellOf(first.plan, 'a'));
    expect(hostOf(second.plan, 'b')).toBe('h2');
    expect(cellOf(second.plan, 'b')).not.toBe(cellOf(first.plan, 'a'));
  });
});

describe('keepEmptyCells', () => {
  it('keeps cells left empty (their room is not freed) when the caller retires them itself', () => {
    const first = run(snap([host('h1', { cpu: 2 })]), [inst('a')]);
    const kept = schedule(first.next, { place: [], remove: ['a'], keepEmptyCells: true }, { now: 1, newId: ids() });
    expect(kept.retireCells).toEqual([]);
    const retired = schedule(first.next, { place: [], remove: ['a'] }, { now: 1, newId: ids() });
    expect(retired.retireCells).toEqual([expect.objectContaining({ reason: 'Empty' })]);
  });
});
