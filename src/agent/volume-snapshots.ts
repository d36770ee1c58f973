/**
 * The host's side of VolumeSnapshots and of volumes restored from them: one reconcile loop
 * that takes the Pending snapshots kept on this host, makes the restored volumes bound here,
 * and removes the copies of deleted snapshots. Its own module (not the instance loop) so a
 * slow copy never holds a container's start, and it needs nothing of the agent's but the
 * VolumeStore (the same one the instances use) and the host's VMs.
 *
 * A snapshot is the VolumeStore's copy of the volume's image, named by the ids of the objects
 * (the Volume's uid / the VolumeSnapshot's uid), so a volume or snapshot re-created under an
 * old name never sees old data. How the copy is made depends on where the volume is:
 * - nowhere (only its image) or mounted on the host: `cp --reflink=auto` of the image, under
 *   fsfreeze when mounted (a clean filesystem);
 * - handed to a VM (a cell's or dedicated VM's hot-plugged disk, a machine's disk): the VM is
 *   paused through QMP (`stop`, which also drains its in-flight disk requests), the image copied,
 *   and the VM resumed (`cont`): crash-consistent, as after a power cut at that instant (ext4's
 *   journal replays on the restored volume's first check). The pause is bounded (`maxPauseMs`,
 *   default 2 s): a cell whose guest agent does not answer heartbeats is fenced after 5 s under
 *   KVM, and a tenant's service should not stall longer than a hiccup. Where the host's
 *   filesystem reflinks (XFS, btrfs) the copy is instant whatever the size; on ext4 it is a copy
 *   of the allocated data, and a volume too large to copy within the bound is refused (Failed,
 *   `PauseTooLong`, the VM resumed at once) rather than stalled: the user stops the workload
 *   (the volume returns to the host) and snapshots it then.
 * A VM paused by an agent killed before it resumed it is resumed when the loop starts again
 * (a marker file per paused VM, written before the pause, removed after the resume).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { Resources } from '../core/resources.js';
import { CarapaceError, isCarapaceError } from '../model/errors.js';
import { kindPrefix, VOLUME_SNAPSHOT_PREFIX } from '../model/keys.js';
import type { VolumeSnapshot, VolumeSnapshotStatus } from '../model/volume-snapshots.js';
import { volumeSizeBytes, type Volume } from '../model/volumes.js';
import { CommandError } from '../proc/run.js';
import { Reconciler, watchOf } from '../reconcile/reconciler.js';
import { SnapshotPauseExceeded, VOLUME_ID_PATTERN, type VolumeRequest, type VolumeStore, type WriterPause } from '../storage/volume-store.js';
import type { VmManager } from '../vm/qemu.js';

/** What the host's storage is asked for to make `vol`: made from its snapshot when it was restored from one. */
export function volumeRequest(vol: Volume): VolumeRequest {
  const from = vol.status.restoredFrom;
  return {
    id: vol.metadata.uid,
    tenant: vol.metadata.tenant ?? '',
    name: vol.metadata.name,
    sizeBytes: volumeSizeBytes(vol.spec.size),
    ...(from ? { source: { volume: from.volumeUid, snapshot: from.snapshotUid } } : {}),
  };
}

export interface VolumeSnapshotterOptions {
  hostName: string;
  resources: Resources;
  logger: Logger;
  /** The host's volumes (the instances' store: one lock, one state). */
  volumes: VolumeStore;
  /** The host's VMs; absent: a volume handed to a VM is not snapshotted (its snapshot waits, Pending, with a message). */
  vms?: VmManager;
  /** Where the markers of VMs paused for a copy live (the agent's state directory). */
  stateDir: string;
  /** Longest a VM is paused for a copy (default 2000 ms). */
  maxPauseMs?: number;
  /** How often every key is looked at again, the removal of deleted snapshots' copies included (default 30 s). */
  resyncMs?: number;
}

const GC_KEY = 'gc';
const SNAP = 'snapshot/';
const RESTORE = 'restore/';

/** Why a snapshot will not be taken, for its status (a CarapaceError's message is the user's). */
function failure(reason: VolumeSnapshotStatus['reason'], err: unknown): Pick<VolumeSnapshotStatus, 'phase' | 'reason' | 'message'> {
  const message = err instanceof Error ? err.message : String(err);
  return { phase: 'Failed', reason, message: message.slice(0, 1000) };
}

