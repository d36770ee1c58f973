/**
 * Helpers for the network integration tests: unique names, processes inside namespaces,
 * HTTP probes from the host and from inside a namespace, and a kernel-state dump used to
 * prove that teardown leaves nothing behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import pino from 'pino';
import { runOrThrow } from '../../src/proc/run.js';

/** A quiet logger: the tests assert on behaviour, not on log lines. */
export const testLogger = pino({ level: process.env.CARAPACE_TEST_LOG ?? 'silent' });

/** A short random tag making bridge, subnet, ids and ports unique per test file run. */
export function uniqueTag(): string {
  return randomBytes(3).toString('hex');
}

/** A /24 in 10.213.0.0/16 that no interface on the host uses yet. */
export function freeSubnet(): string {
  const used = new Set(Object.values(os.networkInterfaces()).flat().map((a) => a?.address));
  for (;;) {
    const third = 1 + Math.floor(Math.random() * 250);
    if (!used.has(`10.213.${third}.1`)) return `10.213.${third}.0/24`;
  }
}

/** A TCP port nothing on the host listens on (by binding it briefly). */
export async function freeHostPort(): Promise<number> {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '0.0.0.0', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
}

/** The first IPv4 address of the host that is neither loopback nor one of ours. */
export function otherHostAddress(skipIfPrefix: string[]): string | undefined {
  for (const [name, addrs] of Object.entries(os.networkInterfaces())) {
    if (skipIfPrefix.some((p) => name.startsWith(p))) continue;
    for (const a of addrs ?? []) {
      if (a.family === 'IPv4' && !a.internal) return a.address;
    }
  }
  return undefined;
}

/** Starts `busybox httpd` serving `dir` on `port` inside the named namespace. */
export function httpdIn(netns: string, dir: string, port: number): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', netns, 'busybox', 'httpd', '-f', '-p', String(port), '-h', dir], { stdio: 'ignore' });
  child.on('error', () => undefined);
  return child;
}

/** Kills a child process and waits for it to be gone. */
export async function killChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGKILL');
  await gone;
}

/** GET http://host:port/ from the host; resolves with the body, rejects on error or timeout. */
export function httpGet(host: string, port: number, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: '/', timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms to ${host}:${port}`)));
    req.on('error', reject);
  });
}

/** Retries httpGet until it answers or `totalMs` passes (a server just started). */
export async function httpGetEventually(host: string, port: number, totalMs = 5000): Promise<string> {
  const deadline = Date.now() + totalMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      return await httpGet(host, port, 1000);
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw last instanceof Error ? last : new Error(String(last));
}

/**
 * GET from inside a namespace; resolves with the body or undefined on failure. Runs node
 * itself in the namespace (Debian's static busybox wget crashes resolving addresses).
 */
export async function httpGetFromNetns(netns: string, url: string, timeoutS = 2): Promise<string | undefined> {
  const script = `require('http').get(process.argv[1], {timeout: ${timeoutS * 1000}}, (r) => { r.pipe(process.stdout); }).on('timeout', () => process.exit(3)).on('error', () => process.exit(2));`;
  try {
    const { stdout } = await runOrThrow('ip', ['netns', 'exec', netns, process.execPath, '-e', script, url], { timeoutMs: (timeoutS + 5) * 1000 });
    return stdout;
  } catch {
    return undefined;
  }
}

/** Everything the kernel shows that teardown must remove, as text to search. */
export async function kernelState(): Promise<{ netns: string; links: string; nft: string }> {
  const [netns, links, nft] = await Promise.all([
    runOrThrow('ip', ['netns', 'list']).then((r) => r.stdout),
    runOrThrow('ip', ['-o', 'link']).then((r) => r.stdout),
    runOrThrow('nft', ['list', 'ruleset']).then((r) => r.stdout),
  ]);
  return { netns, links, nft };
}
