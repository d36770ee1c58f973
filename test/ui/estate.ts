/**
 * A seeded estate for the dashboard's scale check: tenants, hosts, cells, services and 1,000
 * instances written straight into a real store through the Resources API (no containers, no
 * controller: the objects stay as written). Deterministic: the same call writes the same
 * objects. For tests only.
 */
import type { Resources } from '../../src/core/resources.js';
import type { Cell, Host, Instance, Metadata, Service, Tenant } from '../../src/model/objects.js';
import { ServiceSpecSchema, type ServiceSpec } from '../../src/model/schemas.js';

export interface EstateOptions {
  /** ISO time stamped on every object. */
  now: string;
  instances?: number;
}

export interface Estate {
  tenants: string[];
  hosts: string[];
  cells: number;
  instances: number;
  /** The instance keys (`tenant/name`) in the order written. */
  keys: string[];
}

const TENANTS = ['acme', 'globex', 'hooli', 'initech', 'umbrella'];
const HOSTS = ['rack1-h01', 'rack1-h02', 'rack1-h03', 'rack2-h04', 'rack2-h05', 'rack2-h06'];
/** Per tenant: (service, isolation, group, share of the tenant's instances). */
const SHAPES: readonly [string, ServiceSpec['isolation'], string, number][] = [
  ['web', 'cell', 'default', 0.4],
  ['worker', 'cell', 'batch', 0.3],
  ['edge', 'host', 'default', 0.2],
  ['scan', 'sandbox', 'default', 0.1],
];
const CELL = { cpu: 2, memoryMiB: 2048, fits: 12 };

function md(name: string, now: string, n: number, tenant?: string): Metadata {
  return { name, ...(tenant ? { tenant } : {}), uid: `uid-${name}-${tenant ?? ''}-${n}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now };
}

/** A phase for the n-th instance: mostly Running, a few of every other state. */
function phaseOf(n: number): Instance['status']['phase'] {
  if (n % 97 === 5) return 'Failed';
  if (n % 53 === 7) return 'Backoff';
  if (n % 41 === 3) return 'Pending';
  if (n % 37 === 11) return 'Starting';
  if (n % 61 === 13) return 'Pulling';
  return 'Running';
}

/** Writes the estate; returns what it wrote. */
export async function seedEstate(resources: Resources, o: EstateOptions): Promise<Estate> {
  const total = o.instances ?? 1000;
  const now = o.now;
  let n = 0;
  for (const [i, h] of HOSTS.entries()) {
    const host: Host = {
      kind: 'Host',
      metadata: md(h, now, n++),
      spec: { labels: { zone: i < 3 ? 'a' : 'b' }, unschedulable: i === 5, overcommit: { cpu: 4, memory: 1 } },
      status: { state: 'Ready', lastHeartbeatAt: now, isolation: ['cell', 'dedicated', 'host', 'machine', 'sandbox'], capacity: { cpu: 32, memoryMiB: 131072 }, agentVersion: 'seeded' },
    };
    await resources.write(host, 0);
  }
  const keys: string[] = [];
  let cells = 0;
  let hostTurn = 0;
  const perTenant = Math.ceil(total / TENANTS.length);
  for (const t of TENANTS) {
    const tenant: Tenant = {
      kind: 'Tenant',
      metadata: md(t, now, n++),
      spec: { displayName: `${t[0]?.toUpperCase() ?? ''}${t.slice(1)} Inc.`, quota: { cpu: 64, memory: 65536, instances: 400, cells: 40 } },
    };
    await resources.write(tenant, 0);
    for (const [svcName, isolation, group, share] of SHAPES) {
      const replicas = Math.max(1, Math.round(perTenant * share));
      const spec = ServiceSpecSchema.parse({ image: `registry.example:5000/${t}/${svcName}:1`, isolation, group, replicas, cpu: 0.15, memory: 128 });
      const svc: Service = { kind: 'Service', metadata: md(svcName, now, n++, t), spec, status: { ready: 0, observedGeneration: 1 } };
      let ready = 0;
      let cell: Cell | undefined;
      let inCell = 0;
      for (let r = 0; r < replicas && keys.length < total; r++) {
        const host = HOSTS[hostTurn++ % HOSTS.length] ?? '';
        if (isolation === 'cell' && (!cell || inCell >= CELL.fits)) {
          cell = {
            kind: 'Cell',
            metadata: md(`cell-${(0x5f3a91c2b7d4 + cells * 7919).toString(16)}`, now, n++), // named like the controller's cells
            spec: { tenant: t, group, host, cpu: CELL.cpu, memoryMiB: CELL.memoryMiB, dedicated: false, warm: false },
            status: { phase: 'Ready', accel: 'kvm', bootMs: 900 + (cells % 7) * 40, readyAt: now },
          };
          cells++;
          inCell = 0;
          await resources.write(cell, 0);
        }
        const phase = phaseOf(keys.length);
        const { replicas: _r, restartPolicy, maxUnavailable: _m, ...container } = spec;
        const inst: Instance = {
          kind: 'Instance',
          metadata: md(`${svcName}-${r}`, now, n++, t),
          spec: {
            owner: { kind: 'Service', name: svcName, uid: svc.metadata.uid },
            index: r,
            container,
            restartPolicy,
            maxRestarts: -1,
            host: phase === 'Pending' ? '' : isolation === 'cell' ? (cell?.spec.host ?? host) : host,
            ...(isolation === 'cell' && phase !== 'Pending' ? { cell: cell?.metadata.name ?? '' } : {}),
            ownerGeneration: 1,
          },
          status: {
            phase,
            restarts: phase === 'Backoff' ? 3 : 0,
            ready: phase === 'Running',
            ...(phase === 'Backoff' ? { reason: 'Exited', message: 'exit code 1; restarting in 40 s' } : {}),
            ...(phase === 'Failed' ? { reason: 'ImagePullFailed', message: 'manifest unknown' } : {}),
            ...(phase === 'Pending' ? { reason: 'Unschedulable', message: 'no host fits: quota for cells reached' } : {}),
            ...(phase === 'Running' ? { startedAt: now } : {}),
          },
        };
        if (isolation === 'cell' && phase !== 'Pending') inCell++;
        if (phase === 'Running') ready++;
        await resources.write(inst, 0);
        keys.push(`${t}/${inst.metadata.name}`);
      }
      await resources.write({ ...svc, status: { ...svc.status, ready } }, 0);
    }
  }
  return { tenants: TENANTS, hosts: HOSTS, cells, instances: keys.length, keys };
}