export class VolumeSnapshotter {
  private readonly log: Logger;
  private readonly loop: Reconciler;
  private readonly pausesDir: string;

  constructor(private readonly o: VolumeSnapshotterOptions) {
    this.log = o.logger.child({ component: 'volume-snapshots' });
    this.pausesDir = join(o.stateDir, 'snapshot-pauses');
    const host = o.hostName;
    const mine = (s: VolumeSnapshot): boolean => s.status.host === host && s.status.phase === 'Pending';
    const toRestore = (v: Volume): boolean => v.status.host === host && v.status.restoredFrom !== undefined && v.status.usedBytes === undefined && v.status.message === undefined;
    this.loop = new Reconciler({
      name: 'volume-snapshots',
      store: o.resources.store,
      logger: this.log,
      reconcile: (key) => this.reconcile(key),
      watches: [
        // A deleted snapshot's copy goes at once (the gc pass lists what is left).
        watchOf<VolumeSnapshot>(VOLUME_SNAPSHOT_PREFIX, (e) => (e.type === 'delete' ? [GC_KEY] : mine(e.value) ? [`${SNAP}${e.value.metadata.tenant ?? ''}/${e.value.metadata.name}`] : [])),
        watchOf<Volume>(kindPrefix('Volume'), (e) => (e.type === 'put' && toRestore(e.value) ? [`${RESTORE}${e.value.metadata.tenant ?? ''}/${e.value.metadata.name}`] : [])),
      ],
      resync: {
        everyMs: o.resyncMs ?? 30_000,
        keys: async () => {
          const [snaps, vols] = await Promise.all([o.resources.list('VolumeSnapshot'), o.resources.list('Volume')]);
          return [
            GC_KEY,
            ...snaps.items.filter(mine).map((s) => `${SNAP}${s.metadata.tenant ?? ''}/${s.metadata.name}`),
            ...vols.items.filter(toRestore).map((v) => `${RESTORE}${v.metadata.tenant ?? ''}/${v.metadata.name}`),
          ];
        },
      },
      // One at a time: a copy and the removal of copies never overlap (the gc's list is then
      // never older than a copy it could remove), and the host's disk sees one copy at a time.
      concurrency: 1,
    });
  }

  /** Resumes VMs a killed agent left paused, then runs the loop until `signal` aborts. */
  async start(signal: AbortSignal): Promise<void> {
    await this.recover().catch((err: unknown) => this.log.warn({ err }, 'cannot resume VMs paused for a snapshot'));
    await this.loop.start(signal);
  }

  /**
   * Resumes every VM an earlier run paused for a copy and did not resume (killed meanwhile).
   * Idempotent; a VM that is gone just loses its marker.
   */
  async recover(): Promise<void> {
    const names = await readdir(this.pausesDir).catch(() => [] as string[]);
    for (const vm of names) {
      try {
        await this.o.vms?.withQmp(vm, (q) => q.execute('cont'));
        this.log.warn({ vm }, 'resumed a VM left paused by an interrupted snapshot');
      } catch (err) {
        this.log.info({ vm, err: String(err) }, 'a VM left paused by an interrupted snapshot is not running any more');
      }
      await rm(join(this.pausesDir, vm), { force: true });
    }
  }

  private async reconcile(key: string): Promise<void> {
    if (key === GC_KEY) return this.gc();
    const [kind, rest] = key.startsWith(SNAP) ? ['snapshot', key.slice(SNAP.length)] : ['restore', key.slice(RESTORE.length)];
    const slash = rest.indexOf('/');
    const tenant = rest.slice(0, slash);
    const name = rest.slice(slash + 1);
    if (kind === 'snapshot') return this.takeSnapshot(tenant, name);
    return this.restore(tenant, name);
  }

