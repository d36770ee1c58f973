import { describe, expect, it } from 'vitest';
import type { Host, Instance, Metadata } from '../model/objects.js';
import type { ContainerSpec } from '../model/schemas.js';
import { placePending } from './model-adapter.js';

function meta(name: string, tenant?: string): Metadata {
  const m: Metadata = { name, uid: `uid-${name}`, labels: {}, resourceVersion: 1, generation: 1, createdAt: 'now', updatedAt: 'now' };
  if (tenant !== undefined) m.tenant = tenant;
  return m;
}

function host(name: string, cpu: number, isolation: string[], state: 'Ready' | 'NotReady' = 'Ready'): Host {
  return { kind: 'Host', metadata: meta(name), spec: { labels: {}, unschedulable: false }, status: { state, lastHeartbeatAt: 'now', isolation, capacity: { cpu, memoryMiB: 4096 }, agentVersion: '0' } };
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

describe('placePending (control-plane path for host and sandbox)', () => {
  it('places onto hosts that support the tier, counts running instances, and explains the rest', () => {
    const hosts = [host('a', 1, ['host', 'sandbox']), host('b', 1, ['host']), host('c', 8, ['host', 'sandbox'], 'NotReady')];
    const running = [instance('web-0', 'a')];
    const pending = [instance('web-1', '', { isolation: 'sandbox' }), instance('web-2', ''), instance('web-3', '', { isolation: 'sandbox' })];
    const r = placePending(hosts, [...running, ...pending], pending, 5);
    // a has 0.5 of 1 cpu left: one sandbox fits there; web-2 spreads to b; the second sandbox has nowhere to go.
    expect(r.hosts.get('web-1')).toBe('a');
    expect(r.hosts.get('web-2')).toBe('b');
    expect(r.hosts.has('web-3')).toBe(false);
    expect(r.reasons.get('web-3')).toMatch(/no host has room for a sandbox instance of 0.5 cpu \/ 256 MiB/);
  });
});
