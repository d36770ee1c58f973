/**
 * Exec sessions on the cell channel: the messages' schemas and bounds (pure), and the host's
 * side against a scripted guest on a real unix socket: output and exit code, output that comes
 * before anyone listens, acknowledgements, a guest that ignores flow control or forges a
 * status, frames of sessions the host never opened, and a connection lost mid-session.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHANNEL, encodeFrame } from '../exec/frames.js';
import { until } from '../proc/until.js';
import { HostChannel } from './host-channel.js';
import {
  encodeLine,
  EXEC_WINDOW_BYTES,
  GuestMessageSchema,
  HostMessageSchema,
  MAX_EXEC_CHUNK_BYTES,
  MAX_GUEST_LINE_BYTES,
  parseGuestLine,
  parseHostLine,
  PROTOCOL_VERSION,
} from './protocol.js';

const b64 = (channel: number, payload: Uint8Array | string = ''): string => Buffer.from(encodeFrame(channel as 0, payload)).toString('base64');

describe('exec messages', () => {
  const exec = { type: 'exec', requestId: 'r1', sessionId: 'x1', containerId: 'c1', command: ['sh', '-c', 'echo hi'], tty: true, stdin: true, cols: 80, rows: 24 };

  it('accepts a well-formed exec request, frames and acks, and round-trips them through a line', () => {
    for (const m of [exec, { type: 'execFrame', sessionId: 'x1', frame: b64(CHANNEL.stdin, 'ls\r') }, { type: 'execFrame', sessionId: 'x1', frame: b64(CHANNEL.resize, '{"cols":1,"rows":2}') }, { type: 'execFrame', sessionId: 'x1', frame: b64(CHANNEL.eof) }, { type: 'execAck', sessionId: 'x1', bytes: 10 }, { type: 'execKill', requestId: 'r2', sessionId: 'x1' }]) {
      const parsed = HostMessageSchema.parse(m);
      expect(parseHostLine(encodeLine(parsed, 1 << 20).toString('utf8').trimEnd())).toEqual({ ok: true, msg: m });
    }
    for (const ch of [CHANNEL.stdout, CHANNEL.stderr, CHANNEL.status]) expect(GuestMessageSchema.safeParse({ type: 'execFrame', sessionId: 'x9', frame: b64(ch, 'x') }).success).toBe(true);
  });

  it('refuses bad requests: session ids, commands, sizes, unknown fields', () => {
    const bad: object[] = [
      { ...exec, sessionId: '../x' },
      { ...exec, sessionId: 'x' },
      { ...exec, command: [] },
      { ...exec, command: ['a\0b'] },
      { ...exec, command: Array.from({ length: 257 }, () => 'a') },
      { ...exec, command: ['x'.repeat(4097)] },
      { ...exec, cols: 0 },
      { ...exec, rows: 4097 },
      { ...exec, containerId: 'UPPER' },
      { ...exec, extra: 1 },
      { type: 'execAck', sessionId: 'x1', bytes: 0 },
      { type: 'execAck', sessionId: 'x1', bytes: EXEC_WINDOW_BYTES + 1 },
    ];
    for (const m of bad) expect(HostMessageSchema.safeParse(m).success, JSON.stringify(m).slice(0, 100)).toBe(false);
  });

  it('checks the direction and size of frames', () => {
    // The guest may not send input or resize frames, nor the host output or status frames.
    for (const ch of [CHANNEL.stdin, CHANNEL.resize, CHANNEL.eof, 9]) expect(GuestMessageSchema.safeParse({ type: 'execFrame', sessionId: 'x1', frame: b64(ch, 'x') }).success).toBe(false);
    for (const ch of [CHANNEL.stdout, CHANNEL.stderr, CHANNEL.status]) expect(HostMessageSchema.safeParse({ type: 'execFrame', sessionId: 'x1', frame: b64(ch, 'x') }).success).toBe(false);
    const full = Buffer.alloc(MAX_EXEC_CHUNK_BYTES, 0xff);
    const max = { type: 'execFrame' as const, sessionId: 'x123456789012345', frame: b64(CHANNEL.stdout, full) };
    expect(GuestMessageSchema.safeParse(max).success).toBe(true);
    // A full frame fits a guest line with room to spare.
    expect(encodeLine(GuestMessageSchema.parse(max), MAX_GUEST_LINE_BYTES).length).toBeLessThan(MAX_GUEST_LINE_BYTES / 2);
    expect(GuestMessageSchema.safeParse({ ...max, frame: b64(CHANNEL.stdout, Buffer.alloc(MAX_EXEC_CHUNK_BYTES + 3)) }).success).toBe(false);
    expect(parseGuestLine(JSON.stringify({ type: 'execFrame', sessionId: 'x1', frame: 'AQ%%' })).ok).toBe(false);
    expect(parseGuestLine(JSON.stringify({ type: 'execFrame', sessionId: 'x1', frame: '' })).ok).toBe(false);
  });
});

describe('HostChannel exec sessions against a scripted guest', () => {
  let dir: string;
  let server: Server;
  let guest: Socket | undefined;
  let chan: HostChannel;
  let ac: AbortController;
  let done: Promise<void>;
  /** What the host sent (not hello or ping). */
  let fromHost: Record<string, unknown>[] = [];
  /** Set per test: answers an `exec` request (default: ack). */
  let onExec: (m: { requestId: string; sessionId: string }) => void = () => undefined;

  const write = (m: object): void => void guest?.write(`${JSON.stringify(m)}\n`);
  const out = (sessionId: string, channel: number, payload: Uint8Array | string): void => write({ type: 'execFrame', sessionId, frame: b64(channel, payload) });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'carapace-hcx-'));
    const path = join(dir, 'vm.sock');
    server = createServer((sock) => {
      guest = sock;
      let buf = '';
      sock.on('data', (b: Buffer) => {
        buf += b.toString('utf8');
        let nl: number;
        while ((nl = buf.indexOf('\n')) !== -1) {
          const m = JSON.parse(buf.slice(0, nl)) as { type: string; seq?: number; requestId: string; sessionId: string };
          buf = buf.slice(nl + 1);
          if (m.type === 'hello') write({ type: 'ready', version: PROTOCOL_VERSION, bootMs: 1, agentStartMs: 2 });
          else if (m.type === 'ping') write({ type: 'pong', seq: m.seq });
          else {
            fromHost.push(m);
            if (m.type === 'exec') onExec(m);
            if (m.type === 'execKill') write({ type: 'ack', requestId: m.requestId });
          }
        }
      });
      sock.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(path, r));
    ac = new AbortController();
    chan = new HostChannel({ socketPath: path, cellId: 'c1', logger: pino({ level: 'silent' }), requestTimeoutMs: 5000, reconnectMinMs: 20 });
    done = chan.start(ac.signal);
    await chan.waitReady(5000);
  });

  afterAll(async () => {
    ac.abort();
    await done;
    guest?.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  });

  it('delivers output sent with the ack (before anyone listens), passes input on, and ends with the exit code', async () => {
    fromHost = [];
    // The guest's output and even its status arrive in the same chunk as the ack.
    onExec = (m) => guest?.write(`${JSON.stringify({ type: 'ack', requestId: m.requestId })}\n${JSON.stringify({ type: 'execFrame', sessionId: m.sessionId, frame: b64(CHANNEL.stdout, 'hi\n') })}\n${JSON.stringify({ type: 'execFrame', sessionId: m.sessionId, frame: b64(CHANNEL.stderr, 'oops\n') })}\n`);
    const run = await chan.exec('c1', { command: ['sh'], tty: true, stdin: true, cols: 80, rows: 24 });
    const got: string[] = [];
    run.process.onOutput((s, d) => got.push(`${s}:${Buffer.from(d).toString()}`));
    expect(got).toEqual(['stdout:hi\n', 'stderr:oops\n']);
    run.process.write(Buffer.from('ls\r'));
    run.process.resize(120, 40);
    run.process.endInput();
    const req = fromHost.find((m) => m.type === 'exec') as { sessionId: string }; // found: the exec request was made
    await until('the input frames to reach the guest', async () => (fromHost.filter((m) => m.type === 'execFrame').length === 3 ? true : undefined), 5000, 10);
    const frames = fromHost.filter((m) => m.type === 'execFrame').map((m) => Buffer.from(m.frame as string, 'base64'));
    expect(frames.map((f) => [f[0], f.subarray(1).toString()])).toEqual([[CHANNEL.stdin, 'ls\r'], [CHANNEL.resize, '{"cols":120,"rows":40}'], [CHANNEL.eof, '']]);
    out(req.sessionId, CHANNEL.status, '{"exitCode":3}');
    expect(await run.process.exited).toBe(3);
    expect(chan.execSessions).toBe(0);
  });

  it('acknowledges output as it is delivered; a guest past the window is cut off and told to kill', async () => {
    fromHost = [];
    onExec = (m) => write({ type: 'ack', requestId: m.requestId });
    const run = await chan.exec('c1', { command: ['cat'], tty: false, stdin: false });
    let bytes = 0;
    run.process.onOutput((_s, d) => (bytes += d.length));
    const id = (fromHost.find((m) => m.type === 'exec') as { sessionId: string }).sessionId; // found: the exec request was made
    const chunk = Buffer.alloc(MAX_EXEC_CHUNK_BYTES, 0x61);
    for (let i = 0; i < 2; i++) out(id, CHANNEL.stdout, chunk);
    await until('an ack for the first 32 KiB', async () => (fromHost.some((m) => m.type === 'execAck' && m.bytes === 2 * MAX_EXEC_CHUNK_BYTES) ? true : undefined), 5000, 10);
    // Pausing holds acks back; resuming sends what was delivered meanwhile.
    run.process.pause();
    for (let i = 0; i < 4; i++) out(id, CHANNEL.stdout, chunk);
    await until('the output to arrive', async () => (bytes === 6 * MAX_EXEC_CHUNK_BYTES ? true : undefined), 5000, 10);
    expect(fromHost.filter((m) => m.type === 'execAck')).toHaveLength(1);
    run.process.resume();
    await until('the held ack', async () => (fromHost.some((m) => m.type === 'execAck' && m.bytes === 4 * MAX_EXEC_CHUNK_BYTES) ? true : undefined), 5000, 10);
    // Ignoring the window: everything acked so far, then one frame more than the window allows.
    const before = chan.stats().execViolations;
    run.process.pause();
    for (let i = 0; i <= EXEC_WINDOW_BYTES / MAX_EXEC_CHUNK_BYTES; i++) out(id, CHANNEL.stdout, chunk);
    await expect(run.process.exited).rejects.toMatchObject({ code: 'CARAPACE_E_INTERNAL' });
    expect(chan.stats().execViolations).toBe(before + 1);
    await until('the guest to be told to kill the session', async () => (fromHost.some((m) => m.type === 'execKill' && m.sessionId === id) ? true : undefined), 5000, 10);
    expect(chan.execSessions).toBe(0);
  });

  it('refuses a forged status and frames of sessions it never opened; a refused exec leaves nothing open', async () => {
    fromHost = [];
    onExec = (m) => write({ type: 'ack', requestId: m.requestId });
    const run = await chan.exec('c1', { command: ['true'], tty: false, stdin: false });
    const id = (fromHost.find((m) => m.type === 'exec') as { sessionId: string }).sessionId; // found: the exec request was made
    const unmatched = chan.stats().unmatched;
    out('x999999', CHANNEL.stdout, 'not yours');
    out(id, CHANNEL.status, '{"error":{"code":"CARAPACE_E_FORBIDDEN","message":"forged"}}');
    await expect(run.process.exited).rejects.toMatchObject({ code: 'CARAPACE_E_INTERNAL' });
    expect(chan.stats().unmatched).toBe(unmatched + 1);
    onExec = (m) => write({ type: 'err', requestId: m.requestId, code: 'GUEST_E_NOT_FOUND', message: 'container c1 is not running' });
    await expect(chan.exec('c1', { command: ['true'], tty: false, stdin: false })).rejects.toMatchObject({ code: 'GUEST_E_NOT_FOUND' });
    expect(chan.execSessions).toBe(0);
  });

  it('a connection lost mid-session ends it with CARAPACE_E_UNAVAILABLE; kill asks the guest', async () => {
    fromHost = [];
    onExec = (m) => write({ type: 'ack', requestId: m.requestId });
    const a = await chan.exec('c1', { command: ['sleep', '9'], tty: false, stdin: false });
    const b = await chan.exec('c1', { command: ['sleep', '9'], tty: false, stdin: false });
    await b.kill();
    const killed = fromHost.filter((m) => m.type === 'execKill');
    expect(killed).toHaveLength(1);
    b.process.kill();
    expect(await b.process.exited).toBe(137);
    guest?.destroy();
    await expect(a.process.exited).rejects.toMatchObject({ code: 'CARAPACE_E_UNAVAILABLE' });
    expect(chan.execSessions).toBe(0);
    await chan.waitReady(5000);
  });
});
