/**
 * Helpers for the tenant data plane's integration tests: a small "LAN" of network namespaces
 * (hosts and an outside machine on one bridge), servers and probes run inside namespaces with
 * busybox and node, each probe bounded by its own timeout so a dropped packet fails fast.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { run, runOrThrow } from '../../src/proc/run.js';

/** Runs a command inside a named network namespace; resolves with stdout. */
export async function inNs(ns: string, cmd: string, args: readonly string[], timeoutMs = 15_000): Promise<string> {
  return (await runOrThrow('ip', ['netns', 'exec', ns, cmd, ...args], { timeoutMs })).stdout;
}

/** Runs `ip` against a namespace (`ip -n <ns> …`). */
export async function ipIn(ns: string, ...args: string[]): Promise<string> {
  return (await runOrThrow('ip', ['-n', ns, ...args])).stdout;
}

/** A machine of the test LAN: its namespace, its LAN address. */
export interface LanNode {
  ns: string;
  ip: string;
}

/**
 * Makes namespace `lan` with a bridge, and one namespace per node with `eth0` on it, address
 * `<ip>/24`, loopback up. Removing the namespaces (removeLan) removes everything.
 */
export async function makeLan(lan: string, nodes: readonly LanNode[]): Promise<void> {
  await runOrThrow('ip', ['netns', 'add', lan]);
  await ipIn(lan, 'link', 'add', 'br0', 'type', 'bridge');
  await ipIn(lan, 'link', 'set', 'br0', 'up');
  for (const [i, n] of nodes.entries()) {
    await runOrThrow('ip', ['netns', 'add', n.ns]);
    await ipIn(lan, 'link', 'add', `p${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', n.ns);
    await ipIn(lan, 'link', 'set', `p${i}`, 'master', 'br0', 'up');
    await ipIn(n.ns, 'addr', 'add', `${n.ip}/24`, 'dev', 'eth0');
    await ipIn(n.ns, 'link', 'set', 'eth0', 'up');
    await ipIn(n.ns, 'link', 'set', 'lo', 'up');
  }
}

/** Deletes the LAN's namespaces (ignoring those already gone). */
export async function removeLan(lan: string, nodes: readonly LanNode[]): Promise<void> {
  for (const ns of [...nodes.map((n) => n.ns), lan]) await run('ip', ['netns', 'del', ns]);
}

/** Starts `busybox httpd` serving `dir` on `port` inside namespace `ns`. */
export function httpdIn(ns: string, dir: string, port: number): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns, 'busybox', 'httpd', '-f', '-p', String(port), '-h', dir], { stdio: 'ignore' });
  child.on('error', () => undefined);
  return child;
}

const GET_SCRIPT = `
const [url, timeoutMs, localAddress] = process.argv.slice(1);
const opts = { timeout: Number(timeoutMs), agent: false };
if (localAddress) opts.localAddress = localAddress;
require('http').get(url, opts, (r) => { r.pipe(process.stdout); })
  .on('timeout', function () { this.destroy(); process.exit(3); })
  .on('error', () => process.exit(2));
`;

/**
 * GET `url` from inside `ns` (node, run in the namespace; Debian's static busybox wget crashes
 * resolving addresses); the body, or undefined when the connection fails or times out.
 */
export async function getFrom(ns: string, url: string, opts: { timeoutMs?: number; localAddress?: string } = {}): Promise<string | undefined> {
  const timeoutMs = opts.timeoutMs ?? 1500;
  const r = await run('ip', ['netns', 'exec', ns, process.execPath, '-e', GET_SCRIPT, url, String(timeoutMs), opts.localAddress ?? ''], { timeoutMs: timeoutMs + 15_000 });
  return r.code === 0 ? r.stdout : undefined;
}

/** GET from `ns` until it answers or `totalMs` passes (a server just started); the body or undefined. */
export async function getEventually(ns: string, url: string, totalMs = 10_000): Promise<string | undefined> {
  const deadline = Date.now() + totalMs;
  while (Date.now() < deadline) {
    const body = await getFrom(ns, url);
    if (body !== undefined) return body;
    await new Promise((r) => setTimeout(r, 100));
  }
  return undefined;
}

const RESOLVE_SCRIPT = `
const { Resolver } = require('dns').promises;
const r = new Resolver({ timeout: 1000, tries: 2 });
r.setServers([process.argv[1]]);
r.resolve4(process.argv[2]).then((a) => console.log(a.sort().join(',')), (e) => console.log('ERR ' + e.code));
`;

/** Asks DNS server `server` for the A records of `name` from inside `ns`: `a,b` or `ERR <code>`. */
export async function resolveFrom(ns: string, server: string, name: string): Promise<string> {
  return (await inNs(ns, process.execPath, ['-e', RESOLVE_SCRIPT, server, name])).trim();
}

/** One request of a client loop: when it started, and the body or a failure. */
export interface LoopSample {
  t: number;
  ok: boolean;
  body?: string;
  /** How long the request took (ms). */
  ms?: number;
  /** Why a failed request failed: the error's code (ECONNRESET, ECONNREFUSED…) or `timeout`. */
  err?: string;
  /** For a failed request: whether its connection had been established (false: no answer to the SYN). */
  connected?: boolean;
}

const LOOP_SCRIPT = `
const http = require('http');
const url = process.argv[1];
const pauseMs = Number(process.argv[2]);
const timeoutMs = Number(process.argv[3]);
function once() {
  const t = Date.now();
  let connected = false;
  const next = (s) => { console.log(JSON.stringify({ ...s, ms: Date.now() - t })); setTimeout(once, pauseMs); };
  const req = http.get(url, { timeout: timeoutMs, agent: false }, (r) => {
    let b = '';
    r.on('data', (c) => (b += c));
    r.on('end', () => next({ t, ok: true, body: b.trim() }));
  });
  req.on('socket', (s) => s.on('connect', () => (connected = true)));
  req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'timeout' })));
  req.on('error', (e) => next({ t, ok: false, err: e.code || e.message, connected }));
}
once();
`;

/**
 * A client in `ns` requesting `url` in a loop, `pauseMs` between requests, each failed after
 * `timeoutMs` without an answer; `samples` grows as answers come.
 */
export function clientLoop(ns: string, url: string, pauseMs = 20, timeoutMs = 1000): { child: ChildProcess; samples: LoopSample[] } {
  const samples: LoopSample[] = [];
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', LOOP_SCRIPT, url, String(pauseMs), String(timeoutMs)], { stdio: ['ignore', 'pipe', 'ignore'] });
  child.on('error', () => undefined);
  let buf = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (c: string) => {
    buf += c;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      samples.push(JSON.parse(buf.slice(0, nl)) as LoopSample); // safe: the loop script prints one JSON sample per line
      buf = buf.slice(nl + 1);
    }
  });
  return { child, samples };
}

/** Waits until `cond()` holds or `totalMs` passes; returns whether it held. */
export async function until(cond: () => boolean | Promise<boolean>, totalMs: number): Promise<boolean> {
  const deadline = Date.now() + totalMs;
  while (Date.now() < deadline) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond();
}
