/**
 * The rules about volumes that need state, checked when a Volume, a service or a job is
 * applied and when a Volume is deleted. Pure functions over the tenant's objects as read by
 * the control plane (core/control-plane.ts reads them and writes the result): they throw the
 * CarapaceError the caller answers with, or say which template volumes to create or resize.
 *
 * Rules: a workload mounts only volumes of its own tenant (names are per tenant, so another
 * tenant's volume is simply not found); a volume mounted read-write by one workload is
 * mounted by no other (read-only sharing is fine); a template's `<name>-<ordinal>` volumes
 * belong to one service; a bound volume keeps its size, filesystem and host; a volume in use
 * (a live instance mounts it, a spec references it, a snapshot of it is Pending or Ready) is
 * not deleted; the tenant's volumes (templates count once per replica) stay within
 * `spec.quota.storage`. Snapshots: one is taken of a volume of its own tenant, on the volume's
 * host; a volume restored from one is new, at least as large, on the snapshot's host.
 */
import { isDeepStrictEqual } from 'node:util';
import { CarapaceError, type FieldIssue } from '../model/errors.js';
import { TERMINAL_PHASES, type Instance, type Job, type Machine, type Service } from '../model/objects.js';
import type { JobSpec, ServiceSpec, TenantSpec } from '../model/schemas.js';
import { formatMemory } from '../model/quantity.js';
import { templateVolumeName, VOLUME_SERVICE_LABEL, VOLUME_TEMPLATE_LABEL, volumeSizeBytes, volumeSizeMiB, type Volume, type VolumeSpec, type VolumeStatus } from '../model/volumes.js';
import type { VolumeSnapshot, VolumeSnapshotSpec, VolumeSnapshotStatus } from '../model/volume-snapshots.js';

/** One workload's use of a volume by its spec. */
export interface SpecUse {
  /** `service web`, `job backup`. */
  who: string;
  kind: 'Service' | 'Job';
  name: string;
  readOnly: boolean;
  /** Where in that workload's spec, e.g. `spec.volumes[0]`. */
  field: string;
}

/** The volumes a workload spec uses, with how (templates resolved for replicas 0..replicas-1). */
export function specUses(kind: 'Service' | 'Job', name: string, spec: ServiceSpec | JobSpec): Map<string, SpecUse> {
  const out = new Map<string, SpecUse>();
  const who = `${kind.toLowerCase()} ${name}`;
  (spec.volumes ?? []).forEach((v, i) => out.set(v.volume, { who, kind, name, readOnly: v.readOnly, field: `spec.volumes[${i}]` }));
  if ('replicas' in spec) {
    (spec.volumeTemplates ?? []).forEach((t, i) => {
      for (let k = 0; k < spec.replicas; k++) out.set(templateVolumeName(t.name, k), { who, kind, name, readOnly: false, field: `spec.volumeTemplates[${i}]` });
    });
  }
  return out;
}

/** Every use of `volume` by the specs of `services` and `jobs`, except `self`'s. */
export function usersOf(volume: string, services: readonly Service[], jobs: readonly Job[], self?: { kind: 'Service' | 'Job'; name: string }): SpecUse[] {
  const out: SpecUse[] = [];
  for (const w of [...services, ...jobs]) {
    if (self && w.kind === self.kind && w.metadata.name === self.name) continue;
    const u = specUses(w.kind, w.metadata.name, w.spec).get(volume);
    if (u) out.push(u);
  }
  return out;
}

/** Live instances (not finished) that mount `volume`. */
export function liveMounters(volume: string, instances: readonly Instance[]): Instance[] {
  return instances.filter((i) => !TERMINAL_PHASES.includes(i.status.phase) && (i.spec.mounts ?? []).some((m) => m.volume === volume));
}

/** What one snapshot holds against its tenant's storage quota, in MiB (a Failed one holds nothing). */
export function snapshotStorageMiB(s: VolumeSnapshot): number {
  return s.status.phase === 'Failed' ? 0 : Math.ceil((s.status.sizeBytes ?? 0) / (1024 * 1024));
}

