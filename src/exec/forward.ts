/**
 * Port-forward streams: one TCP connection to a workload's port, carried as frames over a
 * WebSocket on every hop (CLI <-> API, API <-> the agent of another host), so a relay joins
 * two ports (session.ts `relayPorts`) without reading the bytes. One WebSocket per forwarded
 * connection: a connection's end, half-close and reset are the WebSocket's own, no
 * multiplexing to get wrong.
 *
 * A frame is one binary WebSocket message, its first byte the channel:
 *   0 data    bytes of the connection, either way
 *   1 eof     the sender's side of the connection ended (TCP half-close: FIN)
 *   2 status  JSON: {"ok": true} (the agent's first frame to the server: the workload
 *             accepted the connection) or {"error": {code, message}} (the connection could not
 *             be made, or was reset); an error is the last frame
 * The WebSocket's close ends the connection both ways.
 */
import { connect, type Socket } from 'node:net';
import { CarapaceError, ERROR_CATALOGUE, type ErrorCode, type FieldIssue } from '../model/errors.js';
import { LOW_WATER, onDrainOrClose, type ExecPort } from './session.js';

export const FWD = { data: 0, eof: 1, status: 2 } as const;
export type FwdChannel = (typeof FWD)[keyof typeof FWD];

/** What ends a forward stream: the workload took the connection, or why not. */
export type ForwardStatus = { ok: true } | { error: { code: string; message: string } };

/** How long a dial to a workload's port may take before it is CARAPACE_E_PORT_UNREACHABLE. */
export const DIAL_TIMEOUT_MS = 10_000;

