/**
 * `carapace port-forward`: local ports on the user's machine that reach ports of an
 * instance's workload through the API, without publishing them. The CLI listens on each
 * local port and, per accepted TCP connection, opens one WebSocket to the API's port-forward
 * endpoint (exec/forward.ts frames): bytes both ways, a half-close passed on, the
 * WebSocket's end is the connection's end. A connection the server refuses is reset locally
 * and its error printed; errors that no later connection can escape (the token, the
 * instance gone) end the command.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { decodeFwdFrame, FWD, fwdFrame, parseForwardStatus } from '../exec/forward.js';
import { HIGH_WATER, LOW_WATER } from '../exec/session.js';
import { CliError, type ApiClient } from './client.js';

/** One forwarded port: `local` 0 means any free port. */
export interface PortSpec {
  local: number;
  remote: number;
}

/** Codes after which no connection can succeed: the command ends. */
const FATAL = new Set(['CARAPACE_E_UNAUTHENTICATED', 'CARAPACE_E_FORBIDDEN', 'CARAPACE_E_NOT_FOUND', 'CARAPACE_E_INSTANCE_NOT_RUNNING', 'CARAPACE_E_PORT_FORWARD_UNSUPPORTED', 'CARAPACE_E_SERVER_UNREACHABLE', 'CARAPACE_E_TLS_UNVERIFIED', 'CARAPACE_E_TLS_NOT_PINNED']);

/**
 * Parses `[LOCAL:]REMOTE` words (`8080:80`, `80` for the same port locally, `:80` for any
 * free local port). Throws CARAPACE_E_USAGE naming each bad word (`ports[i]`).
 */
export function parsePortSpecs(words: string[]): PortSpec[] {
  const issues: { path: string; message: string }[] = [];
  const num = (s: string, min: number): number | undefined => (/^\d{1,5}$/.test(s) && Number(s) >= min && Number(s) <= 65535 ? Number(s) : undefined);
  const out: PortSpec[] = [];
  words.forEach((w, i) => {
    const m = /^(?:(\d*):)?(\d+)$/.exec(w);
    const remote = m ? num(m[2] ?? '', 1) : undefined;
    const local = m ? (m[1] === undefined ? remote : m[1] === '' ? 0 : num(m[1], 0)) : undefined;
    if (remote === undefined || local === undefined) issues.push({ path: `ports[${i}]`, message: `"${w}" is not [LOCAL:]REMOTE with ports from 1 to 65535 (LOCAL may be empty or 0: any free port)` });
    else out.push({ local, remote });
  });
  if (words.length === 0) issues.push({ path: 'ports', message: 'give at least one [LOCAL:]REMOTE port' });
  if (issues.length > 0) throw new CliError('CARAPACE_E_USAGE', `invalid ports: ${issues.map((i) => i.message).join('; ')}`, issues);
  return out;
}

/** What `carapace port-forward` forwards to: an instance, or one ready instance of a service. */
export interface ForwardTarget {
  tenant: string;
  kind: 'instance' | 'service';
  name: string;
}

/**
 * Parses `TENANT/INSTANCE`, `TENANT/service/NAME` (also `svc/`, `services/`,
 * `instance/`), or the same without `TENANT/` when `tenant` (--tenant) is given.
 */
export function parseForwardTarget(target: string, tenant: string | undefined): ForwardTarget {
  const parts = target.split('/');
  const kindOf = (w: string): 'instance' | 'service' | undefined => (['service', 'services', 'svc'].includes(w) ? 'service' : ['instance', 'instances', 'inst'].includes(w) ? 'instance' : undefined);
  let t: Partial<ForwardTarget> = {};
  if (parts.length === 3 && kindOf(parts[1] ?? '')) t = { tenant: parts[0], kind: kindOf(parts[1] ?? ''), name: parts[2] };
  else if (parts.length === 2 && kindOf(parts[0] ?? '')) t = { tenant, kind: kindOf(parts[0] ?? ''), name: parts[1] };
  else if (parts.length === 2) t = { tenant: parts[0], kind: 'instance', name: parts[1] };
  else if (parts.length === 1) t = { tenant, kind: 'instance', name: parts[0] };
  if (!t.tenant || !t.kind || !t.name) {
    throw new CliError('CARAPACE_E_USAGE', `"${target}" is not TENANT/INSTANCE or TENANT/service/NAME (without TENANT/, pass --tenant)`, [{ path: 'target', message: 'TENANT/INSTANCE or TENANT/service/NAME' }]);
  }
  return { tenant: t.tenant, kind: t.kind, name: t.name };
}

/**
 * Forwards `specs` to the instance at `instancePath` (`/v1/tenants/T/instances/N`) until
 * `signal` aborts (resolves) or a fatal error (rejects with it). `onListening` is called once
 * every local port listens, with the ports bound.
 */
