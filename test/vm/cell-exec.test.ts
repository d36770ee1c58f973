/**
 * Exec sessions in a cell: one real cell VM (QEMU, our initramfs, the guest agent running from
 * this checkout over 9p, node-pty and runc from the shared host /usr and node_modules), a
 * container in it, and `CellRuntime.exec` driven as the host agent drives it (`serveExec` on
 * a port for the abandoned client): pipes with an exit code, stdin, a terminal whose size
 * follows a resize and whose Ctrl-C interrupts the command, a client that goes away (the
 * exec'd process is killed in the guest), and the VM going away under a session
 * (CARAPACE_E_UNAVAILABLE). One boot shared by the cases: emulated boots are slow.
 * Requires `npm run build` (the guest runs dist/).
 */
import { mkdirSync, mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CellRuntime } from '../../src/agent/cell-runtime.js';
import { guestAgentLaunch } from '../../src/agent/cells.js';
import { serveExec, type ExecPort } from '../../src/exec/session.js';
import { HostChannel } from '../../src/guest/host-channel.js';
import { CarapaceError } from '../../src/model/errors.js';
import { until } from '../../src/proc/until.js';
import type { ExecRun } from '../../src/runtime/driver.js';
import { createVmManager, type VmShare } from '../../src/vm/qemu.js';
import { buildRootfs, IMAGE, shSpec } from '../runtime/helpers.js';

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'warn' });
const root = mkdtempSync(join(tmpdir(), 'carapace-cellexec-'));
const stateDir = join(root, 'state');
const images = join(root, 'images');
const CELL = 'cell-exec';
const CTR = 'shell';
const vms = createVmManager({ stateDir, logger, accel: 'tcg' });
const ac = new AbortController();
let channel: HostChannel;
let runtime: CellRuntime;
const timings: Record<string, number> = {};

beforeAll(async () => {
  const repo = process.cwd();
  const rootfs = join(images, 'busybox', 'rootfs');
  await buildRootfs(rootfs);
  for (const applet of ['stty', 'ps']) await symlink('busybox', join(rootfs, 'bin', applet));
  const shares: VmShare[] = [
    { tag: 'usr', path: '/usr', readonly: true, mountPoint: '/usr' },
    { tag: 'carapace', path: repo, readonly: true, mountPoint: '/opt/carapace' },
    { tag: 'images', path: images, readonly: true, mountPoint: '/carapace/images' },
  ];
  // A worktree's node_modules may be a symlink to another checkout's: share its target at the same path.
  const nm = realpathSync(join(repo, 'node_modules'));
  if (nm !== join(repo, 'node_modules')) shares.push({ tag: 'nodemods', path: nm, readonly: true, mountPoint: nm });
  mkdirSync(stateDir, { recursive: true });
  const t0 = Date.now();
  const vm = await vms.launch({ id: CELL, cpus: 1, memoryMiB: 512, channel: true, labels: {}, ports: [], shares, ...guestAgentLaunch(await vms.accel(), repo) });
  channel = new HostChannel({ socketPath: vm.channelSocket ?? '', cellId: CELL, logger, requestTimeoutMs: 180_000, reconnectMaxMs: 500 });
  void channel.start(ac.signal);
  await channel.waitReady(300_000);
  timings.bootMs = Date.now() - t0;
  runtime = new CellRuntime({ cellId: CELL, isolation: 'cell', channel, vms, hostImagesRoot: images, guestImagesRoot: '/carapace/images', logger });
  await runtime.start({ id: CTR, rootfs, image: IMAGE, container: shSpec('exec sleep 100000'), hostname: 'shell', labels: {} });
}, 600_000);

afterAll(async () => {
  logger.warn(timings, 'cell exec timings');
  ac.abort();
  await vms.destroy(CELL, 2_000).catch(() => undefined);
  rmSync(root, { recursive: true, force: true });
});

/** A session's output as it comes (stdout and stderr apart), and a wait for text in it. */
function collect(run: ExecRun): { out: () => string; err: () => string; shows: (text: string, from?: number, ms?: number) => Promise<number> } {
  let out = '';
  let err = '';
  run.process.onOutput((stream, data) => {
    if (stream === 'stderr') err += Buffer.from(data).toString('utf8');
    else out += Buffer.from(data).toString('utf8');
  });
  return {
    out: () => out,
    err: () => err,
    shows: (text, from = 0, ms = 60_000) =>
      until(`the session to show ${JSON.stringify(text)}`, async () => {
        const at = out.indexOf(text, from);
        return at >= 0 ? at + text.length : undefined;
      }, ms, 50).catch((e: unknown) => {
        throw new Error(`${(e as Error).message}; it showed:\n${out.slice(-2000)}`); // `as`: until throws Error
      }),
  };
}

/** Writes `line` until the output shows `text` after `from` (keys typed before a shell reads its terminal may be lost). */
async function askUntil(run: ExecRun, c: ReturnType<typeof collect>, line: string, text: string, from: number, ms = 90_000): Promise<number> {
  return until(`the session to answer ${JSON.stringify(line)} with ${JSON.stringify(text)}`, async () => {
    run.process.write(Buffer.from(line));
    const seen = await c.shows(text, from, 3_000).catch(() => undefined);
    return seen;
  }, ms, 0).catch((e: unknown) => {
    throw new Error(`${(e as Error).message}; it showed:\n${c.out().slice(-2000)}`); // `as`: until throws Error
  });
}

