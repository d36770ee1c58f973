/**
 * The host agent's end of a cell's channel: connects to the VM's virtio-serial unix socket
 * (QEMU's chardev server), says hello, checks the guest's version, correlates requests with
 * replies, and turns guest messages into typed events. Reconnects after the socket closes.
 *
 * Everything the guest sends is hostile input (tenant code is root in the VM): lines are
 * bounded (a longer one is discarded up to its newline, never buffered), every message is
 * schema-validated (invalid ones are counted and dropped; the connection stays), container
 * ids must be ones this host created (`expectContainer`), log lines are rate-limited per
 * container, and no host path or action is derived from guest data. Memory held per channel
 * is bounded: one line buffer, the host's own pending requests, and bounded follower queues.
 */
import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import type { ContainerSpec } from '../model/schemas.js';
import type { ExecRun, ImageConfig, LogLine } from '../runtime/driver.js';
import { CHANNEL, decodeFrame, encodeFrame, parseStatus, type ExecOptions } from '../exec/frames.js';
import { HIGH_WATER, onDrainOrClose } from '../exec/session.js';
import {
  encodeLine,
  EXEC_WINDOW_BYTES,
  MAX_EXEC_CHUNK_BYTES,
  LineSplitter,
  MAX_GUEST_LINE_BYTES,
  MAX_HOST_LINE_BYTES,
  parseGuestLine,
  PROTOCOL_VERSION,
  TokenBucket,
  type GuestErrorCode,
  type GuestMessage,
  type HostMessage,
  type WireCheckAction,
  type WireNetwork,
  type WireContainerState,
  type WireMount,
  type WireVolume,
} from './protocol.js';

/** Options of a HostChannel. */
export interface HostChannelOptions {
  /** The VM's channel socket (QEMU `-chardev socket,path=...,server=on`). */
  socketPath: string;
  /** Sent in hello; the guest echoes it in ready. */
  cellId: string;
  logger: Logger;
  /** How long a request waits for the handshake plus its reply. Default 30 s. */
  requestTimeoutMs?: number;
  /** How long after hello the guest has to answer ready. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Reconnect backoff bounds. Defaults 100 ms .. 5 s. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Live log lines accepted per container per second (token bucket). Default 1000/s, burst 2000. */
  logRatePerSec?: number;
  logBurst?: number;
  /** Longest accepted guest line. Default MAX_GUEST_LINE_BYTES. */
  maxLineBytes?: number;
  /** Most lines a `logs` replay may return. Default 10 000. */
  maxReplayLines?: number;
  /** Most lines queued for one follower before the oldest are dropped. Default 10 000. */
  maxFollowQueue?: number;
}

/** What the guest said in ready. */
export interface ReadyInfo {
  version: number;
  bootMs: number;
  agentStartMs: number;
}

/** A container state event. */
export interface StateEvent {
  containerId: string;
  state: WireContainerState;
}

/** A live log line event. */
export interface LogEvent extends LogLine {
  containerId: string;
  seq: number;
}

/** A usage event (only containers this host created are included). */
export interface UsageEvent {
  cell: { cpuSeconds: number; memoryBytes: number; memoryTotalBytes: number };
  containers: { containerId: string; cpuSeconds: number; memoryBytes: number }[];
  /**
   * Every container id the guest says runs, including ones this host did not create (after a
   * host agent restart, or left by a misbehaving guest). Untrusted: shown and compared, never
   * used to find host resources.
   */
  running: string[];
}

/** One container as listed by the guest. */
export interface GuestContainer {
  containerId: string;
  labels: Record<string, string>;
  state: WireContainerState;
}

/** Events a HostChannel emits. Listeners run synchronously on the socket's data path: keep them cheap. */
export interface HostChannelEvents {
  /** Handshake done on a (re)connection; the guest re-reports state right after. */
  connected: [ReadyInfo];
  /** The connection closed (or never opened); the channel retries. */
  disconnected: [string];
  state: [StateEvent];
  log: [LogEvent];
  usage: [UsageEvent];
  /** The guest dropped `count` log lines of a container (its rate limit or its buffer). */
  dropped: [{ containerId: string; count: number }];
  /** The guest speaks another protocol version; requests fail until it is replaced. */
  versionMismatch: [{ guest: number; host: number }];
}