export async function runPortForward(c: ApiClient, instancePath: string, specs: PortSpec[], address: string, signal: AbortSignal, onListening: (bound: PortSpec[]) => void): Promise<void> {
  const servers: Server[] = [];
  const open = new Set<Socket>();
  let fatal: (e: CliError) => void = () => undefined;
  const failed = new Promise<never>((_resolve, reject) => (fatal = reject));
  try {
    const bound: PortSpec[] = [];
    for (const spec of specs) {
      const srv = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (local) => {
        open.add(local);
        local.once('close', () => open.delete(local));
        forward(c, `${instancePath}/portforward?port=${spec.remote}`, local, (e) => {
          process.stderr.write(`error ${e.code}: ${e.message}\n`);
          if (FATAL.has(e.code)) fatal(e);
        });
      });
      servers.push(srv);
      await new Promise<void>((resolve, reject) => {
        srv.once('error', (e: NodeJS.ErrnoException) => reject(new CliError('CARAPACE_E_PORT_IN_USE', `cannot listen on ${address}:${spec.local}: ${e.code === 'EADDRINUSE' ? 'the port is in use' : e.message}`)));
        srv.listen(spec.local, address, () => resolve());
      });
      const a = srv.address();
      bound.push({ local: typeof a === 'object' && a ? a.port : spec.local, remote: spec.remote });
    }
    onListening(bound);
    const stopped = new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
    await Promise.race([stopped, failed]);
  } finally {
    for (const s of servers) s.close();
    for (const l of open) l.destroy();
  }
}

/** One accepted local connection over one WebSocket; `failed` gets a refusal or a mid-way error. */
function forward(c: ApiClient, path: string, local: Socket, failed: (e: CliError) => void): void {
  const ws = c.websocket(path);
  let settled = false;
  const refuse = (e: CliError): void => {
    if (settled) return;
    settled = true;
    local.resetAndDestroy(); // the local client sees a reset, as from a refused port
    failed(e);
  };
  ws.once('unexpected-response', (_req, res) => {
    let body = '';
    res.on('data', (d: Buffer) => (body += d.toString('utf8')));
    res.on('end', () => {
      try {
        const e = (JSON.parse(body) as { error?: { code?: string; message?: string } }).error; // the API's error body
        refuse(new CliError(e?.code ?? 'CARAPACE_E_INTERNAL', e?.message ?? `server answered ${res.statusCode ?? '?'}`));
      } catch {
        refuse(new CliError('CARAPACE_E_INTERNAL', `server at ${c.base} answered ${res.statusCode ?? '?'} to the port-forward request`));
      }
    });
  });
  ws.once('error', (e: Error) => void c.transportError(e).then(refuse));
  local.on('error', () => ws.terminate()); // `on`: a second error must not go unhandled
  ws.once('open', () => relay(ws, local, refuse));
  local.once('close', () => {
    if (ws.readyState === ws.CONNECTING) ws.terminate();
  });
}

/**
 * Joins a local connection and its WebSocket. Flow control both ways: the WebSocket stops
 * being read while the local socket cannot take more, and the local socket while the
 * WebSocket's backlog is above HIGH_WATER (as relayPorts does on the other hops).
 */
function relay(ws: WebSocket, local: Socket, refuse: (e: CliError) => void): void {
  let localPaused = false;
  let wsPaused = false;
  const send = (f: Uint8Array): void => {
    if (ws.readyState !== ws.OPEN) return;
    ws.send(f, { binary: true }, () => {
      if (localPaused && ws.bufferedAmount < LOW_WATER) {
        localPaused = false;
        local.resume();
      }
    });
    if (!localPaused && ws.bufferedAmount > HIGH_WATER) {
      localPaused = true;
      local.pause();
    }
  };
  ws.on('message', (data, isBinary) => {
    if (!isBinary) return;
    const f = decodeFwdFrame(data as Buffer); // ws's default binary type is Buffer
    if (!f) return;
    if (f.channel === FWD.data) {
      if (!local.write(f.payload) && !wsPaused) {
        wsPaused = true;
        ws.pause();
        local.once('drain', () => {
          wsPaused = false;
          ws.resume();
        });
      }
    } else if (f.channel === FWD.eof) local.end();
    else {
      const s = parseForwardStatus(f.payload);
      if ('error' in s) refuse(new CliError(s.error.code, s.error.message));
    }
  });
  ws.once('close', () => {
    if (!local.destroyed) local.end(() => local.destroy());
  });
  local.on('data', (d: Buffer) => send(fwdFrame(FWD.data, d)));
  local.on('end', () => send(fwdFrame(FWD.eof)));
  local.once('close', () => ws.close(1000));
  local.resume();
}