/** Processes in the container whose command line contains `text`, seen by another exec (ps). */
async function psHas(text: string): Promise<boolean> {
  const run = await runtime.exec(CTR, { command: ['ps'], tty: false, stdin: false });
  const c = collect(run);
  expect(await run.process.exited).toBe(0);
  return c.out().split('\n').some((l) => l.includes(text));
}

describe('exec in a cell VM', () => {
  it('with pipes: stdout, stderr and the exit code; stdin piped through cat', async () => {
    const t0 = Date.now();
    const run = await runtime.exec(CTR, { command: ['sh', '-c', 'echo hi; echo oops >&2; exit 3'], tty: false, stdin: false });
    const c = collect(run);
    expect(await run.process.exited).toBe(3);
    expect([c.out(), c.err()]).toEqual(['hi\n', 'oops\n']);
    timings.execEchoMs = Date.now() - t0;
    // The guest timed its runc exec; it cannot have taken longer than the whole round trip.
    const guestMs = run.process.guestMs?.();
    expect(guestMs).toBeGreaterThan(0);
    expect(guestMs).toBeLessThanOrEqual(timings.execEchoMs);

    const cat = await runtime.exec(CTR, { command: ['cat'], tty: false, stdin: true });
    const cc = collect(cat);
    // More than the flow-control window and many frames: all of it comes back, in order.
    const big = Buffer.alloc(400 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = 97 + (i % 26);
    cat.process.write(Buffer.from('piped-line\n'));
    cat.process.write(big);
    cat.process.endInput();
    expect(await cat.process.exited).toBe(0);
    expect(cc.out()).toBe(`piped-line\n${big.toString('latin1')}`);
    expect(channel.stats().execViolations).toBe(0);
    expect(channel.execSessions).toBe(0);
  }, 180_000);

  it('with a terminal: stty size follows a resize, Ctrl-C interrupts sleep, the exit code comes back', async () => {
    const run = await runtime.exec(CTR, { command: ['sh'], tty: true, stdin: true, cols: 100, rows: 30 });
    const c = collect(run);
    let at = await askUntil(run, c, 'stty size\r', '30 100', 0);
    run.process.resize(120, 40);
    at = await askUntil(run, c, 'stty size\r', '40 120', at);
    // The quotes keep the markers out of the terminal's echo of the typed line.
    run.process.write(Buffer.from("echo sl''eeping; sleep 600; echo sl''ept\r"));
    at = await c.shows('sleeping', at);
    const interrupted = Date.now();
    // Again until it shows: an interrupt that comes before sleep is the terminal's foreground process reaches only the shell.
    await askUntil(run, c, "\x03echo af''ter\r", 'after', at);
    timings.interruptMs = Date.now() - interrupted;
    expect(c.out()).not.toContain('slept');
    run.process.write(Buffer.from('exit 7\r'));
    expect(await run.process.exited).toBe(7);
  }, 300_000);

  it('a client that goes away: the exec\'d process is killed in the guest', async () => {
    // With pipes: no terminal hangup would end it when the runc client dies; only the guest's kill does.
    const run = await runtime.exec(CTR, { command: ['sh', '-c', "echo st''arted; exec sleep 997"], tty: false, stdin: true });
    // The host agent's path: serveExec on the client's port; the client goes away.
    let closeListener: (() => void) | undefined;
    const frames: Uint8Array[] = [];
    const port: ExecPort = {
      send: (f) => void frames.push(f),
      onFrame: () => undefined,
      onClose: (l) => void (closeListener = l),
      close: () => undefined,
    };
    const served = serveExec(run.process, port, () => run.kill());
    await until('the session to start', async () => (Buffer.concat(frames.map((f) => f.subarray(1))).toString('utf8').includes('started') ? true : undefined), 60_000, 50);
    expect(await psHas('sleep 997')).toBe(true);
    closeListener?.();
    expect(await served).toBeUndefined();
    await until('the abandoned sleep to end in the guest', async () => ((await psHas('sleep 997')) ? undefined : true), 60_000, 200);
    expect(channel.execSessions).toBe(0);
  }, 180_000);

  it('refuses a container that is not there; a VM that goes away ends a session with CARAPACE_E_UNAVAILABLE', async () => {
    await expect(runtime.exec('nope', { command: ['true'], tty: false, stdin: false })).rejects.toMatchObject({ code: 'CARAPACE_E_INSTANCE_NOT_RUNNING' });
    const run = await runtime.exec(CTR, { command: ['sh', '-c', "echo wa''iting; exec sleep 998"], tty: false, stdin: false });
    const c = collect(run);
    await c.shows('waiting');
    await vms.destroy(CELL, 0);
    const err = await run.process.exited.then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(CarapaceError);
    expect((err as CarapaceError).code).toBe('CARAPACE_E_UNAVAILABLE'); // checked by toBeInstanceOf above
  }, 120_000);
});
