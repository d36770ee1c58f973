/**
 * Fuzzing the cell protocol (src/guest): messages generated from its zod schemas and
 * mutations of them, plus raw garbage, against
 *
 * - both line parsers: never throw; what they accept is exactly what the schema accepts, and
 *   re-encodes to the same message;
 * - the host's channel (the guest is hostile): a real unix socket plays the guest and writes
 *   the lines; the channel stays alive (a ping after each batch is answered through the same
 *   stream), counts every line as valid, invalid or oversized exactly as a model does, and
 *   passes on only messages about containers it created;
 * - the guest agent (the host's lines are checked too): an in-memory link delivers the lines;
 *   every request is answered exactly once (ack, err, containers or checkResult with its
 *   requestId; pong for ping), every line the agent writes is a valid guest message, and it
 *   never starts anything from a `run` whose rootfs lies outside its images directory.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { pino } from 'pino';
import { GuestAgent } from '../../src/guest/agent.js';
import { HostChannel } from '../../src/guest/host-channel.js';
import type { Link, LinkHandlers } from '../../src/guest/link.js';
import { encodeLine, GuestMessageSchema, HostMessageSchema, MAX_GUEST_LINE_BYTES, MAX_HOST_LINE_BYTES, parseGuestLine, parseHostLine, PROTOCOL_VERSION } from '../../src/guest/protocol.js';
import { fromZod, mutate } from './arbitraries.js';
import { Tally } from './fuzz.js';
import { quiet, sleep, type Log } from './harness.js';

/** A line: a generated message as JSON, a mutation of one, or raw bytes. */
function lineArb(schema: typeof GuestMessageSchema | typeof HostMessageSchema): fc.Arbitrary<Buffer> {
  const msg = fromZod(schema);
  return fc.oneof(
    { weight: 4, arbitrary: msg.map((m) => Buffer.from(JSON.stringify(m))) },
    { weight: 4, arbitrary: msg.chain((m) => mutate(m)).map((m) => Buffer.from(m.raw ?? JSON.stringify(m.doc ?? null))) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a.filter((b) => b !== 10))) },
  );
}

/** The parsers of both directions. */
export function fuzzProtocolParsers(n: number, seed: number): Tally {
  const t = new Tally();
  for (const [name, schema, parse, max] of [
    ['guest', GuestMessageSchema, parseGuestLine, MAX_GUEST_LINE_BYTES],
    ['host', HostMessageSchema, parseHostLine, MAX_HOST_LINE_BYTES],
  ] as const) {
    for (const line of fc.sample(lineArb(schema), { numRuns: Math.ceil(n / 2), seed: seed + (name === 'guest' ? 0 : 1) })) {
      t.cases++;
      const text = line.toString('utf8');
      let r: ReturnType<typeof parse>;
      try {
        r = parse(text);
      } catch (e) {
        t.fail(`${name} parser threw ${String(e)} on ${text.slice(0, 200)}`);
        continue;
      }
      let model: boolean;
      try {
        model = schema.safeParse(JSON.parse(text)).success;
      } catch {
        model = false; // not JSON
      }
      if (r.ok !== model) t.fail(`${name} parser says ${r.ok}, the schema ${model}: ${text.slice(0, 200)}`);
      if (r.ok) {
        t.accepted++;
        try {
          const again = parse(encodeLine(r.msg, max).toString('utf8').trimEnd());
          if (!again.ok || JSON.stringify(again.msg) !== JSON.stringify(r.msg)) t.fail(`${name} message does not survive re-encoding: ${text.slice(0, 200)}`);
        } catch (e) {
          if (!(e instanceof Error && e.name === 'LineTooLongError')) t.fail(`${name} encodeLine threw ${String(e)}`);
        }
      }
    }
  }
  return t;
}