/** The port of a port-forward request (`?port=N`, 1-65535); CARAPACE_E_BAD_QUERY at `query.port` otherwise. */
export function parsePortQuery(q: { get(name: string): string | null }): number {
  const v = q.get('port');
  const issues: FieldIssue[] = [];
  if (v === null || v === '') issues.push({ path: 'query.port', message: "give the workload's port to reach (port=1..65535)" });
  else if (!/^\d{1,5}$/.test(v) || Number(v) < 1 || Number(v) > 65535) issues.push({ path: 'query.port', message: 'must be an integer from 1 to 65535' });
  if (issues.length > 0) throw new CarapaceError('CARAPACE_E_BAD_QUERY', `invalid port-forward request: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
  return Number(v);
}

/** One frame: the channel byte, then the payload. */
export function fwdFrame(channel: FwdChannel, payload: Uint8Array | string = new Uint8Array(0)): Uint8Array {
  const body = typeof payload === 'string' ? new TextEncoder().encode(payload) : payload;
  const f = new Uint8Array(body.length + 1);
  f[0] = channel;
  f.set(body, 1);
  return f;
}

/** A decoded frame; undefined for an empty message or an unknown channel (ignored: a newer peer's). */
export function decodeFwdFrame(frame: Uint8Array): { channel: FwdChannel; payload: Uint8Array } | undefined {
  const c = frame[0];
  if (c === undefined || c > FWD.status) return undefined;
  return { channel: c as FwdChannel, payload: frame.subarray(1) }; // checked to be 0..2 just above
}

/** A status frame's content; a malformed one reads as an internal error. */
export function parseForwardStatus(payload: Uint8Array): ForwardStatus {
  try {
    const v = JSON.parse(new TextDecoder().decode(payload)) as { ok?: unknown; error?: { code?: unknown; message?: unknown } }; // fields checked below
    if (v.ok === true) return { ok: true };
    if (typeof v.error?.code === 'string' && typeof v.error.message === 'string') return { error: { code: v.error.code, message: v.error.message } };
  } catch {
    // falls through
  }
  return { error: { code: 'CARAPACE_E_INTERNAL', message: 'the port-forward stream sent a malformed status' } };
}

/** A status frame. */
export function statusFrame(s: ForwardStatus): Uint8Array {
  return fwdFrame(FWD.status, JSON.stringify(s));
}

/**
 * Opens a TCP connection to `address:port` (a workload's address on its tenant network);
 * resolves once connected. Refused, unreachable or not answering within `timeoutMs`:
 * CARAPACE_E_PORT_UNREACHABLE naming what was tried.
 */
export function dialWorkload(address: string, port: number, what: string, timeoutMs = DIAL_TIMEOUT_MS): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // Half-open allowed: the workload's end of data (FIN) is passed on as an eof frame while
    // the client may still send (Node would otherwise end our side at once).
    const sock = connect({ host: address, port, allowHalfOpen: true });
    const timer = setTimeout(() => fail(new Error(`timed out after ${timeoutMs / 1000}s`)), timeoutMs);
    function fail(e: unknown): void {
      clearTimeout(timer);
      sock.destroy();
      reject(new CarapaceError('CARAPACE_E_PORT_UNREACHABLE', `port ${port} of ${what} (${address}:${port}) cannot be reached: ${netReason(e)}`));
    }
    sock.once('error', fail);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.off('error', fail);
      // Kept until socketPort listens (and after: it adds its own): an error meanwhile must
      // not be an unhandled 'error' event, which would end the process.
      sock.on('error', () => undefined);
      sock.setNoDelay(true);
      resolve(sock);
    });
  });
}

/**
 * A connected socket as a frame port: its bytes become data frames, its end an eof frame; a
 * data frame is written to it, an eof frame ends its writing side (half-close), `close()` ends
 * it once what was written is flushed. A reset is an error status frame, then the end.
 * Nothing here logs or keeps the bytes.
 */
export function socketPort(sock: Socket): ExecPort {
  const listeners: ((frame: Uint8Array) => void)[] = [];
  const closers: (() => void)[] = [];
  let closed = false;
  // Frames from before anyone listens, kept for the first listener. pause() holds bytes, not
  // the workload's end nor a reset: a FIN with nothing unread is 'end' at once, paused or not
  // (Node reads 0 bytes on EOF), and the connection is made before the API writes its audit
  // record and completes the handshake. Dropped, the eof left the client waiting for ever on
  // a connection the workload had closed (a later reset goes unseen on a socket that reads no
  // more and has nothing to write).
  let early: Uint8Array[] | undefined = [];
  const emit = (f: Uint8Array): void => {
    if (early) early.push(f);
    else for (const l of listeners) l(f);
  };
  // Paused until someone listens: no byte is read before it has somewhere to go.
  sock.pause();
  sock.on('data', (d: Buffer) => emit(fwdFrame(FWD.data, d)));
  sock.on('end', () => emit(fwdFrame(FWD.eof)));
  sock.on('error', (e) => emit(statusFrame({ error: { code: 'CARAPACE_E_PORT_UNREACHABLE', message: `the connection to the workload broke: ${netReason(e)}` } })));
  sock.on('close', () => {
    closed = true;
    for (const c of closers.splice(0)) c();
  });
  return {
    send: (raw) => {
      const f = decodeFwdFrame(raw);
      if (!f || sock.destroyed) return;
      if (f.channel === FWD.data) sock.write(f.payload);
      else if (f.channel === FWD.eof) sock.end();
    },
    onFrame: (l) => {
      listeners.push(l);
      const kept = early ?? [];
      early = undefined;
      for (const f of kept) l(f);
      sock.resume();
    },
    onClose: (l) => {
      if (closed) l();
      else closers.push(l);
    },
    close: () => {
      if (!sock.destroyed) sock.end(() => sock.destroy());
    },
    pause: () => sock.pause(),
    resume: () => sock.resume(),
    backlog: () => sock.writableLength,
    onDrained: (l) => {
      if (sock.writableLength < LOW_WATER || sock.destroyed) l();
      else onDrainOrClose(sock, l); // 'drain' comes once the buffer emptied
    },
  };
}

/**
 * Reads the first frame of `port` (the agent's status) and resolves with a port that carries
 * the rest; rejects with the status's error (a CarapaceError with its code), or
 * CARAPACE_E_UNAVAILABLE when the port closes first or nothing comes within `timeoutMs`.
 */
export function afterStatus(port: ExecPort, timeoutMs: number): Promise<ExecPort> {
  return new Promise((resolve, reject) => {
    let first = true;
    let rest: Uint8Array[] | undefined = [];
    const listeners: ((f: Uint8Array) => void)[] = [];
    const timer = setTimeout(() => {
      first = false;
      port.close();
      reject(new CarapaceError('CARAPACE_E_UNAVAILABLE', `the host did not answer a port-forward within ${timeoutMs / 1000}s`));
    }, timeoutMs);
    port.onFrame((raw) => {
      if (!first) {
        if (rest) rest.push(raw);
        else for (const l of listeners) l(raw);
        return;
      }
      first = false;
      clearTimeout(timer);
      const f = decodeFwdFrame(raw);
      const s = f?.channel === FWD.status ? parseForwardStatus(f.payload) : { error: { code: 'CARAPACE_E_INTERNAL', message: 'the port-forward stream did not start with a status' } };
      if ('error' in s) {
        port.close();
        reject(new CarapaceError(catalogued(s.error.code), s.error.message));
        return;
      }
      resolve({
        send: (f2) => port.send(f2),
        onFrame: (l) => {
          listeners.push(l);
          const kept = rest ?? [];
          rest = undefined;
          for (const k of kept) l(k);
        },
        onClose: (l) => port.onClose(l),
        close: () => port.close(),
        ...(port.pause && port.resume ? { pause: () => port.pause?.(), resume: () => port.resume?.() } : {}),
        ...(port.backlog && port.onDrained ? { backlog: () => port.backlog?.() ?? 0, onDrained: (l: () => void) => port.onDrained?.(l) } : {}),
      });
    });
    port.onClose(() => {
      if (!first) return;
      first = false;
      clearTimeout(timer);
      reject(new CarapaceError('CARAPACE_E_UNAVAILABLE', 'the host closed the port-forward stream before answering'));
    });
  });
}

/** `code` when the catalogue has it (an older or newer agent may send one we lack), else CARAPACE_E_INTERNAL. */
function catalogued(code: string): ErrorCode {
  return Object.hasOwn(ERROR_CATALOGUE, code) ? (code as ErrorCode) : 'CARAPACE_E_INTERNAL'; // checked just before
}

/** A socket error as people say it (`connection refused`); runtime/probe-check.ts words checks the same way (this layer may not import it). */
function netReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code; // node socket errors carry `code`; others read as undefined
  const words: Record<string, string> = { ECONNREFUSED: 'connection refused', ECONNRESET: 'connection reset by peer', EHOSTUNREACH: 'no route to host', ENETUNREACH: 'network is unreachable', EPIPE: 'broken pipe', ETIMEDOUT: 'timed out' };
  return (code !== undefined ? words[code] : undefined) ?? (e instanceof Error ? e.message : String(e));
}
