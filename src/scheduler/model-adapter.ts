/**
 * Glue from the control-plane model (src/model) to the scheduler's own types. Pure. Every
 * reservation on a host becomes a snapshot row: host-run instances and machines as
 * placements, cells (warm ones too) as cells; what is on a host that is not ready is left out
 * (the controller fails it over; nothing new goes there).
 */
import { TERMINAL_PHASES, type Cell, type Host, type Instance, type Machine, type Tenant } from '../model/objects.js';
import type { Volume } from '../model/volumes.js';
import type { CellInfo, HostConstraint, HostInfo, InstanceRequest, Isolation, Placement, Snapshot, TenantQuota } from './types.js';

const TIERS = new Set<string>(['cell', 'dedicated', 'host', 'sandbox', 'machine']);

/** The scheduler's view of a registered host. */
export function hostInfoFromModel(h: Host): HostInfo {
  return {
    name: h.metadata.name,
    cpu: h.status.capacity.cpu,
    memoryMiB: h.status.capacity.memoryMiB,
    labels: { ...h.metadata.labels, ...h.spec.labels },
    ...(h.spec.overcommit ? { overcommit: { cpu: h.spec.overcommit.cpu, memory: h.spec.overcommit.memory } } : {}),
    ready: h.status.state === 'Ready',
    schedulable: !h.spec.unschedulable,
    // The narrowing filter keeps only the scheduler's tier names, so the cast cannot admit others.
    isolation: h.status.isolation.filter((t) => TIERS.has(t)) as Isolation[],
  };
}

/** The scheduler's view of a tenant's quota (instances' and machines' cpu and memory, instance count, cells). */
export function tenantQuotaFromModel(t: Tenant): TenantQuota | undefined {
  const q = t.spec.quota;
  if (!q || (q.cpu === undefined && q.memory === undefined && q.instances === undefined && q.cells === undefined)) return undefined;
  return {
    tenant: t.metadata.name,
    ...(q.cpu !== undefined ? { cpu: q.cpu } : {}),
    ...(q.memory !== undefined ? { memoryMiB: q.memory } : {}),
    ...(q.instances !== undefined ? { instances: q.instances } : {}),
    ...(q.cells !== undefined ? { cells: q.cells } : {}),
  };
}

/** The scheduler's id of an instance object: `tenant/name` (instance names are unique per tenant). */
export function schedulerId(i: Instance): string {
  return `${i.metadata.tenant ?? ''}/${i.metadata.name}`;
}

/** The scheduler's id of a machine: `m:tenant/name` (`:` is in no object name, so never an instance's id). */
export function machineSchedulerId(m: Machine): string {
  return `m:${m.metadata.tenant ?? ''}/${m.metadata.name}`;
}

/** What volume constraints are computed from: volumes by `tenant/name`, hosts by name. */
export interface VolumeIndex {
  volumes: ReadonlyMap<string, Volume>;
  hosts: ReadonlyMap<string, Host>;
}

/** Indexes a view's volumes and hosts for volumeConstraints. */
export function volumeIndex(volumes: readonly Volume[], hosts: readonly Host[]): VolumeIndex {
  return { volumes: new Map(volumes.map((v) => [`${v.metadata.tenant ?? ''}/${v.metadata.name}`, v])), hosts: new Map(hosts.map((h) => [h.metadata.name, h])) };
}

/**
 * The host constraints an instance's volumes put on it: a bound volume admits only the host it
 * lives on, a pinned one (`spec.host`) only that host; an unbound, unpinned one admits any (the
 * placement binds it where the instance goes). When that host cannot take work the instance
 * waits with `VolumeHostNotReady` (the host is NotReady or gone: it is never moved elsewhere,
 * its data is there) or `VolumeHostCordoned`; a volume that does not exist admits no host
 * (`VolumeNotFound`).
 */
export function volumeConstraints(i: Instance, idx: VolumeIndex): HostConstraint[] {
  return volumeNameConstraints(i.metadata.tenant ?? '', (i.spec.mounts ?? []).map((m) => m.volume), idx, 'instance');
}

/** volumeConstraints for any user of a tenant's volumes by name (an instance's mounts, a machine's disks). */
function volumeNameConstraints(tenant: string, volumes: readonly string[], idx: VolumeIndex, user: 'instance' | 'machine'): HostConstraint[] {
  const out: HostConstraint[] = [];
  for (const m of volumes.map((volume) => ({ volume }))) {
    const name = `volume ${tenant}/${m.volume}`;
    const v = idx.volumes.get(`${tenant}/${m.volume}`);
    if (!v) {
      out.push({ name, hosts: [], code: 'VolumeNotFound', reason: `${name} does not exist` });
      continue;
    }
    const host = v.status.phase === 'Bound' ? v.status.host : v.spec.host;
    if (host === undefined) continue;
    const h = idx.hosts.get(host);
    const how = v.status.phase === 'Bound' ? 'lives on' : 'is pinned to';
    if (h && h.status.state === 'Ready' && h.spec.unschedulable) {
      out.push({ name, hosts: [host], code: 'VolumeHostCordoned', reason: `${name} ${how} host ${host}, which is cordoned; the ${user} waits for it (its data is there)` });
    } else {
      const state = !h ? 'not registered' : h.status.state === 'Ready' ? 'Ready' : 'NotReady';
      out.push({ name, hosts: [host], code: 'VolumeHostNotReady', reason: `${name} ${how} host ${host}, which is ${state}; the ${user} waits for it (its data is there)` });
    }
  }
  return out;
}

/**
 * The volume constraint of `r` that no usable host (registered, Ready, schedulable) admits, if
 * any: the request then waits with that constraint's code and sentence without being offered to
 * the scheduler (which would answer a cluster-wide reason, e.g. `NoReadyHost` on a one-host
 * cluster, instead of naming the volume's host).
 */
