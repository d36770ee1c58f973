/**
 * The guest agent: serves the cell protocol on a link to the host and runs the cell's
 * containers through the Supervisor. It outlives host disconnects: while the host is away
 * outgoing messages wait in a bounded outbox (oldest dropped first, log drops counted and
 * reported as `dropped`), and every hello is answered with ready, the queued messages, and
 * the current state of every container. Log lines are rate-limited per container.
 */
import type { Logger } from 'pino';
import type { Link } from './link.js';
import {
  encodeLine,
  LineSplitter,
  MAX_CHECK_MESSAGE_CHARS,
  MAX_GUEST_LINE_BYTES,
  MAX_HOST_LINE_BYTES,
  parseHostLine,
  PROTOCOL_VERSION,
  TokenBucket,
  type GuestMessage,
  type HostMessage,
  type WireNetwork,
} from './protocol.js';
import { GuestExecSessions } from './exec.js';
import { cellUsage, Supervisor, SupervisorError, type SupervisorOptions } from './supervisor.js';

/** Options of the guest agent. */
export interface GuestAgentOptions extends Omit<SupervisorOptions, 'logger'> {
  link: Link;
  logger: Logger;
  /**
   * Usage report period. Default 10 s, the host's own sampling period: reading every
   * container's cgroup files more often only costs an idle cell CPU (under emulation all of an
   * idle agent's wake-ups together were ~0.5% of a core). A container's state change also
   * brings a report 1 s later, so the host's view of what runs does not wait for the period.
   * A host ping more than half a period after the last report brings the next one at once
   * (the timer then waits one and a half periods): while the host pings, an idle cell wakes
   * once per ping, not once per ping and once per report.
   */
  usageIntervalMs?: number;
  /** Log lines per container per second before the guest drops (and counts) them. Default 1000/s, burst 1000. */
  logRatePerSec?: number;
  logBurst?: number;
  /** Outbox bounds while the host is away. Defaults 10 000 messages, 4 MiB. */
  outboxMaxMessages?: number;
  outboxMaxBytes?: number;
  /** performance.now() at which agentStartMs starts counting. Default 0: the process's start (performance.timeOrigin). */
  processStartMs?: number;
  /** Puts the VM on its tenant network (a `network` request). Default: refuse (no network to configure). */
  configureNetwork?: (cfg: WireNetwork) => Promise<void>;
  /**
   * Resolves once the VM is fully set up: in a cell, /init starts the agent before it loads the
   * modules for the network, disks and overlay and before eth0 has its address (see
   * init-script.ts), so the handshake does not wait for them. Work that needs them (`run`,
   * `network`, `mountVolume`, `prewarm`) waits for this first. Default: ready.
   */
  initDone?: () => Promise<void>;
}

/** Counters of the agent. */
export interface GuestAgentStats {
  hellos: number;
  invalidHostLines: number;
  outboxDropped: number;
  rateDropped: number;
}

async function bootMs(): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  const up = await readFile('/proc/uptime', 'utf8').catch(() => '0');
  return Math.round(Number(up.split(' ')[0]) * 1000) || 0;
}

/** The in-VM agent. Create, then `start(signal)`; resolves after `shutdown` or the signal. */
export class GuestAgent {
  readonly supervisor: Supervisor;
  /** Exec sessions; all are killed when the host connection ends (a new host cannot take them over). */
  readonly execs: GuestExecSessions;
  private readonly log: Logger;
  private splitter = new LineSplitter(MAX_HOST_LINE_BYTES);
  private hostReady = false;
  private versionOk = false;
  private cellId: string | undefined;
  private outbox: Buffer[] = [];
  private outboxBytes = 0;
  private pumping = false;
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly drops = new Map<string, number>();
  private dropTimer: NodeJS.Timeout | undefined;
  private usageSoonTimer: NodeJS.Timeout | undefined;
  /** The periodic usage report's timer (re-armed by each report; see usageIntervalMs). */
  private usageTimer: NodeJS.Timeout | undefined;
  private lastUsageAt = -Infinity;
  private stopped = false;
  private readyAtMs = 0;
  private bootMs = 0;
  /** performance.now() when bootMs was read. */
  private startedAt = 0;
  /** The one prewarm of this agent (a `prewarm` request runs it; later ones wait for the same). */
  private prewarming: Promise<void> | undefined;
  /** A `network` request came: the cell is (or was just made) a tenant's. */
  private networkRequested = false;
  private shutdownRequested: (() => void) | undefined;
  private readonly counters: GuestAgentStats = { hellos: 0, invalidHostLines: 0, outboxDropped: 0, rateDropped: 0 };

