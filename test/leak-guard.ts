/**
 * Leak guard for the integration files (test/**): what a file made in the kernel and left
 * behind — a link, an nftables table, a network namespace, a QEMU process — fails that file,
 * by name, and is removed so the files after it run on a clean host.
 *
 * Why: test files share the machine's kernel. A bridge left holding a tenant block's gateway
 * address by one file shadows the same block of every later file's agent (another net
 * prefix, the same addresses): their workloads then reach nothing, and a CI run reports a
 * dozen network failures in files that did nothing wrong, none in the file that leaked.
 *
 * Before/after snapshots of the host, so objects that were there before the file (a
 * Carapace started by the quick start, another user's VMs) are never touched. Registered as a
 * setup file in vitest.config.ts; unit files (src/**) are skipped (they make no such objects).
 *
 * A diff cannot tell this file's objects from those another run made meanwhile, so each
 * integration file holds the machine-wide HOST_TESTS_LOCK from its first snapshot to its last
 * check: two runs of the suite on one machine (CI beside a developer's run, two checkouts),
 * or a benchmark beside them, take turns file by file instead of removing each other's VMs.
 */
import { afterAll, beforeAll } from 'vitest';
import type { FileLock } from '../src/proc/file-lock.js';
import { acquireHostTestsLock } from '../src/proc/host-tests-lock.js';
import { run } from '../src/proc/run.js';
import { until } from '../src/proc/until.js';

interface HostObjects {
  links: Set<string>;
  tables: Set<string>;
  netns: Set<string>;
  qemu: Set<string>;
}

async function stdout(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: 20_000 }).catch(() => undefined);
  return r?.code === 0 ? r.stdout : '';
}

/** The host's objects; `prior`: the snapshot taken before the file, for telling bridges apart. */
async function snapshot(prior?: HostObjects): Promise<HostObjects> {
  // A port of a bridge that is not new is not the file's (a running Carapace's workload).
  const all = JSON.parse((await stdout('ip', ['-j', 'link', 'show'])) || '[]') as { ifname: string; master?: string }[]; // safe: `ip -j link` prints an array of links
  const links = all.filter((l) => l.master === undefined || !prior?.links.has(l.master)).map((l) => l.ifname);
  const tables = (JSON.parse((await stdout('nft', ['-j', 'list', 'tables'])) || '{"nftables":[]}') as { nftables: { table?: { family: string; name: string } }[] }).nftables.flatMap((e) => (e.table ? [`${e.table.family} ${e.table.name}`] : [])); // safe: `nft -j list tables` prints {nftables: [...]}
  const netns = (await stdout('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0] ?? '').filter(Boolean);
  const qemu = (await stdout('pgrep', ['-f', '^qemu-system'])).split('\n').filter(Boolean);
  return { links: new Set(links), tables: new Set(tables), netns: new Set(netns), qemu: new Set(qemu) };
}

/** What `after` has that `before` had not. */
function added(before: HostObjects, after: HostObjects): Record<keyof HostObjects, string[]> {
  const diff = (k: keyof HostObjects): string[] => [...after[k]].filter((x) => !before[k].has(x)).sort();
  return { links: diff('links'), tables: diff('tables'), netns: diff('netns'), qemu: diff('qemu') };
}

const empty = (l: Record<keyof HostObjects, string[]>): boolean => Object.values(l).every((v) => v.length === 0);

async function remove(l: Record<keyof HostObjects, string[]>): Promise<void> {
  for (const pid of l.qemu) await run('kill', ['-9', pid]).catch(() => undefined);
  for (const t of l.tables) await run('nft', ['delete', 'table', ...t.split(' ')]).catch(() => undefined);
  // A veth's peer goes with it; a name already gone is fine.
  for (const link of l.links) await run('ip', ['link', 'del', link]).catch(() => undefined);
  for (const ns of l.netns) await run('ip', ['netns', 'del', ns]).catch(() => undefined);
}

/** How long a file waits for another run's file or benchmark (the longest take minutes under emulation). */
const LOCK_WAIT_MS = 30 * 60_000;

let before: HostObjects | undefined;
let lock: FileLock | undefined;

beforeAll(async (suite) => {
  const file = 'filepath' in suite ? String(suite.filepath) : '';
  if (!file.includes('/test/')) return;
  lock = await acquireHostTestsLock(LOCK_WAIT_MS);
  before = await snapshot();
}, LOCK_WAIT_MS + 60_000);

afterAll(async () => {
  const held = lock;
  lock = undefined;
  try {
    await checkLeaks();
  } finally {
    await held?.release();
  }
}, 60_000);

async function checkLeaks(): Promise<void> {
  if (!before) return;
  const start = before;
  before = undefined;
  // A QEMU or a dnsmasq told to stop may take a moment to go: waited for, with a deadline.
  const clean = await until('the file\'s kernel objects to go', async () => (empty(added(start, await snapshot(start))) ? true : undefined), 15_000, 500).catch(() => false);
  if (clean) return;
  const left = added(start, await snapshot(start));
  if (empty(left)) return;
  await remove(left);
  throw new Error(`this file left kernel objects behind (removed now, so later files run on a clean host): ${JSON.stringify(left)}`);
}