/**
 * What the tenant's volumes and volume snapshots hold in total, in MiB. Snapshots count at
 * their volume's size: a copy takes that much of the host's disk where the host cannot share
 * blocks (ext4), and a tenant must not fill a host's disk with snapshots past its quota.
 */
export function storageOf(volumes: readonly Volume[], snapshots: readonly VolumeSnapshot[] = []): number {
  return volumes.reduce((n, v) => n + volumeSizeMiB(v.spec.size), 0) + snapshots.reduce((n, s) => n + snapshotStorageMiB(s), 0);
}

/** Refuses taking the tenant's storage from `before` to `after` MiB past its quota (only when it grows). */
export function checkStorageQuota(quota: TenantSpec['quota'], tenant: string, before: number, after: number, path: string, what: string): void {
  const limit = quota?.storage;
  if (limit === undefined || after <= limit || after <= before) return;
  const issue: FieldIssue = { path, message: `tenant quota for storage is ${formatMemory(limit)}; this would bring the total to ${formatMemory(after)} (now ${formatMemory(before)})` };
  throw new CarapaceError('CARAPACE_E_QUOTA_EXCEEDED', `${what}: tenant "${tenant}" ${issue.message}`, [issue]);
}

/**
 * Refuses a Volume update that a bound volume cannot take: its size (shrinking would lose
 * data; growing is not supported yet: the host would have to grow a mounted filesystem),
 * its filesystem, or a pin to another host than the one it lives on. An unbound volume holds
 * no data yet and may change freely.
 */
export function checkVolumeUpdate(cur: Volume, next: VolumeSpec): void {
  // Restoring always makes a new volume: a source is given at creation and never changes.
  if (!isDeepStrictEqual(cur.spec.source, next.source)) {
    throw new CarapaceError(
      'CARAPACE_E_IMMUTABLE_FIELD',
      `volume "${cur.metadata.name}": spec.source is set when a volume is created and never changes (restoring a snapshot makes a new volume; apply one under another name)`,
      [{ path: next.source ? 'spec.source.snapshot' : 'spec.source', message: cur.spec.source ? `was made from snapshot "${cur.spec.source.snapshot}"` : 'the volume exists; restore into a new volume' }],
    );
  }
  if (cur.status.phase !== 'Bound') return;
  const name = cur.metadata.name;
  const host = cur.status.host ?? '';
  const was = volumeSizeMiB(cur.spec.size);
  const now = volumeSizeMiB(next.size);
  if (now < was) {
    throw new CarapaceError('CARAPACE_E_IMMUTABLE_FIELD', `volume "${name}": cannot shrink a bound volume from ${cur.spec.size} to ${next.size} (its data would not fit)`, [
      { path: 'spec.size', message: `cannot shrink a bound volume (now ${cur.spec.size})` },
    ]);
  }
  if (now > was) {
    throw new CarapaceError('CARAPACE_E_IMMUTABLE_FIELD', `volume "${name}": growing a bound volume (${cur.spec.size} to ${next.size}) is not supported yet; make a new volume and copy the data`, [
      { path: 'spec.size', message: `cannot grow a bound volume yet (now ${cur.spec.size})` },
    ]);
  }
  if (next.filesystem !== cur.spec.filesystem) {
    throw new CarapaceError('CARAPACE_E_IMMUTABLE_FIELD', `volume "${name}": the filesystem of a bound volume cannot change`, [{ path: 'spec.filesystem', message: `is ${cur.spec.filesystem} on host ${host}` }]);
  }
  if (next.host !== undefined && next.host !== host) {
    throw new CarapaceError('CARAPACE_E_IMMUTABLE_FIELD', `volume "${name}" lives on host ${host}; it cannot be pinned to ${next.host}`, [{ path: 'spec.host', message: `the volume is bound to host ${host}` }]);
  }
}

