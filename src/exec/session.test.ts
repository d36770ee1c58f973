/**
 * Exec sessions on real processes (a shell under a real pty, and with pipes) through a real
 * WebSocket: the parts every driver shares. The drivers' own exec (runc, runsc) is tested
 * through the API in test/api/exec.test.ts.
 */
import { afterEach, describe, expect, it } from 'vitest';
import Fastify, { type FastifyInstance } from 'fastify';
import { WebSocket } from 'ws';
import { CHANNEL, decodeFrame, encodeFrame, parseStatus, type ExecStatus } from './frames.js';
import { spawnExec } from './process.js';
import { serveExec, wsPort } from './session.js';
import { WsUpgrades } from './ws-upgrade.js';

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

/** A server whose one route runs `argv` as an exec session (or refuses with 403 when ?deny). */
async function serve(argv: string[], opts: { tty: boolean; stdin: boolean }, abandoned: string[] = []): Promise<string> {
  app = Fastify();
  const ws = new WsUpgrades(app);
  app.get('/x', async (req, reply) => {
    if ((req.query as { deny?: string }).deny) return reply.status(403).send({ error: { code: 'CARAPACE_E_FORBIDDEN', message: 'no' } });
    if (!ws.wants(req)) return reply.status(426).send({ error: { code: 'CARAPACE_E_UPGRADE_REQUIRED', message: 'upgrade' } });
    const sock = await ws.accept(req, reply);
    const proc = spawnExec(argv, { ...opts, cols: 80, rows: 24 });
    await serveExec(proc, wsPort(sock), async () => void abandoned.push('killed'));
  });
  return (await app.listen({ port: 0, host: '127.0.0.1' })).replace('http', 'ws');
}

/** Connects, runs `drive` on open, collects output until the server closes. */
async function session(url: string, drive: (send: (c: number, p?: string) => void, out: () => string) => Promise<void> | void): Promise<{ out: string; err: string; status?: ExecStatus }> {
  const ws = new WebSocket(url);
  let out = '';
  let err = '';
  let status: ExecStatus | undefined;
  ws.on('message', (d: Buffer) => {
    const f = decodeFrame(d);
    if (f?.channel === CHANNEL.stdout) out += Buffer.from(f.payload).toString();
    if (f?.channel === CHANNEL.stderr) err += Buffer.from(f.payload).toString();
    if (f?.channel === CHANNEL.status) status = parseStatus(f.payload);
  });
  await new Promise((r) => ws.once('open', r));
  const closed = new Promise((r) => ws.once('close', r));
  await drive((c, p) => ws.send(encodeFrame(c as 0, p), { binary: true }), () => out);
  await closed;
  return { out, err, ...(status ? { status } : {}) };
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('exec sessions', () => {
  it('pipes: stdout, stderr, stdin to EOF and the exit code', async () => {
    const url = await serve(['/bin/sh', '-c', 'echo out; echo err >&2; cat; exit 4'], { tty: false, stdin: true });
    const r = await session(`${url}/x`, (send) => {
      send(CHANNEL.stdin, 'piped\n');
      send(CHANNEL.eof);
    });
    expect(r).toEqual({ out: 'out\npiped\n', err: 'err\n', status: { exitCode: 4 } });
  });

  it('a terminal: size and resize, Ctrl-C interrupts the foreground command, exit code', async () => {
    const url = await serve(['/bin/sh'], { tty: true, stdin: true });
    const r = await session(`${url}/x`, async (send, out) => {
      send(CHANNEL.stdin, 'stty size\n');
      await until('first size', () => out().includes('24 80'));
      send(CHANNEL.resize, JSON.stringify({ cols: 100, rows: 40 }));
      send(CHANNEL.stdin, 'stty size\n');
      await until('new size', () => out().includes('40 100'));
      // The quotes keep the markers out of the terminal's echo of the typed line.
      send(CHANNEL.stdin, "echo sl''eeping; sleep 60; echo sl''ept\n");
      await until('sleep to start', () => out().includes('sleeping\r\n'));
      const t0 = Date.now();
      send(CHANNEL.stdin, '\x03');
      send(CHANNEL.stdin, "echo af''ter-int\n");
      await until('the shell after the interrupt', () => out().includes('after-int\r\n'));
      expect(Date.now() - t0).toBeLessThan(30_000);
      send(CHANNEL.stdin, 'exit 3\n');
    });
    expect(r.status).toEqual({ exitCode: 3 });
    expect(r.out).not.toContain('slept\r\n');
  }, 20_000);

  it('a client that goes away ends the process (abandon runs)', async () => {
    const abandoned: string[] = [];
    const url = await serve(['/bin/sleep', '60'], { tty: false, stdin: false }, abandoned);
    const ws = new WebSocket(`${url}/x`);
    await new Promise((r) => ws.once('open', r));
    ws.close();
    await until('abandon', () => abandoned.length === 1);
  });

  it('refusals before the handshake are HTTP answers with their code', async () => {
    const url = await serve(['/bin/true'], { tty: false, stdin: false });
    const ws = new WebSocket(`${url}/x?deny=1`);
    const status = await new Promise<number>((resolve) => ws.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0)));
    expect(status).toBe(403);
    const plain = await fetch(`${url.replace('ws', 'http')}/x`);
    expect(plain.status).toBe(426);
  });
});
