/**
 * The guest agent's startup snapshot (src/guest/snapshot-entry.ts), as a cell under emulation
 * runs it: node deserialises the agent from dist/guest/agent-tcg.blob on the emulated CPU
 * model. Here the CPU is QEMU's user-mode emulator with that model (the same the build uses),
 * so the test runs on the host, without a VM; the cell tests run it in real cells.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { HostChannel } from '../../src/guest/host-channel.js';
import { until } from '../../src/proc/until.js';
import { TCG_CPU } from '../../src/vm/qemu.js';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const guestDir = join(repo, 'dist/guest');

describe('the guest agent from its startup snapshot', () => {
  const dirs: string[] = [];
  const children: ChildProcess[] = [];
  afterAll(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('is built (scripts/install.sh installs qemu-user for it)', () => {
    expect(existsSync('/usr/bin/qemu-x86_64')).toBe(true);
    expect(existsSync(join(guestDir, 'agent-tcg.blob'))).toBe(true);
  });

  it('serves the host channel, logs with its own pid and stops on SIGTERM', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'carapace-snapshot-'));
    dirs.push(dir);
    const socket = join(dir, 'agent.sock');
    // No runtime: the idle-cell prewarm (2 s after hello) must not start a container on this host.
    const child = spawn(
      '/usr/bin/qemu-x86_64',
      ['-cpu', TCG_CPU, '/usr/bin/node', '--snapshot-blob', join(guestDir, 'agent-tcg.blob'), join(guestDir, 'agent.cjs'),
        '--listen', socket, '--state-dir', join(dir, 'state'), '--images', join(dir, 'images'), '--runc', '/nonexistent/crun', '--seccomp', 'none'],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
    );
    children.push(child);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await until('the agent listens', () => Promise.resolve(existsSync(socket) || undefined), 60_000, 50);
    const ac = new AbortController();
    const channel = new HostChannel({ socketPath: socket, cellId: 'snap', logger: pino({ level: 'silent' }), requestTimeoutMs: 30_000, reconnectMaxMs: 200 });
    const serving = channel.start(ac.signal).catch(() => undefined);
    try {
      await channel.waitReady(60_000);
      expect(await channel.list()).toEqual([]);
      expect(await channel.ping()).toBeGreaterThanOrEqual(0);
    } finally {
      ac.abort();
      await serving;
    }
    const lines = stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; pid: number; component?: string }); // `as`: the agent's stderr is pino's JSON lines
    expect(lines.some((l) => l.component === 'guest-snapshot' && l.msg === 'guest agent started from its startup snapshot')).toBe(true);
    // pino's default pid would be the build's: the agent's logger is given the real one.
    const starting = lines.find((l) => l.msg === 'guest agent starting');
    expect(starting?.pid).toBe(child.pid);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(stderr).toContain('guest agent stopped');
  }, 120_000);
});
