/**
 * Per-host volumes for the host tiers (runc, runsc) and, as block devices, for VMs: each
 * volume is an ext4 filesystem in an image file, attached to a loop device and mounted at a
 * stable host directory when a container needs it. The size limit is the filesystem's own:
 * a container filling its volume gets ENOSPC from ext4 and the host's filesystem is untouched.
 *
 *   stateDir/volumes/state.json             what the store was asked for (written atomically)
 *   stateDir/volumes/.lock                  flock: one operation at a time, across processes
 *   stateDir/volumes/images/ID.img          the filesystem image (mode 0600)
 *   stateDir/volumes/mnt/ID/                where it is mounted on the host (nosuid, nodev)
 *   stateDir/volumes/snapshots/ID/SNAP.img  point-in-time copies
 *
 * The state file holds intent (`attachment`: none, host, or block = handed to a VM); the
 * kernel holds the truth (`losetup -j IMAGE`, /proc/self/mountinfo). Every operation writes
 * its intent first, then makes the kernel match it, idempotently, so a process killed at any
 * instant leaves something `recover` (or simply the same call again) completes or rolls back.
 * A volume is mounted on the host or handed out as a block device, never both: the two
 * would be two filesystems writing one image, i.e. corruption.
 *
 * Decisions (see README.md for the reasons): sparse images by default (`allocate: 'full'`
 * preallocates with fallocate); mounted nosuid,nodev but not noexec; loop devices with
 * direct I/O; snapshots are `cp --reflink=auto --sparse=always` of the image under fsfreeze,
 * or, for a volume in a VM, while the caller holds the VM paused; a volume made from a
 * snapshot is such a copy, made like a fresh volume (temporary file, rename).
 */
import { constants } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import { readFileIfExists, writeFileAtomic } from '../network/atomic-file.js';
import { withFileLock } from '../proc/file-lock.js';
import { CommandError, run, runOrThrow } from '../proc/run.js';

/** Volume and snapshot ids: one path component, as container ids (`CONTAINER_ID_PATTERN`). */
export const VOLUME_ID_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,63}$/;

/** The smallest volume (the Volume kind's minimum, 16Mi): ext4's journal and metadata need room. */
export const MIN_VOLUME_BYTES = 16 * 1024 * 1024;

/** ext4 block size of every volume: the page size, what databases' 4k/8k pages want. */
const BLOCK_SIZE = 4096;

/** Where a volume is: nowhere but its image, mounted on the host, or handed to a VM as a block device. */
export type Attachment = 'none' | 'host' | 'block';

/** What `ensure` is asked for. */
export interface VolumeRequest {
  /** The host's name for the volume (one path component, VOLUME_ID_PATTERN). */
  id: string;
  /** The owning tenant and the Volume object's name, kept to check that an id is not reused for another volume. */
  tenant: string;
  name: string;
  /** The filesystem's size; rounded up to a whole 4 KiB block; at least MIN_VOLUME_BYTES. */
  sizeBytes: number;
  /** `sparse` (default): blocks are taken from the host as written; `full`: reserved now (fallocate). */
  allocate?: 'sparse' | 'full';
  /**
   * Made as a copy of this snapshot (of volume `volume`, possibly gone since) instead of an
   * empty filesystem, then grown to `sizeBytes` when that is larger. Used only when the volume
   * is created: an existing volume is never rewritten from it.
   */
  source?: { volume: string; snapshot: string };
}

/**
 * How `snapshot` stops the writer of a volume handed to a VM: `pause` stops the VM holding it
 * (its vCPUs and, once QEMU has drained them, its disk requests), `resume` lets it go on. The
 * copy is then crash-consistent: what a power cut at that instant would leave (ext4's journal
 * makes it a clean filesystem once replayed), not a torn mix of two moments. `resume` is called
 * after every `pause` that returned, whether the copy worked or not; a `resume` that throws
 * makes the copy count as failed (it is not kept).
 */
export interface WriterPause {
  /**
   * Pauses the VM holding the image; resolves with the longest it may stay paused (a copy that
   * takes longer is abandoned: SnapshotPauseExceeded), or with undefined when no VM holds it
   * open (nothing to pause; `resume` then checks that none opened it meanwhile).
   */
  pause(): Promise<number | undefined>;
  resume(): Promise<void>;
}

/**
 * A snapshot of a volume in a VM abandoned because the copy took longer than the VM may be
 * paused (the host's filesystem could not reflink, and the data was too large to copy in
 * time). The VM was resumed and the partial copy removed.
 */
export class SnapshotPauseExceeded extends CarapaceError {
  constructor(id: string, maxPauseMs: number) {
    super('CARAPACE_E_VOLUME_BUSY', `volume ${id} is attached to a running VM, which may be paused for at most ${maxPauseMs} ms, and copying its image took longer (this host's filesystem cannot make instant reflink copies); stop the workload using it (the volume goes back to the host) and snapshot again, or keep volumes on XFS or btrfs`);
    this.name = 'SnapshotPauseExceeded';
  }
}

/** One volume as the store knows it. */
export interface VolumeInfo {
  id: string;
  tenant: string;
  name: string;
  sizeBytes: number;
  attachment: Attachment;
  /** The image file (for VMs: only through `imagePath`, which records the hand-out). */
  image: string;
  /** The host directory it is mounted at when `attachment` is `host`. */
  mountPath: string;
}

