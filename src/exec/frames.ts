/**
 * The exec session protocol, as pure data: what a client asks for (`ExecOptions`, parsed from
 * the exec URL's query with field paths) and the frames both ends exchange. One frame format
 * on every hop (CLI <-> API, API <-> an agent on another host, host agent <-> guest agent in
 * a cell, there base64 in the channel's JSON lines), so a relay forwards frames without
 * reading them.
 *
 * A frame is one binary WebSocket message: its first byte is the channel (as Kubernetes'
 * channel.k8s.io protocol), the rest the payload. Control frames carry JSON.
 *   0 stdin    client -> process bytes
 *   1 stdout   process -> client bytes (with a terminal, everything the terminal shows)
 *   2 stderr   process -> client bytes (never with a terminal: a pty has one output)
 *   3 status   process end, last frame: {"exitCode": n} or {"error": {code, message}}
 *   4 resize   client -> terminal size {"cols": c, "rows": r}
 *   5 eof      client -> the process's stdin is closed (no payload)
 */
import { CarapaceError, type FieldIssue } from '../model/errors.js';

export const CHANNEL = { stdin: 0, stdout: 1, stderr: 2, status: 3, resize: 4, eof: 5 } as const;
export type Channel = (typeof CHANNEL)[keyof typeof CHANNEL];

/** What a client asks to run in an instance's container. */
export interface ExecOptions {
  /** argv: the program and its arguments, run without a shell. */
  command: string[];
  /** Run under a pseudo-terminal (resize, job control, Ctrl-C as a byte the terminal turns into SIGINT). */
  tty: boolean;
  /** Forward the client's input; without it the process's stdin is empty (/dev/null). */
  stdin: boolean;
  /** The terminal's size at start (tty only). */
  cols?: number;
  rows?: number;
}

/**
 * How the process ended, or why the session could not run it (the last frame). `guestMs`
 * (cells): how long the command took inside the VM, its `runc exec` from spawn to exit as the
 * guest's clock measured it: what the session's round trip compares with (bench/rollout.ts).
 */
export type ExecStatus = { exitCode: number; guestMs?: number } | { error: { code: string; message: string } };

/** Limits on a command: it travels in the URL and in the audit record. */
export const MAX_COMMAND_ARGS = 256;
export const MAX_COMMAND_BYTES = 8192;

/**
 * Parses the exec URL's query (`command` repeated, one argv word each; `tty`, `stdin`
 * true|false; `cols`, `rows`). Throws CARAPACE_E_BAD_QUERY naming each bad parameter.
 */