export function blockingVolumeConstraint(r: InstanceRequest, hosts: ReadonlyMap<string, Host>): HostConstraint | undefined {
  return (r.constraints ?? []).find((c) => c.code.startsWith('Volume') && !c.hosts.some((n) => {
    const h = hosts.get(n);
    return h !== undefined && h.status.state === 'Ready' && !h.spec.unschedulable;
  }));
}

/** The request for an instance (instanceRequestFromModel) with the host constraints of its volumes. */
export function instanceRequestWithVolumes(i: Instance, volumes: VolumeIndex): InstanceRequest {
  const r = instanceRequestFromModel(i);
  const constraints = (i.spec.mounts ?? []).length > 0 ? volumeConstraints(i, volumes) : [];
  return constraints.length > 0 ? { ...r, constraints } : r;
}

/**
 * The request for one instance object. Service replicas are spread across hosts when they can
 * be (`preferred`); job runs are packed (`none`). Replicas of a cell-tier service that declares
 * ports never share a cell (`required`): a cell's containers share the VM's network, so a
 * second replica would find its ports taken (it would crash-loop, and a rolling update's new
 * replica placed beside an old one would never become ready).
 */
export function instanceRequestFromModel(i: Instance): InstanceRequest {
  const c = i.spec.container;
  return {
    id: schedulerId(i),
    tenant: i.metadata.tenant ?? '',
    group: c.group,
    service: `${i.spec.owner.kind.toLowerCase()}/${i.spec.owner.name}`,
    isolation: c.isolation,
    cpu: c.cpu,
    memoryMiB: c.memory,
    spread: i.spec.owner.kind !== 'Service' ? 'none' : c.isolation === 'cell' && c.ports.length > 0 ? 'required' : 'preferred',
  };
}

/** The request for one machine: its vCPUs and memory on a host that runs VMs (tier `machine`). */
export function machineRequestFromModel(m: Machine, volumes?: VolumeIndex): InstanceRequest {
  const disks = (m.spec.disks ?? []).map((d) => d.volume);
  const constraints = volumes && disks.length > 0 ? volumeNameConstraints(m.metadata.tenant ?? '', disks, volumes, 'machine') : [];
  return {
    ...(constraints.length > 0 ? { constraints } : {}),
    id: machineSchedulerId(m),
    tenant: m.metadata.tenant ?? '',
    group: '',
    service: `machine/${m.metadata.name}`,
    isolation: 'machine',
    cpu: m.spec.cpu,
    memoryMiB: m.spec.memory,
  };
}

/**
 * The scheduler's view of a cell object. A warm (unassigned) cell is offered for claiming
 * once Ready; a cell being deleted, retiring, failed or lost takes nothing new (`draining`)
 * but is charged to its host until its record is gone.
 */
export function cellInfoFromModel(c: Cell): CellInfo {
  const gone = c.metadata.deletionRequestedAt !== undefined || c.status.phase === 'Retiring' || c.status.phase === 'Failed' || c.status.phase === 'Lost';
  const state = gone ? 'draining' : c.status.phase === 'Ready' ? 'running' : 'creating';
  if (c.spec.tenant === '') return { id: c.metadata.name, tenant: '', group: '', host: c.spec.host, cpu: c.spec.cpu, memoryMiB: c.spec.memoryMiB, state, warm: true };
  return { id: c.metadata.name, tenant: c.spec.tenant, group: c.spec.group, host: c.spec.host, cpu: c.spec.cpu, memoryMiB: c.spec.memoryMiB, state, dedicated: c.spec.dedicated };
}

/** The control-plane objects a snapshot is built from. */
export interface ModelView {
  hosts: Host[];
  instances: Instance[];
  cells: Cell[];
  machines: Machine[];
  tenants: Tenant[];
  /** The tenants' volumes (absent: none), for the host constraints of instances that mount some. */
  volumes?: Volume[];
}

/**
 * The scheduler's snapshot of the cluster: every host; on the ready ones, every cell (warm
 * ones too), every placed instance not in a terminal phase (with its cell when it has one)
 * and every placed machine; every tenant's quota. Instances, cells and machines of hosts that
 * are not ready are left out: the controller fails the instances over and retires the cells,
 * machines stay with their disks, and no plan puts anything there meanwhile.
 */
export function snapshotFromModel(v: ModelView): Snapshot {
  const ready = new Set(v.hosts.filter((h) => h.status.state === 'Ready').map((h) => h.metadata.name));
  const cells = v.cells.filter((c) => ready.has(c.spec.host)).map(cellInfoFromModel);
  const known = new Set(cells.map((c) => c.id));
  const placements: Placement[] = [];
  const vols = volumeIndex(v.volumes ?? [], v.hosts);
  for (const i of v.instances) {
    if (i.spec.host === '' || !ready.has(i.spec.host) || TERMINAL_PHASES.includes(i.status.phase)) continue;
    if (i.spec.cell && !known.has(i.spec.cell)) continue; // its cell is gone: the controller replaces it
    placements.push({ instance: instanceRequestWithVolumes(i, vols), host: i.spec.host, ...(i.spec.cell ? { cell: i.spec.cell } : {}) });
  }
  for (const m of v.machines) {
    if (m.status.host === '' || !ready.has(m.status.host)) continue;
    placements.push({ instance: machineRequestFromModel(m), host: m.status.host });
  }
  const quotas = v.tenants.map(tenantQuotaFromModel).filter((q): q is TenantQuota => q !== undefined);
  return { hosts: v.hosts.map(hostInfoFromModel), cells, placements, ...(quotas.length ? { quotas } : {}) };
}
