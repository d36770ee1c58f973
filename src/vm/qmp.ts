/**
 * A small QMP (QEMU Machine Protocol) client: JSON objects over a unix socket. One connection
 * runs one command at a time (QMP answers in order); events are kept for callers that wait on
 * them (e.g. SHUTDOWN). Used by the VM manager for status, shutdown and run-time port forwards.
 */
import { connect, type Socket } from 'node:net';

/** An event QEMU sent on this connection, e.g. `{event: 'SHUTDOWN', data: {...}}`. */
export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
}

/** Raised when QEMU answers a command with `{error: {class, desc}}`. */
export class QmpError extends Error {
  constructor(readonly errorClass: string, desc: string) {
    super(`QMP ${errorClass}: ${desc}`);
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** An open, negotiated QMP connection. Create with `QmpClient.connect`; call `close()` when done. */
export class QmpClient {
  /** Events received so far, oldest first. */
  readonly events: QmpEvent[] = [];
  private buf = '';
  private readonly pending: Pending[] = [];
  private greeter: Pending | undefined;
  private closedErr: Error | undefined;
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error('QMP connection closed')));
  }

  /**
   * Connects to the QMP socket at `path`, waits for the greeting and negotiates capabilities.
   * Rejects when the socket cannot be reached within `timeoutMs` (e.g. QEMU has exited).
   */
  static async connect(path: string, timeoutMs = 5_000): Promise<QmpClient> {
    const sock = connect(path);
    const client = new QmpClient(sock);
    const timer = setTimeout(() => sock.destroy(new Error(`QMP ${path}: no greeting within ${timeoutMs} ms`)), timeoutMs);
    try {
      await new Promise<unknown>((resolve, reject) => {
        if (client.closedErr) reject(client.closedErr);
        else client.greeter = { resolve, reject };
      });
      await client.execute('qmp_capabilities');
      return client;
    } catch (e) {
      sock.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Runs one QMP command and resolves with its `return` value; rejects with QmpError on error. */
  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const run = async (): Promise<unknown> => {
      if (this.closedErr) throw this.closedErr;
      return new Promise<unknown>((resolve, reject) => {
        this.pending.push({ resolve, reject });
        this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
      });
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Runs a human monitor (HMP) command line, e.g. `hostfwd_add ...`, and returns its output text. */
  async hmp(commandLine: string): Promise<string> {
    const out = await this.execute('human-monitor-command', { 'command-line': commandLine });
    return typeof out === 'string' ? out : '';
  }

  /** Closes the connection; pending commands reject. Idempotent. */
  close(): void {
    this.sock.destroy();
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line === '') continue;
      let msg: Record<string, unknown>;
      try {
        // QMP lines are JSON objects by protocol; anything else is a broken peer.
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        this.fail(new Error(`QMP: unparsable line ${line.slice(0, 200)}`));
        return;
      }
      if ('QMP' in msg) {
        this.greeter?.resolve(msg);
        this.greeter = undefined;
      } else if ('event' in msg) {
        // Shape checked by the `'event' in msg` test above; QEMU events always carry a name.
        this.events.push(msg as unknown as QmpEvent);
      } else if ('return' in msg) {
        this.pending.shift()?.resolve(msg.return);
      } else if ('error' in msg) {
        const err = (msg.error ?? {}) as { class?: string; desc?: string }; // QMP error object shape
        this.pending.shift()?.reject(new QmpError(err.class ?? 'GenericError', err.desc ?? 'unknown error'));
      }
    }
  }

  private fail(e: Error): void {
    this.closedErr ??= e;
    for (const p of this.pending.splice(0)) p.reject(e);
    this.greeter?.reject(e);
    this.greeter = undefined;
  }
}