  constructor(private readonly opts: GuestAgentOptions) {
    this.log = opts.logger.child({ component: 'guest-agent' });
    this.supervisor = new Supervisor({ ...opts, logger: opts.logger }, {
      state: (containerId, state) => {
        this.send({ type: 'state', containerId, state });
        this.usageSoon();
      },
      log: (containerId, line) => {
        let b = this.buckets.get(containerId);
        if (!b) {
          b = new TokenBucket(this.opts.logRatePerSec ?? 1000, this.opts.logBurst ?? 1000, Date.now());
          this.buckets.set(containerId, b);
        }
        if (!b.take(Date.now())) {
          this.counters.rateDropped += 1;
          this.countDrop(containerId);
          return;
        }
        this.send({ type: 'log', containerId, stream: line.stream, time: line.time, text: line.text, seq: line.seq });
      },
    });
    this.execs = new GuestExecSessions(this.supervisor, (m) => this.send(m), this.log);
  }

  /** Counters since start. */
  stats(): GuestAgentStats {
    return { ...this.counters };
  }

  /** Serves until `signal` aborts or the host asks for shutdown; stops every container before resolving. */
  async start(signal: AbortSignal): Promise<void> {
    this.bootMs = await bootMs();
    this.startedAt = performance.now();
    const inner = new AbortController();
    const stopAll = (): void => inner.abort();
    signal.addEventListener('abort', stopAll, { once: true });
    this.shutdownRequested = stopAll;
    this.armUsage();
    this.readyAtMs = performance.now() - (this.opts.processStartMs ?? 0);
    try {
      await this.opts.link.start(inner.signal, {
        up: () => {
          this.splitter = new LineSplitter(MAX_HOST_LINE_BYTES);
          this.hostReady = false;
          this.endExecs();
        },
        down: () => {
          this.hostReady = false;
          this.endExecs();
          this.log.info('host disconnected; buffering');
        },
        data: (chunk) => {
          for (const line of this.splitter.push(chunk)) this.onLine(line);
        },
      });
    } finally {
      this.stopped = true;
      clearTimeout(this.usageTimer);
      clearTimeout(this.dropTimer);
      clearTimeout(this.usageSoonTimer);
      signal.removeEventListener('abort', stopAll);
      await this.execs.killAll();
      await this.supervisor.destroyAll(2000);
    }
  }

  private onLine(line: string): void {
    const r = parseHostLine(line);
    if (!r.ok) {
      this.counters.invalidHostLines += 1;
      // Answer with the requestId when one can be read, so the host's request fails fast.
      let requestId: unknown;
      try {
        requestId = (JSON.parse(line) as { requestId?: unknown }).requestId; // `as`: only probed for a string below
      } catch {
        requestId = undefined;
      }
      if (typeof requestId === 'string' && requestId.length > 0 && requestId.length <= 64) {
        this.send({ type: 'err', requestId, code: 'GUEST_E_BAD_REQUEST', message: `invalid request: ${r.detail}`.slice(0, 4000) });
      }
      return;
    }
    const msg = r.msg;
    if (msg.type === 'hello') {
      this.onHello(msg);
      return;
    }
    if (!this.hostReady) return; // the host speaks first; anything before hello is stale
    if (!this.versionOk && msg.type !== 'ping') {
      if ('requestId' in msg) this.send({ type: 'err', requestId: msg.requestId, code: 'GUEST_E_VERSION', message: `guest agent speaks protocol version ${PROTOCOL_VERSION}` });
      return;
    }
    void this.serve(msg);
  }

  /**
   * The host connection ended (or a new one began): its exec sessions are killed, and their
   * output still queued is dropped, never sent to the next host (whose session ids may repeat).
   */
  private endExecs(): void {
    if (this.execs.size > 0) void this.execs.killAll().catch((err: unknown) => this.log.warn({ err }, 'killing exec sessions failed'));
    const keep = this.outbox.filter((b) => !b.subarray(0, 20).toString('latin1').startsWith('{"type":"execFrame"'));
    if (keep.length !== this.outbox.length) {
      this.outbox = keep;
      this.outboxBytes = keep.reduce((n, b) => n + b.length, 0);
    }
  }