/** A template volume to create (absent) or to resize (present, not bound yet). */
export interface TemplateVolume {
  name: string;
  template: string;
  size: string;
  /** The stored volume when it exists (it is resized). */
  existing?: Volume;
}

/**
 * Checks the volumes of a service or job being applied against the tenant's state and returns
 * the template volumes to create or resize in the same transaction. Throws
 * CARAPACE_E_VOLUME_NOT_FOUND (a mounted volume does not exist), CARAPACE_E_VOLUME_IN_USE
 * (read-write use shared with another workload; a template volume of another service or made
 * by hand), CARAPACE_E_IMMUTABLE_FIELD (a template's size changed for a bound volume).
 */
export function checkWorkloadVolumes(
  kind: 'Service' | 'Job',
  name: string,
  spec: ServiceSpec | JobSpec,
  state: { volumes: readonly Volume[]; services: readonly Service[]; jobs: readonly Job[]; machines: readonly Machine[] },
): TemplateVolume[] {
  const byName = new Map(state.volumes.map((v) => [v.metadata.name, v]));
  const what = `${kind.toLowerCase()} "${name}"`;
  (spec.volumes ?? []).forEach((v, i) => {
    if (!byName.has(v.volume)) {
      throw new CarapaceError('CARAPACE_E_VOLUME_NOT_FOUND', `${what}: volume "${v.volume}" does not exist in this tenant; apply the Volume first`, [
        { path: `spec.volumes[${i}].volume`, message: `volume "${v.volume}" not found` },
      ]);
    }
  });
  const out: TemplateVolume[] = [];
  if ('replicas' in spec) {
    (spec.volumeTemplates ?? []).forEach((t, i) => {
      for (let k = 0; k < spec.replicas; k++) {
        const vname = templateVolumeName(t.name, k);
        const cur = byName.get(vname);
        if (!cur) {
          out.push({ name: vname, template: t.name, size: t.size });
          continue;
        }
        if (cur.metadata.labels[VOLUME_SERVICE_LABEL] !== name || cur.metadata.labels[VOLUME_TEMPLATE_LABEL] !== t.name) {
          const owner = cur.metadata.labels[VOLUME_SERVICE_LABEL];
          throw new CarapaceError('CARAPACE_E_VOLUME_IN_USE', `${what}: template "${t.name}" needs volume "${vname}", which ${owner !== undefined ? `belongs to service "${owner}"` : 'exists and was not made from this template'}; rename the template`, [
            { path: `spec.volumeTemplates[${i}].name`, message: `volume "${vname}" ${owner !== undefined ? `belongs to service "${owner}"` : 'already exists'}` },
          ]);
        }
        if (cur.spec.size === t.size) continue;
        if (cur.status.phase === 'Bound') {
          throw new CarapaceError('CARAPACE_E_IMMUTABLE_FIELD', `${what}: volume "${vname}" is bound at ${cur.spec.size}; a template's size cannot change once its volumes hold data (shrinking would lose it, growing is not supported yet)`, [
            { path: `spec.volumeTemplates[${i}].size`, message: `volume "${vname}" is bound at ${cur.spec.size}` },
          ]);
        }
        out.push({ name: vname, template: t.name, size: t.size, existing: cur });
      }
    });
  }
  // Read-write use is exclusive: no other workload may mount what this one writes, nor may
  // this one write what another mounts.
  for (const [vname, mine] of specUses(kind, name, spec)) {
    const machine = machineUsers(vname, state.machines)[0];
    if (machine) {
      throw new CarapaceError('CARAPACE_E_VOLUME_IN_USE', `${what}: volume "${vname}" is a disk of machine "${machine.name}" (${machine.field}); a machine's disk is never mounted by containers`, [
        { path: mine.field.startsWith('spec.volumes') ? `${mine.field}.volume` : `${mine.field}.name`, message: `volume "${vname}" is a disk of machine ${machine.name}` },
      ]);
    }
    for (const other of usersOf(vname, state.services, state.jobs, { kind, name })) {
      if (mine.readOnly && other.readOnly) continue;
      const how = other.readOnly ? 'read-only' : 'read-write';
      throw new CarapaceError('CARAPACE_E_VOLUME_IN_USE', `${what}: volume "${vname}" is used ${how} by ${other.who} (${other.field}); a volume mounted read-write has one user`, [
        { path: mine.field.startsWith('spec.volumes') ? `${mine.field}.volume` : `${mine.field}.name`, message: `volume "${vname}" is used ${how} by ${other.who}` },
      ]);
    }
  }
  return out;
}

