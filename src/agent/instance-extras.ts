/**
 * What a host-run container (runc, runsc) gets besides its image: its volumes, mounted from
 * this host's VolumeStore (ext4 images on loop devices), its Secrets' and Configs' files,
 * written by SecretFiles on a tmpfs, and its `envFrom` values. The agent asks for them right
 * before a start and gives them back when the container goes.
 *
 * The material (decrypted secret values) comes from where this agent's store access allows:
 * the control plane's keyring in the all-in-one, the agent API for a joined host. It is never
 * logged, and never written anywhere but the tmpfs.
 *
 * The storage (a tmpfs, loop devices) is made on first use, so a host whose workloads use
 * none of it gets none.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { Resources } from '../core/resources.js';
import type { InstanceMaterial, MaterialMount } from '../core/secrets.js';
import { CarapaceError } from '../model/errors.js';
import type { Instance } from '../model/objects.js';
import type { InstanceMount, Volume } from '../model/volumes.js';
import { referencesOf } from '../model/secrets.js';
import type { HostMount } from '../runtime/driver.js';
import { diskSerial } from '../vm/disks.js';
import type { VmManager } from '../vm/qemu.js';
import type { CellFileSet, CellRuntime, CellStartExtras } from './cell-runtime.js';
import type { SecretFiles } from '../storage/secret-files.js';
import type { VolumeStore } from '../storage/volume-store.js';
import { volumeRequest } from './volume-snapshots.js';

/** Where an instance's decrypted Secret and Config data comes from. */
export type MaterialSource = (inst: Instance) => Promise<InstanceMaterial>;

export interface InstanceExtrasOptions {
  hostName: string;
  resources: Resources;
  logger: Logger;
  volumes: VolumeStore;
  files: SecretFiles;
  /** Absent: instances that use Secrets or Configs cannot start here (a clear error says why). */
  material?: MaterialSource;
  /** The host's VMs: a volume handed to a cell is given back to the host only once no VM has it attached. */
  vms?: VmManager;
  /** See HANDOUT_GRACE_MS (the default). */
  handOutGraceMs?: number;
}

/** What a start of a host-run container gets, and what its teardown gives back. */
export interface HostExtras {
  mounts: HostMount[];
  /** The `envFrom` variables (names never clash with `env`: refused at apply). */
  env: Record<string, string>;
  /** The VolumeStore ids it mounts (each Volume's uid). */
  volumeIds: string[];
  /** The content version of the Secrets and Configs it got (InstanceMaterial.version), when it uses any. */
  materialVersion?: string;
}

/** What a start of a container in a cell gets (CellRuntime.start's extras), and what its teardown gives back. */
export interface CellExtras {
  extras: CellStartExtras;
  env: Record<string, string>;
  volumeIds: string[];
  materialVersion?: string;
}

/** A Secret's or Config's files as a cell's file set. */
function cellFileSet(m: MaterialMount): CellFileSet {
  return { set: setName(m.kind, m.name), mountPath: m.mountPath, files: Object.entries(m.files).map(([path, data]) => ({ path, data: Buffer.from(data) })) };
}

/**
 * A volume's used bytes are written again when they enter another step of this size: the
 * stored value is never off by a step or more (a threshold on the difference instead could
 * leave it just under the truth forever), and a volume whose use moves by a few blocks costs
 * no write.
 */
const USED_BYTES_STEP = 1024 * 1024;

/** The set name of a Secret's or Config's files (one directory per instance and object). */
function setName(kind: 'secret' | 'config', name: string): string {
  return `${kind}.${name}`;
}

/**
 * How long a volume handed to a VM counts as claimed without the VM having it open: the time a
 * start may take between the hand-out and QEMU's attach (a cell still booting, a machine's
 * launch). Past it, a volume no VM has open and no container uses is given back by the sweep.
 */
const HANDOUT_GRACE_MS = 5 * 60_000;

export class InstanceExtras {
  private readonly log: Logger;
  private filesReady: Promise<unknown> | undefined;
  /** When each volume was last handed to a VM by this process (see HANDOUT_GRACE_MS). */
  private readonly handedAt = new Map<string, number>();