  private onHello(msg: Extract<HostMessage, { type: 'hello' }>): void {
    this.counters.hellos += 1;
    // A hello is a new host connection (a port has no up/down of its own while the host is away).
    this.endExecs();
    this.cellId = msg.cellId;
    this.versionOk = msg.version === PROTOCOL_VERSION;
    this.log.info({ cellId: msg.cellId, uptimeMs: this.bootMs + Math.round(performance.now() - this.startedAt) }, 'host said hello');
    if (!this.versionOk) this.log.error({ hostVersion: msg.version, guestVersion: PROTOCOL_VERSION }, 'host speaks another protocol version');
    const ready = encodeLine({ type: 'ready', version: PROTOCOL_VERSION, bootMs: this.bootMs, agentStartMs: Math.round(this.readyAtMs), cellId: this.cellId }, MAX_GUEST_LINE_BYTES);
    // ready first, then what waited while the host was away, then the current truth.
    this.outbox.unshift(ready);
    this.outboxBytes += ready.length;
    this.hostReady = true;
    for (const c of this.supervisor.list()) this.send({ type: 'state', containerId: c.containerId, state: c.state });
    this.reportDrops();
    this.pump();
  }

  /**
   * Once per agent: the prewarm container, unless the cell already has work. A warm cell
   * claimed meanwhile gets its tenant's network first and then its containers, which warm the
   * cell up themselves and which a prewarm beside them would only slow down.
   */
  private prewarm(): Promise<void> {
    this.prewarming ??= (async () => {
      const containers = this.supervisor.list().length;
      if (containers === 0 && !this.networkRequested) await this.supervisor.prewarm();
      else this.log.info({ containers, network: this.networkRequested }, 'prewarm skipped: the cell has work');
    })();
    return this.prewarming;
  }

  private async serve(msg: Exclude<HostMessage, { type: 'hello' }>): Promise<void> {
    if (msg.type === 'run' || msg.type === 'network' || msg.type === 'mountVolume' || msg.type === 'prewarm') await this.opts.initDone?.();
    if (msg.type === 'ping') {
      this.send({ type: 'pong', seq: msg.seq });
      // The report that is due soon rides on this wake-up (see usageIntervalMs).
      if (performance.now() - this.lastUsageAt >= this.usageIntervalMs / 2) void this.reportUsage(true);
      return;
    }
    if (msg.type === 'execFrame') {
      this.execs.frame(msg.sessionId, msg.frame);
      return;
    }
    if (msg.type === 'execAck') {
      this.execs.ack(msg.sessionId, msg.bytes);
      return;
    }
    const requestId = msg.requestId;
    try {
      switch (msg.type) {
        case 'run': {
          const t0 = performance.now();
          await this.supervisor.run(msg);
          this.send({ type: 'ack', requestId, startMs: Math.round((performance.now() - t0) * 10) / 10 });
          return;
        }
        case 'stop':
          await this.supervisor.stop(msg.containerId, msg.graceMs);
          break;
        case 'destroy':
          await this.supervisor.destroy(msg.containerId);
          this.buckets.delete(msg.containerId);
          this.drops.delete(msg.containerId);
          break;
        case 'list':
          this.send({ type: 'containers', requestId, containers: this.supervisor.list().slice(0, 512) });
          return;
        case 'check': {
          const r = await this.supervisor.check(msg.containerId, msg.action, msg.timeoutMs);
          this.send({ type: 'checkResult', requestId, ok: r.ok, message: r.message.slice(0, MAX_CHECK_MESSAGE_CHARS) });
          return;
        }
        case 'network': {
          if (!this.opts.configureNetwork) throw new SupervisorError('GUEST_E_BAD_REQUEST', 'this guest agent configures no network');
          const { type: _t, requestId: _r, ...cfg } = msg;
          this.networkRequested = true;
          await this.opts.configureNetwork(cfg);
          this.log.info({ address: cfg.address, gateway: cfg.gateway }, 'network configured');
          break;
        }
        case 'prewarm':
          await this.prewarm();
          break;
        case 'mountVolume':
          await this.supervisor.volumes.mount(msg.volumeId, msg.serial, msg.readOnly);
          this.log.info({ volume: msg.volumeId, serial: msg.serial, readOnly: msg.readOnly }, 'volume mounted');
          break;
        case 'unmountVolume':
          await this.supervisor.volumes.unmount(msg.volumeId, msg.eject);
          this.log.info({ volume: msg.volumeId, eject: msg.eject }, 'volume unmounted');
          break;
        case 'volumes':
          this.send({ type: 'volumeList', requestId, volumes: this.supervisor.volumes.list().slice(0, 64) });
          return;
        case 'writeFiles':
          // Only names and sizes are logged: the contents may be secrets.
          await this.supervisor.volumes.writeFiles(msg.containerId, msg.set, msg.files);
          this.log.info({ containerId: msg.containerId, set: msg.set, files: msg.files.length }, 'file set written');
          break;
        case 'exec':
          await this.execs.start(msg);
          break;
        case 'execKill':
          await this.execs.kill(msg.sessionId);
          break;
        case 'logs':
          for (const l of this.supervisor.tail(msg.containerId, msg.tail)) {
            this.send({ type: 'log', containerId: msg.containerId, stream: l.stream, time: l.time, text: l.text, seq: l.seq, requestId });
          }
          break;
        case 'shutdown':
          this.send({ type: 'ack', requestId });
          await this.supervisor.destroyAll(msg.graceMs ?? 10_000);
          this.shutdownRequested?.();
          return;
      }
      this.send({ type: 'ack', requestId });
    } catch (e) {
      const code = e instanceof SupervisorError ? e.code : 'GUEST_E_INTERNAL';
      this.send({ type: 'err', requestId, code, message: (e as Error).message.slice(0, 4000) }); // `as`: supervisor throws Errors
    }
  }

