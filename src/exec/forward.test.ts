/**
 * Port-forward frames and their ends, with real sockets: the query's port, a frame's round
 * trip, a socket as a port (bytes, half-close both ways, the end), a dial to a closed port
 * (CARAPACE_E_PORT_UNREACHABLE), and the status that starts a relayed stream.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CarapaceError } from '../model/errors.js';
import { afterStatus, decodeFwdFrame, dialWorkload, FWD, fwdFrame, parseForwardStatus, parsePortQuery, socketPort, statusFrame } from './forward.js';
import { relayPorts, type ExecPort } from './session.js';

const servers: Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** A TCP server on loopback whose connections `handle` drives; resolves with its port. */
async function listen(handle: (s: Socket) => void): Promise<number> {
  const srv = createServer({ allowHalfOpen: true }, handle);
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const a = srv.address();
  return typeof a === 'object' && a ? a.port : 0;
}

/** A port whose frames are collected; `sent` gets what is sent to it. */
function memoryPort(): ExecPort & { sent: Uint8Array[]; push: (f: Uint8Array) => void; closed: () => boolean } {
  const listeners: ((f: Uint8Array) => void)[] = [];
  const closers: (() => void)[] = [];
  let closed = false;
  const sent: Uint8Array[] = [];
  return {
    sent,
    push: (f) => listeners.forEach((l) => l(f)),
    closed: () => closed,
    send: (f) => sent.push(f),
    onFrame: (l) => listeners.push(l),
    onClose: (l) => (closed ? l() : closers.push(l)),
    close: () => {
      closed = true;
      closers.splice(0).forEach((c) => c());
    },
  };
}

