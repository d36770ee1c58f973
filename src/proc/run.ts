/**
 * The one way Carapace runs an external tool to completion (runc, runsc, ip, nft, skopeo,
 * umoci, qemu-img, mount, …): spawn it, feed it an optional stdin, capture its output up to a
 * cap, and bound it by a deadline and an abort signal. Long-lived children (conmon, QEMU
 * daemons, the guest's supervised processes) are started by their own code; this is for
 * commands whose exit status is the answer.
 *
 * Two entry points: `run` resolves with whatever exit status the tool had (callers decide what
 * a failure means), `runOrThrow` turns a non-zero exit into a CommandError carrying the tool's
 * own explanation. Both reject with a CommandError when the tool cannot be started or misses
 * its deadline, and with the signal's reason when the caller aborts.
 */
import { spawn } from 'node:child_process';

/** What a finished command produced. */
export interface RunResult {
  /** The exit code; null when the process was ended by a signal. */
  code: number | null;
  /** The signal that ended it, if any. */
  signal: NodeJS.Signals | null;
  /** Standard output as UTF-8 text (with `mergeStderr`, both streams). */
  stdout: string;
  /** Standard output exactly as written, for callers that hash or parse bytes (image digests). */
  stdoutBytes: Buffer;
  /** Standard error as UTF-8 text ('' with `mergeStderr`). */
  stderr: string;
  /** True when a stream wrote more than `maxOutputBytes` and the rest was dropped. */
  truncated: boolean;
}

/** Options for {@link run} and {@link runOrThrow}; all optional. */
export interface RunOptions {
  /** Kill the child (SIGKILL) after this long and reject with a timed-out CommandError. Default 30 s. */
  timeoutMs?: number;
  /**
   * Called when the deadline passes, before the child is killed (e.g. to kill what the child
   * started inside a container). Its failure is ignored: the child is killed regardless.
   */
  onTimeout?: () => Promise<void>;
  /** Kill the child when this aborts; the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Written to the child's stdin, which is then closed. Without it stdin is /dev/null. */
  input?: string | Buffer;
  /** Extra environment on top of the parent's. */
  env?: Record<string, string>;
  cwd?: string;
  /** Capture stderr together with stdout, in the order they are read (like `2>&1`, for messages). */
  mergeStderr?: boolean;
  /** Most bytes kept of each stream; the rest is read and dropped. Default 16 MiB. */
  maxOutputBytes?: number;
  /** Open file descriptors handed to the child as its fds 3, 4, … (e.g. a file for `flock` to lock). */
  passFds?: readonly number[];
}

const DEFAULT_TIMEOUT_MS = 30_000;
/** Output is capped so a tool that goes wild cannot exhaust memory; what we parse is far smaller. */
const DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
/**
 * How long a child killed at its deadline may take to close its pipes before we stop waiting:
 * one stuck in uninterruptible sleep (a hung mount, a wedged runtime) must not wedge the caller.
 */
const KILL_GRACE_MS = 2_000;

/**
 * A command that could not be started, missed its deadline, or (from `runOrThrow`) exited
 * non-zero. `stderr` holds the tool's own explanation (or the start error's message), so a
 * message can say exactly which operation was refused.
 */
export class CommandError extends Error {
  /** The command line, for messages. */
  readonly command: string;
  /** The exit code; null when it never started, was killed by a signal, or timed out. */
  readonly exitCode: number | null;
  /** The tool's stderr (with `mergeStderr`, all its output); for a tool that never started, why. */
  readonly stderr: string;
  /** Set when our deadline killed it: the deadline it missed. */
  readonly timedOutAfterMs: number | undefined;

  constructor(o: { command: string; exitCode: number | null; stderr: string; timedOutAfterMs?: number; startError?: Error }) {
    super(commandErrorMessage(o), o.startError ? { cause: o.startError } : undefined);
    this.name = 'CommandError';
    this.command = o.command;
    this.exitCode = o.exitCode;
    this.stderr = o.startError ? o.startError.message : o.stderr;
    this.timedOutAfterMs = o.timedOutAfterMs;
  }

  /** True when our deadline killed it (not the tool's own timeout). */
  get timedOut(): boolean {
    return this.timedOutAfterMs !== undefined;
  }
}

