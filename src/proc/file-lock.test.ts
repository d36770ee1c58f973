import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { acquireFileLock, FileLockTimeoutError, withFileLock } from './file-lock.js';

const here = dirname(fileURLToPath(import.meta.url));

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-lock-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('file lock', () => {
  it('excludes a second taker, even in the same process, until released; a timeout names the holder', async () => {
    const path = join(dir, 'a.lock');
    const first = await acquireFileLock(path, { timeoutMs: 5_000 });
    const e = await acquireFileLock(path, { timeoutMs: 200 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(FileLockTimeoutError);
    expect((e as FileLockTimeoutError).holder).toBe(process.pid);
    expect((e as FileLockTimeoutError).message).toBe(`timed out after 200 ms waiting for ${path} (held by pid ${process.pid})`);
    const second = acquireFileLock(path, { timeoutMs: 10_000 });
    await first.release();
    await first.release(); // idempotent
    await (await second).release();
  });

  it('runs a function under the lock and releases it however the function ends', async () => {
    const path = join(dir, 'b.lock');
    await expect(withFileLock(path, () => Promise.reject(new Error('boom')), { timeoutMs: 5_000 })).rejects.toThrow('boom');
    expect(await withFileLock(path, () => Promise.resolve(42), { timeoutMs: 200 })).toBe(42);
  });

  it('takes at once a lock file left behind without an owner or with a dead one (what the pid-file lock got stuck on)', async () => {
    for (const content of ['', 'garbage', '999999999']) {
      const path = join(dir, `left-${content.length}.lock`);
      await writeFile(path, content);
      await (await acquireFileLock(path, { timeoutMs: 1_000 })).release();
    }
  });

  it('stops waiting when the signal aborts', async () => {
    const path = join(dir, 'c.lock');
    const held = await acquireFileLock(path, { timeoutMs: 5_000 });
    const ac = new AbortController();
    const waiting = acquireFileLock(path, { timeoutMs: 30_000, signal: ac.signal });
    ac.abort(new Error('shutting down'));
    await expect(waiting).rejects.toThrow('shutting down');
    await held.release();
    await (await acquireFileLock(path, { timeoutMs: 1_000 })).release();
  });
});

/**
 * A holder killed with -9 while it holds the lock or while it is taking it: the next taker
 * gets the lock within a bound, every round. The holder is a separate node process running the
 * real module (transpiled next to its script: Node 20 cannot load TypeScript).
 */
describe('file lock under kill -9', () => {
  const children = new Set<ChildProcess>();
  let work: string;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'carapace-lock-crash-'));
    await mkdir(join(work, 'proc'));
    for (const name of ['run.ts', 'file-lock.ts']) {
      const out = ts.transpileModule(await readFile(join(here, name), 'utf8'), { compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 } });
      await writeFile(join(work, 'proc', name.replace(/\.ts$/, '.js')), out.outputText);
    }
    await writeFile(join(work, 'package.json'), '{"type":"module"}\n');
    await writeFile(
      join(work, 'holder.mjs'),
      `import { acquireFileLock } from './proc/file-lock.js';
process.stdout.write('taking\\n');
await acquireFileLock(process.argv[2], { timeoutMs: 60000 });
process.stdout.write('held\\n');
setInterval(() => {}, 1000);
`,
    );
  });
  afterEach(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    children.clear();
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  /** Starts a holder and SIGKILLs it when it prints `at` (after `delayMs`); resolves once it is gone. */
  async function killHolder(path: string, at: 'taking' | 'held', delayMs: number): Promise<void> {
    const child = spawn(process.execPath, [join(work, 'holder.mjs'), path], { cwd: work, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.split('\n').includes(at)) {
          setTimeout(() => {
            child.kill('SIGKILL');
            resolve();
          }, delayMs);
        }
      });
      child.once('exit', (code, signal) => reject(new Error(`holder exited before it was killed (${code ?? signal}): ${stderr}`)));
    });
    await exited;
  }

  it('a fresh taker gets the lock within 10 s after each of 16 holders is killed while holding or taking it', async () => {
    const path = join(dir, 'crash.lock');
    const waits: number[] = [];
    for (let round = 0; round < 16; round++) {
      // Even rounds: killed holding it. Odd rounds: killed while taking it (0-15 ms after it
      // starts: opening the file, starting flock, flock locking, writing its pid).
      if (round % 2 === 0) await killHolder(path, 'held', 0);
      else await killHolder(path, 'taking', (round * 2) % 16);
      const t0 = performance.now();
      const lock = await acquireFileLock(path, { timeoutMs: 10_000 });
      waits.push(performance.now() - t0);
      await lock.release();
    }
    expect(waits).toHaveLength(16);
    expect(Math.max(...waits)).toBeLessThan(10_000);
  });

  it('a live holder in another process really holds it', async () => {
    const path = join(dir, 'live.lock');
    const child = spawn(process.execPath, [join(work, 'holder.mjs'), path], { cwd: work, stdio: ['ignore', 'pipe', 'ignore'] });
    children.add(child);
    await new Promise<void>((resolve) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('held\n')) resolve();
      });
    });
    const e = await acquireFileLock(path, { timeoutMs: 300 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(FileLockTimeoutError);
    expect((e as FileLockTimeoutError).holder).toBe(child.pid);
  });
});
