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
import { validateContainerId, type CheckAction, type CheckResult, type ContainerInfo, type DriverCapabilities, ContainerState, ContainerUsage, LogLine, LogOptions, RuntimeDriver, StartRequest } from '../runtime/driver.js';
import type { VmManager } from '../vm/qemu.js';

export interface CellRuntimeOptions {
  cellId: string;
  isolation: Isolation;
  channel: HostChannel;
  vms: VmManager;
  /** Host directory of unpacked image roots, shared read-only into the guest at `guestImagesRoot`. */
  hostImagesRoot: string;
  guestImagesRoot: string;
  logger: Logger;
  /**
   * Publishes the containers' host ports on the cell's tap endpoint (its tenant network).
   * Absent (a VM on QEMU's user networking): they are QEMU forwards.
   */
  ports?: CellPorts;
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

  async start(req: StartRequest): Promise<ContainerInfo> {
    validateContainerId(req.id); // refused here: the guest cannot answer a request it cannot parse
    const rootfs = this.guestRootfs(req.rootfs);
    const startedAt = new Date().toISOString();
    const guestStartMs = await this.o.channel.run({ containerId: req.id, rootfs, image: req.image, container: req.container, hostname: req.hostname, labels: req.labels });
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
   */
  async check(id: string, action: CheckAction, timeoutMs: number): Promise<CheckResult> {
    if (this.closed) return { ok: false, message: `cell ${this.o.cellId} is gone` };
    this.o.channel.expectContainer(id);
    const wire = 'exec' in action ? { exec: { command: action.exec.command } } : 'httpGet' in action ? { httpGet: { path: action.httpGet.path, port: action.httpGet.port } } : { tcpSocket: { port: action.tcpSocket.port } };
    try {
      const r = await this.o.channel.check(id, wire, timeoutMs);
      return { ok: r.ok, message: withoutControlChars(r.message) };
    } catch (e) {
      const why = e instanceof GuestError && e.code === 'GUEST_E_BAD_REQUEST' ? `the cell's guest agent cannot run checks (${e.message})` : (e as Error).message; // `as`: the channel rejects with Errors
      return { ok: false, message: `check in cell ${this.o.cellId} failed: ${why}` };
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
