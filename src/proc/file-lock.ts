/**
 * An exclusive lock between processes, on a file, that the kernel releases when its holder
 * dies: nothing to take over, no owner to guess, so a holder killed with -9 at any instant
 * (even halfway through taking it) never leaves the lock stuck.
 *
 * How: flock(2) on an open file description. Node has no flock binding, so util-linux's
 * `flock` tool takes the lock on a descriptor we open and hand it as its fd 3 (`flock -x -w S
 * 3`). flock locks belong to the open file description, not to a process: once the tool exits
 * the lock stays held through our descriptor, and it goes away when that descriptor is closed:
 * by `release`, or by the kernel when this process dies. Node opens files close-on-exec, so no
 * later child (conmon, QEMU) inherits the descriptor and outlives us holding the lock.
 *
 * Why not the alternatives: a pid written into a lock file (what this replaces) is unreadable
 * when its writer is killed between creating and writing it, and a pid may be reused; a unix
 * socket bound in the abstract namespace is freed by the kernel too, but it is scoped to a
 * network namespace (test hosts and sandboxes run in their own) and names no file; a socket
 * bound to a path outlives its process and needs the same stale detection; npm lock packages
 * (proper-lockfile) decide staleness by mtime, i.e. by a guess about time; fs-ext is a native
 * addon to compile on every install. `flock` is in util-linux, on every Linux host.
 *
 * The file itself is never deleted (a waiter blocked on the old inode would then lock a file
 * nobody else uses); the holder writes its pid into it, only to say who holds it in a timeout.
 */
import { constants } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { run } from './run.js';

/** The tool that takes the lock. */
const FLOCK = 'flock';
/** Exit code asked of `flock` when the wait runs out, apart from its own errors. */
const CONFLICT_EXIT = 75;
/** Our backstop beyond `flock`'s own wait, in case the tool itself wedges. */
const BACKSTOP_MS = 5_000;

/** Options of {@link acquireFileLock} and {@link withFileLock}. */
export interface FileLockOptions {
  /** How long to wait for a holder to release it. */
  timeoutMs: number;
  /** Stop waiting when this aborts; the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** The lock was held by someone else for the whole wait. */
export class FileLockTimeoutError extends Error {
  constructor(
    readonly path: string,
    /** The pid the last holder wrote into the file, when readable. */
    readonly holder: number | undefined,
    timeoutMs: number,
  ) {
    super(`timed out after ${timeoutMs} ms waiting for ${path} (held by pid ${holder ?? 'unknown'})`);
    this.name = 'FileLockTimeoutError';
  }
}

/** A held lock. `release` is idempotent. */
export interface FileLock {
  release(): Promise<void>;
}

/**
 * Takes the exclusive lock on `path` (created if missing; its directory must exist), waiting
 * at most `timeoutMs` for its holder. Rejects with FileLockTimeoutError when the wait runs
 * out, and with a CommandError when the `flock` tool cannot run. Locks taken by the same
 * process through separate calls exclude each other too.
 */
export async function acquireFileLock(path: string, opts: FileLockOptions): Promise<FileLock> {
  const fh: FileHandle = await open(path, constants.O_RDWR | constants.O_CREAT, 0o600);
  let held = false;
  try {
    const seconds = (Math.max(0, opts.timeoutMs) / 1000).toFixed(3);
    const r = await run(FLOCK, ['--exclusive', '--wait', seconds, '--conflict-exit-code', String(CONFLICT_EXIT), '3'], {
      timeoutMs: opts.timeoutMs + BACKSTOP_MS,
      ...(opts.signal ? { signal: opts.signal } : {}),
      passFds: [fh.fd],
    });
    if (r.code === CONFLICT_EXIT) throw new FileLockTimeoutError(path, await holderOf(path), opts.timeoutMs);
    if (r.code !== 0) throw new Error(`flock ${path} failed (exit ${r.code ?? r.signal}): ${r.stderr.trim() || '(no output)'}`);
    await fh.truncate(0);
    await fh.write(`${process.pid}\n`, 0);
    let released: Promise<void> | undefined;
    held = true;
    return { release: () => (released ??= fh.close()) };
  } finally {
    // Closing the descriptor drops a lock `flock` may have taken before it was stopped (or
    // that we took but could not sign): nothing is left held on a failed acquire.
    if (!held) await fh.close();
  }
}

/** Runs `fn` holding the lock on `path` (see acquireFileLock), and releases it however `fn` ends. */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, opts: FileLockOptions): Promise<T> {
  const lock = await acquireFileLock(path, opts);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

async function holderOf(path: string): Promise<number | undefined> {
  const n = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}
