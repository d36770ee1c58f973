import { describe, expect, it } from 'vitest';
import { quotaProblems, registryOf, overQuota } from './quota.js';

describe('quota', () => {
  it('refuses only increases past a limit', () => {
    const q = { cpu: 2, instances: 4 };
    expect(quotaProblems(q, { cpu: 1, memory: 0, instances: 2, machines: 0 }, { cpu: 2, memory: 0, instances: 4, machines: 0 }, 'spec')).toEqual([]);
    const over = quotaProblems(q, { cpu: 1, memory: 0, instances: 2, machines: 0 }, { cpu: 2.5, memory: 0, instances: 5, machines: 0 }, 'spec');
    expect(over.map((p) => p.message)).toEqual([
      'tenant quota for cpu is 2; this would bring the total to 2.5 (now 1)',
      'tenant quota for instances is 4; this would bring the total to 5 (now 2)',
    ]);
    // Already over (a tightened quota): shrinking is allowed, growing is not.
    expect(quotaProblems(q, { cpu: 3, memory: 0, instances: 6, machines: 0 }, { cpu: 2.5, memory: 0, instances: 5, machines: 0 }, 'spec')).toEqual([]);
    expect(overQuota(q, { cpu: 3, memory: 0, instances: 1, machines: 0 })).toEqual(['cpu: 3 in use, quota 2']);
  });
  it('finds the registry of an image reference', () => {
    expect(registryOf('127.0.0.1:5000/a/b:1')).toBe('127.0.0.1:5000');
    expect(registryOf('registry.example/app@sha256:abc')).toBe('registry.example');
    expect(registryOf('localhost/x')).toBe('localhost');
    expect(registryOf('library/nginx:1')).toBe('docker.io');
    expect(registryOf('nginx')).toBe('docker.io');
  });
});
