/**
 * Runs one external tool (skopeo, umoci) to completion with a hard deadline and an abort
 * signal, capturing its output. Shared by the image store and the test fixtures; not a
 * general-purpose process manager (the child is always killed with SIGKILL, because these
 * tools only ever write into temporary directories we throw away on failure).
 */
import { spawn } from 'node:child_process';

/** What a finished command produced. `code` is null when it was killed by a signal. */
export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
  /** True when our own deadline killed it (not the tool's own timeout). */
  timedOut: boolean;
}

/** Options for {@link execTool}. */
export interface ExecOptions {
  /** Kill the child after this long. */
  timeoutMs: number;
  /** Kill the child when this aborts; the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Extra environment on top of the parent's. */
  env?: Record<string, string>;
  cwd?: string;
}

/** Output is capped so a tool that goes wild cannot exhaust memory; manifests are far smaller. */
const MAX_CAPTURE_BYTES = 16 * 1024 * 1024;

/**
 * Runs `file args…` and resolves with its result whatever the exit code (callers decide what
 * a failure means). Rejects only when the binary cannot be started (e.g. ENOENT) or when
 * `signal` aborts. May be called at any time, concurrently.
 */
export function execTool(file: string, args: readonly string[], opts: ExecOptions): Promise<ExecResult> {
  return new Promise<ExecResult>((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(opts.signal.reason);
      return;
    }
    const child = spawn(file, args, {
      cwd: opts.cwd,
      env: opts.env ? { ...process.env, ...opts.env } : process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    let timedOut = false;
    let aborted = false;
    child.stdout.on('data', (chunk: Buffer) => {
      if (outBytes < MAX_CAPTURE_BYTES) out.push(chunk);
      outBytes += chunk.length;
    });
    child.stderr.on('data', (chunk: Buffer) => {
      if (errBytes < MAX_CAPTURE_BYTES) err.push(chunk);
      errBytes += chunk.length;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    const onAbort = (): void => {
      aborted = true;
      child.kill('SIGKILL');
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = (): void => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    };
    child.on('error', (e) => {
      cleanup();
      reject(e);
    });
    child.on('close', (code, signal) => {
      cleanup();
      if (aborted) {
        reject(opts.signal?.reason ?? new Error('aborted'));
        return;
      }
      resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
  });
}

/**
 * Runs a tool and throws a short error (first meaningful stderr line) unless it exits 0.
 * For fixture and internal steps whose failure is a bug or a broken installation rather than
 * something to classify for users.
 */
export async function execOrThrow(file: string, args: readonly string[], opts: ExecOptions): Promise<Buffer> {
  const r = await execTool(file, args, opts);
  if (r.code !== 0) {
    const why = r.timedOut ? `timed out after ${opts.timeoutMs} ms` : `exit ${r.code ?? r.signal}: ${lastLine(r.stderr)}`;
    throw new Error(`${file} ${args[0] ?? ''} failed (${why})`);
  }
  return r.stdout;
}

/** The last non-empty line of a tool's stderr, trimmed to something loggable. */
export function lastLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  const line = lines[lines.length - 1] ?? '';
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}
