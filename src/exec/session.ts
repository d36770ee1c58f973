/**
 * The ends of an exec session. An `ExecPort` is a frame stream (frames.ts) in both directions;
 * `serveExec` connects one to a running process (the agent's side), `wsPort` makes one of a
 * WebSocket (every hop), `relayPorts` joins two (the API between a client and a remote agent).
 * Nothing here reads or logs a session's bytes.
 */
import type { WebSocket } from 'ws';
import { CHANNEL, decodeFrame, encodeFrame, parseResize, type ExecStatus } from './frames.js';
import type { ExecProcess } from './process.js';

/** One end of a frame stream. */
export interface ExecPort {
  send(frame: Uint8Array): void;
  onFrame(listener: (frame: Uint8Array) => void): void;
  /** Called once, when the other side went away (or close() was called). */
  onClose(listener: () => void): void;
  /** Ends the stream after what was sent is flushed. */
  close(): void;
  /**
   * Flow control, for ports that have it (WebSockets, TCP connections): `pause`/`resume`
   * stop and restart the delivery of frames to onFrame listeners (the peer is then held back
   * by TCP); `backlog` is how many bytes were sent but not yet written out; `onDrained` calls
   * back once the backlog is below LOW_WATER (at once if it already is). relayPorts uses them
   * so that a fast sender and a slow reader do not pile bytes up in the relaying process.
   */
  pause?(): void;
  resume?(): void;
  backlog?(): number;
  onDrained?(listener: () => void): void;
  /**
   * A keepalive to the peer (a WebSocket ping). A paused port reads nothing, so it would not
   * notice its peer going away; a write does (the peer's end answers it with a reset).
   */
  ping?(): void;
}

/** While a port is paused for its input, it is pinged this often to notice a peer that went away. */
export const HELD_PING_MS = 2_000;

/** A relay stops reading a side while the other's backlog is above HIGH_WATER, until it is below LOW_WATER. */
export const HIGH_WATER = 1024 * 1024;
export const LOW_WATER = 256 * 1024;

/**
 * Calls `listener` once `stream` emits 'drain' or 'close', whichever comes first: a stream
 * that ends before it drains must not keep the side waiting on it paused.
 */
export function onDrainOrClose(stream: { on(e: 'drain' | 'close', l: () => void): unknown; off(e: 'drain' | 'close', l: () => void): unknown }, listener: () => void): void {
  const fire = (): void => {
    stream.off('drain', fire);
    stream.off('close', fire);
    listener();
  };
  stream.on('drain', fire);
  stream.on('close', fire);
}

/** Sends the last frame (status) and closes. */
export function endSession(port: ExecPort, status: ExecStatus): void {
  port.send(encodeFrame(CHANNEL.status, JSON.stringify(status)));
  port.close();
}

/**
 * Runs a session: input frames to the process, its output to the port, its exit code as the
 * status frame. When the port closes first (the client went away), `abandon` runs (the
 * driver kills what it started in the container). Resolves with the exit code, or undefined
 * when abandoned.
 */