/** A volume's space: the filesystem's view (`used`, `total`) and what its image takes on the host. */
export interface VolumeUsage {
  usedBytes: number;
  totalBytes: number;
  /** Host disk blocks the (sparse) image occupies. */
  allocatedBytes: number;
}

/** One snapshot of a volume. */
export interface SnapshotInfo {
  name: string;
  /** The volume's size when it was taken. */
  sizeBytes: number;
  createdAt: string;
}

/** A snapshot found on the host, with the volume id it belongs to. */
export interface StoredSnapshot extends SnapshotInfo {
  volume: string;
}

/** What `recover` found and did. */
export interface RecoverReport {
  /** Volumes whose image is gone although the state says it was made (data lost: reported, never recreated silently). */
  missing: string[];
  /** Image files no state entry accounts for (left alone: only `gc` removes them). */
  orphans: string[];
  /** What had to be repaired, one line each (an interrupted create, a second loop device, a frozen filesystem, …). */
  repaired: string[];
}

/** Options of the store. */
export interface VolumeStoreOptions {
  /** The agent's state directory; the store keeps everything under `stateDir/volumes`. */
  stateDir: string;
  logger: Logger;
  /** How long an operation waits for another one (this or another process) to finish. Default 120 s. */
  lockTimeoutMs?: number;
}

interface Entry {
  tenant: string;
  name: string;
  sizeBytes: number;
  /** `creating` until the image is complete; `removing` once removal started; `ready` otherwise. */
  phase: 'creating' | 'ready' | 'removing';
  attachment: Attachment;
  /**
   * The image was handed to a VM since the host last checked it: the guest could write
   * anything into it, so it is checked with e2fsck before the host's kernel mounts it again.
   */
  guestWritten: boolean;
  createdAt: string;
}

interface StateFile {
  version: 1;
  volumes: Record<string, Entry>;
}

/** The ext4 superblock magic number, as statfs reports the type. */
const EXT4_SUPER_MAGIC = 0xef53;

/** Throws CARAPACE_E_VALIDATION for an id (or snapshot name) a path cannot safely be made from. */
export function validateVolumeId(id: string, field = 'id'): void {
  if (typeof id !== 'string' || !VOLUME_ID_PATTERN.test(id)) {
    throw new CarapaceError('CARAPACE_E_VALIDATION', `invalid ${field} ${JSON.stringify(id)}: must match ${VOLUME_ID_PATTERN.source}`, [
      { path: field, message: `must match ${VOLUME_ID_PATTERN.source}` },
    ]);
  }
}

/** Decodes the octal escapes of /proc/self/mountinfo (`\040` is a space). */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** Mount points and sources of this mount namespace, from /proc/self/mountinfo. */
async function mountTable(): Promise<{ target: string; source: string; fstype: string }[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: { target: string; source: string; fstype: string }[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 0 || f[4] === undefined) continue;
    out.push({ target: unescapeMountinfo(f[4]), fstype: f[dash + 1] ?? '', source: unescapeMountinfo(f[dash + 2] ?? '') });
  }
  return out;
}

/** fsync of a file or directory, so a following rename (or the rename itself) is durable. */
async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * The host's volumes. Every method takes the store's lock, so calls from several tasks or
 * processes (a restarted agent while the old one is dying) run one at a time; every method is
 * idempotent. Call `recover` once at start, before anything else, after a crash or not.
 */
export class VolumeStore {
  readonly root: string;
  private readonly log: Logger;
  private readonly lockTimeoutMs: number;

  constructor(opts: VolumeStoreOptions) {
    this.root = join(opts.stateDir, 'volumes');
    this.log = opts.logger.child({ component: 'volumes' });
    this.lockTimeoutMs = opts.lockTimeoutMs ?? 120_000;
  }

  /** The image file of volume `id` (a path only; nothing is checked or recorded). */
  imageFile(id: string): string {
    validateVolumeId(id);
    return join(this.root, 'images', `${id}.img`);
  }

  /** The host directory volume `id` is mounted at. */
  mountDir(id: string): string {
    validateVolumeId(id);
    return join(this.root, 'mnt', id);
  }

  private snapshotDir(id: string): string {
    return join(this.root, 'snapshots', id);
  }

  // ---------------------------------------------------------------------------------------
  // Operations

