/**
 * The guest's volumes and file sets. Volumes are hot-plugged virtio-blk disks the host names by
 * their serial; the guest mounts them (ext4, nosuid, nodev) under `<state>/volumes/<id>` for
 * containers to bind. File sets (secrets, configs) are small files the host sends; they live on
 * the guest's tmpfs under `<state>/files/<containerId>/<set>` and are replaced atomically the
 * way Kubernetes does it: a `..data` symlink swapped to a new generation directory, with one
 * `key -> ..data/key` link per file, so a reader never sees half an update.
 */
import { mkdir, readdir, readFile, readlink, realpath, rename, rm, rmdir, symlink, writeFile } from 'node:fs/promises';
import { basename, join, resolve as resolvePath } from 'node:path';
import { run as runCmd } from '../proc/run.js';
import type { WireMount, WireVolume } from './protocol.js';
import { SupervisorError } from './supervisor.js';

/** Where the guest looks for block devices (tests never boot a VM to get here). */
const SYS_BLOCK = '/sys/block';
const PCI_SLOTS = '/sys/bus/pci/slots';

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The block device (`vdX`) whose virtio serial is `serial`, if present. */
export async function findBySerial(serial: string, sysBlock = SYS_BLOCK): Promise<string | undefined> {
  let names: string[];
  try {
    names = await readdir(sysBlock);
  } catch {
    return undefined;
  }
  for (const n of names.filter((x) => x.startsWith('vd'))) {
    if ((await readOptional(join(sysBlock, n, 'serial')))?.trim() === serial) return n;
  }
  return undefined;
}

/** Mount points (field 2) -> sources (field 1) of /proc/self/mounts. */
async function mountTable(): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const l of ((await readOptional('/proc/self/mounts')) ?? '').split('\n')) {
    const f = l.split(' ');
    if (f[0] !== undefined && f[1] !== undefined) out.set(f[1].replace(/\\040/g, ' '), f[0]);
  }
  return out;
}

interface Mounted {
  serial: string;
  readOnly: boolean;
}

/** The guest's mounted volumes and delivered file sets. One per agent. */
export class GuestVolumes {
  private readonly mounted = new Map<string, Mounted>();
  /** containerId -> volume ids its mounts use. */
  private readonly users = new Map<string, Set<string>>();

  constructor(
    private readonly stateDir: string,
    private readonly opts: { deviceTimeoutMs?: number; sysBlock?: string } = {},
  ) {}

  private get volumesDir(): string {
    return join(resolvePath(this.stateDir), 'volumes');
  }

  private filesDir(containerId: string): string {
    return join(resolvePath(this.stateDir), 'files', containerId);
  }

  /** Mounts the disk with `serial` at `<state>/volumes/<id>`, waiting for the device to appear. Idempotent. */
  async mount(volumeId: string, serial: string, readOnly: boolean): Promise<void> {
    const target = join(this.volumesDir, volumeId);
    const have = this.mounted.get(volumeId);
    if (have) {
      if (have.serial !== serial || have.readOnly !== readOnly) throw new SupervisorError('GUEST_E_EXISTS', `volume ${volumeId} is mounted from another disk or mode`);
      return;
    }
    const deadline = Date.now() + (this.opts.deviceTimeoutMs ?? 30_000);
    let dev: string | undefined;
    // The host acks its device_add before the guest's PCIe hot-plug has run (0.2-0.7 s under TCG).
    while ((dev = await findBySerial(serial, this.opts.sysBlock)) === undefined) {
      if (Date.now() > deadline) throw new SupervisorError('GUEST_E_NOT_FOUND', `no disk with serial ${serial} appeared`);
      await sleep(50);
    }
    await mkdir(target, { recursive: true, mode: 0o755 });
    const mounts = await mountTable();
    if (mounts.get(target) !== `/dev/${dev}`) {
      const r = await runCmd('mount', ['-t', 'ext4', '-o', `nosuid,nodev${readOnly ? ',ro' : ''}`, `/dev/${dev}`, target]);
      if (r.code !== 0) throw new SupervisorError('GUEST_E_START_FAILED', `mounting volume ${volumeId} (/dev/${dev}) failed: ${r.stderr.trim().slice(0, 500)}`);
    }
    this.mounted.set(volumeId, { serial, readOnly });
  }