export async function serveExec(proc: ExecProcess, port: ExecPort, abandon: () => Promise<void>): Promise<number | undefined> {
  let open = true;
  // Flow control both ways, so that a client that does not read (or a process that does not)
  // cannot make this process hold an unbounded amount of a session's bytes: the process's
  // output is no longer read while the port's backlog is above HIGH_WATER (the process then
  // blocks on its full pipe or terminal), and the port is no longer read while the process's
  // stdin holds input it has not taken (the client is then held back by TCP).
  let outputHeld = false;
  proc.onOutput((stream, data) => {
    if (!open) return;
    port.send(encodeFrame(stream === 'stderr' ? CHANNEL.stderr : CHANNEL.stdout, data));
    if (outputHeld || !port.backlog || !port.onDrained || port.backlog() <= HIGH_WATER) return;
    outputHeld = true;
    proc.pause();
    port.onDrained(() => {
      outputHeld = false;
      if (open) proc.resume();
    });
  });
  let inputHeld = false;
  port.onFrame((raw) => {
    const f = decodeFrame(raw);
    if (!f) return;
    if (f.channel === CHANNEL.stdin) {
      if (proc.write(f.payload) || inputHeld || !proc.onInputDrained || !port.pause || !port.resume) return;
      inputHeld = true;
      port.pause();
      const resume = port.resume.bind(port);
      const pinging = port.ping ? setInterval(() => port.ping?.(), HELD_PING_MS) : undefined;
      proc.onInputDrained(() => {
        inputHeld = false;
        clearInterval(pinging);
        resume();
      });
      port.onClose(() => clearInterval(pinging));
    } else if (f.channel === CHANNEL.eof) proc.endInput();
    else if (f.channel === CHANNEL.resize) {
      const s = parseResize(f.payload);
      if (s) proc.resize(s.cols, s.rows);
    }
  });
  const gone = new Promise<'gone'>((resolve) => port.onClose(() => resolve('gone')));
  const first = await Promise.race([proc.exited, gone]);
  if (first === 'gone') {
    open = false;
    await abandon().catch(() => undefined);
    proc.kill();
    return undefined;
  }
  open = false;
  const guestMs = proc.guestMs?.();
  endSession(port, { exitCode: first, ...(guestMs !== undefined ? { guestMs } : {}) });
  return first;
}

/**
 * A WebSocket as a port (binary messages are frames; text messages are ignored). Frames that
 * arrive before anyone listens are kept and handed to the first listener: a client types
 * (or pipes) as soon as the socket opens, while its far end (a relay waiting for the agent,
 * a driver starting the process) is not there yet.
 */
export function wsPort(ws: WebSocket): ExecPort {
  let early: Uint8Array[] | undefined = [];
  const listeners: ((frame: Uint8Array) => void)[] = [];
  let drained: (() => void)[] = [];
  const checkDrained = (): void => {
    if (drained.length === 0 || (ws.bufferedAmount >= LOW_WATER && ws.readyState === ws.OPEN)) return;
    const fire = drained;
    drained = [];
    for (const l of fire) l();
  };
  ws.once('close', () => checkDrained());
  ws.on('message', (data, isBinary) => {
    if (!isBinary) return;
    // ws hands a Buffer, or Buffer[] / ArrayBuffer when configured so; we use the default.
    const frame = Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data;
    if (early) early.push(frame);
    else for (const l of listeners) l(frame);
  });
  return {
    send: (frame) => {
      // The callback runs once the frame is written out: the backlog may have fallen.
      if (ws.readyState === ws.OPEN) ws.send(frame, { binary: true }, () => checkDrained());
    },
    onFrame: (l) => {
      listeners.push(l);
      const kept = early ?? [];
      early = undefined;
      for (const f of kept) l(f);
    },
    onClose: (l) => {
      if (ws.readyState === ws.CLOSED) l();
      else ws.once('close', () => l());
    },
    close: () => {
      if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(1000);
    },
    pause: () => ws.pause(),
    resume: () => ws.resume(),
    ping: () => {
      if (ws.readyState === ws.OPEN) ws.ping();
    },
    backlog: () => ws.bufferedAmount,
    onDrained: (l) => {
      drained.push(l);
      checkDrained();
    },
  };
}

/**
 * Forwards frames both ways between two ports until either closes; then closes the other.
 * When both ends of a direction have flow control, the sending side is paused while the
 * receiving side's backlog is above HIGH_WATER.
 */
export function relayPorts(a: ExecPort, b: ExecPort): Promise<void> {
  const pipe = (from: ExecPort, to: ExecPort): void => {
    let paused = false;
    from.onFrame((f) => {
      to.send(f);
      if (paused || !from.pause || !from.resume || !to.backlog || !to.onDrained || to.backlog() <= HIGH_WATER) return;
      paused = true;
      from.pause();
      const resume = from.resume.bind(from);
      to.onDrained(() => {
        paused = false;
        resume();
      });
    });
  };
  pipe(a, b);
  pipe(b, a);
  return new Promise((resolve) => {
    let done = false;
    const end = (other: ExecPort) => (): void => {
      if (done) return;
      done = true;
      other.close();
      resolve();
    };
    a.onClose(end(b));
    b.onClose(end(a));
  });
}