/** Counters of what the channel received and refused. */
export interface HostChannelStats {
  connects: number;
  bytes: number;
  /** Complete non-empty lines (oversized ones included). */
  lines: number;
  /** Valid messages handled. */
  accepted: number;
  /** Not JSON, schema-invalid, or unexpected at this point (e.g. before ready). */
  invalid: number;
  /** Lines longer than the limit, discarded. */
  oversized: number;
  /** Messages naming a container this host did not create. */
  unknownContainer: number;
  /** Replies matching no pending request. */
  unmatched: number;
  /** Live log lines dropped by the host's rate limit. */
  droppedLogs: number;
  /** Log lines the guest reported dropped (sum of `dropped` counts). */
  guestDroppedLogs: number;
  /** Follower queue overflows. */
  droppedFollow: number;
  /** Exec sessions cut off because the guest sent more output than the flow-control window, or a malformed status. */
  execViolations: number;
  /** Bytes held in the partial-line buffer right now (at most maxLineBytes). */
  bufferedBytes: number;
}

/** A request the guest refused, with its stable code. */
export class GuestError extends Error {
  constructor(
    readonly code: GuestErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'GuestError';
  }
}

/** The guest speaks another protocol version. */
export class ProtocolVersionError extends Error {
  constructor(
    readonly guest: number,
    readonly host: number,
  ) {
    super(`cell guest agent speaks protocol version ${guest}, this host agent speaks ${host}: upgrade the cell image or the host agent`);
    this.name = 'ProtocolVersionError';
  }
}

/** What `run` needs; mirrors the driver's StartRequest with a guest-side rootfs path. */
export interface GuestRunRequest {
  containerId: string;
  /** Path of the unpacked rootfs INSIDE the guest (under the images share). */
  rootfs: string;
  image: ImageConfig;
  container: ContainerSpec;
  hostname: string;
  labels: Record<string, string>;
  /** Guest paths (mounted volumes, file sets) bind-mounted into the container. */
  mounts?: WireMount[];
}

/** Reply types that complete a request (besides `err`, which any request may get). */
type ReplyType = 'ack' | 'containers' | 'checkResult' | 'pong' | 'volumeList';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  /** The one reply type this request accepts: a reply of another type is dropped as unmatched. */
  expects: ReplyType;
  /** For logs requests: where replayed lines go and how many more are accepted. */
  replay?: { containerId: string; remaining: number; lines: LogEvent[] };
}

type WaitReady = { resolve: () => void; reject: (e: Error) => void };

/** The host's side of one exec session (see `HostChannel.exec`). */
interface HostExec {
  /** Delivers output to the session's listeners (held until the first one comes). */
  output(channel: 'stdout' | 'stderr', data: Buffer): void;
  /** Output bytes received and not yet acknowledged to the guest. */
  unacked: number;
  /** Ends the session: its exit code, or why its end cannot be known. */
  finish(r: { exitCode: number; guestMs?: number } | { error: Error }): void;
}

/**
 * One cell's channel. Call `start(signal)` once; it connects, reconnects, and resolves when
 * the signal aborts. Requests may be made any time: they wait (within their timeout) for the
 * handshake. Register every container id the host creates (`run` does it itself; a restarted
 * host agent calls `expectContainer` for the ids in its store) — messages about other ids
 * are dropped.
 */
export class HostChannel extends EventEmitter<HostChannelEvents> {
  private readonly opts: Required<Omit<HostChannelOptions, 'logger'>>;
  private readonly log: Logger;
  private socket: Socket | undefined;
  private splitter: LineSplitter;
  private handshaken = false;
  private readyInfo: ReadyInfo | undefined;
  private mismatch: ProtocolVersionError | undefined;
  private readonly pending = new Map<string, Pending>();
  private readonly readyWaiters = new Set<WaitReady>();
  private readonly known = new Set<string>();
  private readonly buckets = new Map<string, TokenBucket>();
  private nextId = 0;
  private readonly counters: Omit<HostChannelStats, 'bufferedBytes'> = {
    connects: 0,
    bytes: 0,
    lines: 0,
    accepted: 0,
    invalid: 0,
    oversized: 0,
    unknownContainer: 0,
    unmatched: 0,
    droppedLogs: 0,
    guestDroppedLogs: 0,
    droppedFollow: 0,
    execViolations: 0,
  };
  private readonly execs = new Map<string, HostExec>();
  private nextExec = 0;