async function until(what: string, cond: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('port-forward query and frames', () => {
  it('takes ports 1-65535 and names query.port otherwise', () => {
    expect(parsePortQuery(new URLSearchParams('port=80'))).toBe(80);
    expect(parsePortQuery(new URLSearchParams('port=65535'))).toBe(65535);
    for (const bad of ['', 'port=', 'port=0', 'port=65536', 'port=http', 'port=-1', 'port=8.5']) {
      try {
        parsePortQuery(new URLSearchParams(bad));
        throw new Error(`accepted ${bad}`);
      } catch (e) {
        expect(e).toBeInstanceOf(CarapaceError);
        expect((e as CarapaceError).code).toBe('CARAPACE_E_BAD_QUERY');
        expect((e as CarapaceError).details[0]?.path).toBe('query.port');
      }
    }
  });

  it('round-trips frames and statuses; unknown channels are ignored', () => {
    const f = decodeFwdFrame(fwdFrame(FWD.data, 'abc'));
    expect(f?.channel).toBe(FWD.data);
    expect(Buffer.from(f?.payload ?? []).toString()).toBe('abc');
    expect(decodeFwdFrame(new Uint8Array([9, 1]))).toBeUndefined();
    expect(decodeFwdFrame(new Uint8Array(0))).toBeUndefined();
    expect(parseForwardStatus(statusFrame({ ok: true }).subarray(1))).toEqual({ ok: true });
    expect(parseForwardStatus(new TextEncoder().encode('nonsense'))).toMatchObject({ error: { code: 'CARAPACE_E_INTERNAL' } });
  });
});

describe('a socket as a port', () => {
  it('carries bytes both ways and passes half-closes on', async () => {
    let got = '';
    const port = await listen((s) => {
      s.on('data', (d) => (got += String(d)));
      // Answers once the client half-closed, then ends its side.
      s.on('end', () => s.end(`echo:${got}`));
    });
    const p = socketPort(await dialWorkload('127.0.0.1', port, 'a test server'));
    const frames: { channel: number; text: string }[] = [];
    p.onFrame((raw) => {
      const f = decodeFwdFrame(raw);
      if (f) frames.push({ channel: f.channel, text: Buffer.from(f.payload).toString() });
    });
    let closed = false;
    p.onClose(() => (closed = true));
    p.send(fwdFrame(FWD.data, 'hello'));
    p.send(fwdFrame(FWD.eof));
    await until('the end', () => closed);
    expect(frames.filter((f) => f.channel === FWD.data).map((f) => f.text).join('')).toBe('echo:hello');
    expect(frames.at(-1)).toEqual({ channel: FWD.eof, text: '' });
  });

  it("the workload's end (or reset) before anyone listens is passed on, not lost", async () => {
    // A server that closes at once: its FIN comes while the API still audits and upgrades.
    const port = await listen((s) => s.end());
    const sock = await dialWorkload('127.0.0.1', port, 'a test server');
    const p = socketPort(sock);
    // The gap under test: the FIN has arrived (and been read) before anyone listens.
    await until('the FIN read', () => sock.readableEnded);
    const channels: number[] = [];
    p.onFrame((raw) => channels.push(decodeFwdFrame(raw)?.channel ?? -1));
    await until('the eof frame', () => channels.length > 0);
    expect(channels).toEqual([FWD.eof]);
    // One that resets the connection before anyone listens: the error status, then the end.
    let held: Socket | undefined;
    const resetting = await listen((s) => (held = s));
    const r = socketPort(await dialWorkload('127.0.0.1', resetting, 'a test server'));
    await until('the connection accepted', () => held !== undefined);
    held?.resetAndDestroy();
    let closed = false;
    r.onClose(() => (closed = true));
    await until('the reset seen', () => closed);
    const frames: { channel: number; text: string }[] = [];
    r.onFrame((raw) => {
      const f = decodeFwdFrame(raw);
      if (f) frames.push({ channel: f.channel, text: Buffer.from(f.payload).toString() });
    });
    expect(frames).toEqual([{ channel: FWD.status, text: expect.stringContaining('CARAPACE_E_PORT_UNREACHABLE') }]);
  });

  it('a closed port is CARAPACE_E_PORT_UNREACHABLE naming the address', async () => {
    const port = await listen(() => undefined);
    servers.splice(0).forEach((s) => s.close());
    await new Promise((r) => setTimeout(r, 10));
    await expect(dialWorkload('127.0.0.1', port, 'instance acme/web-0')).rejects.toMatchObject({ code: 'CARAPACE_E_PORT_UNREACHABLE', message: expect.stringContaining(`127.0.0.1:${port}`) });
    await expect(dialWorkload('127.0.0.1', port, 'x')).rejects.toThrow(/connection refused/);
  });
});

describe('a relayed stream starts with a status', () => {
  it('ok: the frames after it come through, also those sent before anyone listened', async () => {
    const agent = memoryPort();
    const started = afterStatus(agent, 1_000);
    agent.push(statusFrame({ ok: true }));
    agent.push(fwdFrame(FWD.data, 'early'));
    const p = await started;
    const seen: string[] = [];
    p.onFrame((raw) => seen.push(Buffer.from(decodeFwdFrame(raw)?.payload ?? []).toString()));
    agent.push(fwdFrame(FWD.data, 'late'));
    expect(seen).toEqual(['early', 'late']);
  });

  it("an error status is the agent's error; silence or a close is CARAPACE_E_UNAVAILABLE", async () => {
    const refused = memoryPort();
    const r = afterStatus(refused, 1_000);
    refused.push(statusFrame({ error: { code: 'CARAPACE_E_PORT_UNREACHABLE', message: 'refused' } }));
    await expect(r).rejects.toMatchObject({ code: 'CARAPACE_E_PORT_UNREACHABLE', status: 502 });
    expect(refused.closed()).toBe(true);
    const odd = memoryPort();
    const o = afterStatus(odd, 1_000);
    odd.push(statusFrame({ error: { code: 'CARAPACE_E_FROM_THE_FUTURE', message: 'x' } }));
    await expect(o).rejects.toMatchObject({ code: 'CARAPACE_E_INTERNAL' });
    const silent = memoryPort();
    await expect(afterStatus(silent, 50)).rejects.toMatchObject({ code: 'CARAPACE_E_UNAVAILABLE' });
    const gone = memoryPort();
    const g = afterStatus(gone, 1_000);
    gone.close();
    await expect(g).rejects.toMatchObject({ code: 'CARAPACE_E_UNAVAILABLE' });
  });
});

describe('flow control through a relay', () => {
  it('pauses a sender while the connection cannot take more, resumes it once drained, loses nothing', async () => {
    let received = 0;
    let reader: Socket | undefined;
    const port = await listen((s) => {
      reader = s;
      s.pause(); // a slow reader: nothing read until the test says so
      s.on('data', (d) => (received += d.length));
    });
    const to = socketPort(await dialWorkload('127.0.0.1', port, 'a test server'));
    let paused = 0;
    let resumed = 0;
    let isPaused = false;
    const from: ExecPort & { push: (f: Uint8Array) => void } = {
      ...memoryPort(),
      pause: () => ((isPaused = true), paused++),
      resume: () => ((isPaused = false), resumed++),
    };
    const listeners: ((f: Uint8Array) => void)[] = [];
    from.onFrame = (l) => listeners.push(l);
    from.push = (f) => listeners.forEach((l) => l(f));
    void relayPorts(from, to);
    const chunk = fwdFrame(FWD.data, Buffer.alloc(64 * 1024, 7));
    const total = 64 * 1024 * 1024;
    let sent = 0;
    // A well-behaved source (a WebSocket, a socket): sends only while not paused.
    while (!isPaused && sent < total) {
      from.push(chunk);
      sent += chunk.length - 1;
      if (sent % (1024 * 1024) === 0) await new Promise((r) => setImmediate(r));
    }
    expect(paused).toBe(1);
    expect(sent).toBeLessThan(total); // held back long before everything was buffered
    reader?.resume();
    await until('the sender resumed', () => resumed >= 1, 10_000);
    await until('every byte received', () => received === sent, 10_000);
  });
});
