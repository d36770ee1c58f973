/**
 * The guest agent's byte link to the host. Three transports with one shape:
 *  - `PortLink`: the virtio-serial port device in the VM. A read returns EOF (0 bytes) while
 *    no host end is connected (QEMU's chardev has no client) and blocks while one is connected
 *    and silent; a write blocks while the host is away. So the link polls after EOF and the
 *    agent writes only after the host said hello on the current connection.
 *  - `SocketListenLink`: listens on a unix socket and takes the place of QEMU's chardev
 *    server, so a HostChannel connects to the agent exactly as to a VM (tests, dev).
 *  - `SocketConnectLink`: connects to a unix socket and reconnects after it closes.
 * A newer host connection replaces an older one, as a host agent restart does.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';

/** Callbacks a link calls; set by the agent before `start`. */
export interface LinkHandlers {
  /** A new host connection (sockets), or data after EOF (port). */
  up(): void;
  data(chunk: Buffer): void;
  /** The host end went away. */
  down(): void;
}

/** A byte link to the host. */
export interface Link {
  /** Runs until `signal` aborts. */
  start(signal: AbortSignal, handlers: LinkHandlers): Promise<void>;
  /** Writes to the current connection; resolves when written (or dropped because it closed). */
  write(buf: Buffer): Promise<void>;
}

function abortable(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** The virtio-serial port device (`/dev/vportNpM`). */
/** How long a port without its host is read every 100 ms before every second (PortLink). */
const PORT_QUICK_RETRY_MS = 10_000;

export class PortLink implements Link {
  private fh: FileHandle | undefined;

  constructor(private readonly path: string) {}

  /** @inheritdoc */
  async start(signal: AbortSignal, h: LinkHandlers): Promise<void> {
    const fh = await open(this.path, 'r+');
    this.fh = fh;
    let up = false;
    let noHostSince: number | undefined;
    const buf = Buffer.alloc(64 * 1024);
    try {
      while (!signal.aborted) {
        // A blocking read on the libuv pool: returns when data comes or the host end closes.
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (bytesRead === 0) {
          if (up) {
            up = false;
            h.down();
          }
          // No host on the port: a read returns at once, and the port has no event to wait on.
          // Every 100 ms while the host is likely to come soon (a boot, an agent restart), then
          // every second: at 10 reads a second an idle cell used 4.9% of a core under
          // emulation (0.55% without its agent).
          noHostSince ??= performance.now();
          await abortable(performance.now() - noHostSince < PORT_QUICK_RETRY_MS ? 100 : 1_000, signal);
          continue;
        }
        noHostSince = undefined;
        if (!up) {
          up = true;
          h.up();
        }
        h.data(Buffer.from(buf.subarray(0, bytesRead)));
      }
    } finally {
      this.fh = undefined;
      await fh.close().catch(() => undefined);
    }
  }

  /** @inheritdoc */
  async write(b: Buffer): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    let off = 0;
    while (off < b.length) {
      const { bytesWritten } = await fh.write(b, off, b.length - off, null);
      off += bytesWritten;
    }
  }
}

function socketWrite(sock: Socket | undefined, b: Buffer): Promise<void> {
  return new Promise((resolve) => {
    if (!sock || sock.destroyed) return resolve();
    // Resolve on flush or on failure: a closed connection loses what was in flight, which
    // the protocol tolerates (state is re-sent on the next hello).
    sock.write(b, () => resolve());
  });
}

/** Listens on a unix socket in place of QEMU's chardev server; one host connection at a time. */
export class SocketListenLink implements Link {
  private current: Socket | undefined;

  constructor(private readonly path: string) {}

  /** @inheritdoc */
  async start(signal: AbortSignal, h: LinkHandlers): Promise<void> {
    await rm(this.path, { force: true });
    const server: Server = createServer((sock) => {
      const old = this.current;
      this.current = sock;
      if (old) old.destroy();
      h.up();
      sock.on('data', (b: Buffer) => {
        if (this.current === sock) h.data(b);
      });
      sock.on('error', () => undefined);
      sock.on('close', () => {
        if (this.current === sock) {
          this.current = undefined;
          h.down();
        }
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => resolve());
    });
    await new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      signal.addEventListener('abort', () => resolve(), { once: true });
    });
    this.current?.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(this.path, { force: true });
  }

  /** @inheritdoc */
  write(b: Buffer): Promise<void> {
    return socketWrite(this.current, b);
  }
}

/** Connects to a unix socket, reconnecting every `retryMs` after it closes or fails. */
export class SocketConnectLink implements Link {
  private current: Socket | undefined;

  constructor(
    private readonly path: string,
    private readonly retryMs = 200,
  ) {}

  /** @inheritdoc */
  async start(signal: AbortSignal, h: LinkHandlers): Promise<void> {
    while (!signal.aborted) {
      await new Promise<void>((resolve) => {
        const sock = createConnection(this.path);
        const onAbort = (): void => {
          sock.destroy();
        };
        signal.addEventListener('abort', onAbort, { once: true });
        let wasUp = false;
        sock.on('connect', () => {
          this.current = sock;
          wasUp = true;
          h.up();
        });
        sock.on('data', (b: Buffer) => h.data(b));
        sock.on('error', () => undefined);
        sock.on('close', () => {
          signal.removeEventListener('abort', onAbort);
          this.current = undefined;
          if (wasUp) h.down();
          resolve();
        });
      });
      await abortable(this.retryMs, signal);
    }
  }

  /** @inheritdoc */
  write(b: Buffer): Promise<void> {
    return socketWrite(this.current, b);
  }
}
