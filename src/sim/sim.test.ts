import { describe, expect, it } from 'vitest';
import { cellsLowerBound, generateCluster, instancesOf } from './sim.js';
import { firstFit } from '../scheduler/baseline.js';
import type { InstanceRequest } from '../scheduler/types.js';

describe('sim', () => {
  it('generates the same cluster from the same seed, and a different one from another', () => {
    const a = generateCluster({ seed: 7, hosts: 50, tenants: 10, instances: 500 });
    const b = generateCluster({ seed: 7, hosts: 50, tenants: 10, instances: 500 });
    const c = generateCluster({ seed: 8, hosts: 50, tenants: 10, instances: 500 });
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
    expect(a.instances).toBe(500);
    expect(a.services.reduce((n, s) => n + s.replicas, 0)).toBe(500);
    expect(new Set(a.snapshot.hosts.map((h) => h.labels['zone'])).size).toBe(4);
    const ids = a.services.flatMap(instancesOf).map((i) => i.id);
    expect(new Set(ids).size).toBe(500);
  });

  it('computes the lower bound from cpu, memory, spread and the per-cell limit', () => {
    const mk = (id: string, o: Partial<InstanceRequest> = {}): InstanceRequest => ({ id, tenant: 't', group: 'g', service: 's', isolation: 'cell', cpu: 0.1, memoryMiB: 128, ...o });
    // 15 x 128 MiB = 1920 MiB > 1792 MiB of room: 2 cells.
    expect(cellsLowerBound({}, Array.from({ length: 15 }, (_, i) => mk(`i${i}`)))).toBe(2);
    // cpu binds: 3 x 1 cpu in 1.75 cpu of room.
    expect(cellsLowerBound({}, [mk('a', { cpu: 1 }), mk('b', { cpu: 1 }), mk('c', { cpu: 1 })])).toBe(2);
    expect(cellsLowerBound({}, [mk('a', { spread: 'required' }), mk('b', { spread: 'required' }), mk('c', { spread: 'required' })])).toBe(3);
    const limited = { groupPolicies: [{ tenant: 't', group: 'g', maxInstancesPerCell: 2 }] };
    expect(cellsLowerBound(limited, [mk('a'), mk('b'), mk('c')])).toBe(1);
    expect(cellsLowerBound(limited, [mk('a'), mk('b'), mk('c')], { countLimit: true })).toBe(2);
    expect(cellsLowerBound({}, [mk('a'), mk('b', { group: 'h' }), mk('d', { isolation: 'dedicated' }), mk('h', { isolation: 'host' })])).toBe(3);
  });

  it('first-fit baseline obeys spread and the per-cell limit', () => {
    const sim = generateCluster({ seed: 3, hosts: 20, tenants: 5, instances: 2000 });
    const place = sim.services.flatMap(instancesOf);
    const ff = firstFit(sim.snapshot, place);
    expect(ff.placed + ff.unplaced).toBe(2000);
    const mk = (id: string): InstanceRequest => ({ id, tenant: 't', group: 'g', service: 's', isolation: 'cell', cpu: 0.1, memoryMiB: 128, spread: 'required' });
    expect(firstFit(sim.snapshot, [mk('a'), mk('b'), mk('c')]).cells).toBe(3);
  });
});