/** The host's channel against a fuzzing guest on a real unix socket. */
export async function fuzzHostChannel(n: number, seed: number, log: Log = quiet): Promise<Tally> {
  const t = new Tally();
  const MAX = 4096;
  const dir = await mkdtemp(join(tmpdir(), 'carapace-fz-hc-'));
  const path = join(dir, 'vm.sock');
  let guest: Socket | undefined;
  let buffered = '';
  const server = createServer((sock) => {
    guest = sock;
    sock.on('data', (b: Buffer) => {
      buffered += b.toString('utf8');
      let nl: number;
      while ((nl = buffered.indexOf('\n')) !== -1) {
        const m = JSON.parse(buffered.slice(0, nl)) as { type: string; seq?: number };
        buffered = buffered.slice(nl + 1);
        if (m.type === 'hello') sock.write(`${JSON.stringify({ type: 'ready', version: PROTOCOL_VERSION, bootMs: 1, agentStartMs: 1 })}\n`);
        if (m.type === 'ping') sock.write(`${JSON.stringify({ type: 'pong', seq: m.seq })}\n`);
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(path, r));
  const ac = new AbortController();
  const chan = new HostChannel({ socketPath: path, cellId: 'fz', logger: pino({ level: 'silent' }), maxLineBytes: MAX, logRatePerSec: 1e9, logBurst: 1e9, requestTimeoutMs: 5000 });
  const strangers: string[] = [];
  const known = new Set(['known', 'c1']);
  const onEvent = (e: { containerId: string }): void => {
    if (!known.has(e.containerId)) strangers.push(e.containerId);
  };
  chan.on('state', onEvent);
  chan.on('log', onEvent);
  const done = chan.start(ac.signal);
  try {
    await chan.waitReady(5000);
    for (const id of known) chan.expectContainer(id);
    // Some generated messages name a known container, so valid ones get through too.
    const lines = fc.sample(
      fc.oneof(
        lineArb(GuestMessageSchema),
        fc.tuple(lineArb(GuestMessageSchema), fc.constantFrom(...known)).map(([l, id]) => Buffer.from(l.toString('utf8').replace(/"containerId":"[^"]*"/, `"containerId":"${id}"`))),
        fc.integer({ min: MAX + 1, max: 3 * MAX }).map((k) => Buffer.alloc(k, 0x7b)),
      ),
      { numRuns: n, seed },
    );
    // A valid pong whose seq matched the host's ping would answer it early (a guest may do
    // that; it only says it is alive): give generated pongs a seq the host never sends.
    for (const [k, l] of lines.entries()) {
      const g = l.length <= MAX ? parseGuestLine(l.toString('utf8')) : undefined;
      if (g?.ok && g.msg.type === 'pong') lines[k] = Buffer.from(JSON.stringify({ type: 'pong', seq: Number.MAX_SAFE_INTEGER }));
    }
    const expected = (l: Buffer): 'oversized' | 'invalid' | 'valid' => {
      if (l.length > MAX) return 'oversized';
      try {
        return GuestMessageSchema.safeParse(JSON.parse(l.toString('utf8'))).success ? 'valid' : 'invalid';
      } catch {
        return 'invalid';
      }
    };
    const batch = 25;
    for (let i = 0; i < lines.length; i += batch) {
      const part = lines.slice(i, i + batch).filter((l) => l.length > 0);
      const before = chan.stats();
      const exp = { oversized: 0, invalid: 0, valid: 0 };
      for (const l of part) exp[expected(l)] += 1;
      guest?.write(Buffer.concat(part.flatMap((l) => [l, Buffer.from('\n')])));
      try {
        await chan.ping();
      } catch (e) {
        t.fail(`the channel stopped answering after a batch: ${String(e)}`);
        break;
      }
      const after = chan.stats();
      t.cases += part.length;
      t.accepted += exp.valid;
      if (after.oversized - before.oversized !== exp.oversized || after.invalid - before.invalid !== exp.invalid || after.lines - before.lines !== part.length + 1) {
        t.fail(`counters moved by oversized ${after.oversized - before.oversized}/${exp.oversized}, invalid ${after.invalid - before.invalid}/${exp.invalid}, lines ${after.lines - before.lines}/${part.length + 1}`);
      }
      if (after.bufferedBytes > MAX) t.fail(`the channel buffers ${after.bufferedBytes} bytes, over its ${MAX}-byte line limit`);
    }
    if (strangers.length > 0) t.fail(`messages about containers the host never created were passed on: ${[...new Set(strangers)].slice(0, 5).join(', ')}`);
    log(`fuzz: host channel ${t.cases} lines, ${t.failures} failures`);
  } finally {
    ac.abort();
    await done;
    guest?.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  }
  return t;
}

/** An in-memory link: the test plays the host. */
class MemoryLink implements Link {
  handlers: LinkHandlers | undefined;
  readonly out: string[] = [];
  private partial = '';
  private opened: () => void = () => undefined;
  /** Resolves once the agent has started the link (it reads its boot time first). */
  readonly ready = new Promise<void>((r) => (this.opened = r));
  start(signal: AbortSignal, h: LinkHandlers): Promise<void> {
    this.handlers = h;
    h.up();
    this.opened();
    return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  }
  async write(buf: Buffer): Promise<void> {
    const text = this.partial + buf.toString('utf8');
    const lines = text.split('\n');
    this.partial = lines.pop() ?? '';
    this.out.push(...lines.filter((l) => l !== ''));
  }
  send(lines: Buffer[]): void {
    this.handlers?.data(Buffer.concat(lines.flatMap((l) => [l, Buffer.from('\n')])));
  }
}

/** The guest agent fed generated host lines; every request answered once, every answer valid. */
export async function fuzzGuestAgent(n: number, seed: number, log: Log = quiet): Promise<Tally> {
  const t = new Tally();
  const dir = await mkdtemp(join(tmpdir(), 'carapace-fz-ga-'));
  const link = new MemoryLink();
  const agent = new GuestAgent({
    link,
    logger: pino({ level: 'silent' }),
    stateDir: join(dir, 'state'),
    imagesRoot: join(dir, 'images'),
    runcPath: '/nonexistent/runc', // nothing may be started: a run that got this far fails loudly
    cgroupParent: '/carapace-fuzz',
    seccompProfilePath: false,
    noPivot: false,
    logTailLines: 10,
    usageIntervalMs: 3_600_000,
    // This runs on the host: a generated mountVolume or unmountVolume must find no disk of
    // the host's (nor wait 30 s for one), so the guest looks at an empty directory.
    volumeDevices: { sysBlock: join(dir, 'no-disks'), deviceTimeoutMs: 50 },
  });
  const ac = new AbortController();
  const running = agent.start(ac.signal);
  let seq = 0;
  try {
    await link.ready;
    link.send([Buffer.from(JSON.stringify({ type: 'hello', version: PROTOCOL_VERSION, cellId: 'fz' }))]);
    // Valid requests get fresh request ids so answers can be matched; hello and shutdown are
    // sent only by the test (a generated hello would change the version, shutdown would stop it).
    const lines = fc.sample(lineArb(HostMessageSchema), { numRuns: n, seed });
    const batch = 20;
    for (let i = 0; i < lines.length; i += batch) {
      const want = new Map<string, string>(); // requestId -> what it was
      const pongs = new Set<number>();
      const part: Buffer[] = [];
      for (const raw of lines.slice(i, i + batch)) {
        const r = parseHostLine(raw.toString('utf8'));
        if (r.ok && (r.msg.type === 'hello' || r.msg.type === 'shutdown')) continue;
        t.cases++;
        if (!r.ok) {
          let requestId: unknown;
          try {
            requestId = (JSON.parse(raw.toString('utf8')) as { requestId?: unknown }).requestId;
          } catch {
            requestId = undefined;
          }
          if (typeof requestId === 'string' && requestId.length > 0 && requestId.length <= 64 && !want.has(requestId)) {
            want.set(requestId, 'invalid');
            part.push(raw);
          } else if (typeof requestId !== 'string') part.push(raw);
          continue;
        }
        t.accepted++;
        const msg = { ...r.msg } as Record<string, unknown>;
        if (msg['type'] === 'ping') {
          msg['seq'] = ++seq;
          pongs.add(seq);
        } else {
          const id = `fz${++seq}`;
          msg['requestId'] = id;
          if (msg['type'] === 'run') msg['rootfs'] = `/outside-${seq}/rootfs`; // never under the images share
          want.set(id, String(msg['type']));
        }
        part.push(Buffer.from(JSON.stringify(msg)));
      }
      const from = link.out.length;
      link.send(part);
      const deadline = Date.now() + 10_000;
      const answered = new Map<string, string[]>();
      const ponged = new Set<number>();
      while (Date.now() < deadline) {
        for (const line of link.out.slice(from)) {
          const g = parseGuestLine(line);
          if (!g.ok) continue;
          const m = g.msg;
          if (m.type === 'pong') ponged.add(m.seq);
          if ((m.type === 'ack' || m.type === 'err' || m.type === 'containers' || m.type === 'checkResult' || m.type === 'volumeList') && want.has(m.requestId)) answered.set(m.requestId, [...(answered.get(m.requestId) ?? []), m.type]);
        }
        if (answered.size === want.size && ponged.size === pongs.size) break;
        answered.clear();
        ponged.clear();
        await sleep(5);
      }
      for (const line of link.out.slice(from)) if (!parseGuestLine(line).ok) t.fail(`the agent wrote an invalid line: ${line.slice(0, 200)}`);
      for (const [id, what] of want) {
        const a = answered.get(id) ?? [];
        if (a.length !== 1) t.fail(`${what} request ${id} was answered ${a.length} times (${a.join(', ')})`);
        else if (what === 'run' && a[0] !== 'err') t.fail(`a run with its rootfs outside the images share was answered ${a[0]}`);
        else if (what === 'invalid' && a[0] !== 'err') t.fail(`an invalid request was answered ${a[0]}`);
      }
      for (const s of pongs) if (!ponged.has(s)) t.fail(`ping ${s} was not answered`);
    }
    const stats = agent.stats();
    if (stats.hellos !== 1) t.fail(`the agent saw ${stats.hellos} hellos`);
    log(`fuzz: guest agent ${t.cases} lines, ${t.failures} failures`);
  } finally {
    ac.abort();
    await running;
    await rm(dir, { recursive: true, force: true });
  }
  return t;
}
