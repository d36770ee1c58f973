/**
 * The RuntimeDriver of one cell: runs containers inside the cell's VM by asking its guest
 * agent over the virtio-serial channel. The host agent uses it exactly like the runc driver,
 * so restart policy, status and logs work the same for every tier. Everything the guest says
 * reaches here through HostChannel, which validates and rate-limits it; the only host
 * resources derived from a container here are its published ports (the tenant network's DNAT
 * to the VM's tap, or QEMU forwards for a VM without one), and those come from the instance
 * spec (host side), never from guest messages.
 */
import { relative, isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { GuestError, type HostChannel, type StateEvent } from '../guest/host-channel.js';
import type { Isolation } from '../model/schemas.js';
import { validateContainerId, type CheckAction, type CheckResult, type ContainerInfo, type DriverCapabilities, type ExecRun, ContainerState, ContainerUsage, LogLine, LogOptions, RuntimeDriver, StartRequest } from '../runtime/driver.js';
import type { ExecOptions } from '../exec/frames.js';
import { CarapaceError } from '../model/errors.js';
import type { VmManager } from '../vm/qemu.js';
import { diskSerial } from '../vm/disks.js';
import { GUEST_VOLUME_ID_PATTERN, type WireMount } from '../guest/protocol.js';

/** A volume a container of the cell needs: its image is hot-plugged, mounted in the guest and bound in. */
export interface CellVolume {
  /** Volume id, unique per cell (`GUEST_VOLUME_ID_PATTERN`, e.g. `<tenant>.<volume>`); names the disk and its guest mount. */
  id: string;
  /** Raw ext4 image on the host (VolumeStore.imagePath), not mounted on the host meanwhile. */
  image: string;
  /** Where the container sees it. */
  mountPath: string;
  readOnly: boolean;
}

/** Small files (a secret's or config's keys) delivered into the guest and bound read-only into the container. */
export interface CellFileSet {
  /** Name of the set (`FILE_KEY_PATTERN`), e.g. the secret's name. */
  set: string;
  /** Directory where the container sees one file per key. */
  mountPath: string;
  files: { path: string; data: Buffer; mode?: number }[];
}

/** What a cell container needs besides the StartRequest (passed to `CellRuntime.start`). */
export interface CellStartExtras {
  volumes?: CellVolume[];
  files?: CellFileSet[];
}

export interface CellRuntimeOptions {
  cellId: string;
  isolation: Isolation;
  channel: HostChannel;
  vms: VmManager;
  /** Host directory of unpacked image roots, shared read-only into the guest at `guestImagesRoot`. */
  hostImagesRoot: string;
  guestImagesRoot: string;
  logger: Logger;
  /** The guest agent's state directory (`--state-dir`; default /run/carapace): where volumes and file sets live. */
  guestStateDir?: string;
  /** The time a probe check of a timeout gets in this VM (cells.ts cellCheckTimeoutMs: stretched under emulation). Default: the timeout. */
  checkTimeoutMs?: (timeoutMs: number) => number;
  /**
   * Publishes the containers' host ports on the cell's tap endpoint (its tenant network).
   * Absent (a VM on QEMU's user networking): they are QEMU forwards.
   */
  ports?: CellPorts;
  /** Told when a container start into this cell begins and ends (the warm pool's refill waits for quiet: warm-refill.ts). */
  starts?: { began(): void; ended(): void };
}

/** How a cell's containers' published ports reach the host (the cell manager implements it). */
export interface CellPorts {
  /** After `containerId` started: publish what the instances in the cell publish, its ports included. */
  publish(containerId: string): Promise<void>;
  /** `containerId` is being removed: publish what the others publish. */
  unpublish(containerId: string): Promise<void>;
}

type Exited = Extract<ContainerState, { status: 'exited' }>;

/** Guest text with C0/C1 control characters (newlines, terminal escapes) turned into spaces. */
function withoutControlChars(text: string): string {
  let out = '';
  for (const ch of text) {
    const c = ch.codePointAt(0) ?? 0;
    out += c < 0x20 || (c >= 0x7f && c < 0xa0) ? ' ' : ch;
  }
  return out;
}

export class CellRuntime implements RuntimeDriver {
  readonly name: string;
  readonly isolation: Isolation;
  /** Containers share the VM's network (ports forwarded by QEMU); images come over the VM's read-only share. */
  readonly capabilities: DriverCapabilities = { network: 'vm', images: 'shared-into-vm' };
  private readonly states = new Map<string, ContainerState>();
  /** The running state each container reported first (what `start` answers, even if it has exited since). */
  private readonly runningStates = new Map<string, Extract<ContainerState, { status: 'running' }>>();
  private readonly labels = new Map<string, Record<string, string>>();
  private readonly waiters = new Map<string, ((s: Exited) => void)[]>();
  private readonly ports = new Map<string, { hostPort: number; guestPort: number; protocol: 'tcp' | 'udp'; hostAddress: string }[]>();
  private readonly usageById = new Map<string, ContainerUsage>();
  /** How long `runc run` inside the guest took per container (what the cell benchmark compares with). */
  readonly guestStartMs = new Map<string, number>();
  /** Set when the cell is detached (retired or lost): its containers went with the VM. */
  private closed = false;
  /**
   * Serialises volume changes of the cell: a start that needs volumes holds it from attach to
   * the guest's run (which records the container as a user), so a release running meanwhile
   * cannot take a volume that is about to be used.
   */
  private volumeChain: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: CellRuntimeOptions) {
    this.name = `cell:${o.cellId}`;
    this.isolation = o.isolation;
    o.channel.on('state', (e: StateEvent) => this.onState(e.containerId, e.state));
    o.channel.on('usage', (u) => {
      for (const c of u.containers) this.usageById.set(c.containerId, { cpuSeconds: c.cpuSeconds, memoryBytes: c.memoryBytes });
    });
  }

  private onState(id: string, state: ContainerState): void {
    this.states.set(id, state);
    if (state.status === 'running' && !this.runningStates.has(id)) this.runningStates.set(id, state);
    if (state.status === 'exited') {
      for (const w of this.waiters.get(id) ?? []) w(state);
      this.waiters.delete(id);
    }
  }

  async probe(): Promise<{ ok: true } | { ok: false; message: string }> {
    return this.o.channel.connected ? { ok: true } : { ok: false, message: `cell ${this.o.cellId}: guest agent not connected` };
  }

  /** Maps a host image root to its path inside the guest; refuses anything outside the share. */
  private guestRootfs(hostPath: string): string {
    const rel = relative(this.o.hostImagesRoot, hostPath);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) throw new Error(`image root ${hostPath} is not under the cell's image share ${this.o.hostImagesRoot}`);
    return `${this.o.guestImagesRoot}/${rel}`;
  }

  private withVolumes<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.volumeChain.then(fn, fn);
    this.volumeChain = p.catch(() => undefined);
    return p;
  }

  private get guestState(): string {
    return this.o.guestStateDir ?? '/run/carapace';
  }

  /**
   * Hot-plugs (if not yet attached) and mounts in the guest each volume, delivers the file sets,
   * and returns the bind mounts of the container. A volume already attached read-write serves
   * a read-only user too (its bind mount is read-only); one attached read-only cannot serve a
   * writer until its readers are gone.
   */
  private async prepareMounts(id: string, extras: CellStartExtras): Promise<WireMount[]> {
    const mounts: WireMount[] = [];
    const vols = extras.volumes ?? [];
    const attached = vols.length > 0 ? new Map((await this.o.vms.listDisks(this.o.cellId)).map((d) => [d.serial, d])) : new Map();
    for (const v of vols) {
      if (!GUEST_VOLUME_ID_PATTERN.test(v.id)) throw new Error(`volume id ${JSON.stringify(v.id)} is not a valid cell volume id`);
      const serial = diskSerial(v.id);
      const have = attached.get(serial);
      const readOnly = have ? have.readOnly : v.readOnly;
      if (readOnly && !v.readOnly) throw new Error(`volume ${v.id} is attached read-only to cell ${this.o.cellId}; it cannot be mounted read-write until its readers are gone`);
      const t0 = Date.now();
      const d = await this.o.vms.attachDisk(this.o.cellId, { id: v.id, path: v.image, readOnly });
      await this.o.channel.mountVolume(v.id, d.serial, readOnly);
      this.o.logger.info({ cell: this.o.cellId, container: id, volume: v.id, serial: d.serial, ms: Date.now() - t0 }, 'volume ready in cell');
      mounts.push({ source: `${this.guestState}/volumes/${v.id}`, destination: v.mountPath, readOnly: v.readOnly });
    }
    for (const f of extras.files ?? []) {
      await this.o.channel.writeFiles(id, f.set, f.files);
      mounts.push({ source: `${this.guestState}/files/${id}/${f.set}`, destination: f.mountPath, readOnly: true });
    }
    return mounts;
  }

  /**
   * Unmounts (ejecting the hot-plug slot) and detaches every volume no container of the cell
   * uses any more, and detaches hot-plugged disks the guest has not mounted (left by a start
   * cut short). Asks the guest and QEMU each time, so it needs no bookkeeping and also works
   * after an agent restart. A volume whose guest refuses stays attached (logged); the rest go.
   */
  releaseVolumes(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return this.withVolumes(async () => {
      const disks = await this.o.vms.listDisks(this.o.cellId);
      if (!disks.some((d) => d.port !== undefined)) return; // nothing hot-plugged: nothing to ask the guest
      const inGuest = await this.o.channel.volumes();
      const inUse = new Set(inGuest.filter((v) => v.users.length > 0).map((v) => v.serial));
      for (const v of inGuest.filter((x) => x.users.length === 0)) {
        try {
          await this.o.channel.unmountVolume(v.volumeId, true);
        } catch (err) {
          this.o.logger.warn({ cell: this.o.cellId, volume: v.volumeId, err }, 'guest did not unmount an unused volume');
          inUse.add(v.serial);
        }
      }
      for (const d of disks) {
        if (d.port === undefined || inUse.has(d.serial)) continue; // boot disks are the VM's own
        await this.o.vms.detachSerial(this.o.cellId, d.serial).catch((err: unknown) => this.o.logger.warn({ cell: this.o.cellId, serial: d.serial, err }, 'cannot detach a volume'));
      }
    });
  }

  /** Replaces file sets of a running container (an `update` Secret or Config changed): the guest swaps each whole set atomically. */
  async updateFiles(id: string, sets: readonly CellFileSet[]): Promise<void> {
    for (const f of sets) await this.o.channel.writeFiles(id, f.set, f.files);
  }

  /**
   * @inheritdoc
   * `extras`: volumes hot-plugged into the cell and file sets delivered to the guest, bound
   * into this container (see CellStartExtras).
   */
  async start(req: StartRequest, extras: CellStartExtras = {}): Promise<ContainerInfo> {
    this.o.starts?.began();
    try {
      return await this.startInCell(req, extras);
    } finally {
      this.o.starts?.ended();
    }
  }

  private async startInCell(req: StartRequest, extras: CellStartExtras): Promise<ContainerInfo> {
    validateContainerId(req.id); // refused here: the guest cannot answer a request it cannot parse
    const rootfs = this.guestRootfs(req.rootfs);
    const startedAt = new Date().toISOString();
    const runIt = async (mounts: WireMount[]): Promise<number | undefined> =>
      this.o.channel.run({ containerId: req.id, rootfs, image: req.image, container: req.container, hostname: req.hostname, labels: req.labels, ...(mounts.length > 0 ? { mounts } : {}) });
    let guestStartMs: number | undefined;
    if ((extras.volumes ?? []).length > 0) {
      try {
        guestStartMs = await this.withVolumes(async () => runIt(await this.prepareMounts(req.id, extras)));
      } catch (e) {
        await this.releaseVolumes().catch((err: unknown) => this.o.logger.warn({ cell: this.o.cellId, err }, 'cannot release volumes after a failed start'));
        throw e;
      }
    } else {
      guestStartMs = await runIt(await this.prepareMounts(req.id, extras));
    }
    this.labels.set(req.id, req.labels); // only now: a refused start (a duplicate id) must not touch the running one's
    if (guestStartMs !== undefined) this.guestStartMs.set(req.id, guestStartMs);
    // Containers of a cell share the VM's network: a published port is a QEMU forward to the guest.
    const fwd = req.container.ports.filter((p) => p.hostPort !== undefined).map((p) => ({ hostPort: p.hostPort as number, guestPort: p.containerPort, protocol: p.protocol, hostAddress: '0.0.0.0' })); // filtered to defined hostPort
    if (this.o.ports) {
      if (fwd.length > 0) await this.o.ports.publish(req.id);
    } else {
      for (const p of fwd) await this.o.vms.hostfwdAdd(this.o.cellId, p);
    }
    this.ports.set(req.id, fwd);
    // The guest reports the container running before it acks the run; one that has exited
    // since still started (its exit is `wait`'s to report, as with the host drivers).
    const running = this.runningStates.get(req.id) ?? { status: 'running', pid: 1, startedAt };
    if (!this.states.has(req.id)) this.states.set(req.id, running);
    return { id: req.id, labels: req.labels, state: running };
  }

  /** The VM is gone or detached: stop/destroy become no-ops, waiters are released. */
  close(): void {
    this.closed = true;
    this.lost(new Date().toISOString());
  }

  async stop(id: string, graceMs: number): Promise<void> {
    if (this.closed) return;
    this.o.channel.expectContainer(id);
    await this.o.channel.stop(id, graceMs).catch((e: unknown) => {
      if ((e as { code?: string }).code !== 'GUEST_E_NOT_FOUND') throw e; // already gone: stopping is idempotent
    });
  }

  async destroy(id: string): Promise<void> {
    if (this.closed) return;
    if (this.o.ports) {
      // Also for a container adopted after an agent restart (its ports are not known here).
      await this.o.ports.unpublish(id).catch((err: unknown) => this.o.logger.warn({ cell: this.o.cellId, container: id, err }, 'cannot withdraw published ports'));
    } else {
      for (const p of this.ports.get(id) ?? []) await this.o.vms.hostfwdRemove(this.o.cellId, p).catch(() => undefined);
    }
    this.ports.delete(id);
    await this.o.channel.destroy(id).catch((e: unknown) => {
      if ((e as { code?: string }).code !== 'GUEST_E_NOT_FOUND') throw e; // GuestError carries a code; gone is fine
    });
    // The last user of a volume is gone: unmount and detach it (the guest knows who uses what).
    await this.releaseVolumes().catch((err: unknown) => this.o.logger.warn({ cell: this.o.cellId, container: id, err }, 'cannot release the cell\'s unused volumes'));
    this.states.delete(id);
    this.runningStates.delete(id);
    this.labels.delete(id);
    this.usageById.delete(id);
  }

  async inspect(id: string): Promise<ContainerInfo | undefined> {
    this.o.channel.expectContainer(id);
    const known = this.states.get(id);
    if (known) return { id, labels: this.labels.get(id) ?? {}, state: known };
    const listed = (await this.o.channel.list()).find((c) => c.containerId === id);
    if (!listed) {
      this.o.channel.forgetContainer(id);
      return undefined;
    }
    this.states.set(id, listed.state);
    this.labels.set(id, listed.labels);
    return { id, labels: listed.labels, state: listed.state };
  }

  /**
   * @inheritdoc
   * Exits arrive as `state` events; for a container this runtime has not heard of yet (a
   * restarted agent's) it asks the guest first, which also registers the id with the channel.
   */
  wait(id: string, signal?: AbortSignal): Promise<Exited> {
    const s = this.states.get(id);
    if (s?.status === 'exited') return Promise.resolve(s);
    return new Promise((resolve, reject) => {
      const list = this.waiters.get(id) ?? [];
      list.push(resolve);
      this.waiters.set(id, list);
      const fail = (e: Error): void => {
        const rest = (this.waiters.get(id) ?? []).filter((w) => w !== resolve);
        if (rest.length > 0) this.waiters.set(id, rest);
        else this.waiters.delete(id);
        reject(e);
      };
      signal?.addEventListener('abort', () => fail(new Error(`wait for ${id} aborted`)), { once: true });
      if (s) return;
      this.inspect(id).then(
        (info) => {
          if (!info) fail(new Error(`no such container ${id} in cell ${this.o.cellId}`));
          else if (info.state.status === 'exited') this.onState(id, info.state);
        },
        (e: unknown) => fail(e instanceof Error ? e : new Error(String(e))),
      );
    });
  }

  /**
   * @inheritdoc
   * Following ends once the container has exited, after its last line (the guest sends a
   * container's output before its exit).
   */
  async *logs(id: string, opts: LogOptions): AsyncIterable<LogLine> {
    this.o.channel.expectContainer(id);
    const ac = new AbortController();
    const exited = opts.follow ? this.wait(id, ac.signal).catch(() => undefined) : undefined;
    try {
      for await (const l of this.o.channel.logs(id, { follow: opts.follow, ...(opts.tail !== undefined ? { tail: opts.tail } : {}), ...(opts.signal ? { signal: opts.signal } : {}), ...(exited ? { until: exited } : {}) })) {
        yield { time: l.time, stream: l.stream, text: l.text };
      }
    } finally {
      ac.abort(); // no waiter left behind by a log reader that stopped first
    }
  }

  /**
   * @inheritdoc
   * Every container the guest runs or holds, including ones this host did not start (see
   * HostChannel.listAll), so strays can be removed. Their labels are the guest's word: use
   * them only to act on this same cell, never to pick an instance elsewhere.
   */
  async recover(): Promise<ContainerInfo[]> {
    if (this.closed) return [];
    return (await this.o.channel.listAll()).map((c) => ({ id: c.containerId, labels: c.labels, state: c.state }));
  }

  async usage(id: string): Promise<ContainerUsage | undefined> {
    return this.usageById.get(id);
  }

  /**
   * @inheritdoc
   * The guest agent runs the check inside the VM (`runc exec`; http/tcp to the VM's
   * 127.0.0.1, since a cell's containers share its network: `host` is ignored). Its verdict is
   * guest data: schema-checked by the channel, and control characters are removed before the
   * message can reach a status. No answer in time, a refusal or a lost channel fail the check.
   * The time it gets is `checkTimeoutMs(timeoutMs)` (longer under software emulation).
   */
  async check(id: string, action: CheckAction, timeoutMs: number): Promise<CheckResult> {
    if (this.closed) return { ok: false, message: `cell ${this.o.cellId} is gone` };
    this.o.channel.expectContainer(id);
    const wire = 'exec' in action ? { exec: { command: action.exec.command } } : 'httpGet' in action ? { httpGet: { path: action.httpGet.path, port: action.httpGet.port } } : { tcpSocket: { port: action.tcpSocket.port } };
    try {
      const r = await this.o.channel.check(id, wire, this.o.checkTimeoutMs?.(timeoutMs) ?? timeoutMs);
      return { ok: r.ok, message: withoutControlChars(r.message) };
    } catch (e) {
      const why = e instanceof GuestError && e.code === 'GUEST_E_BAD_REQUEST' ? `the cell's guest agent cannot run checks (${e.message})` : (e as Error).message; // `as`: the channel rejects with Errors
      return { ok: false, message: `check in cell ${this.o.cellId} failed: ${why}` };
    }
  }

  /**
   * @inheritdoc
   * The guest agent runs `runc exec` in the VM (under a terminal of its own for `tty`) and the
   * session's frames travel over the cell's channel (HostChannel.exec). A lost channel ends
   * the session with CARAPACE_E_UNAVAILABLE; `kill` has the guest kill the exec'd process.
   */
  async exec(id: string, opts: ExecOptions): Promise<ExecRun> {
    validateContainerId(id);
    if (this.closed) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', `cell ${this.o.cellId} is gone`);
    this.o.channel.expectContainer(id);
    try {
      return await this.o.channel.exec(id, opts);
    } catch (e) {
      if (!(e instanceof GuestError)) throw e;
      if (e.code === 'GUEST_E_NOT_FOUND') throw new CarapaceError('CARAPACE_E_INSTANCE_NOT_RUNNING', `container ${id} is not running in cell ${this.o.cellId}`);
      if (e.code === 'GUEST_E_BUSY') throw new CarapaceError('CARAPACE_E_UNAVAILABLE', `cell ${this.o.cellId} runs as many exec sessions as it may; retry once one has ended`);
      // A guest agent that predates exec refuses the request as one it cannot parse.
      if (e.code === 'GUEST_E_BAD_REQUEST') throw new CarapaceError('CARAPACE_E_EXEC_UNSUPPORTED', `the guest agent of cell ${this.o.cellId} cannot run exec sessions (an older cell image)`);
      throw new CarapaceError('CARAPACE_E_INTERNAL', `exec in cell ${this.o.cellId} failed: ${withoutControlChars(e.message).slice(0, 500)}`);
    }
  }

  /** Fails every waiter: the VM is gone, so are its containers. */
  lost(finishedAt: string): void {
    for (const [id, ws] of this.waiters) {
      const exited: Exited = { status: 'exited', exitCode: 137, finishedAt };
      this.states.set(id, exited);
      for (const w of ws) w(exited);
    }
    this.waiters.clear();
  }
}
