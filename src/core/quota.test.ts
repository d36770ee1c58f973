import { describe, expect, it } from 'vitest';
import { quotaProblems, registryOf, overQuota, requestedBy } from './quota.js';
import type { Job, Service } from '../model/objects.js';

describe('quota', () => {
  it('refuses only increases past a limit', () => {
    const q = { cpu: 2, instances: 4 };
    expect(quotaProblems(q, { cpu: 1, memory: 0, instances: 2, machines: 0, cells: 0 }, { cpu: 2, memory: 0, instances: 4, machines: 0, cells: 0 }, 'spec')).toEqual([]);
    const over = quotaProblems(q, { cpu: 1, memory: 0, instances: 2, machines: 0, cells: 0 }, { cpu: 2.5, memory: 0, instances: 5, machines: 0, cells: 0 }, 'spec');
    expect(over.map((p) => p.message)).toEqual([
      'tenant quota for cpu is 2; this would bring the total to 2.5 (now 1)',
      'tenant quota for instances is 4; this would bring the total to 5 (now 2)',
    ]);
    // Already over (a tightened quota): shrinking is allowed, growing is not.
    expect(quotaProblems(q, { cpu: 3, memory: 0, instances: 6, machines: 0, cells: 0 }, { cpu: 2.5, memory: 0, instances: 5, machines: 0, cells: 0 }, 'spec')).toEqual([]);
    expect(overQuota(q, { cpu: 3, memory: 0, instances: 1, machines: 0, cells: 0 })).toEqual(['cpu: 3 in use, quota 2']);
  });
  it('counts the fewest cells cell and dedicated workloads need', () => {
    const svc = (name: string, spec: Partial<Service['spec']>): Service =>
      ({ kind: 'Service', metadata: { name }, spec: { isolation: 'cell', group: 'default', cpu: 0.5, memory: 256, replicas: 1, ...spec }, status: {} }) as unknown as Service; // only the fields requestedBy reads
    const job = (spec: Partial<Job['spec']>): Job =>
      ({ kind: 'Job', metadata: { name: 'j' }, spec: { isolation: 'cell', group: 'default', cpu: 0.5, memory: 256, parallelism: 1, completions: 1, ...spec }, status: { phase: 'Running' } }) as unknown as Job; // same
    // 7 x 0.5 cpu = 3.5 cores in cells with 1.75 cores of room: 2 cells; another group: 1 more.
    expect(requestedBy([svc('a', { replicas: 7 })], [], []).cells).toBe(2);
    expect(requestedBy([svc('a', { replicas: 7 }), svc('b', { group: 'g2' })], [], []).cells).toBe(3);
    // Memory can be the binding dimension: 4 x 1 GiB in 1792 MiB of room: 3 cells.
    expect(requestedBy([svc('m', { replicas: 4, memory: 1024 })], [], []).cells).toBe(3);
    // Dedicated: one each; oversized cell instances: one each; host/sandbox: none.
    expect(requestedBy([svc('d', { isolation: 'dedicated', replicas: 3 }), svc('big', { cpu: 4 }), svc('h', { isolation: 'host', replicas: 9 })], [job({ parallelism: 2, completions: 5, isolation: 'dedicated' })], []).cells).toBe(6);
    expect(quotaProblems({ cells: 2 }, requestedBy([], [], []), requestedBy([svc('d', { isolation: 'dedicated', replicas: 3 })], [], []), 'spec.replicas')[0]?.message).toBe(
      'tenant quota for cells (at least this many are needed) is 2; this would bring the total to 3 (now 0)',
    );
  });
  it('finds the registry of an image reference', () => {
    expect(registryOf('127.0.0.1:5000/a/b:1')).toBe('127.0.0.1:5000');
    expect(registryOf('registry.example/app@sha256:abc')).toBe('registry.example');
    expect(registryOf('localhost/x')).toBe('localhost');
    expect(registryOf('library/nginx:1')).toBe('docker.io');
    expect(registryOf('nginx')).toBe('docker.io');
  });
});
