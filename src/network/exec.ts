/**
 * Running the host's networking tools (`ip`, `nft`) with captured output. Every failure
 * becomes a CommandError carrying the command line and its stderr, so a message can say
 * exactly which kernel operation was refused.
 */
import { spawn } from 'node:child_process';

/** A tool exited non-zero (or could not be started); `stderr` holds its own explanation. */
export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${command} failed (exit ${exitCode ?? 'signal'}): ${stderr.trim() || '(no output)'}`);
    this.name = 'CommandError';
  }
}

/**
 * Runs `cmd args…`, writing `input` to its stdin when given, and resolves with stdout.
 * Rejects with CommandError on a non-zero exit. May be called concurrently.
 */
export function run(cmd: string, args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => reject(new CommandError([cmd, ...args].join(' '), null, e.message)));
    child.on('close', (code) => {
      const stdout = Buffer.concat(out).toString('utf8');
      if (code === 0) resolve(stdout);
      else reject(new CommandError([cmd, ...args].join(' '), code, Buffer.concat(err).toString('utf8') || stdout));
    });
    // A tool that exits before reading its stdin makes the write fail with EPIPE; the exit
    // code already reports the real problem, so the write error is deliberately dropped.
    child.stdin.on('error', () => undefined);
    child.stdin.end(input ?? '');
  });
}