  constructor(opts: HostChannelOptions) {
    super();
    this.log = opts.logger.child({ cellId: opts.cellId, component: 'host-channel' });
    this.opts = {
      socketPath: opts.socketPath,
      cellId: opts.cellId,
      requestTimeoutMs: opts.requestTimeoutMs ?? 30_000,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 10_000,
      reconnectMinMs: opts.reconnectMinMs ?? 100,
      reconnectMaxMs: opts.reconnectMaxMs ?? 5_000,
      logRatePerSec: opts.logRatePerSec ?? 1000,
      logBurst: opts.logBurst ?? 2000,
      maxLineBytes: opts.maxLineBytes ?? MAX_GUEST_LINE_BYTES,
      maxReplayLines: opts.maxReplayLines ?? 10_000,
      maxFollowQueue: opts.maxFollowQueue ?? 10_000,
    };
    this.splitter = new LineSplitter(this.opts.maxLineBytes);
  }

  /** Counters since construction. */
  stats(): HostChannelStats {
    const oversized = this.counters.oversized + this.splitter.oversized;
    // The splitter never hands oversized lines out, so they are added to `lines` here.
    return { ...this.counters, lines: this.counters.lines + oversized, oversized, bufferedBytes: this.splitter.bufferedBytes };
  }

  /** True while a handshaken connection is up. */
  get connected(): boolean {
    return this.handshaken;
  }

  /** Accept messages about this container id (call before `run`, or after a host agent restart). */
  expectContainer(id: string): void {
    this.known.add(id);
  }

  /** Stop accepting messages about this id (after destroy). */
  forgetContainer(id: string): void {
    this.known.delete(id);
    this.buckets.delete(id);
  }

