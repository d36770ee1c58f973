/**
 * The host channel against a hostile guest: a real unix socket server plays the guest and
 * writes garbage, oversized lines, schema violations, unknown ids and log floods. One
 * connection serves thousands of generated cases: each case ends with a valid pong whose
 * arrival proves the channel is still alive and has processed the garbage before it.
 */
import fc from 'fast-check';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostChannel, ProtocolVersionError, type LogEvent, type StateEvent } from './host-channel.js';
import { GuestMessageSchema, PROTOCOL_VERSION } from './protocol.js';

const MAX = 1024;
let dir: string;
let server: Server;
let guest: Socket | undefined;
let guestIn = '';
let chan: HostChannel;
let ac: AbortController;
let done: Promise<void>;
const states: StateEvent[] = [];
const logs: LogEvent[] = [];
/** Requests the host sent (other than hello and ping), for tests that script the guest's answers. */
const hostRequests: { type: string; requestId?: string }[] = [];

/** Answers the next host ping with a pong via the real request path. */
function send(s: string | Buffer): void {
  guest?.write(s);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-hc-'));
  const path = join(dir, 'vm.sock');
  server = createServer((sock) => {
    guest = sock;
    sock.on('data', (b: Buffer) => {
      guestIn += b.toString('utf8');
      // A minimal honest guest: answer hello and pings; everything else is scripted by the tests.
      let nl: number;
      while ((nl = guestIn.indexOf('\n')) !== -1) {
        const m = JSON.parse(guestIn.slice(0, nl)) as { type: string; seq?: number };
        guestIn = guestIn.slice(nl + 1);
        if (m.type === 'hello') sock.write(`${JSON.stringify({ type: 'ready', version: PROTOCOL_VERSION, bootMs: 1, agentStartMs: 2 })}\n`);
        if (m.type === 'ping') sock.write(`${JSON.stringify({ type: 'pong', seq: m.seq })}\n`);
        if (m.type !== 'hello' && m.type !== 'ping') hostRequests.push(m);
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(path, r));
  ac = new AbortController();
  chan = new HostChannel({ socketPath: path, cellId: 'c1', logger: pino({ level: 'silent' }), maxLineBytes: MAX, logRatePerSec: 1000, logBurst: 1000, requestTimeoutMs: 5000 });
  chan.on('state', (s) => states.push(s));
  chan.on('log', (l) => logs.push(l));
  done = chan.start(ac.signal);
  await chan.waitReady(5000);
  chan.expectContainer('known');
});

afterAll(async () => {
  ac.abort();
  await done;
  guest?.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

/** The channel's verdict on one line, by an independent model: oversized, invalid or valid. */
function expected(line: Buffer): 'oversized' | 'invalid' | 'valid' {
  if (line.length > MAX) return 'oversized';
  try {
    return GuestMessageSchema.safeParse(JSON.parse(line.toString('utf8'))).success ? 'valid' : 'invalid';
  } catch {
    return 'invalid';
  }
}

function splitLines(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < b.length; i++) if (b[i] === 10) {
    out.push(b.subarray(start, i));
    start = i + 1;
  }
  return out.filter((l) => l.length > 0);
}

describe('HostChannel against a hostile guest', () => {
  it('counts garbage, oversized and schema-violating lines, and still delivers the valid message after them', async () => {
    const garbage = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
      fc.json().map((j) => Buffer.from(j)),
      fc.record({ type: fc.constantFrom('state', 'log', 'ack', 'usage', 'run', 'checkResult', 'x'), containerId: fc.string(), seq: fc.anything() }).map((o) => Buffer.from(JSON.stringify(o))),
      fc.integer({ min: MAX + 1, max: 5000 }).map((n) => Buffer.alloc(n, 0x61)),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(garbage, { maxLength: 5 }), async (parts) => {
        const before = chan.stats();
        const blob = Buffer.concat(parts.flatMap((p) => [p, Buffer.from('\n')]));
        const lines = splitLines(blob);
        const exp = { oversized: 0, invalid: 0, valid: 0 };
        for (const l of lines) exp[expected(l)] += 1;
        send(blob);
        await chan.ping(); // its pong follows the garbage on the same stream
        const after = chan.stats();
        expect(after.oversized - before.oversized).toBe(exp.oversized);
        expect(after.invalid - before.invalid).toBe(exp.invalid);
        expect(after.lines - before.lines).toBe(lines.length + 1);
        expect(after.bufferedBytes).toBe(0);
      }),
      { numRuns: 2000 },
    );
  });

  it('never buffers an endless line: memory stays bounded and the line is counted once', async () => {
    const before = chan.stats();
    const heap0 = process.memoryUsage().heapUsed;
    const chunk = Buffer.alloc(1024 * 1024, 0x7b);
    for (let i = 0; i < 32; i++) send(chunk);
    await new Promise((r) => setTimeout(r, 200));
    expect(chan.stats().bufferedBytes).toBeLessThanOrEqual(MAX);
    send('\n');
    await chan.ping();
    expect(chan.stats().oversized - before.oversized).toBe(1);
    expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(16 * 1024 * 1024);
  });

  it('drops messages about containers the host did not create', async () => {
    const before = chan.stats();
    states.length = 0;
    send(`${JSON.stringify({ type: 'state', containerId: 'stranger', state: { status: 'created' } })}\n`);
    send(`${JSON.stringify({ type: 'state', containerId: 'known', state: { status: 'created' } })}\n`);
    send(`${JSON.stringify({ type: 'usage', cell: { cpuSeconds: 1, memoryBytes: 2, memoryTotalBytes: 3 }, containers: [{ containerId: 'stranger', cpuSeconds: 1, memoryBytes: 1 }, { containerId: 'known', cpuSeconds: 1, memoryBytes: 1 }] })}\n`);
    const usage = new Promise<{ containers: { containerId: string }[] }>((r) => chan.once('usage', r));
    await chan.ping();
    expect(states.map((s) => s.containerId)).toEqual(['known']);
    expect((await usage).containers.map((c) => c.containerId)).toEqual(['known']);
    expect(chan.stats().unknownContainer - before.unknownContainer).toBe(2);
  });

  it('rate-limits a log flood per container and counts every drop', async () => {
    const before = chan.stats();
    logs.length = 0;
    const n = 20_000;
    const t0 = Date.now();
    const lines: string[] = [];
    for (let i = 1; i <= n; i++) lines.push(JSON.stringify({ type: 'log', containerId: 'known', stream: 'stdout', time: 't', text: `l${i}`, seq: i }));
    send(`${lines.join('\n')}\n`);
    await chan.ping();
    const secs = (Date.now() - t0) / 1000;
    const after = chan.stats();
    const delivered = logs.length;
    expect(delivered + (after.droppedLogs - before.droppedLogs)).toBe(n);
    expect(delivered).toBeLessThanOrEqual(1000 + Math.ceil(1000 * secs) + 1);
    expect(delivered).toBeGreaterThanOrEqual(1000);
  });

  it('takes a check verdict only in answer to its own check request, of the expected type and size', async () => {
    const before = chan.stats();
    hostRequests.length = 0;
    const verdict = chan.check('known', { httpGet: { path: '/healthz', port: 8080 } }, 1_000);
    for (let i = 0; i < 100 && hostRequests.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const req = hostRequests[0] as { type: string; requestId: string; containerId: string; action: unknown; timeoutMs: number };
    expect(req).toMatchObject({ type: 'check', containerId: 'known', action: { httpGet: { path: '/healthz', port: 8080 } }, timeoutMs: 1_000 });
    send(`${JSON.stringify({ type: 'checkResult', requestId: 'r-never-sent', ok: true, message: 'forged' })}\n`);
    send(`${JSON.stringify({ type: 'ack', requestId: req.requestId })}\n`); // right id, wrong reply type
    send(`${JSON.stringify({ type: 'containers', requestId: req.requestId, containers: [] })}\n`);
    send(`${JSON.stringify({ type: 'checkResult', requestId: req.requestId, ok: true, message: 42 })}\n`); // schema: invalid
    send(`${JSON.stringify({ type: 'checkResult', requestId: req.requestId, ok: true, message: 'x'.repeat(1025) })}\n`); // over this channel's 1 KiB line limit
    send(`${JSON.stringify({ type: 'checkResult', requestId: req.requestId, ok: false, message: 'HTTP GET http://127.0.0.1:8080/healthz: 503 Service Unavailable' })}\n`);
    expect(await verdict).toEqual({ ok: false, message: 'HTTP GET http://127.0.0.1:8080/healthz: 503 Service Unavailable' });
    // A second verdict for the same request is no longer matched.
    send(`${JSON.stringify({ type: 'checkResult', requestId: req.requestId, ok: true, message: 'late' })}\n`);
    await chan.ping();
    const after = chan.stats();
    expect(after.unmatched - before.unmatched).toBe(4);
    expect(after.invalid - before.invalid).toBe(1);
    expect(after.oversized - before.oversized).toBe(1);
    // A check the guest never answers fails after its timeout plus the channel margin.
    const t0 = Date.now();
    await expect(chan.check('known', { tcpSocket: { port: 1 } }, 100, 100)).rejects.toThrow('cell guest did not answer check within 200 ms');
    expect(Date.now() - t0).toBeLessThan(1_000);
  });

  it("waits for a stop's answer as long as its grace plus the request timeout (a long grace is not a dead guest)", async () => {
    hostRequests.length = 0;
    // Grace 1 s; the guest answers after the 5 s request timeout, as one whose container used its grace would.
    const stopped = chan.stop('known', 1_000);
    for (let i = 0; i < 100 && hostRequests.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const req = hostRequests[0] as { type: string; requestId: string; graceMs: number };
    expect(req).toMatchObject({ type: 'stop', containerId: 'known', graceMs: 1_000 });
    setTimeout(() => send(`${JSON.stringify({ type: 'ack', requestId: req.requestId })}\n`), 5_300);
    await expect(stopped).resolves.toBeUndefined();
  }, 15_000);

  it('a version mismatch is a clear error, not a silent guess', async () => {
    const path = join(dir, 'old.sock');
    const old = createServer((s) => {
      s.on('data', () => s.write(`${JSON.stringify({ type: 'ready', version: PROTOCOL_VERSION + 1, bootMs: 0, agentStartMs: 0 })}\n`));
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => old.listen(path, r));
    const c = new HostChannel({ socketPath: path, cellId: 'c2', logger: pino({ level: 'silent' }), reconnectMaxMs: 60_000 });
    const mismatch = new Promise((r) => c.once('versionMismatch', r));
    const a = new AbortController();
    const d = c.start(a.signal);
    await expect(c.waitReady(5000)).rejects.toBeInstanceOf(ProtocolVersionError);
    expect(await mismatch).toEqual({ guest: PROTOCOL_VERSION + 1, host: PROTOCOL_VERSION });
    a.abort();
    await d;
    await new Promise<void>((r) => old.close(() => r()));
  });

  it('measures messages per second through the channel', async () => {
    const n = 50_000;
    const c = { got: 0 };
    const on = (): void => void (c.got += 1);
    chan.on('state', on);
    const line = `${JSON.stringify({ type: 'state', containerId: 'known', state: { status: 'running', pid: 42, startedAt: '2024-01-01T00:00:00Z' } })}\n`;
    const t0 = performance.now();
    send(line.repeat(n));
    await chan.ping();
    const ms = performance.now() - t0;
    chan.off('state', on);
    expect(c.got).toBe(n);
    console.log(`host channel: ${Math.round((n / ms) * 1000)} validated messages/s`);
  });
});