  constructor(private readonly o: InstanceExtrasOptions) {
    this.log = o.logger.child({ component: 'instance-extras' });
  }

  /**
   * Mounts the instance's volumes (each must be bound to this host) and writes its secret and
   * config files; returns the bind mounts and env. Throws a CarapaceError that says what is
   * missing (the agent reports it as the start's failure and retries with backoff).
   */
  async forHost(inst: Instance): Promise<HostExtras> {
    const mounts: HostMount[] = [];
    const volumeIds: string[] = [];
    for (const { id, mount } of await this.volumesOf(inst)) {
      const dir = await this.o.volumes.mount(id);
      mounts.push({ kind: 'bind', source: dir, destination: mount.mountPath, readOnly: mount.readOnly, volume: true });
      volumeIds.push(id);
    }
    const material = await this.materialOf(inst);
    if (material && material.mounts.length > 0) {
      // A failed init (a mount refused) is tried again at the next start.
      this.filesReady ??= this.o.files.init().catch((e: unknown) => {
        this.filesReady = undefined;
        throw e;
      });
      await this.filesReady;
    }
    for (const m of material?.mounts ?? []) {
      const dir = await this.o.files.write(inst.metadata.uid, setName(m.kind, m.name), m.files);
      mounts.push({ kind: 'bind', source: dir, destination: m.mountPath, readOnly: true });
    }
    // Parents before children (a volume at /data and a config at /data/conf): the runtime
    // mounts in order.
    mounts.sort((a, b) => a.destination.split('/').length - b.destination.split('/').length);
    return { mounts, env: material?.env ?? {}, volumeIds, ...(material ? { materialVersion: material.version } : {}) };
  }

  /**
   * The same for a container in a cell: each volume's image is handed out to the VM (the host
   * does not mount it meanwhile; the cell hot-plugs it), and the files go into the guest's
   * tmpfs (CellRuntime does both).
   */
  async forCell(inst: Instance): Promise<CellExtras> {
    const volumes: NonNullable<CellStartExtras['volumes']> = [];
    const volumeIds: string[] = [];
    for (const { id, mount } of await this.volumesOf(inst)) {
      volumes.push({ id, image: await this.handOut(id), mountPath: mount.mountPath, readOnly: mount.readOnly });
      volumeIds.push(id);
    }
    const material = await this.materialOf(inst);
    const files = (material?.mounts ?? []).map(cellFileSet);
    return { extras: { ...(volumes.length > 0 ? { volumes } : {}), ...(files.length > 0 ? { files } : {}) }, env: material?.env ?? {}, volumeIds, ...(material ? { materialVersion: material.version } : {}) };
  }

  /**
   * Rewrites the files of a running container's `update` Secrets and Configs when their content
   * changed since `version` (its last material version); returns the new version, or
   * undefined when nothing changed. Each set is swapped whole (the container reads the old
   * files or the new ones, never a mix). `restart` objects are left: their change re-creates
   * the container (the control plane bumps the instance's spec).
   */
  async refresh(inst: Instance, version: string, cell?: { runtime: CellRuntime; containerId: string }): Promise<string | undefined> {
    const material = await this.materialOf(inst);
    if (!material || material.version === version) return undefined;
    const sets = material.mounts.filter((m) => m.onChange === 'update');
    if (cell) await cell.runtime.updateFiles(cell.containerId, sets.map(cellFileSet));
    else for (const m of sets) await this.o.files.write(inst.metadata.uid, setName(m.kind, m.name), m.files);
    this.log.info({ instance: `${inst.metadata.tenant ?? ''}/${inst.metadata.name}`, sets: sets.map((m) => setName(m.kind, m.name)) }, 'secret and config files updated');
    return material.version;
  }

  /** The image of a machine's volume (`spec.disks`): bound to this host, handed out to the VM. */
  async machineImage(tenant: string, volume: string): Promise<string> {
    const vol = await this.boundVolume(tenant, volume, `a machine`);
    await this.o.volumes.ensure(volumeRequest(vol));
    return this.handOut(vol.metadata.uid);
  }

  /** Hands a volume's image to a VM (the host will not mount it until it is given back). */
  private async handOut(id: string): Promise<string> {
    const image = await this.o.volumes.imagePath(id);
    this.handedAt.set(id, Date.now());
    return image;
  }

