/**
 * The agent's side of remote logs (see logs.ts): keeps a request stream open to the server's
 * agent API and, for each request, uploads the asked-for lines of a local instance or machine
 * as an NDJSON body until they end or the server stops reading.
 */
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { Agent, request } from 'undici';
import type { LogLine, LogOptions } from '../runtime/driver.js';
import type { ExecRequest, LogRequest, PortForwardRequest } from './logs.js';
import { WebSocket } from 'ws';
import { parseExecQuery, execQuery, type ExecOptions } from '../exec/frames.js';
import { endSession, relayPorts, wsPort, type ExecPort } from '../exec/session.js';
import { statusFrame } from '../exec/forward.js';
import { CarapaceError } from '../model/errors.js';

/** Where the lines come from, and where exec sessions run (the HostAgent). */
export interface LocalLogs {
  logs(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine>;
  machineLogs?(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine>;
  exec?(tenant: string, name: string, opts: ExecOptions, port: ExecPort): Promise<void>;
  /** Connects to a port of a local instance's workload (HostAgent.portForward). */
  portForward?(tenant: string, name: string, port: number): Promise<ExecPort>;
}

export interface LogUploaderOptions {
  server: string;
  tls: () => { ca: string; cert: string; key: string };
  local: LocalLogs;
  logger: Logger;
}

/** Serves log requests until `signal` aborts; reconnects with backoff when the stream breaks. */
export async function serveLogRequests(o: LogUploaderOptions, signal: AbortSignal): Promise<void> {
  const log = o.logger.child({ component: 'log-uploader' });
  for (let pause = 500; !signal.aborted; pause = Math.min(pause * 2, 10_000)) {
    const tls = o.tls();
    const dispatcher = new Agent({ connect: { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: true } });
    try {
      const res = await request(`${o.server}/agent/v1/log-requests`, { dispatcher, signal, bodyTimeout: 30_000 });
      if (res.statusCode !== 200) throw new Error(`log requests answered ${res.statusCode}`);
      pause = 500;
      let buf = '';
      for await (const chunk of res.body) {
        buf += String(chunk);
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const r = JSON.parse(line || '{}') as Partial<LogRequest> | Partial<ExecRequest> | Partial<PortForwardRequest>; // checked field by field
          if (typeof r.id !== 'string' || typeof r.tenant !== 'string' || typeof r.name !== 'string') continue;
          if (r.kind === 'exec') void execSession(o, r as ExecRequest, log);
          else if (r.kind === 'portforward') void forwardSession(o, r as PortForwardRequest, log);
          else void upload(o, dispatcher, r as LogRequest, log);
        }
      }
    } catch (err) {
      if (signal.aborted) break;
      log.warn({ err, retryInMs: pause }, 'log request stream broke');
    }
    await delay(pause, undefined, { signal }).catch(() => undefined);
  }
}

async function upload(o: LogUploaderOptions, dispatcher: Agent, r: LogRequest, log: Logger): Promise<void> {
  const ac = new AbortController();
  const opts: LogOptions = { follow: r.follow, signal: ac.signal, ...(r.tail !== undefined ? { tail: r.tail } : {}) };
  const source = r.kind === 'machine' ? o.local.machineLogs?.(r.tenant, r.name, opts) : o.local.logs(r.tenant, r.name, opts);
  async function* lines(): AsyncIterable<string> {
    if (!source) return;
    for await (const l of source) yield `${JSON.stringify(l)}\n`;
  }
  try {
    const res = await request(`${o.server}/agent/v1/log-streams/${r.id}`, { method: 'POST', dispatcher, headers: { 'content-type': 'application/x-ndjson' }, body: Readable.from(lines()), signal: ac.signal });
    await res.body.dump();
  } catch (err) {
    log.debug({ err, request: r.id }, 'log upload ended');
  } finally {
    ac.abort();
  }
}

/**
 * Answers an exec request: opens this session's WebSocket to the server (mutual TLS, like
 * every agent call) and runs the session there. The options are checked again here as the
 * API checked them (the agent trusts the server, but not a malformed message).
 */
async function execSession(o: LogUploaderOptions, r: ExecRequest, log: Logger): Promise<void> {
  const tls = o.tls();
  const ws = new WebSocket(`${o.server.replace(/^http/, 'ws')}/agent/v1/exec-sessions/${encodeURIComponent(r.id)}`, { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: true, maxPayload: 1024 * 1024 });
  ws.on('error', (err) => log.debug({ err, request: r.id }, 'exec session connection failed'));
  const opened = await new Promise<boolean>((resolve) => {
    ws.once('open', () => resolve(true));
    ws.once('close', () => resolve(false));
  });
  if (!opened) return;
  const port = wsPort(ws);
  let opts: ExecOptions;
  try {
    opts = parseExecQuery(new URLSearchParams(execQuery(r.exec)));
  } catch (err) {
    endSession(port, { error: { code: 'CARAPACE_E_BAD_QUERY', message: (err as Error).message } });
    return;
  }
  if (!o.local.exec) {
    endSession(port, { error: { code: 'CARAPACE_E_EXEC_UNSUPPORTED', message: 'this agent cannot run exec sessions' } });
    return;
  }
  await o.local.exec(r.tenant, r.name, opts, port);
}

/**
 * Answers a port-forward request: opens the session's WebSocket to the server first (the hub
 * waits 10 s for it), then dials the workload and sends the status frame (ok, or the dial's
 * error), then relays the connection's frames until either end closes.
 */
async function forwardSession(o: LogUploaderOptions, r: PortForwardRequest, log: Logger): Promise<void> {
  const tls = o.tls();
  const ws = new WebSocket(`${o.server.replace(/^http/, 'ws')}/agent/v1/exec-sessions/${encodeURIComponent(r.id)}`, { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: true, maxPayload: 1024 * 1024 });
  ws.on('error', (err) => log.debug({ err, request: r.id }, 'port-forward connection to the server failed'));
  const opened = await new Promise<boolean>((resolve) => {
    ws.once('open', () => resolve(true));
    ws.once('close', () => resolve(false));
  });
  if (!opened) return;
  const server = wsPort(ws);
  let conn: ExecPort;
  try {
    if (typeof r.port !== 'number' || !Number.isInteger(r.port) || r.port < 1 || r.port > 65535) throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'the port-forward request names no valid port');
    if (!o.local.portForward) throw new CarapaceError('CARAPACE_E_PORT_FORWARD_UNSUPPORTED', 'this agent cannot forward ports');
    conn = await o.local.portForward(r.tenant, r.name, r.port);
  } catch (err) {
    const e = err instanceof CarapaceError ? err : new CarapaceError('CARAPACE_E_INTERNAL', 'the port-forward failed; see the agent log');
    if (e.code === 'CARAPACE_E_INTERNAL') log.warn({ err }, 'port-forward failed');
    server.send(statusFrame({ error: { code: e.code, message: e.message } }));
    server.close();
    return;
  }
  server.send(statusFrame({ ok: true }));
  await relayPorts(server, conn);
}