  /**
   * Connects and keeps reconnecting until `signal` aborts; resolves then, after closing the
   * socket and failing pending requests. The one lifecycle entry point.
   */
  async start(signal: AbortSignal): Promise<void> {
    let backoff = this.opts.reconnectMinMs;
    while (!signal.aborted) {
      const reason = await this.connectOnce(signal);
      const hadHandshake = reason.handshaken;
      this.onClosed(reason.message);
      if (signal.aborted) break;
      backoff = hadHandshake ? this.opts.reconnectMinMs : Math.min(this.opts.reconnectMaxMs, backoff * 2);
      if (this.mismatch) backoff = this.opts.reconnectMaxMs;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, backoff);
        function done(): void {
          clearTimeout(t);
          signal.removeEventListener('abort', done);
          resolve();
        }
        signal.addEventListener('abort', done, { once: true });
      });
    }
    const err = new Error('host channel stopped');
    for (const w of this.readyWaiters) w.reject(err);
    this.readyWaiters.clear();
  }

  /** One connection's life; resolves with why it ended. */
  private connectOnce(signal: AbortSignal): Promise<{ message: string; handshaken: boolean }> {
    return new Promise((resolve) => {
      this.splitter = this.freshSplitter();
      const sock = createConnection(this.opts.socketPath);
      this.socket = sock;
      let handshakeTimer: NodeJS.Timeout | undefined;
      let endReason = 'closed';
      const onAbort = (): void => {
        endReason = 'stopped';
        sock.destroy();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      sock.on('connect', () => {
        this.counters.connects += 1;
        handshakeTimer = setTimeout(() => {
          endReason = 'guest did not answer hello in time';
          sock.destroy();
        }, this.opts.handshakeTimeoutMs);
        this.writeMsg({ type: 'hello', version: PROTOCOL_VERSION, cellId: this.opts.cellId });
      });
      sock.on('data', (chunk: Buffer) => {
        this.counters.bytes += chunk.length;
        for (const line of this.splitter.push(chunk)) {
          this.counters.lines += 1;
          this.handleLine(line);
          if (this.handshaken && handshakeTimer) {
            clearTimeout(handshakeTimer);
            handshakeTimer = undefined;
          }
        }
        if (this.mismatch) {
          endReason = this.mismatch.message;
          sock.destroy();
        }
      });
      sock.on('error', (e) => {
        endReason = e.message;
      });
      sock.on('close', () => {
        clearTimeout(handshakeTimer);
        signal.removeEventListener('abort', onAbort);
        const handshaken = this.handshaken;
        resolve({ message: endReason, handshaken });
      });
    });
  }

  private freshSplitter(): LineSplitter {
    // Keep the count of oversized lines across connections.
    this.counters.oversized += this.splitter.oversized;
    return new LineSplitter(this.opts.maxLineBytes);
  }

  private onClosed(reason: string): void {
    const was = this.handshaken;
    this.handshaken = false;
    this.socket = undefined;
    const err = new CarapaceError('CARAPACE_E_UNAVAILABLE', `cell channel disconnected: ${reason}`);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
      this.pending.delete(id);
    }
    // The guest kills its sessions when the connection ends; what they did since is unknown.
    for (const x of [...this.execs.values()]) x.finish({ error: err });
    if (was) this.log.info({ reason }, 'cell channel disconnected');
    this.emit('disconnected', reason);
  }

  private writeMsg(msg: HostMessage): void {
    const sock = this.socket;
    if (!sock || sock.destroyed) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', 'cell channel is not connected');
    sock.write(encodeLine(msg, MAX_HOST_LINE_BYTES));
  }

  private knownId(id: string): boolean {
    if (this.known.has(id)) return true;
    this.counters.unknownContainer += 1;
    return false;
  }

  /** Handles one complete guest line. Never throws: a listener's exception is logged, not propagated to the socket. */
  private handleLine(line: string): void {
    const r = parseGuestLine(line);
    if (!r.ok) {
      this.counters.invalid += 1;
      return;
    }
    const msg = r.msg;
    if (!this.handshaken) {
      if (msg.type !== 'ready') {
        this.counters.invalid += 1;
        return;
      }
      this.counters.accepted += 1;
      if (msg.version !== PROTOCOL_VERSION) {
        this.mismatch = new ProtocolVersionError(msg.version, PROTOCOL_VERSION);
        this.log.error({ guestVersion: msg.version, hostVersion: PROTOCOL_VERSION }, 'cell guest protocol version mismatch');
        for (const w of this.readyWaiters) w.reject(this.mismatch);
        this.readyWaiters.clear();
        this.safeEmit('versionMismatch', { guest: msg.version, host: PROTOCOL_VERSION });
        return;
      }
      this.mismatch = undefined;
      this.handshaken = true;
      this.readyInfo = { version: msg.version, bootMs: msg.bootMs, agentStartMs: msg.agentStartMs };
      for (const w of this.readyWaiters) w.resolve();
      this.readyWaiters.clear();
      this.log.info(this.readyInfo, 'cell channel connected');
      this.safeEmit('connected', this.readyInfo);
      return;
    }
    this.dispatch(msg);
  }

  private dispatch(msg: GuestMessage): void {
    switch (msg.type) {
      case 'ready':
        // A repeated ready on a live connection carries nothing new.
        this.counters.accepted += 1;
        return;
      case 'ack':
      case 'err':
      case 'containers':
      case 'checkResult':
      case 'volumeList': {
        const p = this.pending.get(msg.requestId);
        // Only an answer to a request this host made, of the type that request expects.
        if (!p || (msg.type !== 'err' && msg.type !== p.expects)) {
          this.counters.unmatched += 1;
          return;
        }
        this.counters.accepted += 1;
        this.pending.delete(msg.requestId);
        clearTimeout(p.timer);
        if (msg.type === 'err') p.reject(new GuestError(msg.code, msg.message));
        else if (msg.type === 'containers') {
          // `all:` requests (listAll) want the unfiltered list, to find containers to remove.
          p.resolve(msg.requestId.startsWith('all:') ? msg.containers : msg.containers.filter((c) => this.knownId(c.containerId)));
        } else if (msg.type === 'checkResult') {
          p.resolve({ ok: msg.ok, message: msg.message });
        } else if (msg.type === 'volumeList') {
          p.resolve(msg.volumes);
        } else p.resolve(p.replay?.lines ?? msg.startMs);
        return;
      }
      case 'state':
        if (!this.knownId(msg.containerId)) return;
        this.counters.accepted += 1;
        this.safeEmit('state', { containerId: msg.containerId, state: msg.state });
        return;
      case 'log': {
        if (!this.knownId(msg.containerId)) return;
        const ev: LogEvent = { containerId: msg.containerId, stream: msg.stream, time: msg.time, text: msg.text, seq: msg.seq };
        if (msg.requestId !== undefined) {
          // A replayed line: only as many as the host asked for, for the container it named.
          const p = this.pending.get(msg.requestId);
          if (!p?.replay || p.replay.containerId !== msg.containerId || p.replay.remaining <= 0) {
            this.counters.unmatched += 1;
            return;
          }
          this.counters.accepted += 1;
          p.replay.remaining -= 1;
          p.replay.lines.push(ev);
          return;
        }
        let bucket = this.buckets.get(msg.containerId);
        if (!bucket) {
          bucket = new TokenBucket(this.opts.logRatePerSec, this.opts.logBurst, Date.now());
          this.buckets.set(msg.containerId, bucket);
        }
        if (!bucket.take(Date.now())) {
          this.counters.droppedLogs += 1;
          return;
        }
        this.counters.accepted += 1;
        this.safeEmit('log', ev);
        return;
      }
      case 'usage': {
        this.counters.accepted += 1;
        const containers = msg.containers.filter((c) => this.knownId(c.containerId));
        this.safeEmit('usage', { cell: msg.cell, containers, running: msg.containers.map((c) => c.containerId) });
        return;
      }
      case 'dropped':
        if (!this.knownId(msg.containerId)) return;
        this.counters.accepted += 1;
        this.counters.guestDroppedLogs += msg.count;
        this.safeEmit('dropped', { containerId: msg.containerId, count: msg.count });
        return;
      case 'execFrame': {
        const x = this.execs.get(msg.sessionId);
        const f = decodeFrame(Buffer.from(msg.frame, 'base64'));
        if (!x || !f) {
          this.counters.unmatched += 1;
          return;
        }
        this.counters.accepted += 1;
        if (f.channel === CHANNEL.status) {
          const st = parseStatus(f.payload);
          if ('exitCode' in st && st.exitCode >= 0 && st.exitCode <= 255) x.finish({ exitCode: st.exitCode, ...(st.guestMs !== undefined ? { guestMs: st.guestMs } : {}) });
          else {
            // Only an exit code is the guest's to say; an error it made up never reaches the user.
            this.counters.execViolations += 1;
            x.finish({ error: new CarapaceError('CARAPACE_E_INTERNAL', `the cell's guest agent ended the exec session with a malformed status`) });
          }
          return;
        }
        x.unacked += f.payload.length;
        if (x.unacked > EXEC_WINDOW_BYTES) {
          this.counters.execViolations += 1;
          this.log.warn({ sessionId: msg.sessionId }, 'cell guest ignored exec flow control; session ended');
          this.killExec(msg.sessionId);
          x.finish({ error: new CarapaceError('CARAPACE_E_INTERNAL', `the cell's guest agent sent more exec output than the flow-control window allows`) });
          return;
        }
        x.output(f.channel === CHANNEL.stderr ? 'stderr' : 'stdout', Buffer.from(f.payload));
        return;
      }
      case 'pong': {
        const p = this.pending.get(`ping:${msg.seq}`);
        if (!p) {
          this.counters.unmatched += 1;
          return;
        }
        this.counters.accepted += 1;
        this.pending.delete(`ping:${msg.seq}`);
        clearTimeout(p.timer);
        p.resolve(undefined);
        return;
      }
    }
  }

  private safeEmit<K extends keyof HostChannelEvents>(event: K, ...args: HostChannelEvents[K]): void {
    try {
      // `as`: the tuple type of args matches the event by the generic constraint; EventEmitter's overloads cannot see it.
      (this.emit as (e: K, ...a: HostChannelEvents[K]) => boolean)(event, ...args);
    } catch (err) {
      this.log.error({ err, event }, 'host channel listener threw');
    }
  }

  /** Resolves once a handshaken connection is up (at once if it is), or rejects after `timeoutMs`. */
  waitReady(timeoutMs = this.opts.requestTimeoutMs): Promise<ReadyInfo> {
    if (this.handshaken && this.readyInfo) return Promise.resolve(this.readyInfo);
    if (this.mismatch) return Promise.reject(this.mismatch);
    return new Promise((resolve, reject) => {
      const w: WaitReady = {
        resolve: () => {
          clearTimeout(t);
          // `!`: resolve is only called right after readyInfo is set.
          resolve(this.readyInfo!);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      };
      const t = setTimeout(() => {
        this.readyWaiters.delete(w);
        reject(new CarapaceError('CARAPACE_E_UNAVAILABLE', `cell channel not connected within ${timeoutMs} ms`));
      }, timeoutMs);
      this.readyWaiters.add(w);
    });
  }

  private async request<T>(
    build: (requestId: string) => HostMessage,
    o: { expects?: ReplyType; key?: string; replay?: Pending['replay']; timeoutMs?: number } = {},
  ): Promise<T> {
    const started = Date.now();
    const timeoutMs = o.timeoutMs ?? this.opts.requestTimeoutMs;
    await this.waitReady(timeoutMs);
    this.nextId += 1;
    const requestId = o.key ?? `r${this.nextId}`;
    const msg = build(requestId);
    return new Promise<T>((resolve, reject) => {
      const left = Math.max(1, timeoutMs - (Date.now() - started));
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new CarapaceError('CARAPACE_E_UNAVAILABLE', `cell guest did not answer ${msg.type} within ${timeoutMs} ms`));
      }, left);
      // `as`: each caller knows the reply type of the message it built.
      this.pending.set(requestId, { resolve: resolve as (v: unknown) => void, reject, timer, expects: o.expects ?? 'ack', ...(o.replay ? { replay: o.replay } : {}) });
      try {
        this.writeMsg(msg);
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(requestId);
        reject(e as Error); // `as`: writeMsg throws Error
      }
    });
  }

  /** Starts a container in the cell; resolves once it runs (the guest acks after runc started it). */
  /** Resolves with how long the guest's `runc run` took to start the process (ms), when it says. */
  async run(req: GuestRunRequest): Promise<number | undefined> {
    this.expectContainer(req.containerId);
    const { mounts, ...rest } = req;
    // `mounts` only when there are some: a guest agent that predates them refuses the field.
    return this.request<number | undefined>((requestId) => ({ type: 'run', requestId, ...rest, ...(mounts && mounts.length > 0 ? { mounts } : {}) }));
  }

  /** SIGTERM, SIGKILL after graceMs; resolves once the container exited. */
  async stop(containerId: string, graceMs: number): Promise<void> {
    // The guest answers once the container exited: up to graceMs, then its SIGKILL; the
    // usual request timeout would give up on a long grace that is going as asked.
    await this.request((requestId) => ({ type: 'stop', requestId, containerId, graceMs }), { timeoutMs: graceMs + this.opts.requestTimeoutMs });
  }

  /** Removes the container from the cell (idempotent) and stops accepting messages about it. */
  async destroy(containerId: string): Promise<void> {
    await this.request((requestId) => ({ type: 'destroy', requestId, containerId }));
    this.forgetContainer(containerId);
  }

  /** The guest's containers that this host created (others are dropped and counted). */
  list(): Promise<GuestContainer[]> {
    return this.request<GuestContainer[]>((requestId) => ({ type: 'list', requestId }), { expects: 'containers' });
  }

  /**
   * Runs a health check of a container inside the cell (exec through runc in the guest,
   * http/tcp to the VM's 127.0.0.1). Resolves with the guest's verdict; rejects when the guest
   * does not answer within `timeoutMs` plus `marginMs` (the channel's own latency), refuses
   * the request (GuestError), or the channel is down.
   */
  check(containerId: string, action: WireCheckAction, timeoutMs: number, marginMs = 2_000): Promise<{ ok: boolean; message: string }> {
    return this.request<{ ok: boolean; message: string }>((requestId) => ({ type: 'check', requestId, containerId, action, timeoutMs }), {
      expects: 'checkResult',
      timeoutMs: timeoutMs + marginMs,
    });
  }

  /**
   * Every container the guest lists, including ids this host did not create: for removing
   * strays (e.g. after a host agent restart, containers of instances deleted meanwhile).
   * Untrusted input: callers may only ask the same guest to stop and destroy them.
   */
  listAll(): Promise<GuestContainer[]> {
    this.nextId += 1;
    return this.request<GuestContainer[]>((requestId) => ({ type: 'list', requestId }), { key: `all:${this.nextId}`, expects: 'containers' });
  }

  /** Puts the VM on its tenant network (a claimed warm cell): eth0's address, default route and resolver. */
  async configureNetwork(cfg: WireNetwork): Promise<void> {
    await this.request((requestId) => ({ type: 'network', requestId, ...cfg }));
  }

  /** Runs the guest's prewarm container (a warm pool cell, before it is offered); resolves once the guest acks. */
  async prewarm(timeoutMs = 180_000): Promise<void> {
    await this.request((requestId) => ({ type: 'prewarm', requestId }), { timeoutMs });
  }

  /** Mounts the hot-plugged disk with `serial` in the guest at `<state>/volumes/<volumeId>`. Idempotent. */
  async mountVolume(volumeId: string, serial: string, readOnly: boolean, timeoutMs = 60_000): Promise<void> {
    await this.request((requestId) => ({ type: 'mountVolume', requestId, volumeId, serial, readOnly }), { timeoutMs });
  }

  /** Unmounts a volume (GuestError GUEST_E_BUSY while a container uses it); `eject` powers its slot off. Idempotent. */
  async unmountVolume(volumeId: string, eject: boolean): Promise<void> {
    await this.request((requestId) => ({ type: 'unmountVolume', requestId, volumeId, eject }));
  }

  /** The volumes the guest has mounted and their users (guest data: act on this cell only). */
  volumes(): Promise<WireVolume[]> {
    return this.request<WireVolume[]>((requestId) => ({ type: 'volumes', requestId }), { expects: 'volumeList' });
  }

  /** Replaces one file set of a container in the guest (at most 64 KiB); the contents never reach a log. */
  async writeFiles(containerId: string, set: string, files: { path: string; data: Buffer; mode?: number }[]): Promise<void> {
    await this.request((requestId) => ({ type: 'writeFiles', requestId, containerId, set, files: files.map((f) => ({ path: f.path, data: f.data.toString('base64'), ...(f.mode !== undefined ? { mode: f.mode } : {}) })) }));
  }

  /** Exec sessions open now. */
  get execSessions(): number {
    return this.execs.size;
  }

  /** Asks the guest to kill a session, not waiting for its answer (the session is over here already). */
  private killExec(sessionId: string): void {
    this.execs.delete(sessionId);
    this.request((requestId) => ({ type: 'execKill', requestId, sessionId }), { timeoutMs: 10_000 }).catch(() => undefined);
  }

  /** Sends a message if connected; a lost connection ends every session anyway. */
  private trySend(msg: HostMessage): void {
    try {
      this.writeMsg(msg);
    } catch {
      // not connected: onClosed ends the session
    }
  }

  /**
   * Starts `opts.command` in a running container of the cell for an exec session: the guest
   * runs it with `runc exec` (under a terminal of its own with `tty`), and the session's
   * frames (exec/frames.ts) travel over this channel tagged with its id. The process side
   * looks like a local one: input, resize, output, exit code. Output is acknowledged to the
   * guest as it is handed to the listeners (the guest sends at most EXEC_WINDOW_BYTES ahead;
   * more ends the session). `exited` rejects with CARAPACE_E_UNAVAILABLE when the channel
   * goes down first. `kill` (the client went away) asks the guest to kill what the session
   * runs. Rejects with GuestError GUEST_E_NOT_FOUND when the container does not run.
   */
  async exec(containerId: string, opts: ExecOptions): Promise<ExecRun> {
    this.nextExec += 1;
    const sessionId = `x${this.nextExec}`;
    const listeners: ((stream: 'stdout' | 'stderr', data: Uint8Array) => void)[] = [];
    let early: { channel: 'stdout' | 'stderr'; data: Buffer }[] | undefined = [];
    let toAck = 0;
    let paused = false;
    let settle!: (r: { exitCode: number; guestMs?: number } | { error: Error }) => void; // `!`: assigned synchronously by the Promise executor below
    let guestMs: number | undefined;
    const exited = new Promise<number>((resolve, reject) => {
      settle = (r) => {
        if ('exitCode' in r) {
          guestMs ??= r.guestMs;
          resolve(r.exitCode);
        } else reject(r.error);
      };
    });
    exited.catch(() => undefined); // the session's owner awaits it; this keeps an unawaited end quiet
    const ack = (): void => {
      if (paused || toAck === 0 || this.execs.get(sessionId) !== x) return;
      x.unacked -= toAck;
      this.trySend({ type: 'execAck', sessionId, bytes: toAck });
      toAck = 0;
    };
    const deliver = (channel: 'stdout' | 'stderr', data: Buffer): void => {
      for (const l of listeners) l(channel, data);
      toAck += data.length;
      if (toAck >= EXEC_WINDOW_BYTES / 4) ack();
    };
    const x: HostExec = {
      unacked: 0,
      output: (channel, data) => {
        if (early) early.push({ channel, data });
        else deliver(channel, data);
      },
      finish: (r) => {
        if (this.execs.get(sessionId) === x) this.execs.delete(sessionId);
        settle(r);
      },
    };
    this.execs.set(sessionId, x);
    const input = (channel: 0 | 4 | 5, payload: Uint8Array | string = new Uint8Array(0)): void => {
      if (this.execs.get(sessionId) !== x) return;
      this.trySend({ type: 'execFrame', sessionId, frame: Buffer.from(encodeFrame(channel, payload)).toString('base64') });
    };
    try {
      await this.request((requestId) => ({
        type: 'exec',
        requestId,
        sessionId,
        containerId,
        command: opts.command,
        tty: opts.tty,
        stdin: opts.stdin,
        ...(opts.cols !== undefined ? { cols: opts.cols } : {}),
        ...(opts.rows !== undefined ? { rows: opts.rows } : {}),
      }));
    } catch (e) {
      this.execs.delete(sessionId);
      throw e;
    }
    return {
      process: {
        // Input waits in the channel's socket when the guest reads slowly: past HIGH_WATER
        // the session stops taking more (serveExec pauses its client) until the socket drains,
        // so one session's input cannot pile up in the agent. (In the guest, input goes to the
        // runc exec's pipe as it comes: that memory is the tenant's own VM's.)
        write: (data) => {
          if (!opts.stdin) return true;
          for (let off = 0; off < data.length; off += MAX_EXEC_CHUNK_BYTES) input(CHANNEL.stdin, data.subarray(off, off + MAX_EXEC_CHUNK_BYTES));
          return (this.socket?.writableLength ?? 0) <= HIGH_WATER;
        },
        onInputDrained: (l) => {
          const sock = this.socket;
          if (!sock || sock.destroyed || sock.writableLength === 0) return l();
          onDrainOrClose(sock, l);
        },
        endInput: () => input(CHANNEL.eof),
        resize: (cols, rows) => {
          if (opts.tty) input(CHANNEL.resize, JSON.stringify({ cols, rows }));
        },
        onOutput: (l) => {
          listeners.push(l);
          const held = early ?? [];
          early = undefined;
          for (const o of held) deliver(o.channel, o.data);
        },
        // The local end only: `kill` below is what reaches the guest.
        kill: () => x.finish({ exitCode: 137 }),
        // Holding back acknowledgements stops the guest reading the process's output.
        pause: () => void (paused = true),
        resume: () => {
          paused = false;
          ack();
        },
        exited,
        guestMs: () => guestMs,
      },
      kill: async () => {
        if (this.execs.get(sessionId) !== x) return;
        this.execs.delete(sessionId);
        await this.request((requestId) => ({ type: 'execKill', requestId, sessionId }), { timeoutMs: 10_000 });
      },
    };
  }

  /** Round trip time of a ping, ms. */
  async ping(): Promise<number> {
    const t0 = performance.now();
    this.nextId += 1;
    const seq = this.nextId;
    await this.request((_rid) => ({ type: 'ping', seq }), { key: `ping:${seq}`, expects: 'pong' });
    return performance.now() - t0;
  }

  /** Asks the guest to stop every container and exit (the VM powers off after). */
  async shutdown(graceMs?: number): Promise<void> {
    await this.request((requestId) => ({ type: 'shutdown', requestId, ...(graceMs !== undefined ? { graceMs } : {}) }));
  }

  /**
   * A container's log: the last `tail` lines kept by the guest (all kept if omitted, at most
   * maxReplayLines), then, with `follow`, live lines until `signal` aborts or `until` settles
   * (lines that arrived before it settled are still delivered: the guest sends a container's
   * last lines before its exit, so `until` = "it exited" ends the log after its last line).
   * Live lines are subject to the host's rate limit like every log event.
   */
  async *logs(containerId: string, opts: { tail?: number; follow?: boolean; signal?: AbortSignal; until?: Promise<unknown> } = {}): AsyncGenerator<LogEvent> {
    const max = Math.min(opts.tail ?? this.opts.maxReplayLines, this.opts.maxReplayLines);
    // Subscribe before asking for the replay so no line falls between the two.
    const queue: LogEvent[] = [];
    let wake: (() => void) | undefined;
    const onLog = (ev: LogEvent): void => {
      if (ev.containerId !== containerId) return;
      if (queue.length >= this.opts.maxFollowQueue) {
        queue.shift();
        this.counters.droppedFollow += 1;
      }
      queue.push(ev);
      wake?.();
    };
    if (opts.follow) this.on('log', onLog);
    try {
      const lines = await this.request<LogEvent[]>((requestId) => ({ type: 'logs', requestId, containerId, tail: max }), { replay: { containerId, remaining: max, lines: [] } });
      let lastSeq = 0;
      for (const l of lines) {
        lastSeq = Math.max(lastSeq, l.seq);
        yield l;
      }
      if (!opts.follow) return;
      const signal = opts.signal;
      const aborted = new Promise<void>((resolve) => {
        if (!signal) return;
        if (signal.aborted) resolve();
        signal.addEventListener('abort', () => resolve(), { once: true });
      });
      let ended = false;
      const end = opts.until?.then(
        () => void (ended = true),
        () => void (ended = true),
      );
      while (!signal?.aborted) {
        const ev = queue.shift();
        if (ev) {
          if (ev.seq > lastSeq) {
            lastSeq = ev.seq;
            yield ev;
          }
          continue;
        }
        if (ended) return;
        await Promise.race([new Promise<void>((r) => (wake = r)), aborted, ...(end ? [end] : [])]);
        wake = undefined;
      }
    } finally {
      this.off('log', onLog);
    }
  }
}
