/**
 * Property: an instance whose volume is bound (or pinned) to a host is never planned on
 * another host, whatever the cluster looks like (hosts ready or not, cordoned or not, full or
 * not, the volume's host registered or not, any tier); when its host cannot take work the
 * request waits with a volume code (blockingVolumeConstraint, as the placement pipeline does),
 * else the scheduler places it there or says why not — never elsewhere.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Host, Instance } from '../model/objects.js';
import type { Volume } from '../model/volumes.js';
import { schedule } from './index.js';
import { blockingVolumeConstraint, instanceRequestWithVolumes, snapshotFromModel, volumeIndex } from './model-adapter.js';

const md = (name: string, tenant?: string): Instance['metadata'] => ({ name, ...(tenant ? { tenant } : {}), uid: `u-${name}`, labels: {}, resourceVersion: 1, generation: 1, createdAt: 't', updatedAt: 't' });

function host(name: string, ready: boolean, cordoned: boolean, cpu: number, tiers: string[]): Host {
  return {
    kind: 'Host',
    metadata: md(name),
    spec: { labels: {}, unschedulable: cordoned },
    status: { state: ready ? 'Ready' : 'NotReady', lastHeartbeatAt: 't', isolation: tiers, capacity: { cpu, memoryMiB: 8192 }, agentVersion: 't' },
  };
}

function instance(isolation: 'host' | 'sandbox' | 'cell' | 'dedicated', volumes: string[]): Instance {
  return {
    kind: 'Instance',
    metadata: md('db-0', 'acme'),
    spec: {
      owner: { kind: 'Service', name: 'db', uid: 's' },
      index: 0,
      container: { image: 'r/pg:16', env: {}, cpu: 0.5, memory: 256, pids: 1024, readOnlyRootfs: false, isolation, group: 'default', ports: [] },
      restartPolicy: 'Always',
      maxRestarts: -1,
      host: '',
      ownerGeneration: 1,
      mounts: volumes.map((v, i) => ({ volume: v, mountPath: `/v${i}`, readOnly: false })),
    },
    status: { phase: 'Pending', restarts: 0, ready: false },
  };
}

function volume(name: string, where: { bound?: string; pinned?: string }): Volume {
  return {
    kind: 'Volume',
    metadata: md(name, 'acme'),
    spec: { size: '1Gi', filesystem: 'ext4', ...(where.pinned !== undefined ? { host: where.pinned } : {}) },
    status: where.bound !== undefined ? { phase: 'Bound', host: where.bound, attachedTo: [] } : { phase: 'Pending', attachedTo: [] },
  };
}

const hostArb = fc.record({ ready: fc.boolean(), cordoned: fc.boolean(), cpu: fc.constantFrom(0.25, 2, 8), tiers: fc.subarray(['cell', 'dedicated', 'host', 'sandbox'], { minLength: 1 }) });
const whereArb = fc.oneof(
  fc.record({ bound: fc.integer({ min: 0, max: 5 }) }),
  fc.record({ pinned: fc.integer({ min: 0, max: 5 }) }),
  fc.constant({}),
);

describe('volume constraints (property)', () => {
  it('never plans an instance on a host other than its bound or pinned volumes’ host', () => {
    fc.assert(
      fc.property(fc.array(hostArb, { minLength: 1, maxLength: 5 }), fc.array(whereArb, { minLength: 1, maxLength: 3 }), fc.constantFrom('host', 'sandbox', 'cell', 'dedicated'), (hs, wheres, isolation) => {
        const hosts = hs.map((h, i) => host(`h${i}`, h.ready, h.cordoned, h.cpu, h.tiers));
        // Host index 5 may not exist: a volume bound to an unregistered host.
        const vols = wheres.map((w, i) => volume(`v${i}`, { ...('bound' in w ? { bound: `h${w.bound}` } : {}), ...('pinned' in w ? { pinned: `h${w.pinned}` } : {}) }));
        const inst = instance(isolation, vols.map((v) => v.metadata.name));
        const snapshot = snapshotFromModel({ hosts, instances: [], cells: [], machines: [], tenants: [], volumes: vols });
        const idx = volumeIndex(vols, hosts);
        const req = instanceRequestWithVolumes(inst, idx);
        const allowed = new Set(vols.map((v) => v.status.host ?? v.spec.host).filter((h): h is string => h !== undefined));
        const usable = hosts.some((h) => allowed.has(h.metadata.name) && h.status.state === 'Ready' && !h.spec.unschedulable);
        const blocked = blockingVolumeConstraint(req, idx.hosts);
        if (allowed.size > 0 && !usable) expect(['VolumeHostNotReady', 'VolumeHostCordoned']).toContain(blocked?.code);
        if (blocked) return;
        let n = 0;
        const plan = schedule(snapshot, { place: [req], keepEmptyCells: true }, { now: 0, newId: () => `c${n++}` });
        for (const p of plan.placements) for (const h of allowed) expect(p.host).toBe(h);
        for (const c of plan.createCells) for (const h of allowed) expect(c.host).toBe(h);
        expect(plan.placements.length + plan.unplaced.length).toBe(1);
      }),
      { numRuns: 500 },
    );
  });
});
