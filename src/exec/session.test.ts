/**
 * Exec sessions on real processes (a shell under a real pty, and with pipes) through a real
 * WebSocket: the parts every driver shares. The drivers' own exec (runc, runsc) is tested
 * through the API in test/api/exec.test.ts.
 */
import { afterEach, describe, expect, it } from 'vitest';
import Fastify, { type FastifyInstance } from 'fastify';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

/** Reads `value` until it stays the same over 4 reads 300 ms apart (at most 30 s); returns it. */
async function stalled(value: () => Promise<number>): Promise<number> {
  const end = Date.now() + 30_000;
  let last = await value();
  let same = 0;
  while (same < 3) {
    if (Date.now() > end) throw new Error(`still moving after 30 s (at ${last})`);
    await new Promise((r) => setTimeout(r, 300));
    const now = await value();
    same = now === last ? same + 1 : 0;
    last = now;
  }
  return last;
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

  it('flow control, output: a client that does not read holds the process back (it blocks on its pipe), and gets every byte once it reads', async () => {
    // 256 x 512 KiB, the count of chunks written so far in a file. Without flow control the
    // session would take all 128 MiB into its own memory at once, however slow the client.
    const dir = await mkdtemp(join(tmpdir(), 'exec-flow-'));
    const progress = join(dir, 'n');
    try {
      const url = await serve(['/bin/sh', '-c', `i=0; while [ $i -lt 256 ]; do head -c 524288 /dev/zero; i=$((i+1)); echo $i > ${progress}; done`], { tty: false, stdin: false });
      const ws = new WebSocket(`${url}/x`);
      let bytes = 0;
      let status: ExecStatus | undefined;
      ws.on('message', (d: Buffer) => {
        const f = decodeFrame(d);
        if (f?.channel === CHANNEL.stdout) bytes += f.payload.length;
        if (f?.channel === CHANNEL.status) status = parseStatus(f.payload);
      });
      await new Promise((r) => ws.once('open', r));
      ws.pause();
      const held = await stalled(async () => Number((await readFile(progress, 'utf8').catch(() => '0')).trim() || 0));
      // Held back: what is in flight is the buffers' (pipe, the session's HIGH_WATER, the two
      // sockets' up to 36 MiB here), far from the 256 chunks.
      expect(held).toBeLessThan(128);
      const closed = new Promise((r) => ws.once('close', r));
      ws.resume();
      await closed;
      expect(bytes).toBe(256 * 524288);
      expect(status).toEqual({ exitCode: 0 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('flow control, input: a process that does not read its stdin holds the client back instead of the session taking it all', async () => {
    const abandoned: string[] = [];
    const url = await serve(['/bin/sleep', '60'], { tty: false, stdin: true }, abandoned);
    const ws = new WebSocket(`${url}/x`);
    await new Promise((r) => ws.once('open', r));
    const chunk = encodeFrame(CHANNEL.stdin, new Uint8Array(64 * 1024));
    for (let i = 0; i < 1536; i++) ws.send(chunk, { binary: true }); // 96 MiB
    // Without flow control the session would read it all into the process's stdin buffer and
    // the client's backlog would fall to 0; held back, most of it stays with the client.
    const left = await stalled(async () => ws.bufferedAmount);
    expect(left).toBeGreaterThan(48 * 1024 * 1024);
    // The client goes away while its input is held (no close handshake can pass the backlog):
    // the session still notices and ends the process.
    ws.terminate();
    await until('abandon', () => abandoned.length === 1);
  }, 60_000);

  it('refusals before the handshake are HTTP answers with their code', async () => {
    const url = await serve(['/bin/true'], { tty: false, stdin: false });
    const ws = new WebSocket(`${url}/x?deny=1`);
    const status = await new Promise<number>((resolve) => ws.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0)));
    expect(status).toBe(403);
    const plain = await fetch(`${url.replace('ws', 'http')}/x`);
    expect(plain.status).toBe(426);
  });
});