function commandErrorMessage(o: { command: string; exitCode: number | null; stderr: string; timedOutAfterMs?: number; startError?: Error }): string {
  const file = o.command.split(' ')[0] ?? o.command;
  if (o.startError) return `cannot run ${file}: ${o.startError.message}`;
  if (o.timedOutAfterMs !== undefined) return `${o.command}: timed out after ${o.timedOutAfterMs} ms${o.stderr.trim() ? ` (${lastLine(o.stderr)})` : ''}`;
  return `${o.command} failed (exit ${o.exitCode ?? 'signal'}): ${o.stderr.trim() || '(no output)'}`;
}

/** The last non-empty line of a tool's output, trimmed to something loggable. */
export function lastLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  const line = lines[lines.length - 1] ?? '';
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}

/** Collects a stream's chunks up to `cap` bytes, exactly. */
class Capture {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  /** True once a byte beyond the cap arrived. */
  truncated = false;
  constructor(private readonly cap: number) {}
  add = (b: Buffer): void => {
    if (this.kept + b.length > this.cap) this.truncated = true;
    if (this.kept >= this.cap) return;
    const piece = b.length <= this.cap - this.kept ? b : b.subarray(0, this.cap - this.kept);
    this.chunks.push(piece);
    this.kept += piece.length;
  };
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/**
 * Runs `file args…` and resolves with its result whatever the exit code. Rejects with a
 * CommandError when the binary cannot be started (`exitCode` null) or when `timeoutMs`
 * passes (`timedOut`; the child is SIGKILLed), and with `signal.reason` when `signal` aborts.
 * May be called at any time, concurrently.
 */
export function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const command = [file, ...args].join(' ');
  return new Promise<RunResult>((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(opts.signal.reason);
      return;
    }
    const child = spawn(file, args, {
      cwd: opts.cwd,
      env: opts.env ? { ...process.env, ...opts.env } : process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe', ...(opts.passFds ?? [])],
    });
    const cap = opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    const out = new Capture(cap);
    const err = opts.mergeStderr ? out : new Capture(cap);
    child.stdout!.on('data', out.add); // `!`: stdout is 'pipe' in the spawn options above
    child.stderr!.on('data', err.add); // `!`: stderr is 'pipe' in the spawn options above
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    let settled = false;
    let timedOut = false;
    let giveUp: NodeJS.Timeout | undefined;
    const settle = (f: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(giveUp);
      opts.signal?.removeEventListener('abort', onAbort);
      f();
    };
    // Whatever the child printed before it was killed is kept for the message.
    const timeoutError = (): CommandError => new CommandError({ command, exitCode: null, stderr: err.bytes().toString('utf8'), timedOutAfterMs: timeoutMs });
    const timer = setTimeout(() => {
      timedOut = true;
      const hook = opts.onTimeout ? opts.onTimeout().catch(() => undefined) : Promise.resolve();
      void hook.finally(() => {
        child.kill('SIGKILL');
        giveUp = setTimeout(() => settle(() => reject(timeoutError())), KILL_GRACE_MS);
      });
    }, timeoutMs);
    const onAbort = (): void => {
      child.kill('SIGKILL');
      settle(() => reject(opts.signal?.reason ?? new Error('aborted')));
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => settle(() => reject(new CommandError({ command, exitCode: null, stderr: '', startError: e }))));
    child.on('close', (code, signal) => {
      settle(() => {
        if (timedOut) {
          reject(timeoutError());
          return;
        }
        const stdoutBytes = out.bytes();
        resolve({
          code,
          signal,
          stdout: stdoutBytes.toString('utf8'),
          stdoutBytes,
          stderr: opts.mergeStderr ? '' : err.bytes().toString('utf8'),
          truncated: out.truncated || err.truncated,
        });
      });
    });
    if (child.stdin) {
      // A tool that exits before reading its stdin makes the write fail with EPIPE; the exit
      // status already reports the real problem, so the write error is deliberately dropped.
      child.stdin.on('error', () => undefined);
      child.stdin.end(opts.input);
    }
  });
}

/**
 * Runs `file args…` like {@link run} and resolves with its result only when it exits 0;
 * otherwise rejects with a CommandError holding its stderr (or stdout when stderr is empty).
 */
export async function runOrThrow(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(file, args, opts);
  if (r.code !== 0) throw new CommandError({ command: [file, ...args].join(' '), exitCode: r.code, stderr: r.stderr || r.stdout });
  return r;
}
