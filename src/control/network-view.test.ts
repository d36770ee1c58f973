import { describe, expect, it } from 'vitest';
import type { Cell, Instance, Machine, Service, Tenant } from '../model/objects.js';
import { networkViewOf } from './network-view.js';

const meta = (name: string, tenant?: string, extra: object = {}): Instance['metadata'] => ({ name, ...(tenant ? { tenant } : {}), uid: `u-${name}`, labels: {}, resourceVersion: 1, generation: 1, createdAt: 't', updatedAt: 't', ...extra });
const tenant = (spec: object = {}): Tenant => ({ kind: 'Tenant', metadata: meta('acme'), spec } as unknown as Tenant); // only the fields the view reads
const service = (name: string, address: string | undefined, ports: number[]): Service =>
  ({ kind: 'Service', metadata: meta(name, 'acme'), spec: { ports: ports.map((p) => ({ containerPort: p, protocol: 'tcp' })) }, status: { replicas: 0, ready: 0, observedGeneration: 1, ...(address ? { address } : {}) } }) as unknown as Service; // only the fields the view reads
const instance = (name: string, owner: string, status: object, spec: object = {}): Instance =>
  ({ kind: 'Instance', metadata: meta(name, 'acme'), spec: { owner: { kind: 'Service', name: owner, uid: `u-${owner}` }, container: {}, host: 'h1', ...spec }, status: { phase: 'Running', restarts: 0, ready: true, ...status } }) as unknown as Instance; // only the fields the view reads

describe('networkViewOf', () => {
  it('balances each addressed service over its ready replicas, a cell replica by its cell address, and names the rest', () => {
    const cells = [{ kind: 'Cell', metadata: meta('c1'), spec: { tenant: 'acme', host: 'h1' }, status: { phase: 'Ready', address: '10.128.0.9' } } as unknown as Cell]; // only the fields the view reads
    const machines = [{ kind: 'Machine', metadata: meta('vm1', 'acme'), spec: {}, status: { address: '10.128.0.20' } } as unknown as Machine]; // only the fields the view reads
    const view = networkViewOf(
      tenant({ network: { egress: { default: 'deny', allow: [{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443] }] } } }),
      [service('web', '10.112.0.1', [8080, 8080]), service('db', '10.112.0.2', [5432]), service('new', undefined, [80])],
      [
        instance('web-0', 'web', { address: '10.128.0.2' }),
        instance('web-1', 'web', { address: '10.128.0.3', ready: false }),
        instance('web-2', 'web', {}, { cell: 'c1' }),
        instance('db-0', 'db', { address: '10.128.0.4', phase: 'Backoff', ready: false }),
      ],
      cells,
      machines,
    );
    expect(view.services).toEqual([
      { name: 'db', vip: '10.112.0.2', ports: [{ port: 5432, protocol: 'tcp' }], endpoints: [] },
      { name: 'web', vip: '10.112.0.1', ports: [{ port: 8080, protocol: 'tcp' }], endpoints: ['10.128.0.2', '10.128.0.9'] },
    ]);
    expect(view.names).toEqual([
      { name: 'vm1', ip: '10.128.0.20' },
      { name: 'web-0', ip: '10.128.0.2' },
      { name: 'web-1', ip: '10.128.0.3' },
      { name: 'web-2', ip: '10.128.0.9' },
    ]);
    expect(view.egress).toEqual({ default: 'deny', allow: [{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443] }] });
    expect(view.hosts).toEqual(['h1']);
  });

  it('a tenant without a policy allows egress; a name taken by a service is not given to a replica or machine; a lost cell is nowhere', () => {
    const lost = { kind: 'Cell', metadata: meta('c9'), spec: { tenant: 'acme', host: 'h9' }, status: { phase: 'Lost', address: '10.128.0.30' } } as unknown as Cell; // only the fields the view reads
    const view = networkViewOf(tenant(), [service('vm1', '10.112.0.5', [80])], [], [lost], [{ kind: 'Machine', metadata: meta('vm1', 'acme'), spec: {}, status: { address: '10.128.0.20', host: 'h1' } } as unknown as Machine]); // only the fields the view reads
    expect(view.egress).toEqual({ default: 'allow', allow: [] });
    expect(view.names).toEqual([]);
    // A lost cell's host does not count: its VM was fenced.
    expect(view.hosts).toEqual(['h1']);
  });
});