  /** Unmounts a volume no container uses; with `eject`, powers its hot-plug slot off. Idempotent. */
  async unmount(volumeId: string, eject: boolean): Promise<void> {
    const using = [...this.users].filter(([, v]) => v.has(volumeId)).map(([c]) => c);
    if (using.length > 0) throw new SupervisorError('GUEST_E_BUSY', `volume ${volumeId} is used by ${using.join(', ')}`);
    const target = join(this.volumesDir, volumeId);
    const m = this.mounted.get(volumeId);
    if ((await mountTable()).has(target)) {
      const r = await runCmd('umount', [target]);
      if (r.code !== 0) throw new SupervisorError('GUEST_E_BUSY', `unmounting volume ${volumeId} failed: ${r.stderr.trim().slice(0, 500)}`);
    }
    await rmdir(target).catch(() => undefined);
    this.mounted.delete(volumeId);
    if (eject && m) await this.eject(m.serial);
  }

  /**
   * Powers off the PCIe slot of the disk: QEMU unplugs the device as soon as the guest turns
   * its slot off (no 5 s attention-button wait). A disk given at boot has no slot: nothing to do.
   */
  private async eject(serial: string): Promise<void> {
    const dev = await findBySerial(serial, this.opts.sysBlock);
    if (dev === undefined) return;
    const real = await realpath(join(this.opts.sysBlock ?? SYS_BLOCK, dev)).catch(() => '');
    const fn = real.split('/').filter((p) => /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(p)).pop();
    if (fn === undefined) return;
    const address = fn.slice(0, fn.lastIndexOf('.'));
    for (const slot of await readdir(PCI_SLOTS).catch(() => [] as string[])) {
      if ((await readOptional(join(PCI_SLOTS, slot, 'address')))?.trim() === address) {
        await writeFile(join(PCI_SLOTS, slot, 'power'), '0');
        return;
      }
    }
  }

  /** Mounted volumes and their users. */
  list(): WireVolume[] {
    return [...this.mounted].map(([volumeId, m]) => ({
      volumeId,
      serial: m.serial,
      readOnly: m.readOnly,
      users: [...this.users].filter(([, v]) => v.has(volumeId)).map(([c]) => c),
    }));
  }

  /**
   * Checks a run request's mounts and records which volumes the container uses. Sources must
   * be a mounted volume (or a path inside one) or one of this container's own file sets.
   */
  /** True when `source` lies in a mounted volume (not a file set). */
  isVolume(source: string): boolean {
    return source.startsWith(`${this.volumesDir}/`);
  }

  claim(containerId: string, mounts: readonly WireMount[]): void {
    const vols = new Set<string>();
    const files = this.filesDir(containerId);
    for (const m of mounts) {
      if (m.source.startsWith(`${this.volumesDir}/`)) {
        const id = m.source.slice(this.volumesDir.length + 1).split('/')[0] ?? '';
        const v = this.mounted.get(id);
        if (!v) throw new SupervisorError('GUEST_E_BAD_REQUEST', `mount source ${m.source}: volume ${id} is not mounted`);
        if (v.readOnly && !m.readOnly) throw new SupervisorError('GUEST_E_BAD_REQUEST', `mount source ${m.source}: volume ${id} is mounted read-only`);
        vols.add(id);
      } else if (!(m.source.startsWith(`${files}/`) && m.readOnly)) {
        throw new SupervisorError('GUEST_E_BAD_REQUEST', `mount source ${m.source} is neither a mounted volume nor a read-only file set of ${containerId}`);
      }
    }
    if (vols.size > 0) this.users.set(containerId, vols);
  }

  /** The container is gone: it no longer uses its volumes, and its file sets are removed. */
  async release(containerId: string): Promise<void> {
    this.users.delete(containerId);
    await rm(this.filesDir(containerId), { recursive: true, force: true });
  }

  /** Replaces a container's file set atomically (see the file comment). */
  async writeFiles(containerId: string, set: string, files: readonly { path: string; data: string; mode?: number }[]): Promise<string> {
    const dir = join(this.filesDir(containerId), set);
    await mkdir(dir, { recursive: true, mode: 0o755 });
    const old = await readlink(join(dir, '..data')).catch(() => undefined);
    const gen = `..${Date.now().toString(36)}.${Math.random().toString(36).slice(2, 8)}`;
    await mkdir(join(dir, gen), { mode: 0o755 });
    for (const f of files) await writeFile(join(dir, gen, f.path), Buffer.from(f.data, 'base64'), { mode: f.mode ?? 0o444 });
    await rm(join(dir, '..data_tmp'), { force: true }); // left by a write cut short
    await symlink(gen, join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    const keys = new Set(files.map((f) => f.path));
    for (const k of keys) await symlink(join('..data', k), join(dir, k)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e; // an existing key already points through ..data
    });
    for (const name of await readdir(dir)) {
      if (!name.startsWith('..') && !keys.has(name)) await rm(join(dir, name), { force: true });
    }
    if (old !== undefined && basename(old) !== gen) await rm(join(dir, basename(old)), { recursive: true, force: true });
    return dir;
  }
}
