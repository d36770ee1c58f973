/**
 * `carapace exec` as a user runs it: `carapace up` (a child process) with real runc and runsc
 * containers and one in a real cell VM (emulated, `--accel tcg`), the real CLI, and for
 * interactive sessions a real pseudo-terminal on the test's
 * side (node-pty) standing for the user's terminal: `stty size` follows a resize, Ctrl-C
 * interrupts a running command in the container, `exit 3` becomes the CLI's exit code. Without
 * a terminal: output and exit code, stdin piped with -i. Refusals (viewer, another tenant, an
 * instance that is not running) and the audit record (the command line, never the bytes).
 * Requires `npm run build`.
 */
import { join } from 'node:path';
import { spawn as ptySpawn, type IPty } from 'node-pty';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Instance } from '../../src/model/objects.js';
import { applyDocs, CLI, cli, destroyAll, eventually, freePort, mintToken, Server, tempDir, tokens } from './helpers.js';

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;

async function apply(docs: object[], extra: string[] = []): Promise<void> {
  const r = await applyDocs(server.url, tmp.dir, docs, extra);
  expect(r.code, r.stdout + r.stderr).toBe(0);
}

/** A token of `role` for `tenant`, minted through the CLI. */
async function token(role: string, tenant: string): Promise<string> {
  const { token: t, result } = await mintToken(server.url, role, tenant);
  expect(result.code, result.stderr).toBe(0);
  return t;
}

/** The CLI under a real pseudo-terminal, as a user's shell runs it; `out()` is everything the terminal showed. */
function underPty(args: string[]): { pty: IPty; out: () => string; exited: Promise<number> } {
  const pty = ptySpawn(process.execPath, [CLI, ...args], {
    cols: 80,
    rows: 24,
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', CARAPACE_SERVER: server.url, CARAPACE_TOKEN: tokens.get(server.url) ?? '', CARAPACE_CONFIG: '/nonexistent/carapace-config.json' },
  });
  let out = '';
  pty.onData((d) => (out += d));
  const exited = new Promise<number>((resolve) => pty.onExit((e) => resolve(e.exitCode)));
  return { pty, out: () => out, exited };
}

