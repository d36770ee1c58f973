import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pidAlive } from './pids.js';
import { CommandError, run, runOrThrow } from './run.js';

describe('run', () => {
  it('resolves with the exit code and both streams, whatever the code', async () => {
    const r = await run('sh', ['-c', 'echo out; echo err >&2; exit 3']);
    expect(r).toMatchObject({ code: 3, signal: null, stdout: 'out\n', stderr: 'err\n', truncated: false });
    expect(r.stdoutBytes.equals(Buffer.from('out\n'))).toBe(true);
  });

  it('writes the input to stdin and closes it; without input stdin is empty', async () => {
    expect((await run('cat', [], { input: 'a\nb\n' })).stdout).toBe('a\nb\n');
    expect((await run('cat', [])).stdout).toBe('');
  });

  it('passes env and cwd', async () => {
    const r = await run('sh', ['-c', 'echo "$CARAPACE_T" "$(pwd)"'], { env: { CARAPACE_T: 'x' }, cwd: '/tmp' });
    expect(r.stdout).toBe('x /tmp\n');
  });

  it('captures stderr with stdout when asked', async () => {
    // Two pipes: the order between them is the order they were read in, so only content is checked.
    const r = await run('sh', ['-c', 'echo 1; echo 2 >&2; echo 3'], { mergeStderr: true });
    expect(r.stderr).toBe('');
    expect(r.stdout.split('\n').sort()).toEqual(['', '1', '2', '3']);
  });

  it('keeps at most maxOutputBytes and says it dropped the rest', async () => {
    const r = await run('head', ['-c', '100000', '/dev/zero'], { maxOutputBytes: 1000 });
    expect(r.stdoutBytes.length).toBe(1000);
    expect(r.truncated).toBe(true);
  });

  it('rejects with a CommandError when the binary cannot be started', async () => {
    const e = await run('/nonexistent/carapace-tool', ['x']).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CommandError);
    expect((e as CommandError).message).toMatch(/^cannot run \/nonexistent\/carapace-tool: .*ENOENT/);
    expect((e as CommandError).exitCode).toBeNull();
  });

  it('kills the child at its deadline, after the onTimeout hook, and rejects as timed out', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'carapace-run-'));
    const pidFile = join(dir, 'pid');
    try {
      let aliveInHook: boolean | undefined;
      const e = await run('sh', ['-c', 'echo $$ > "$1"; echo partial >&2; exec sleep 30', 'sh', pidFile], {
        timeoutMs: 500,
        onTimeout: async () => {
          aliveInHook = pidAlive(Number(await readFile(pidFile, 'utf8')));
        },
      }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(CommandError);
      expect((e as CommandError).timedOut).toBe(true);
      expect((e as CommandError).stderr).toBe('partial\n');
      expect((e as CommandError).message).toMatch(/timed out after 500 ms \(partial\)$/);
      expect(aliveInHook).toBe(true); // the hook ran before the kill
      expect(pidAlive(Number(await readFile(pidFile, 'utf8')))).toBe(false); // and the kill happened before the rejection
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('kills the child and rejects with the reason when the signal aborts', async () => {
    const ac = new AbortController();
    const started = run('sleep', ['30'], { signal: ac.signal });
    ac.abort(new Error('stop it'));
    await expect(started).rejects.toThrow('stop it');
    const again = new AbortController();
    again.abort(new Error('already'));
    await expect(run('true', [], { signal: again.signal })).rejects.toThrow('already');
  });
});

describe('runOrThrow', () => {
  it('resolves on exit 0 and throws the tool\'s own explanation otherwise', async () => {
    expect((await runOrThrow('echo', ['hi'])).stdout).toBe('hi\n');
    const e = await runOrThrow('sh', ['-c', 'echo "no such device" >&2; exit 2']).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CommandError);
    expect(e).toMatchObject({ exitCode: 2, stderr: 'no such device\n', command: 'sh -c echo "no such device" >&2; exit 2' });
    expect((e as CommandError).message).toBe('sh -c echo "no such device" >&2; exit 2 failed (exit 2): no such device');
  });
});

describe('pidAlive', () => {
  it('is true for a running process and false once it has exited, zombie or reaped', async () => {
    expect(pidAlive(process.pid)).toBe(true);
    expect(pidAlive(0)).toBe(false);
    expect(pidAlive(-1)).toBe(false);
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const pid = child.pid ?? 0;
    expect(pidAlive(pid)).toBe(true);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    expect(pidAlive(pid)).toBe(false);
  });
});