export function parseExecQuery(q: { getAll(name: string): string[]; get(name: string): string | null }): ExecOptions {
  const issues: FieldIssue[] = [];
  const command = q.getAll('command');
  if (command.length === 0) issues.push({ path: 'query.command', message: 'give the command to run (one command= parameter per argument)' });
  if (command.length > MAX_COMMAND_ARGS) issues.push({ path: 'query.command', message: `at most ${MAX_COMMAND_ARGS} arguments` });
  if (command.reduce((n, a) => n + a.length, 0) > MAX_COMMAND_BYTES) issues.push({ path: 'query.command', message: `at most ${MAX_COMMAND_BYTES} characters in all` });
  if (command[0] === '') issues.push({ path: 'query.command[0]', message: 'the program name is empty' });
  command.forEach((a, i) => {
    if (a.includes('\0')) issues.push({ path: `query.command[${i}]`, message: 'contains a NUL character' });
  });
  const bool = (name: string): boolean => {
    const v = q.get(name);
    if (v === null || v === '' || v === 'false' || v === '0') return false;
    if (v === 'true' || v === '1') return true;
    issues.push({ path: `query.${name}`, message: 'must be true or false' });
    return false;
  };
  const size = (name: string): number | undefined => {
    const v = q.get(name);
    if (v === null || v === '') return undefined;
    if (!/^\d{1,4}$/.test(v) || Number(v) < 1 || Number(v) > 4096) {
      issues.push({ path: `query.${name}`, message: 'must be an integer from 1 to 4096' });
      return undefined;
    }
    return Number(v);
  };
  const tty = bool('tty');
  const stdin = bool('stdin');
  const cols = size('cols');
  const rows = size('rows');
  if (issues.length > 0) throw new CarapaceError('CARAPACE_E_BAD_QUERY', `invalid exec request: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
  return { command, tty, stdin, ...(cols !== undefined ? { cols } : {}), ...(rows !== undefined ? { rows } : {}) };
}

/** The query string of `o` (the inverse of parseExecQuery). */
export function execQuery(o: ExecOptions): string {
  const q = new URLSearchParams();
  for (const a of o.command) q.append('command', a);
  if (o.tty) q.set('tty', 'true');
  if (o.stdin) q.set('stdin', 'true');
  if (o.cols !== undefined) q.set('cols', String(o.cols));
  if (o.rows !== undefined) q.set('rows', String(o.rows));
  return q.toString();
}

/** One frame: the channel byte, then the payload. */
export function encodeFrame(channel: Channel, payload: Uint8Array | string = new Uint8Array(0)): Uint8Array<ArrayBuffer> {
  const body = typeof payload === 'string' ? new TextEncoder().encode(payload) : payload;
  const f = new Uint8Array(body.length + 1);
  f[0] = channel;
  f.set(body, 1);
  return f;
}

/** A decoded frame; undefined for an empty message or an unknown channel (ignored: a newer peer's). */
export function decodeFrame(frame: Uint8Array): { channel: Channel; payload: Uint8Array } | undefined {
  const c = frame[0];
  if (c === undefined || c > CHANNEL.eof) return undefined;
  return { channel: c as Channel, payload: frame.subarray(1) }; // checked to be 0..5 just above
}

/** A resize frame's size, or undefined when malformed (a bad resize is dropped, never fatal). */
export function parseResize(payload: Uint8Array): { cols: number; rows: number } | undefined {
  try {
    const v = JSON.parse(new TextDecoder().decode(payload)) as { cols?: unknown; rows?: unknown }; // fields checked below
    const ok = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 4096;
    return ok(v.cols) && ok(v.rows) ? { cols: v.cols, rows: v.rows } : undefined;
  } catch {
    return undefined;
  }
}

/** A status frame's content; a malformed one reads as an error (the session ended without a clear status). */
export function parseStatus(payload: Uint8Array): ExecStatus {
  try {
    const v = JSON.parse(new TextDecoder().decode(payload)) as { exitCode?: unknown; guestMs?: unknown; error?: { code?: unknown; message?: unknown } }; // fields checked below
    if (typeof v.exitCode === 'number' && Number.isInteger(v.exitCode)) {
      const timed = typeof v.guestMs === 'number' && Number.isFinite(v.guestMs) && v.guestMs >= 0 && v.guestMs < 86_400_000;
      return timed ? { exitCode: v.exitCode, guestMs: v.guestMs as number } : { exitCode: v.exitCode }; // `as`: checked just above
    }
    if (typeof v.error?.code === 'string' && typeof v.error.message === 'string') return { error: { code: v.error.code, message: v.error.message } };
  } catch {
    // falls through to the generic error
  }
  return { error: { code: 'CARAPACE_E_INTERNAL', message: 'the exec session ended with a malformed status' } };
}

/**
 * The WebSocket subprotocol of exec sessions. A client that offers it gets it back in the
 * handshake, and gets a refusal (unauthenticated, forbidden, not running...) as a status
 * frame after the handshake instead of an HTTP error: a browser's WebSocket cannot read the
 * body of a refused handshake, so its terminal could not say why.
 */
export const EXEC_PROTOCOL = 'v1.exec.carapace.dev';

/**
 * Prefix of the subprotocol that carries a bearer token (then the token, base64url without
 * padding), as Kubernetes' `base64url.bearer.authorization.k8s.io.`: a browser cannot set an
 * Authorization header on a WebSocket, and a token in the URL would end up in logs. Offered
 * beside {@link EXEC_PROTOCOL}; the server never answers with it.
 */
export const BEARER_PROTOCOL_PREFIX = 'base64url.bearer.authorization.carapace.dev.';

/** The subprotocol carrying `token` (pure: TextEncoder and btoa exist in browsers and Node). */
export function bearerProtocol(token: string): string {
  let bin = '';
  for (const b of new TextEncoder().encode(token)) bin += String.fromCharCode(b);
  return BEARER_PROTOCOL_PREFIX + btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * The token in a `Sec-WebSocket-Protocol` header's list, or undefined when none is there or
 * it is malformed (then the request counts as one without a token: 401).
 */
export function bearerFromProtocols(header: string | undefined): string | undefined {
  if (header === undefined || header.length > 2048) return undefined;
  for (const p of header.split(',')) {
    const s = p.trim();
    if (!s.startsWith(BEARER_PROTOCOL_PREFIX)) continue;
    const b64 = s.slice(BEARER_PROTOCOL_PREFIX.length);
    if (!/^[A-Za-z0-9_-]{1,700}$/.test(b64)) return undefined;
    try {
      const bin = atob(b64.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (b64.length % 4)) % 4));
      const token = new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
      return /^\S+$/.test(token) ? token : undefined;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/** True when a `Sec-WebSocket-Protocol` header offers `protocol`. */
export function offersProtocol(header: string | undefined, protocol: string): boolean {
  return header !== undefined && header.split(',').some((p) => p.trim() === protocol);
}