  /** The instance's volumes, each bound to this host and made on it if new (its uid is its id here). */
  private async volumesOf(inst: Instance): Promise<{ id: string; mount: InstanceMount }[]> {
    const tenant = inst.metadata.tenant ?? '';
    const out: { id: string; mount: InstanceMount }[] = [];
    for (const m of inst.spec.mounts ?? []) {
      const vol = await this.boundVolume(tenant, m.volume, `instance "${inst.metadata.name}"`);
      // A volume restored from a snapshot is made as its copy (volumeRequest), never empty.
      await this.o.volumes.ensure(volumeRequest(vol));
      out.push({ id: vol.metadata.uid, mount: m });
    }
    return out;
  }

  private async boundVolume(tenant: string, name: string, user: string): Promise<Volume> {
    const vol = await this.o.resources.get('Volume', name, tenant);
    if (!vol) throw new CarapaceError('CARAPACE_E_VOLUME_NOT_FOUND', `${user} mounts volume "${name}", which tenant "${tenant}" does not have`);
    if (vol.status.host !== this.o.hostName) {
      throw new CarapaceError('CARAPACE_E_VOLUME_BUSY', `volume "${name}" is bound to ${vol.status.host ? `host ${vol.status.host}` : 'no host yet'}, not to ${this.o.hostName}`);
    }
    return vol;
  }

  /** The decrypted Secret and Config data the instance uses (undefined when it uses none). */
  private async materialOf(inst: Instance): Promise<InstanceMaterial | undefined> {
    const refs = referencesOf(inst.spec.container);
    if (refs.secrets.length + refs.configs.length === 0) return undefined;
    if (!this.o.material) {
      throw new CarapaceError('CARAPACE_E_SECRETS_KEYRING_MISSING', `instance "${inst.metadata.name}" uses secrets or configs, and this agent has no way to read them (join the cluster with --join, or run carapace up)`);
    }
    return this.o.material(inst);
  }

  /**
   * Gives back what a start took: the instance's files, and every volume of `volumeIds` that
   * no container in `stillUsed` holds (it is unmounted from the host; a volume still held
   * by a process stays mounted and is retried at its next release).
   */
  async release(instanceUid: string, volumeIds: readonly string[], stillUsed: ReadonlySet<string>, cell?: string): Promise<void> {
    if (cell !== undefined) return this.releaseFromCell(cell, volumeIds, stillUsed);
    // Files of a container started before this agent restarted are there too.
    if (this.filesReady || existsSync(join(this.o.files.runDir, instanceUid))) await this.o.files.remove(instanceUid).catch((err: unknown) => this.log.warn({ instance: instanceUid, err }, 'cannot remove the files of a container'));
    for (const id of volumeIds) {
      if (stillUsed.has(id)) continue;
      await this.o.volumes.unmount(id).catch((err: unknown) => this.log.warn({ volume: id, err }, 'cannot unmount a volume no container uses'));
    }
  }

  /**
   * A cell's container went (CellRuntime detached the volumes no container of the cell uses):
   * each of `volumeIds` the cell's VM no longer has attached is given back to the host, so a
   * later user elsewhere on this host may mount it. One still attached (its guest refused to
   * let it go) stays handed out: the host must not mount what a VM may write.
   */
  private async releaseFromCell(cell: string, volumeIds: readonly string[], stillUsed: ReadonlySet<string>): Promise<void> {
    const pending = volumeIds.filter((id) => !stillUsed.has(id));
    if (pending.length === 0) return;
    const vms = this.o.vms;
    const disks = vms ? await vms.listDisks(cell).catch(() => undefined) : [];
    if (disks === undefined && vms && this.running(vms, cell)) {
      // QEMU did not answer but runs: the disks may still be open. They stay handed out;
      // the sweep gives them back once no VM has them open.
      this.log.warn({ cell, volumes: pending }, 'cannot read the disks of a running cell; its volumes stay handed out');
      return;
    }
    const attached = new Set((disks ?? []).map((d) => d.serial));
    for (const id of pending) {
      if (attached.has(diskSerial(id))) {
        this.log.warn({ volume: id, cell }, 'volume still attached to its cell; it stays handed out');
        continue;
      }
      await this.o.volumes.releaseImage(id).catch((err: unknown) => this.log.warn({ volume: id, err }, 'cannot give a volume back to the host'));
    }
  }

