/**
 * Looking at and ending processes by pid, from /proc: is a pid alive, is it in a cgroup, its
 * descendants, kill a whole tree. The one place that answers these questions (drivers, the VM
 * manager, the image cache's leftover sweep and the guest agent use it).
 */
import { readdirSync, readFileSync } from 'node:fs';

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

/**
 * The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or '' when
 * it is gone. With the pid it names one process for good: a recycled pid has another start time.
 */
export function startTicks(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
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
