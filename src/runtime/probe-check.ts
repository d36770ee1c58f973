/**
 * The I/O of one health check, shared by the host drivers (runc, runsc) and the cell guest
 * agent: an HTTP GET, a TCP connect, and a bounded run of a runtime's `exec` subcommand.
 * Each function resolves with a CheckResult shortly after its timeout at the latest and
 * never rejects, so a prober loop cannot be wedged by a check. Messages are one line and
 * name what was tried (`HTTP GET http://10.88.0.5:8080/healthz: connection refused`).
 */
import { request } from 'node:http';
import { connect } from 'node:net';
import { CommandError, run, type RunResult } from '../proc/run.js';
import type { CheckResult } from './driver.js';

/** Most bytes of exec output kept (Kubernetes keeps 10 KiB too); the message shows the start of it. */
export const MAX_CHECK_OUTPUT_BYTES = 10 * 1024;
/** Longest message a check returns. */
export const MAX_CHECK_MESSAGE_CHARS = 1024;

function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${(ms / 1000).toFixed(2).replace(/0+$/, '')}s`;
}

function clip(text: string): string {
  return text.length > MAX_CHECK_MESSAGE_CHARS ? `${text.slice(0, MAX_CHECK_MESSAGE_CHARS - 1)}…` : text;
}

/** A socket error as people say it: `connection refused` rather than `connect ECONNREFUSED 10.0.0.1:80`. */
export function describeNetError(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code; // `as`: node socket errors carry `code`; others read as undefined
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ECONNRESET':
      return 'connection reset by peer';
    case 'EHOSTUNREACH':
      return 'no route to host';
    case 'ENETUNREACH':
      return 'network is unreachable';
    case 'EPIPE':
      return 'broken pipe';
    case 'HPE_INVALID_CONSTANT':
    case 'HPE_INVALID_VERSION':
    case 'HPE_INVALID_STATUS':
      return 'malformed HTTP response';
    default:
      return e instanceof Error ? e.message : String(e);
  }
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * GETs `http://host:port/path` once: status 200-399 is success (redirects are not
 * followed), anything else, a connection error or no response headers within `timeoutMs`
 * is failure. The body is not read.
 */
export function httpGetCheck(host: string, port: number, path: string, timeoutMs: number): Promise<CheckResult> {
  const url = `http://${hostPort(host, port)}${path}`;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (ok: boolean, detail: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      resolve({ ok, message: clip(`HTTP GET ${url}: ${detail}`) });
    };
    const req = request({
      host,
      port,
      path,
      method: 'GET',
      agent: false,
      headers: { 'user-agent': 'carapace-probe/1', accept: '*/*', connection: 'close' },
    });
    const timer = setTimeout(() => finish(false, `timed out after ${seconds(timeoutMs)}`), timeoutMs);
    req.on('response', (res) => {
      const code = res.statusCode ?? 0;
      res.destroy();
      finish(code >= 200 && code < 400, `${code}${res.statusMessage ? ` ${res.statusMessage}` : ''}`);
    });
    req.on('error', (e) => finish(false, describeNetError(e)));
    req.end();
  });
}

/** Connects to `host:port` over TCP once: an established connection (closed at once) is success. */
export function tcpSocketCheck(host: string, port: number, timeoutMs: number): Promise<CheckResult> {
  const where = hostPort(host, port);
  return new Promise((resolve) => {
    let settled = false;
    const finish = (ok: boolean, detail: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ ok, message: clip(`TCP connect ${where}: ${detail}`) });
    };
    const sock = connect({ host, port });
    const timer = setTimeout(() => finish(false, `timed out after ${seconds(timeoutMs)}`), timeoutMs);
    sock.on('connect', () => finish(true, 'connected'));
    sock.on('error', (e) => finish(false, describeNetError(e)));
  });
}

/** What `execCheck` runs. */
export interface ExecCheckRequest {
  /** The runtime client and its arguments, e.g. `['/usr/sbin/runc', '--root', R, 'exec', '--pid-file', F, ID, 'cat', '/tmp/ok']`. */
  argv: string[];
  /** The command as the user wrote it, for the message. */
  command: string[];
  timeoutMs: number;
  /**
   * Called once when the timeout passes, before the client is SIGKILLed: must kill the
   * process started inside the container (killing the client alone leaves it running).
   */
  onTimeout: () => Promise<void>;
}

/** Drops runc/runsc log decoration (`time=… level=error msg="…"`) from output lines. */
function cleanOutput(text: string): string {
  return text
    .split('\n')
    .map((l) => {
      const m = /level=\w+ msg="((?:[^"\\]|\\.)*)"/.exec(l);
      return (m?.[1] !== undefined ? m[1].replace(/\\"/g, '"') : l).trim();
    })
    .filter((l) => l !== '')
    .join(' | ');
}

/**
 * Runs a runtime `exec` to completion: exit 0 is success. Output (stdout and stderr, at
 * most MAX_CHECK_OUTPUT_BYTES) goes into the message. On timeout the process in the
 * container is killed (`onTimeout`), then the client; the check fails.
 */
export async function execCheck(req: ExecCheckRequest): Promise<CheckResult> {
  const what = `exec ${JSON.stringify(req.command)}`;
  const [bin, ...args] = req.argv;
  if (bin === undefined) return { ok: false, message: `${what}: no runtime to run it with` };
  const result = (ok: boolean, detail: string): CheckResult => ({ ok, message: clip(`${what}: ${detail}`) });
  let r: RunResult;
  try {
    r = await run(bin, args, { timeoutMs: req.timeoutMs, onTimeout: req.onTimeout, mergeStderr: true, maxOutputBytes: MAX_CHECK_OUTPUT_BYTES });
  } catch (e) {
    // run rejects only with CommandErrors here (no abort signal): a timeout or a runtime that cannot start.
    if (e instanceof CommandError && e.timedOut) return result(false, `timed out after ${seconds(req.timeoutMs)}`);
    return result(false, (e as Error).message); // `as`: see above
  }
  const out = cleanOutput(r.stdout);
  if (r.code === 0) return result(true, out === '' ? 'exit 0' : `exit 0: ${out}`);
  return result(false, `${r.code !== null ? `exit ${r.code}` : `killed by ${r.signal ?? 'a signal'}`}${out === '' ? '' : `: ${out}`}`);
}
