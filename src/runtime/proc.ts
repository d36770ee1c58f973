/**
 * Small process helpers for the runtime drivers: run a binary to completion and capture its
 * output, and check whether a pid is alive. Kept apart so the drivers read as lifecycle logic.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Result of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `bin args` to completion and returns its exit code and output; never throws for a
 * non-zero exit (callers decide what failure means), only when the binary cannot be spawned
 * or `timeoutMs` passes (the process is then killed).
 */
export function run(bin: string, args: readonly string[], timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${bin} ${args.join(' ')}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${bin}: ${e.message}`));
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      resolve({ code: code ?? (sig ? 128 : 1), stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

/**
 * True when a process with this pid exists and is not a zombie. Zombies count as dead: a
 * daemonized conmon is reparented to pid 1 (or a subreaper), which may reap it late.
 */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // Format: `pid (comm) S ...`; comm may contain spaces or ')', so split at the last ')'.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}

/** Resolves after `ms`, or early (without rejecting) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * True when process `pid` is in the cgroup at `path` (relative to the hierarchy roots,
 * e.g. `/carapace/ID`) or below it, in any hierarchy (v1 or v2). Used to make sure a pid read
 * from a file still names a process of the container before it is killed.
 */
export function pidInCgroup(pid: number, path: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    return false;
  }
  return text.split('\n').some((line) => {
    // `ID:controllers:PATH`; PATH may itself contain ':'.
    const second = line.indexOf(':', line.indexOf(':') + 1);
    if (second === -1) return false;
    const p = line.slice(second + 1);
    return p === path || p.startsWith(`${path}/`);
  });
}

/** The pids of `pid`'s descendants (children, grandchildren, …), from /proc. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${e}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // `pid (comm) S ppid ...`: the ppid is the second field after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(e));
    children.set(ppid, list);
  }
  const out: number[] = [];
  const todo = [...(children.get(pid) ?? [])];
  while (todo.length > 0) {
    const p = todo.pop() as number; // `as`: the loop runs only while todo is non-empty
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

/** SIGKILLs `pid` and all its descendants (collected first, so none escapes by reparenting). Ignores gone ones. */
export function killTree(pid: number): void {
  const all = [pid, ...descendants(pid)];
  for (const p of all) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Strips runc's `time=... level=error msg=` wrapping so the user sees the reason. */
export function cleanRuntimeMessage(message: string): string {
  const m = /msg="((?:[^"\\]|\\.)*)"/.exec(message);
  const text = m?.[1] !== undefined ? m[1].replace(/\\"/g, '"') : message;
  return text.trim();
}