  /** Queues a message for the host; the outbox is bounded, oldest dropped first. */
  private send(msg: GuestMessage): void {
    let buf: Buffer;
    try {
      buf = encodeLine(msg, MAX_GUEST_LINE_BYTES);
    } catch (e) {
      this.log.error({ err: (e as Error).message, type: msg.type }, 'message too large; not sent'); // `as`: encodeLine throws Error
      return;
    }
    this.outbox.push(buf);
    this.outboxBytes += buf.length;
    const maxN = this.opts.outboxMaxMessages ?? 10_000;
    const maxB = this.opts.outboxMaxBytes ?? 4 * 1024 * 1024;
    while (this.outbox.length > maxN || this.outboxBytes > maxB) {
      const old = this.outbox.shift();
      if (!old) break;
      this.outboxBytes -= old.length;
      this.counters.outboxDropped += 1;
      // A dropped log line is reported per container; other messages are re-derived on hello.
      const head = old.subarray(0, 200).toString('utf8');
      const m = /^\{"type":"log","containerId":"([a-z0-9][a-z0-9_.-]{0,63})"/.exec(head);
      if (m?.[1] !== undefined) this.countDrop(m[1]);
    }
    this.pump();
  }

  /**
   * Counts a dropped log line and reports the drops within a second. A timer armed only when
   * there is something to report: an idle cell's agent must not wake every second for nothing.
   */
  private countDrop(containerId: string): void {
    this.drops.set(containerId, (this.drops.get(containerId) ?? 0) + 1);
    this.dropTimer ??= setTimeout(() => {
      this.dropTimer = undefined;
      this.reportDrops();
    }, 1000).unref();
  }

  /** A usage report 1 s from now (one for a burst of state changes), besides the periodic one. */
  private usageSoon(): void {
    this.usageSoonTimer ??= setTimeout(() => {
      this.usageSoonTimer = undefined;
      void this.reportUsage();
    }, 1000).unref();
  }

  private reportDrops(): void {
    for (const [containerId, count] of this.drops) {
      if (count === 0) continue;
      this.drops.delete(containerId);
      this.send({ type: 'dropped', containerId, count });
    }
  }

  private get usageIntervalMs(): number {
    return this.opts.usageIntervalMs ?? 10_000;
  }

  /**
   * (Re)starts the usage period. After a report that rode on a ping the timer waits one and a
   * half periods: the next ping comes about a period later and takes the next report, and a
   * timer due at the same moment would wake the guest a second time.
   */
  private armUsage(afterPing = false): void {
    clearTimeout(this.usageTimer);
    if (this.stopped) return;
    this.usageTimer = setTimeout(() => void this.reportUsage(), afterPing ? this.usageIntervalMs * 1.5 : this.usageIntervalMs);
  }

  private async reportUsage(afterPing = false): Promise<void> {
    this.lastUsageAt = performance.now();
    this.armUsage(afterPing);
    try {
      const [cell, containers] = await Promise.all([cellUsage(), this.supervisor.usageAll()]);
      this.send({ type: 'usage', cell, containers: containers.slice(0, 512) });
    } catch (err) {
      this.log.warn({ err }, 'usage report failed');
    }
  }

  /** Writes the outbox to the host, one batch at a time, while the host is there. */
  private pump(): void {
    if (this.pumping || !this.hostReady || this.outbox.length === 0) return;
    this.pumping = true;
    void (async () => {
      try {
        while (this.hostReady && this.outbox.length > 0) {
          const batch: Buffer[] = [];
          let bytes = 0;
          while (this.outbox.length > 0 && bytes < 256 * 1024) {
            const b = this.outbox.shift();
            if (!b) break;
            batch.push(b);
            bytes += b.length;
          }
          this.outboxBytes -= bytes;
          await this.opts.link.write(Buffer.concat(batch, bytes));
        }
      } catch (err) {
        this.log.warn({ err }, 'write to host failed');
      } finally {
        this.pumping = false;
      }
      if (this.hostReady && this.outbox.length > 0) this.pump();
    })();
  }
}