/**
 * Refuses deleting a volume that a live instance mounts or that a service's or job's spec
 * references (CARAPACE_E_VOLUME_IN_USE naming the user). A template volume of a replica past
 * the service's `replicas` (kept after a scale down) is no longer referenced and may go.
 */
export function checkVolumeDeletable(
  tenant: string,
  volume: string,
  state: { instances: readonly Instance[]; services: readonly Service[]; jobs: readonly Job[]; machines?: readonly Machine[]; snapshots?: readonly VolumeSnapshot[] },
): void {
  const machine = (state.machines ?? []).find((m) => (m.spec.disks ?? []).some((d) => d.volume === volume));
  if (machine) {
    throw new CarapaceError('CARAPACE_E_VOLUME_IN_USE', `volume "${volume}" in tenant "${tenant}" is a disk of machine "${machine.metadata.name}" (spec.disks); change or delete the machine first`, [
      { path: 'metadata.name', message: `a disk of machine ${machine.metadata.name}` },
    ]);
  }
  const live = liveMounters(volume, state.instances);
  const first = live[0];
  if (first) {
    const where = first.spec.host ? ` on host ${first.spec.host}` : '';
    throw new CarapaceError('CARAPACE_E_VOLUME_IN_USE', `volume "${volume}" in tenant "${tenant}" is mounted by instance "${first.metadata.name}"${where}${live.length > 1 ? ` and ${live.length - 1} more` : ''}; stop its users first`, [
      { path: 'metadata.name', message: `mounted by instance ${first.metadata.name}` },
    ]);
  }
  const users = usersOf(volume, state.services, state.jobs);
  const u = users[0];
  if (u) {
    throw new CarapaceError('CARAPACE_E_VOLUME_IN_USE', `volume "${volume}" in tenant "${tenant}" is referenced by ${u.who} (${u.field}); change or delete it first`, [
      { path: 'metadata.name', message: `referenced by ${u.who}` },
    ]);
  }
  // A snapshot's copy lives in its volume's storage on the host and goes with it: deleting
  // the volume first would lose snapshots the user still has (Failed ones hold nothing).
  const snaps = (state.snapshots ?? []).filter((x) => x.spec.volume === volume && x.status.phase !== 'Failed').map((x) => x.metadata.name).sort();
  if (snaps.length > 0) {
    throw new CarapaceError('CARAPACE_E_VOLUME_IN_USE', `volume "${volume}" in tenant "${tenant}" has snapshot(s) ${snaps.map((n) => `"${n}"`).join(', ')}, kept with its storage; delete them first (a volume restored from a snapshot does not need it any more)`, [
      { path: 'metadata.name', message: `has snapshots: ${snaps.join(', ')}` },
    ]);
  }
}

/**
 * The status a new VolumeSnapshot of `volume` starts with: Pending on the volume's host (whose
 * agent takes the copy), with the volume's uid, so the copy belongs to this volume even if a
 * volume of the same name is made later; Failed when the volume is bound to no host: never
 * used, it holds no data (an empty snapshot would restore into what a new empty volume is, and
 * has no host to be restored on).
 */
