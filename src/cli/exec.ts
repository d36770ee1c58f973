/**
 * `carapace exec`: the client end of an exec session (exec/frames.ts) over the API's
 * WebSocket. With a terminal (-t and a terminal on stdin) the local terminal is put in raw
 * mode, so every key (Ctrl-C included) goes to the remote terminal, which decides what it
 * means; its size follows ours. The remote exit code becomes ours.
 */
import type { WebSocket } from 'ws';
import { CHANNEL, decodeFrame, encodeFrame, execQuery, parseStatus, type ExecOptions, type ExecStatus } from '../exec/frames.js';
import { CliError, type ApiClient } from './client.js';

/** Runs a session for the instance at `instancePath` (`/v1/tenants/T/instances/N`); resolves with the remote exit code. */
export async function runExec(c: ApiClient, instancePath: string, opts: ExecOptions): Promise<number> {
  const stdin = process.stdin;
  const stdout = process.stdout;
  const raw = opts.tty && stdin.isTTY;
  const ws = c.websocket(`${instancePath}/exec?${execQuery(opts)}`);
  await opened(ws, c);
  const send = (channel: (typeof CHANNEL)[keyof typeof CHANNEL], payload?: Uint8Array | string): void => {
    if (ws.readyState === ws.OPEN) ws.send(encodeFrame(channel, payload), { binary: true });
  };
  let status: ExecStatus | undefined;
  ws.on('message', (data, isBinary) => {
    if (!isBinary) return;
    const f = decodeFrame(data as Buffer); // ws's default binary type is Buffer
    if (!f) return;
    if (f.channel === CHANNEL.stdout) stdout.write(f.payload);
    else if (f.channel === CHANNEL.stderr) process.stderr.write(f.payload);
    else if (f.channel === CHANNEL.status) status = parseStatus(f.payload);
  });
  const onResize = (): void => send(CHANNEL.resize, JSON.stringify({ cols: stdout.columns, rows: stdout.rows }));
  const onData = (d: Buffer): void => send(CHANNEL.stdin, d);
  const onEnd = (): void => send(CHANNEL.eof);
  if (raw) {
    stdin.setRawMode(true);
    stdout.on('resize', onResize);
  }
  if (opts.stdin) {
    stdin.on('data', onData);
    stdin.on('end', onEnd);
    stdin.resume();
  }
  try {
    await new Promise<void>((resolve) => ws.once('close', () => resolve()));
  } finally {
    if (raw) {
      stdin.setRawMode(false);
      stdout.off('resize', onResize);
    }
    stdin.off('data', onData);
    stdin.off('end', onEnd);
    stdin.pause();
  }
  if (!status) throw new CliError('CARAPACE_E_UNAVAILABLE', 'the exec session ended without an exit status (the connection was cut)');
  if ('error' in status) throw new CliError(status.error.code, status.error.message);
  return status.exitCode;
}

/** Waits for the handshake; a refusal is the API's error body (its code and message). */
function opened(ws: WebSocket, c: ApiClient): Promise<void> {
  const base = c.base;
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString('utf8')));
      res.on('end', () => {
        try {
          const e = (JSON.parse(body) as { error?: { code?: string; message?: string; details?: { path: string; message: string }[] } }).error; // the API's error body
          reject(new CliError(e?.code ?? 'CARAPACE_E_INTERNAL', e?.message ?? `server answered ${res.statusCode ?? '?'}`, e?.details ?? []));
        } catch {
          reject(new CliError('CARAPACE_E_INTERNAL', `server at ${base} answered ${res.statusCode ?? '?'} to the exec request`));
        }
      });
    });
    // A failed TLS check is a refusal (nothing was sent); anything else: unreachable.
    ws.once('error', (e: Error) => void c.transportError(e).then(reject));
  });
}