  /**
   * Makes volume `id` exist with at least `sizeBytes` (creating a fresh ext4 filesystem, or
   * growing an existing one, online when mounted). Idempotent; refuses (CARAPACE_E_ALREADY_EXISTS)
   * an id that belongs to another tenant or name, and shrinking (CARAPACE_E_VALIDATION).
   */
  async ensure(req: VolumeRequest): Promise<VolumeInfo> {
    validateVolumeId(req.id);
    if (req.source) {
      validateVolumeId(req.source.volume, 'source.volume');
      validateVolumeId(req.source.snapshot, 'source.snapshot');
    }
    if (!Number.isSafeInteger(req.sizeBytes) || req.sizeBytes < MIN_VOLUME_BYTES) {
      throw new CarapaceError('CARAPACE_E_VALIDATION', `volume size must be a whole number of bytes, at least ${MIN_VOLUME_BYTES}`, [{ path: 'sizeBytes', message: `must be at least ${MIN_VOLUME_BYTES}` }]);
    }
    for (const f of ['tenant', 'name'] as const) {
      if (typeof req[f] !== 'string' || req[f] === '' || req[f].length > 253) throw new CarapaceError('CARAPACE_E_VALIDATION', `invalid volume ${f}`, [{ path: f, message: 'must be 1 to 253 characters' }]);
    }
    const size = Math.ceil(req.sizeBytes / BLOCK_SIZE) * BLOCK_SIZE;
    return this.locked(async () => {
      const state = await this.readState();
      const cur = state.volumes[req.id];
      if (cur && (cur.tenant !== req.tenant || cur.name !== req.name)) {
        throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `volume id ${req.id} is already used by volume ${cur.tenant}/${cur.name}`);
      }
      if (cur?.phase === 'removing') await this.finishRemove(state, req.id);
      if (!cur || cur.phase !== 'ready') {
        await this.create(state, req, size);
      } else if (size < cur.sizeBytes) {
        throw new CarapaceError('CARAPACE_E_VALIDATION', `volume ${req.id} is ${cur.sizeBytes} bytes; shrinking a volume is not supported`, [{ path: 'sizeBytes', message: 'cannot shrink a volume' }]);
      } else if (size > cur.sizeBytes) {
        await this.grow(state, req.id, cur, size);
      }
      return this.info(req.id, this.entry(state, req.id));
    });
  }

  /**
   * Mounts volume `id` on the host (loop device, ext4, nosuid, nodev) and returns the
   * directory, for containers to bind. Idempotent: a mounted volume returns its directory.
   * Refused (CARAPACE_E_VOLUME_BUSY) while the volume is handed to a VM.
   */
  async mount(id: string): Promise<string> {
    validateVolumeId(id);
    return this.locked(async () => {
      const state = await this.readState();
      const e = this.entry(state, id);
      if (e.attachment === 'block') throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is attached to a VM as a block device; release it before mounting it on the host`);
      if (e.attachment !== 'host') {
        e.attachment = 'host';
        await this.writeState(state);
      }
      try {
        await this.mountNow(state, id, e);
      } catch (err) {
        // Nothing half-made stays: the intent goes back to `none` and the kernel with it.
        await this.unmountNow(id).catch((u: unknown) => this.log.warn({ volume: id, err: String(u) }, 'cleanup after a failed mount failed'));
        e.attachment = 'none';
        await this.writeState(state);
        throw err;
      }
      return this.mountDir(id);
    });
  }

  /**
   * Unmounts volume `id` from the host and detaches its loop device. Idempotent (an unknown
   * or unmounted volume is fine). Refused (CARAPACE_E_VOLUME_BUSY) while something still holds
   * the filesystem: a host process inside the directory, or a container's mount namespace
   * (its bind mount keeps the filesystem, so the loop device stays); the volume then stays
   * `host` and a later call finishes the job.
   */
  async unmount(id: string): Promise<void> {
    validateVolumeId(id);
    await this.locked(async () => {
      const state = await this.readState();
      const e = state.volumes[id];
      if (!e || e.attachment === 'block') return;
      try {
        await this.unmountNow(id);
      } catch (err) {
        // Still held (by a container): put the host's mount back, so the kernel keeps
        // matching the state (`host`, mounted once) and the volume stays usable here.
        await this.mountNow(state, id, e).catch((m: unknown) => this.log.warn({ volume: id, err: String(m) }, 'remounting a busy volume failed'));
        throw err;
      }
      e.attachment = 'none';
      await this.writeState(state);
    });
  }

  /**
   * Hands volume `id` out as a block device image (for a VM's virtio-blk) and records that
   * it is, so the host will not mount it until `releaseImage`. Refused
   * (CARAPACE_E_VOLUME_BUSY) while it is mounted on the host or any loop device holds it.
   */
  async imagePath(id: string): Promise<string> {
    validateVolumeId(id);
    return this.locked(async () => {
      const state = await this.readState();
      const e = this.entry(state, id);
      if (e.attachment === 'host') throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is mounted on the host; unmount it before attaching it to a VM`);
      const loops = await this.loopsOf(id);
      if (loops.length > 0) throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is still held by ${loops.join(', ')} (a container may still use it); unmount it first`);
      if (e.attachment !== 'block' || !e.guestWritten) {
        e.attachment = 'block';
        e.guestWritten = true;
        await this.writeState(state);
      }
      return this.imageFile(id);
    });
  }

  /** Records that the VM given volume `id` by `imagePath` no longer uses it (the caller detached it). Idempotent. */
  async releaseImage(id: string): Promise<void> {
    validateVolumeId(id);
    await this.locked(async () => {
      const state = await this.readState();
      const e = state.volumes[id];
      if (!e || e.attachment !== 'block') return;
      e.attachment = 'none';
      await this.writeState(state);
    });
  }

  /** The filesystem's used and total bytes (statfs when mounted, the superblock otherwise) and the image's allocation. */
  async usage(id: string): Promise<VolumeUsage> {
    validateVolumeId(id);
    return this.locked(async () => {
      this.entry(await this.readState(), id);
      const allocatedBytes = (await stat(this.imageFile(id))).blocks * 512;
      const dir = this.mountDir(id);
      if ((await mountTable()).some((m) => m.target === dir)) {
        const s = await statfs(dir);
        if (s.type !== EXT4_SUPER_MAGIC) throw new Error(`${dir} is mounted but not ext4 (statfs type ${s.type.toString(16)})`);
        return { usedBytes: (s.blocks - s.bfree) * s.bsize, totalBytes: s.blocks * s.bsize, allocatedBytes };
      }
      // Unmounted (or in a VM, where the superblock's counters lag behind the guest's view).
      const out = (await runOrThrow('dumpe2fs', ['-h', this.imageFile(id)])).stdout;
      const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(out)?.[1] ?? NaN);
      const blocks = field('Block count');
      const free = field('Free blocks');
      const bsize = field('Block size');
      if (![blocks, free, bsize].every(Number.isFinite)) throw new Error(`cannot read the superblock of volume ${id}`);
      // Like statfs's f_blocks, the total leaves out the filesystem's own overhead (journal,
      // inode tables) only approximately: dumpe2fs reports raw blocks.
      return { usedBytes: (blocks - free) * bsize, totalBytes: blocks * bsize, allocatedBytes };
    });
  }

  /**
   * Takes point-in-time copy `snap` of volume `id`. A mounted volume is frozen (fsfreeze)
   * for the copy, so the copy is a clean filesystem: writers block for that long (a reflink
   * copy on XFS/btrfs is instant; elsewhere a sparse copy of the data written). A volume
   * handed to a VM is copied while `opts.whileAttached` holds the VM paused (crash-consistent:
   * only the guest could flush its own cache), for at most the time its `pause` allows
   * (SnapshotPauseExceeded past it); without it, refused (CARAPACE_E_VOLUME_BUSY). Idempotent:
   * an existing snapshot of that name is kept as it is.
   */
  async snapshot(id: string, snap: string, opts: { whileAttached?: WriterPause } = {}): Promise<SnapshotInfo> {
    validateVolumeId(id);
    validateVolumeId(snap, 'snapshot');
    return this.locked(async () => {
      const state = await this.readState();
      const e = this.entry(state, id);
      const vm = opts.whileAttached;
      if (e.attachment === 'block' && !vm) throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is attached to a VM; only a paused VM's volume can be copied`);
      const dir = this.snapshotDir(id);
      const file = join(dir, `${snap}.img`);
      const done = await this.snapshotInfo(file, snap);
      if (done) return done;
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const tmp = `${file}.tmp`;
      const mnt = this.mountDir(id);
      const mounted = (await mountTable()).some((m) => m.target === mnt);
      if (e.attachment === 'block' && vm) {
        // The lock is held: nothing of this store hands the image out or takes it back meanwhile.
        const budget = await vm.pause();
        try {
          await this.copyImage(this.imageFile(id), tmp, budget);
        } catch (err) {
          await rm(tmp, { force: true });
          if (budget !== undefined && err instanceof CommandError && err.timedOut) throw new SnapshotPauseExceeded(id, budget);
          throw err;
        } finally {
          // A failed resume leaves nothing half-made behind (the copy is not kept).
          await vm.resume().catch(async (err: unknown) => {
            await rm(tmp, { force: true });
            throw err;
          });
        }
      } else {
        if (mounted) await runOrThrow('fsfreeze', ['--freeze', mnt]);
        try {
          await this.copyImage(this.imageFile(id), tmp);
        } finally {
          if (mounted) await runOrThrow('fsfreeze', ['--unfreeze', mnt]);
        }
      }
      await this.commitFile(tmp, file);
      this.log.info({ volume: id, snapshot: snap, frozen: mounted, paused: e.attachment === 'block' }, 'snapshot taken');
      const info = await this.snapshotInfo(file, snap);
      if (!info) throw new Error(`snapshot ${snap} of volume ${id} vanished after it was made`);
      return info;
    });
  }

  /**
   * Replaces volume `id`'s content with snapshot `snap` (atomically: a reader of the image
   * sees the old one or the restored one). The volume must be detached: refused
   * (CARAPACE_E_VOLUME_BUSY) while mounted or handed to a VM.
   */
  async restore(id: string, snap: string): Promise<void> {
    validateVolumeId(id);
    validateVolumeId(snap, 'snapshot');
    await this.locked(async () => {
      const state = await this.readState();
      const e = this.entry(state, id);
      const loops = await this.loopsOf(id);
      if (e.attachment !== 'none' || loops.length > 0) throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is ${e.attachment === 'block' ? 'attached to a VM' : 'mounted'}; unmount it before restoring a snapshot`);
      const file = join(this.snapshotDir(id), `${snap}.img`);
      const info = await this.snapshotInfo(file, snap);
      if (!info) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `volume ${id} has no snapshot ${snap}`);
      const img = this.imageFile(id);
      await this.copyImage(file, `${img}.tmp`);
      await this.commitFile(`${img}.tmp`, img);
      if (e.sizeBytes !== info.sizeBytes) {
        e.sizeBytes = info.sizeBytes;
        await this.writeState(state);
      }
      this.log.info({ volume: id, snapshot: snap }, 'snapshot restored');
    });
  }

  /** Volume `id`'s snapshots, by name. */
  async listSnapshots(id: string): Promise<SnapshotInfo[]> {
    validateVolumeId(id);
    return this.locked(async () => {
      this.entry(await this.readState(), id);
      const names = (await readdir(this.snapshotDir(id)).catch(() => [] as string[])).filter((f) => f.endsWith('.img')).map((f) => f.slice(0, -4)).sort();
      const out: SnapshotInfo[] = [];
      for (const n of names) {
        const i = await this.snapshotInfo(join(this.snapshotDir(id), `${n}.img`), n);
        if (i) out.push(i);
      }
      return out;
    });
  }

  /**
   * Every snapshot on this host, of any volume (also of one whose entry is gone: its snapshot
   * directory outlives it until `gc`), sorted by volume and name.
   */
  async allSnapshots(): Promise<StoredSnapshot[]> {
    return this.locked(async () => {
      const out: StoredSnapshot[] = [];
      for (const volume of (await this.listDir(join(this.root, 'snapshots'))).sort()) {
        if (!VOLUME_ID_PATTERN.test(volume)) continue;
        for (const f of (await this.listDir(this.snapshotDir(volume))).sort()) {
          if (!f.endsWith('.img')) continue;
          const i = await this.snapshotInfo(join(this.snapshotDir(volume), f), f.slice(0, -4));
          if (i) out.push({ ...i, volume });
        }
      }
      return out;
    });
  }

  /** Deletes snapshot `snap` of volume `id`. Idempotent. */
  async deleteSnapshot(id: string, snap: string): Promise<void> {
    validateVolumeId(id);
    validateVolumeId(snap, 'snapshot');
    await this.locked(() => rm(join(this.snapshotDir(id), `${snap}.img`), { force: true }));
  }

  /**
   * Deletes volume `id`, its data and its snapshots. Idempotent (unknown is fine). Refused
   * (CARAPACE_E_VOLUME_BUSY) while it is mounted or handed to a VM.
   */
  async remove(id: string): Promise<void> {
    validateVolumeId(id);
    await this.locked(async () => {
      const state = await this.readState();
      const e = state.volumes[id];
      if (!e) return;
      if (e.attachment !== 'none' || (await this.loopsOf(id)).length > 0) {
        throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is ${e.attachment === 'block' ? 'attached to a VM' : 'mounted'}; unmount it before deleting it`);
      }
      await this.finishRemove(state, id);
    });
  }

  /**
   * Every volume this store holds, made and not being removed (a creation or removal cut
   * short by a crash is `recover`'s to finish; it is not listed meanwhile).
   */
  async list(): Promise<VolumeInfo[]> {
    return this.locked(async () => {
      const state = await this.readState();
      return Object.entries(state.volumes)
        .filter(([, e]) => e.phase === 'ready')
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([id, e]) => this.info(id, e));
    });
  }

  /**
   * Brings the kernel and the files back in line with the state after a crash at any point:
   * finishes or rolls back interrupted creates and removals, deletes temporary copies,
   * thaws filesystems left frozen, mounts what should be mounted (once), unmounts and
   * detaches what should not be, and detaches second loop devices of one image. Idempotent.
   */
  async recover(): Promise<RecoverReport> {
    return this.locked(async () => {
      const report: RecoverReport = { missing: [], orphans: [], repaired: [] };
      const state = await this.readState();
      // Temporary files of interrupted state writes, creates, restores and snapshots.
      for (const f of await this.listDir(this.root)) if (/^state\.json\.\d+\.tmp$/.test(f)) await rm(join(this.root, f), { force: true });
      for (const f of await this.listDir(join(this.root, 'images'))) {
        if (f.endsWith('.tmp')) {
          await rm(join(this.root, 'images', f), { force: true });
          report.repaired.push(`removed temporary image ${f}`);
        }
      }
      for (const id of await this.listDir(join(this.root, 'snapshots'))) {
        for (const f of await this.listDir(join(this.root, 'snapshots', id))) {
          if (f.endsWith('.tmp')) {
            await rm(join(this.root, 'snapshots', id, f), { force: true });
            report.repaired.push(`removed temporary snapshot ${id}/${f}`);
          }
        }
      }
      const mounts = await mountTable();
      for (const [id, e] of Object.entries(state.volumes)) {
        if (e.phase === 'creating') {
          await this.unmountNow(id).catch(() => undefined);
          await rm(this.imageFile(id), { force: true });
          delete state.volumes[id];
          await this.writeState(state);
          report.repaired.push(`rolled back the interrupted creation of ${id}`);
          continue;
        }
        if (e.phase === 'removing') {
          await this.finishRemove(state, id);
          report.repaired.push(`finished the interrupted removal of ${id}`);
          continue;
        }
        const imageThere = await stat(this.imageFile(id)).then(() => true, () => false);
        if (!imageThere) {
          report.missing.push(id);
          this.log.error({ volume: id }, 'volume image missing');
          continue;
        }
        const mnt = this.mountDir(id);
        const mountedHere = mounts.filter((m) => m.target === mnt).length;
        // A snapshot killed between freeze and thaw leaves writers blocked for good.
        if (mountedHere > 0) {
          const r = await run('fsfreeze', ['--unfreeze', mnt]);
          if (r.code === 0) report.repaired.push(`thawed ${id}, left frozen by an interrupted snapshot`);
        }
        const loopsBefore = await this.loopsOf(id);
        if (e.attachment === 'host') {
          // Mounting was asked for (maybe by a call killed halfway): finish it.
          try {
            await this.mountNow(state, id, e);
            if (mountedHere !== 1 || loopsBefore.length !== 1) report.repaired.push(`mounted ${id} once (found ${mountedHere} mounts, ${loopsBefore.length} loop devices)`);
          } catch (err) {
            report.repaired.push(`could not mount ${id}: ${String(err)}`);
            this.log.error({ volume: id, err: String(err) }, 'volume could not be mounted again');
          }
        } else if (mountedHere > 0 || loopsBefore.length > 0) {
          try {
            await this.unmountNow(id);
            report.repaired.push(`unmounted ${id} (${e.attachment === 'block' ? 'handed to a VM' : 'not asked for'})`);
          } catch (err) {
            report.repaired.push(`could not unmount ${id}: ${String(err)}`);
          }
        }
      }
      const known = new Set(Object.keys(state.volumes));
      for (const f of await this.listDir(join(this.root, 'images'))) {
        if (f.endsWith('.img') && !known.has(f.slice(0, -4))) report.orphans.push(f.slice(0, -4));
      }
      // Mount directories of volumes that no longer exist (a removal interrupted before its entry went).
      for (const d of await this.listDir(join(this.root, 'mnt'))) {
        if (!known.has(d) && !mounts.some((m) => m.target === join(this.root, 'mnt', d))) await rmdir(join(this.root, 'mnt', d)).catch(() => undefined);
      }
      if (report.repaired.length > 0 || report.missing.length > 0 || report.orphans.length > 0) this.log.info(report, 'volumes recovered');
      return report;
    });
  }

  /**
   * Removes every volume (and orphan image) not in `keep`: unmounted first when mounted on
   * the host. Volumes handed to a VM, or still held by a container, are left and returned
   * as `busy` (the caller releases them first). `listedAt`: when the caller started reading
   * the list `keep` comes from; a volume made since then (its object created after the read
   * began, e.g. restored from a snapshot meanwhile) is not in it and is kept too.
   */
  async gc(keep: ReadonlySet<string>, listedAt?: Date): Promise<{ removed: string[]; busy: string[] }> {
    return this.locked(async () => {
      const out = { removed: [] as string[], busy: [] as string[] };
      const state = await this.readState();
      for (const [id, e] of Object.entries(state.volumes)) {
        if (keep.has(id)) continue;
        if (listedAt && Date.parse(e.createdAt) >= listedAt.getTime()) continue;
        if (e.attachment === 'block') {
          out.busy.push(id);
          continue;
        }
        try {
          await this.unmountNow(id);
        } catch {
          out.busy.push(id);
          continue;
        }
        e.attachment = 'none';
        await this.finishRemove(state, id);
        out.removed.push(id);
      }
      for (const f of await this.listDir(join(this.root, 'images'))) {
        const id = f.slice(0, -4);
        if (f.endsWith('.img') && !state.volumes[id] && !keep.has(id) && (await this.loopsOf(id)).length === 0) {
          await rm(join(this.root, 'images', f), { force: true });
          await rm(this.snapshotDir(id), { recursive: true, force: true });
          out.removed.push(id);
        }
      }
      return out;
    });
  }

  // ---------------------------------------------------------------------------------------
  // Helpers (called with the lock held)

  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
    return withFileLock(join(this.root, '.lock'), fn, { timeoutMs: this.lockTimeoutMs });
  }

  private async readState(): Promise<StateFile> {
    const text = await readFileIfExists(join(this.root, 'state.json'));
    if (text === undefined) return { version: 1, volumes: {} };
    return JSON.parse(text) as StateFile; // `as`: written only by writeState
  }

  private writeState(state: StateFile): Promise<void> {
    return writeFileAtomic(join(this.root, 'state.json'), `${JSON.stringify(state, null, 1)}\n`);
  }

  private entry(state: StateFile, id: string): Entry {
    const e = state.volumes[id];
    if (!e || e.phase !== 'ready') throw new CarapaceError('CARAPACE_E_NOT_FOUND', `volume ${id} does not exist on this host`);
    return e;
  }

  private info(id: string, e: Entry): VolumeInfo {
    return { id, tenant: e.tenant, name: e.name, sizeBytes: e.sizeBytes, attachment: e.attachment, image: this.imageFile(id), mountPath: this.mountDir(id) };
  }

  private async listDir(dir: string): Promise<string[]> {
    try {
      return await readdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return []; // `as`: fs errors are ErrnoExceptions
      throw e;
    }
  }

  /** Loop devices backed by volume `id`'s image (by its inode: what the kernel has open). */
  private async loopsOf(id: string): Promise<string[]> {
    const out = (await runOrThrow('losetup', ['--list', '--json', '--output', 'NAME', '--associated', this.imageFile(id)])).stdout;
    if (out.trim() === '') return [];
    const parsed = JSON.parse(out) as { loopdevices?: { name: string }[] }; // `as`: losetup's documented JSON shape
    return (parsed.loopdevices ?? []).map((d) => d.name);
  }

  private async create(state: StateFile, req: VolumeRequest, size: number): Promise<void> {
    const { id } = req;
    // From a snapshot: checked before anything is recorded, so a missing one leaves nothing.
    const from = req.source ? join(this.snapshotDir(req.source.volume), `${req.source.snapshot}.img`) : undefined;
    const snap = from && req.source ? await this.snapshotInfo(from, req.source.snapshot) : undefined;
    if (req.source && !snap) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `snapshot ${req.source.snapshot} of volume ${req.source.volume} is not on this host (deleted?); volume ${id} cannot be made from it`);
    if (snap && snap.sizeBytes > size) {
      throw new CarapaceError('CARAPACE_E_VALIDATION', `volume ${id} (${size} bytes) is smaller than snapshot ${snap.name} (${snap.sizeBytes} bytes)`, [{ path: 'sizeBytes', message: `must be at least ${snap.sizeBytes}` }]);
    }
    // A copy may come from a VM's image (crash-consistent, its journal to replay) and holds
    // whatever a guest wrote: checked with e2fsck before the host's kernel first mounts it.
    state.volumes[id] = { tenant: req.tenant, name: req.name, sizeBytes: size, phase: 'creating', attachment: 'none', guestWritten: snap !== undefined, createdAt: new Date().toISOString() };
    await this.writeState(state);
    await mkdir(join(this.root, 'images'), { recursive: true, mode: 0o700 });
    await this.unmountNow(id).catch(() => undefined); // a previous attempt's leftovers, if any
    const img = this.imageFile(id);
    const tmp = `${img}.tmp`;
    await rm(tmp, { force: true });
    if (from && snap) {
      // Crash-safe like a fresh one: the copy is made as IMAGE.tmp and renamed when whole;
      // `recover` rolls back a creation that was cut short.
      await this.copyImage(from, tmp);
      if (size > snap.sizeBytes) {
        const fh = await open(tmp, 'r+');
        try {
          await fh.truncate(size);
        } finally {
          await fh.close();
        }
        await this.fsck(tmp);
        await runOrThrow('resize2fs', [tmp], { timeoutMs: 600_000 });
      }
      await this.commitFile(tmp, img);
      const e = state.volumes[id];
      if (e) e.phase = 'ready';
      await this.writeState(state);
      this.log.info({ volume: id, tenant: req.tenant, name: req.name, sizeBytes: size, fromVolume: req.source?.volume, fromSnapshot: snap.name }, 'volume created from a snapshot');
      return;
    }
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.truncate(size);
    } finally {
      await fh.close();
    }
    const full = req.allocate === 'full';
    if (full) await runOrThrow('fallocate', ['--length', String(size), tmp], { timeoutMs: 600_000 });
    // -b 4096: page-sized blocks (mke2fs would pick 1 KiB for small filesystems, slow for
    // databases). -m 0: no blocks reserved for root; the volume's user is whoever the
    // container runs as, and the size the user asked for is the size they get.
    // Sparse: the default discard punches the (already empty) file and lets mke2fs skip
    // zeroing inode tables; full: nodiscard keeps the preallocation, and the tables are
    // zeroed now rather than by a kernel thread after the first mount.
    const ext = full ? ['-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0'] : [];
    await runOrThrow('mkfs.ext4', ['-q', '-F', '-b', String(BLOCK_SIZE), '-m', '0', ...ext, '-L', id.slice(0, 16), tmp], { timeoutMs: 600_000 });
    await this.commitFile(tmp, img);
    const e = state.volumes[id];
    if (e) e.phase = 'ready';
    await this.writeState(state);
    this.log.info({ volume: id, tenant: req.tenant, name: req.name, sizeBytes: size, allocate: req.allocate ?? 'sparse' }, 'volume created');
  }

  /** Grows the image and its filesystem to `size` (online when mounted); the state follows once it is done. */
  private async grow(state: StateFile, id: string, e: Entry, size: number): Promise<void> {
    if (e.attachment === 'block') throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is attached to a VM; detach it to resize it`);
    const img = this.imageFile(id);
    const fh = await open(img, 'r+');
    try {
      if ((await fh.stat()).size < size) await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    const loops = await this.loopsOf(id);
    for (const dev of loops) await runOrThrow('losetup', ['--set-capacity', dev]);
    const mnt = this.mountDir(id);
    const mounted = (await mountTable()).find((m) => m.target === mnt);
    if (mounted) {
      // Online growth is the kernel's (EXT4_IOC_RESIZE_FS), which wants CAP_SYS_RESOURCE.
      const r = await run('resize2fs', [mounted.source], { timeoutMs: 600_000 });
      if (r.code !== 0) {
        const why = r.stderr.trim().split('\n').pop() ?? `exit ${r.code}`;
        throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} cannot grow while mounted here (${why}); unmount it and ensure the size again`);
      }
    } else {
      await this.fsck(img);
      await runOrThrow('resize2fs', [img], { timeoutMs: 600_000 });
    }
    e.sizeBytes = size;
    await this.writeState(state);
    this.log.info({ volume: id, sizeBytes: size, online: Boolean(mounted) }, 'volume grown');
  }

  /** e2fsck -f -p: repairs what is safe to repair; fails on what needs a human. */
  private async fsck(img: string): Promise<void> {
    const r = await run('e2fsck', ['-f', '-p', img], { timeoutMs: 600_000 });
    // 0: clean, 1: errors corrected; anything else is damage we will not mount.
    if (r.code !== 0 && r.code !== 1) throw new Error(`the filesystem of ${img} is damaged (e2fsck exit ${r.code}): ${r.stdout.trim().split('\n').slice(-3).join(' ')}`);
  }

  /** Makes the kernel show volume `id` mounted exactly once at its directory, on one loop device. */
  private async mountNow(state: StateFile, id: string, e: Entry): Promise<void> {
    const mnt = this.mountDir(id);
    const img = this.imageFile(id);
    let here = (await mountTable()).filter((m) => m.target === mnt);
    // Stacked mounts (a mount repeated by a process killed before it recorded it): keep one.
    while (here.length > 1) {
      await runOrThrow('umount', [mnt]);
      here = (await mountTable()).filter((m) => m.target === mnt);
    }
    let dev = here[0]?.source;
    if (dev === undefined) {
      if (e.guestWritten) {
        // A guest had the raw image: check it before the host's kernel parses it.
        await this.fsck(img);
        e.guestWritten = false;
        await this.writeState(state);
      }
      // --nooverlap reuses a loop device already on this image (a previous attempt's).
      let r = await run('losetup', ['--find', '--show', '--nooverlap', '--direct-io=on', img]);
      if (r.code !== 0 || r.stdout.trim() === '') r = await run('losetup', ['--find', '--show', '--nooverlap', img]); // no O_DIRECT on this filesystem
      if (r.code !== 0) throw new CommandError({ command: `losetup --find --show ${img}`, exitCode: r.code, stderr: r.stderr });
      dev = r.stdout.trim();
      await mkdir(mnt, { recursive: true, mode: 0o700 });
      // nosuid,nodev: what a tenant writes (a setuid binary, a device node) stays inert on
      // the host; errors=remount-ro: a damaged filesystem stops taking writes.
      await runOrThrow('mount', ['-t', 'ext4', '-o', 'nosuid,nodev,errors=remount-ro', dev, mnt]);
    }
    // Second loop devices on the image (an attempt killed between losetup and mount).
    for (const other of await this.loopsOf(id)) if (other !== dev) await run('losetup', ['--detach', other]);
  }

  /**
   * Unmounts volume `id` from its directory (every stacked mount) and detaches its loop
   * devices; throws CARAPACE_E_VOLUME_BUSY when the filesystem is still held.
   */
  private async unmountNow(id: string): Promise<void> {
    const mnt = this.mountDir(id);
    for (;;) {
      if (!(await mountTable()).some((m) => m.target === mnt)) break;
      const r = await run('umount', [mnt]);
      if (r.code !== 0) {
        if (/busy/i.test(r.stderr)) throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is in use on the host (${r.stderr.trim()})`);
        throw new CommandError({ command: `umount ${mnt}`, exitCode: r.code, stderr: r.stderr });
      }
    }
    // A loop device whose filesystem is still mounted elsewhere (a container's mount
    // namespace) is only marked to detach itself later: it stays listed, which is the sign.
    for (const dev of await this.loopsOf(id)) await run('losetup', ['--detach', dev]);
    const left = await this.loopsOf(id);
    if (left.length > 0) throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume ${id} is still in use (its filesystem is mounted elsewhere, e.g. in a running container) on ${left.join(', ')}`);
    await rmdir(mnt).catch(() => undefined);
  }

  private async finishRemove(state: StateFile, id: string): Promise<void> {
    const e = state.volumes[id];
    if (e && e.phase !== 'removing') {
      e.phase = 'removing';
      await this.writeState(state);
    }
    await rm(this.snapshotDir(id), { recursive: true, force: true });
    await rm(this.imageFile(id), { force: true });
    await rm(`${this.imageFile(id)}.tmp`, { force: true });
    await rmdir(this.mountDir(id)).catch(() => undefined);
    delete state.volumes[id];
    await this.writeState(state);
    this.log.info({ volume: id }, 'volume removed');
  }

  /**
   * Copies an image, keeping it sparse: a reflink (shared extents, instant, on XFS and
   * btrfs) when the host filesystem can, else a copy of the allocated extents only.
   */
  private async copyImage(from: string, to: string, timeoutMs?: number): Promise<void> {
    await rm(to, { force: true });
    await runOrThrow('cp', ['--reflink=auto', '--sparse=always', from, to], { timeoutMs: timeoutMs ?? 3_600_000 });
  }

  /** fsync `tmp`, rename it to `file`, fsync the directory: the file is whole or absent, and durable. */
  private async commitFile(tmp: string, file: string): Promise<void> {
    await fsyncPath(tmp);
    await rename(tmp, file);
    await fsyncPath(join(file, '..'));
  }

  private async snapshotInfo(file: string, name: string): Promise<SnapshotInfo | undefined> {
    try {
      const s = await stat(file);
      return { name, sizeBytes: s.size, createdAt: s.mtime.toISOString() };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // `as`: fs errors are ErrnoExceptions
      throw e;
    }
  }
}