export function newSnapshotStatus(volume: Volume): VolumeSnapshotStatus {
  if (volume.status.phase !== 'Bound' || !volume.status.host) {
    return {
      phase: 'Failed',
      reason: 'VolumeNotBound',
      message: `volume "${volume.metadata.name}" was never used, so it lives on no host and holds no data; snapshot it once a workload has mounted it`,
    };
  }
  // Its size is known now (the volume's): it counts against the storage quota from creation.
  return { phase: 'Pending', host: volume.status.host, volumeUid: volume.metadata.uid, sizeBytes: volumeSizeBytes(volume.spec.size) };
}

/**
 * Checks a new VolumeSnapshot against its tenant's volumes: the volume must exist
 * (CARAPACE_E_VOLUME_NOT_FOUND at spec.volume; another tenant's is not found: names are per
 * tenant). An existing snapshot's spec never changes (CARAPACE_E_IMMUTABLE_FIELD): a
 * snapshot is of one volume at one time.
 */
export function checkSnapshotSpec(name: string, tenant: string, spec: VolumeSnapshotSpec, cur: VolumeSnapshot | undefined, volume: Volume | undefined): Volume | undefined {
  if (cur) {
    if (cur.spec.volume !== spec.volume) {
      throw new CarapaceError('CARAPACE_E_IMMUTABLE_FIELD', `volume snapshot "${name}": it is a snapshot of volume "${cur.spec.volume}" and cannot become one of another; make a new snapshot`, [
        { path: 'spec.volume', message: `is "${cur.spec.volume}" (immutable)` },
      ]);
    }
    return undefined;
  }
  if (!volume) {
    throw new CarapaceError('CARAPACE_E_VOLUME_NOT_FOUND', `volume snapshot "${name}": volume "${spec.volume}" does not exist in tenant "${tenant}"`, [
      { path: 'spec.volume', message: `volume "${spec.volume}" not found` },
    ]);
  }
  return volume;
}

/**
 * A new volume restored from snapshot `snap` (`spec.source.snapshot`): the snapshot must be
 * of this tenant (CARAPACE_E_SNAPSHOT_NOT_FOUND) and Ready (CARAPACE_E_SNAPSHOT_NOT_READY), the
 * volume at least as large as the one the snapshot was taken of (CARAPACE_E_VOLUME_TOO_SMALL),
 * and on the snapshot's host (a pin to another is CARAPACE_E_IMMUTABLE_FIELD). Returns the
 * spec to store (pinned to that host) and its status: Bound there at once, with the
 * snapshot's ids, so the host's agent makes it (a copy of the snapshot) without waiting for a
 * user and without reading the snapshot again.
 *
 * Why a new volume and not the old one rewritten (as Kubernetes restores): the volume being
 * restored is often under a running database, which must never see its files change beneath
 * it; and the current data stays until the user has checked the restored copy. The user
 * re-points a service at the new volume (its `spec.volumes`), which re-creates its
 * containers on it, and deletes the old volume when satisfied.
 */