/** Waits until the terminal shows `text` (counted from `from`), with a deadline that says what it saw. */
async function shows(t: { out: () => string }, text: string, from = 0, ms = 30_000): Promise<number> {
  const deadline = Date.now() + ms;
  for (;;) {
    const at = t.out().indexOf(text, from);
    if (at >= 0) return at + text.length;
    if (Date.now() > deadline) throw new Error(`the terminal never showed ${JSON.stringify(text)}; it showed:\n${t.out().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs `ask` every second until the terminal shows `text` after `from`; 30 s at most. */
async function askUntil(t: { out: () => string }, text: string, ask: () => void, from: number): Promise<number> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    ask();
    const at = await shows(t, text, from, 1_000).catch(() => undefined);
    if (at !== undefined) return at;
    if (Date.now() > deadline) throw new Error(`the terminal never showed ${JSON.stringify(text)}; it showed:\n${t.out().slice(-2000)}`);
  }
}

beforeAll(async () => {
  tmp = await tempDir('carapace-e2e-exec-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  const busybox = await buildBusyboxImage({ registry: registry.address, repository: 'e2e/busybox', tag: '1' });
  server = new Server(join(tmp.dir, 'state'), await freePort(), ['--accel', 'tcg', '--warm-cells', '0']);
  await server.start();
  const svc = (name: string, tenant: string, isolation: string): object => ({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant }, spec: { image: busybox.reference, isolation, command: ['sleep', '3600'] } });
  await apply([
    { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } },
    { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'globex' } },
    svc('sh-host', 'acme', 'host'),
    svc('sh-sandbox', 'acme', 'sandbox'),
    svc('sh-cell', 'acme', 'cell'),
    { apiVersion: 'carapace/v1', kind: 'Job', metadata: { name: 'done', tenant: 'acme' }, spec: { image: busybox.reference, isolation: 'host', command: ['true'] } },
  ], ['--wait', '--timeout', '280']);
}, 330_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'));
  await registry?.stop();
  await tmp?.cleanup();
}, 120_000);

describe.each(['host', 'sandbox', 'cell'])('exec in the %s tier', (tier) => {
  const inst = `acme/sh-${tier}-0`;

  it('with a terminal: stty size follows a resize, Ctrl-C interrupts sleep, exit 3 is the exit code', async () => {
    const t = underPty(['exec', '-it', inst, '--', 'sh']);
    // Asked until answered: keys typed before the shell set up its terminal may be dropped
    // (as a user would see if they typed before the prompt).
    let at = await askUntil(t, '24 80', () => t.pty.write('stty size\r'), 0);
    t.pty.resize(120, 40);
    // The resize reaches the container asynchronously (SIGWINCH to the CLI, a frame, the
    // runtime's own resize): ask again until the new size shows, within a deadline.
    at = await askUntil(t, '40 120', () => t.pty.write('stty size\r'), at);
    // The quotes keep the markers out of the terminal's echo of the typed line. (Line ends
    // are not matched: the CLI's raw terminal still turns \n into \r\n, the remote one did too.)
    t.pty.write("echo sl''eeping; sleep 600; echo sl''ept\r");
    at = await shows(t, 'sleeping', at);
    const interrupted = Date.now();
    // Ctrl-C and the next line, again until it shows: 'sleeping' shows before the shell has
    // made sleep the terminal's foreground process (an interrupt then reaches the shell
    // alone), and an interrupt flushes the terminal's pending input (POSIX, unless NOFLSH), so
    // a line typed with it may be gone. 'after' shows only once sleep 600 was interrupted.
    await askUntil(t, 'after', () => t.pty.write("\x03echo af''ter\r"), at);
    expect(Date.now() - interrupted).toBeLessThan(60_000);
    expect(t.out()).not.toContain('slept');
    t.pty.write('exit 3\r');
    expect(await t.exited).toBe(3);
  }, 120_000);

  it('without a terminal: output and the exit code; with -i, stdin', async () => {
    const r = await cli(server.url, ['exec', inst, '--', 'sh', '-c', 'echo hi; echo oops >&2; exit 4']);
    expect([r.code, r.stdout, r.stderr]).toEqual([4, 'hi\n', 'oops\n']);
    const piped = await cli(server.url, ['exec', '-i', inst, '--', 'sh', '-c', 'tr a-z A-Z'], 'piped-bytes-xyzzy\n');
    expect([piped.code, piped.stdout]).toEqual([0, 'PIPED-BYTES-XYZZY\n']);
  }, 60_000);

  it('a client that goes away ends what it ran in the container', async () => {
    const t = underPty(['exec', '-it', inst, '--', 'sh', '-c', "echo st''arted; exec sleep 997"]);
    await shows(t, 'started');
    t.pty.kill('SIGKILL');
    await eventually(async () => {
      const ps = await cli(server.url, ['exec', inst, '--', 'ps']);
      return ps.code === 0 && !ps.stdout.includes('sleep 997');
    }, 30_000, 'the abandoned sleep to end');
  }, 60_000);
});

describe('exec refusals and audit', () => {
  it('refuses a viewer, another tenant, an instance that is not running, a missing command', async () => {
    const viewer = await token('tenant-viewer', 'acme');
    const globex = await token('tenant-admin', 'globex');
    const asViewer = await cli(server.url, ['--token', viewer, 'exec', 'acme/sh-host-0', '--', 'true']);
    expect([asViewer.code, asViewer.stderr]).toEqual([1, expect.stringMatching(/^error CARAPACE_E_FORBIDDEN: a tenant-viewer token is read-only/)]);
    const other = await cli(server.url, ['--token', globex, 'exec', 'acme/sh-host-0', '--', 'true']);
    expect([other.code, other.stderr]).toEqual([1, expect.stringMatching(/^error CARAPACE_E_FORBIDDEN: the token is for tenant "globex"/)]);
    const done = await eventually(async () => {
      const r = await cli(server.url, ['get', 'instances', '-t', 'acme', '-o', 'json']);
      return (JSON.parse(r.stdout) as { items: Instance[] }).items.find((i) => i.spec.owner.name === 'done' && i.status.phase === 'Succeeded');
    }, 60_000, 'the job to succeed');
    const notRunning = await cli(server.url, ['exec', `acme/${done.metadata.name}`, '--', 'true']);
    expect([notRunning.code, notRunning.stderr]).toEqual([1, expect.stringMatching(/^error CARAPACE_E_INSTANCE_NOT_RUNNING: /)]);
    const missing = await cli(server.url, ['exec', 'acme/nope-0', '--', 'true']);
    expect([missing.code, missing.stderr]).toEqual([1, expect.stringMatching(/^error CARAPACE_E_NOT_FOUND: /)]);
    // A plain GET (no WebSocket) is told what to do.
    const plain = await fetch(`${server.url}/v1/tenants/acme/instances/sh-host-0/exec?command=true`, { headers: { authorization: `Bearer ${tokens.get(server.url) ?? ''}` } });
    expect([plain.status, ((await plain.json()) as { error: { code: string } }).error.code]).toEqual([426, 'CARAPACE_E_UPGRADE_REQUIRED']);
  }, 120_000);

  it('audits each session with its command line and never its bytes; refusals too', async () => {
    const exported = await cli(server.url, ['audit', 'export', '--since', '1h']);
    expect(exported.code, exported.stderr).toBe(0);
    const records = exported.stdout.trim().split('\n').map((l) => JSON.parse(l) as { action: string; outcome: string; target: { name: string; tenant?: string }; detail?: { command?: string[]; tty?: boolean; code?: string } });
    const execs = records.filter((r) => r.action === 'instance.exec');
    expect(execs).toContainEqual(expect.objectContaining({ outcome: 'success', target: expect.objectContaining({ name: 'sh-host-0', tenant: 'acme' }), detail: expect.objectContaining({ command: ['sh', '-c', 'echo hi; echo oops >&2; exit 4'], tty: false }) }));
    expect(execs).toContainEqual(expect.objectContaining({ outcome: 'success', target: expect.objectContaining({ name: 'sh-sandbox-0' }), detail: expect.objectContaining({ command: ['sh'], tty: true }) }));
    expect(execs).toContainEqual(expect.objectContaining({ outcome: 'failure', detail: expect.objectContaining({ code: 'CARAPACE_E_FORBIDDEN' }) }));
    expect(exported.stdout).not.toContain('xyzzy'); // what -i piped in
    expect(exported.stdout).not.toContain('PIPED'); // what came out
  });
});