  /**
   * Takes a Pending snapshot kept on this host and records the outcome: Ready, or Failed when
   * it cannot be taken (the volume's storage is not here; the copy would pause its VM too long;
   * the copy failed). A wait that may pass (a VM attaching or releasing the volume) is retried
   * with backoff, its reason in the status message.
   */
  private async takeSnapshot(tenant: string, name: string): Promise<void> {
    const s = await this.o.resources.get('VolumeSnapshot', name, tenant);
    if (!s || s.status.host !== this.o.hostName || s.status.phase !== 'Pending' || s.status.volumeUid === undefined) return;
    const volumeId = s.status.volumeUid;
    const uid = s.metadata.uid;
    if (!VOLUME_ID_PATTERN.test(volumeId) || !VOLUME_ID_PATTERN.test(uid)) return this.setStatus(s, failure('CopyFailed', new Error(`ids ${volumeId}/${uid} cannot name a file on the host`)));
    try {
      // A volume restored from a snapshot and snapshotted before it was made: make it first.
      const vol = await this.o.resources.get('Volume', s.spec.volume, tenant);
      if (vol?.metadata.uid === volumeId && vol.status.restoredFrom && vol.status.host === this.o.hostName) await this.o.volumes.ensure(volumeRequest(vol));
      const info = await this.take(volumeId, uid);
      this.log.info({ snapshot: `${tenant}/${name}`, volume: volumeId, sizeBytes: info.sizeBytes }, 'volume snapshot taken');
      await this.setStatus(s, { phase: 'Ready', reason: 'Taken', sizeBytes: info.sizeBytes, takenAt: info.createdAt, message: undefined });
    } catch (err) {
      if (err instanceof SnapshotPauseExceeded) return this.setStatus(s, failure('PauseTooLong', err));
      if (isCarapaceError(err, 'CARAPACE_E_NOT_FOUND')) return this.setStatus(s, failure('VolumeNotOnHost', new Error(`volume "${s.spec.volume}" is bound to host ${this.o.hostName} but its storage is not there (no workload using it started yet): nothing to copy (${err.message})`)));
      if (err instanceof CommandError) return this.setStatus(s, failure('CopyFailed', err));
      // Waiting for something that passes (e.g. a VM attaching or releasing the volume): say so, retry.
      if (isCarapaceError(err)) await this.setStatus(s, { message: err.message.slice(0, 1000) }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Copies volume `volumeId`'s image to snapshot `snapId` on this host (idempotent: a copy
   * already there is kept): frozen when mounted on the host, its VM paused when handed to one.
   * Throws SnapshotPauseExceeded when the copy would keep the VM paused too long.
   */
  take(volumeId: string, snapId: string): ReturnType<VolumeStore['snapshot']> {
    return this.o.volumes.snapshot(volumeId, snapId, { whileAttached: this.pauseFor(volumeId) });
  }

  /** Pausing the VM that holds volume `volumeId`'s image (see WriterPause), with its crash marker. */
  private pauseFor(volumeId: string): WriterPause {
    const image = resolve(this.o.volumes.imageFile(volumeId));
    const maxPauseMs = this.o.maxPauseMs ?? 2_000;
    let paused: string | undefined;
    return {
      pause: async () => {
        const vm = await this.vmWriting(image);
        if (vm === undefined) return undefined;
        // The marker first: an agent killed while the VM is paused resumes it at its next start.
        await mkdir(this.pausesDir, { recursive: true, mode: 0o700 });
        await writeFile(join(this.pausesDir, vm), `${volumeId}\n`);
        await this.vms().withQmp(vm, (q) => q.execute('stop'));
        paused = vm;
        this.log.info({ vm, volume: volumeId, maxPauseMs }, 'VM paused for a volume snapshot');
        return maxPauseMs;
      },
      resume: async () => {
        if (paused === undefined) {
          // No VM wrote to it before the copy (none holds it, or only read-only); one that opened
          // it for writing meanwhile (an attach begun before the store's lock was taken) may
          // have written into the copy: not kept.
          const now = await this.vmWriting(image);
          if (now !== undefined) throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${volumeId} was attached to VM ${now} during the copy; retrying with the VM paused`);
          return;
        }
        await this.vms().withQmp(paused, (q) => q.execute('cont'));
        await rm(join(this.pausesDir, paused), { force: true });
        this.log.info({ vm: paused, volume: volumeId }, 'VM resumed after a volume snapshot');
      },
    };
  }

  private vms(): VmManager {
    if (!this.o.vms) throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', 'the volume is handed to a VM and this agent runs none; it cannot be snapshotted here');
    return this.o.vms;
  }

  /**
   * The running VM that has `image` open as a writable disk (asked of each VM's QEMU), if any.
   * VMs holding it read-only change nothing in it: they need no pause.
   */
  private async vmWriting(image: string): Promise<string | undefined> {
    if (!this.o.vms) return undefined;
    for (const vm of this.o.vms.recover()) {
      if (vm.state !== 'running') continue;
      const disks = await this.o.vms.listDisks(vm.id).catch(() => []);
      if (disks.some((d) => resolve(d.path) === image && !d.readOnly)) return vm.id;
    }
    return undefined;
  }

  /**
   * Makes a volume restored from a snapshot (bound here at creation) as a copy of the
   * snapshot, without waiting for a user, and reports it: its used bytes once made, or why it
   * cannot be (the snapshot's copy is gone) in its message.
   */
  private async restore(tenant: string, name: string): Promise<void> {
    const v = await this.o.resources.get('Volume', name, tenant);
    if (!v || v.status.host !== this.o.hostName || !v.status.restoredFrom || v.status.usedBytes !== undefined || v.status.message !== undefined) return;
    let message: string | undefined;
    let usedBytes: number | undefined;
    try {
      await this.o.volumes.ensure(volumeRequest(v));
      usedBytes = (await this.o.volumes.usage(v.metadata.uid)).usedBytes;
      this.log.info({ volume: `${tenant}/${name}`, snapshot: v.status.restoredFrom.snapshot }, 'volume restored from a snapshot');
    } catch (err) {
      // The snapshot's copy is gone or does not fit: this will not change by retrying.
      if (!isCarapaceError(err, 'CARAPACE_E_NOT_FOUND') && !isCarapaceError(err, 'CARAPACE_E_VALIDATION')) throw err;
      message = `cannot be made from snapshot "${v.status.restoredFrom.snapshot}": ${err.message}`.slice(0, 1000);
    }
    await this.o.resources.mutate('Volume', name, tenant, (x) => {
      if (x.metadata.uid !== v.metadata.uid) return undefined;
      x.status = { ...x.status, ...(usedBytes !== undefined ? { usedBytes } : {}), ...(message !== undefined ? { message } : {}) };
      return x;
    });
  }

  /**
   * Removes the copies of snapshots whose object is gone (a snapshot re-created under the same
   * name has another uid), except those a volume restored from them still needs (bound here,
   * not made yet: its snapshot may be deleted right after the restore was asked for). Nothing
   * is removed unless the lists of snapshots and volumes were read.
   */
  private async gc(): Promise<void> {
    const [snaps, vols] = await Promise.all([this.o.resources.list('VolumeSnapshot'), this.o.resources.list('Volume')]);
    const keep = new Set(snaps.items.filter((s) => s.status.host === this.o.hostName && s.status.volumeUid !== undefined).map((s) => `${s.status.volumeUid ?? ''}/${s.metadata.uid}`));
    for (const v of vols.items) {
      const from = v.status.restoredFrom;
      if (from && v.status.host === this.o.hostName && !existsSync(this.o.volumes.imageFile(v.metadata.uid))) keep.add(`${from.volumeUid}/${from.snapshotUid}`);
    }
    const removed: string[] = [];
    for (const s of await this.o.volumes.allSnapshots()) {
      if (keep.has(`${s.volume}/${s.name}`)) continue;
      await this.o.volumes.deleteSnapshot(s.volume, s.name);
      removed.push(`${s.volume}/${s.name}`);
    }
    if (removed.length > 0) this.log.info({ removed }, 'copies of deleted volume snapshots removed');
  }

  /** Writes the outcome into a Pending snapshot's status (the same object: uid checked). */
  private async setStatus(s: VolumeSnapshot, st: Partial<VolumeSnapshotStatus>): Promise<void> {
    await this.o.resources.mutate('VolumeSnapshot', s.metadata.name, s.metadata.tenant, (x) => {
      if (x.metadata.uid !== s.metadata.uid || x.status.phase !== 'Pending') return undefined;
      const next: VolumeSnapshotStatus = { ...x.status, ...st };
      for (const k of Object.keys(next) as (keyof VolumeSnapshotStatus)[]) if (next[k] === undefined) delete next[k];
      if (JSON.stringify(next) === JSON.stringify(x.status)) return undefined;
      x.status = next;
      return x;
    });
  }
}