  private running(vms: VmManager, id: string): boolean {
    try {
      return vms.inspect(id).state === 'running';
    } catch {
      return false; // unknown: destroyed
    }
  }

  /**
   * Gives back to the host every volume handed to a VM that no VM of this host has open any
   * more and that no local container (`inUse`) holds: a machine that was deleted or powered
   * off, a cell that died or whose release could not read its disks. Volumes handed out in the
   * last HANDOUT_GRACE_MS (handOutGraceMs) are left (their VM may not have attached them yet), and nothing is
   * given back when a running VM's disks cannot be read.
   */
  private async reclaimHandedOut(inUse: ReadonlySet<string>): Promise<void> {
    const vms = this.o.vms;
    const now = Date.now();
    const candidates = (await this.o.volumes.list()).filter((v) => v.attachment === 'block' && !inUse.has(v.id) && now - (this.handedAt.get(v.id) ?? 0) >= (this.o.handOutGraceMs ?? HANDOUT_GRACE_MS));
    if (candidates.length === 0) return;
    const open = new Set<string>();
    for (const vm of vms?.recover() ?? []) {
      if (vm.state !== 'running') continue;
      const disks = await vms?.listDisks(vm.id).catch(() => undefined);
      if (disks === undefined) {
        if (vms && this.running(vms, vm.id)) return; // unknown: try again next pass
        continue;
      }
      for (const d of disks) open.add(resolve(d.path));
    }
    for (const v of candidates) {
      if (open.has(resolve(v.image))) continue;
      await this.o.volumes.releaseImage(v.id);
      this.handedAt.delete(v.id);
      this.log.info({ volume: v.id, name: `${v.tenant}/${v.name}` }, 'volume no VM has open given back to the host');
    }
  }

  /** After a crash: reconciles the volumes' recorded state with the kernel's (see VolumeStore.recover). */
  async recover(): Promise<void> {
    if (!existsSync(join(this.o.volumes.root, 'state.json'))) return; // no volume was ever made here
    const r = await this.o.volumes.recover();
    if (r.missing.length + r.orphans.length + r.repaired.length > 0) this.log.warn({ ...r }, 'volumes recovered');
  }

  /**
   * One pass over this host's volumes: writes each one's used bytes into its Volume's status
   * (when it entered another MiB: a write per change, not per pass), and removes the storage
   * of volumes whose object is gone (deleted: a re-created volume of the same name has another
   * uid, so it never sees old data). Nothing is removed unless the list of volumes was read.
   * Volumes handed to VMs that no longer have them are given back first (reclaimHandedOut).
   */
  async sweep(inUse: ReadonlySet<string> = new Set()): Promise<void> {
    if (!existsSync(join(this.o.volumes.root, 'state.json'))) return;
    await this.reclaimHandedOut(inUse);
    const listedAt = new Date(); // before the read: storage made after it is not the list's to judge
    const listed = (await this.o.resources.list('Volume')).items;
    const here = new Set((await this.o.volumes.list()).map((v) => v.id));
    for (const v of listed) {
      if (v.status.host !== this.o.hostName || !here.has(v.metadata.uid)) continue;
      const used = (await this.o.volumes.usage(v.metadata.uid).catch(() => undefined))?.usedBytes;
      const step = (n: number): number => Math.floor(n / USED_BYTES_STEP);
      if (used === undefined || (v.status.usedBytes !== undefined && step(v.status.usedBytes) === step(used))) continue;
      await this.o.resources.mutate('Volume', v.metadata.name, v.metadata.tenant, (x) => {
        if (x.metadata.uid !== v.metadata.uid) return undefined;
        x.status = { ...x.status, usedBytes: used };
        return x;
      });
    }
    const { removed } = await this.o.volumes.gc(new Set(listed.map((v) => v.metadata.uid)), listedAt);
    if (removed.length > 0) this.log.info({ removed }, 'storage of deleted volumes removed');
  }
}