export function restoredVolume(name: string, spec: VolumeSpec, snap: VolumeSnapshot | undefined): { spec: VolumeSpec; status: VolumeStatus } {
  const source = spec.source;
  if (!source) return { spec, status: { phase: 'Pending', attachedTo: [] } };
  const path = 'spec.source.snapshot';
  if (!snap) {
    throw new CarapaceError('CARAPACE_E_SNAPSHOT_NOT_FOUND', `volume "${name}": volume snapshot "${source.snapshot}" does not exist in this tenant`, [{ path, message: `volume snapshot "${source.snapshot}" not found` }]);
  }
  const st = snap.status;
  if (st.phase !== 'Ready' || !st.host || !st.volumeUid || st.sizeBytes === undefined) {
    const why = st.phase === 'Failed' ? `failed (${st.reason ?? 'unknown'}${st.message ? `: ${st.message}` : ''})` : 'not taken yet (Pending); retry once it is Ready';
    throw new CarapaceError('CARAPACE_E_SNAPSHOT_NOT_READY', `volume "${name}": volume snapshot "${source.snapshot}" is ${why}`, [{ path, message: `volume snapshot "${source.snapshot}" is ${st.phase}` }]);
  }
  if (volumeSizeBytes(spec.size) < st.sizeBytes) {
    const least = formatMemory(Math.ceil(st.sizeBytes / (1024 * 1024)));
    throw new CarapaceError('CARAPACE_E_VOLUME_TOO_SMALL', `volume "${name}": ${spec.size} is smaller than the ${least} volume snapshot "${source.snapshot}" was taken of; ask for at least ${least}`, [
      { path: 'spec.size', message: `must be at least ${least} (the size of the snapshot's volume)` },
    ]);
  }
  if (spec.host !== undefined && spec.host !== st.host) {
    throw new CarapaceError('CARAPACE_E_IMMUTABLE_FIELD', `volume "${name}": volume snapshot "${source.snapshot}" is kept on host ${st.host}, where the restored volume is made; it cannot be pinned to ${spec.host}`, [
      { path: 'spec.host', message: `must be ${st.host} (the snapshot's host) or left out` },
    ]);
  }
  return {
    spec: { ...spec, host: st.host },
    status: { phase: 'Bound', host: st.host, attachedTo: [], restoredFrom: { snapshot: snap.metadata.name, snapshotUid: snap.metadata.uid, volumeUid: st.volumeUid } },
  };
}

/**
 * A machine's disks (`spec.disks`) must be volumes of its tenant (CARAPACE_E_VOLUME_NOT_FOUND
 * with the field path): another tenant's volume of the same name is not found. A disk is used
 * by no service or job, and by another machine only when both read it only
 * (CARAPACE_E_VOLUME_IN_USE): two writers of one ext4 image corrupt it.
 */
export function checkMachineDisks(
  machine: string,
  tenant: string,
  disks: readonly { volume: string; readOnly?: boolean }[],
  state: { volumes: readonly Volume[]; services: readonly Service[]; jobs: readonly Job[]; machines: readonly Machine[] },
): void {
  const have = new Set(state.volumes.map((v) => v.metadata.name));
  const issues = disks.flatMap((d, i) => (have.has(d.volume) ? [] : [{ path: `spec.disks[${i}].volume`, message: `tenant "${tenant}" has no volume "${d.volume}"` }]));
  if (issues.length > 0) throw new CarapaceError('CARAPACE_E_VOLUME_NOT_FOUND', `machine "${machine}": ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
  disks.forEach((d, i) => {
    // A machine's disk is a block device of its VM: a container's mount of it (on the host, or
    // another VM's disk for a cell) is a second filesystem driver on the same blocks.
    const user = usersOf(d.volume, state.services, state.jobs)[0];
    const other = machineUsers(d.volume, state.machines, machine).find((u) => !(u.readOnly && d.readOnly === true));
    const who = user ? `${user.who} (${user.field})` : other ? `machine ${other.name} (${other.field}${other.readOnly ? ', read-only' : ''})` : undefined;
    if (who === undefined) return;
    throw new CarapaceError('CARAPACE_E_VOLUME_IN_USE', `machine "${machine}": volume "${d.volume}" is used by ${who}; a machine's disk is shared only read-only with other machines, never with containers`, [
      { path: `spec.disks[${i}].volume`, message: `volume "${d.volume}" is used by ${who}` },
    ]);
  });
}

/** The machines (but `self`) whose `spec.disks` name `volume`, with the field and how. */
export function machineUsers(volume: string, machines: readonly Machine[], self?: string): { name: string; field: string; readOnly: boolean }[] {
  return machines.flatMap((m) => {
    if (m.metadata.name === self) return [];
    const i = (m.spec.disks ?? []).findIndex((d) => d.volume === volume);
    return i < 0 ? [] : [{ name: m.metadata.name, field: `spec.disks[${i}]`, readOnly: m.spec.disks?.[i]?.readOnly === true }];
  });
}
