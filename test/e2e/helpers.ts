/**
 * End-to-end harness: a real registry, a real `carapace up` child process (so it can be
 * SIGKILLed), and the real CLI. Requires `npm run build` (scripts/test.sh does it).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { freePort } from '../../src/image/testing/registry.js';
import { teardownHost } from '../../src/agent/teardown.js';
import { createRuncDriver, createRunscDriver } from '../../src/runtime/index.js';
import { CommandError, run } from '../../src/proc/run.js';
import type { ContainerInfo } from '../../src/runtime/driver.js';
import { apiCaFile, apiFetch, trustStateDir } from '../api-fetch.js';
import { isLoopbackHost } from '../../src/model/netaddr.js';

export { apiCaFile, apiDispatcher, apiFetch, trustStateDir } from '../api-fetch.js';

/**
 * The repository root: two levels up when this file runs as test/e2e/helpers.ts (vitest),
 * three when it runs compiled as dist/test/e2e/helpers.js (bench/soak.ts imports the
 * reliability suite, which uses this harness).
 */
export const ROOT = existsSync(join(import.meta.dirname, '..', '..', 'package.json')) ? join(import.meta.dirname, '..', '..') : join(import.meta.dirname, '..', '..', '..');
export const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');

if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Admin tokens of the servers started by this process, by URL (read from STATE_DIR/admin-token). */
export const tokens = new Map<string, string>();

/**
 * Runs the real CLI against `server`, with that server's admin token and, for an https server,
 * the CA it is verified against (CARAPACE_CA_FILE). A CLI still running at `timeoutMs` is
 * killed and reported as exit -1.
 */
export async function cli(server: string, args: string[], input?: string, timeoutMs = 120_000): Promise<CliResult> {
  const token = tokens.get(server);
  const caFile = apiCaFile(server);
  const env = { CARAPACE_SERVER: server, CARAPACE_CONFIG: '/nonexistent/carapace-config.json', ...(token ? { CARAPACE_TOKEN: token } : {}), ...(caFile ? { CARAPACE_CA_FILE: caFile } : {}) };
  try {
    // Exports of a long run can be large: the cap is far above anything a test prints.
    const r = await run(process.execPath, [CLI, ...args], { env, input: input ?? '', timeoutMs, maxOutputBytes: 256 * 1024 * 1024 });
    return { code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    if (e instanceof CommandError && e.timedOut) return { code: -1, stdout: '', stderr: e.stderr };
    throw e;
  }
}

/** Manifest documents as one multi-document YAML stream (JSON is YAML). */
export const manifest = (docs: object[]): string => docs.map((d) => JSON.stringify(d)).join('\n---\n');

/** `carapace apply -f FILE EXTRA…` of `docs`, written to a new file in `dir`; the CLI's result. */
export async function applyDocs(server: string, dir: string, docs: object[], extra: string[] = [], timeoutMs?: number): Promise<CliResult> {
  const file = join(dir, `m-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, manifest(docs));
  return cli(server, ['apply', '-f', file, ...extra], undefined, timeoutMs);
}

/** A token of `role` for `tenant`, minted through the CLI (its last output line); the CLI's result when it failed. */
export async function mintToken(server: string, role: string, tenant: string): Promise<{ token: string; result: CliResult }> {
  const result = await cli(server, ['token', 'create', '--name', `${role}-${tenant}`, '--role', role, '--tenant', tenant]);
  return { token: result.stdout.trim().split('\n').at(-1) ?? '', result };
}

/** A Carapace child process (so it can be SIGKILLed), with its output kept for diagnosis. */
class Child {
  proc: ChildProcess | undefined;
  log = '';

  /** `wrap`: a command the CLI runs under (e.g. `ip netns exec NS`, which execs it in place). */
  protected spawnCli(args: string[], env: Record<string, string>, wrap: string[] = []): ChildProcess {
    this.log = '';
    const [cmd, ...pre] = wrap.length > 0 ? [...wrap, process.execPath] : [process.execPath];
    const p = spawn(cmd as string, [...pre, CLI, ...args], {
      env: { ...process.env, CARAPACE_LOG_LEVEL: process.env['CARAPACE_LOG_LEVEL'] ?? 'info', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    p.stdout?.on('data', (d: Buffer) => (this.log += d.toString()));
    p.stderr?.on('data', (d: Buffer) => (this.log += d.toString()));
    this.proc = p;
    return p;
  }

  /** SIGKILL: no chance to flush or clean anything. */
  async kill9(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }

  /** SIGTERM; SIGKILL if it is still there 15 s later. Says which ended it. */
  async stop(): Promise<'exited' | 'killed' | 'not running'> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return 'not running';
    // A deadline, not a pause: resolves the moment the process exits; SIGKILL only past 15 s.
    return new Promise((resolve) => {
      let killed = false;
      const deadline = setTimeout(() => ((killed = true), p.kill('SIGKILL')), 15_000);
      p.once('exit', () => {
        clearTimeout(deadline);
        resolve(killed ? 'killed' : 'exited');
      });
      p.kill('SIGTERM');
    });
  }
}

/**
 * `carapace up` (all-in-one, plain HTTP on loopback) or `carapace server` (control plane only,
 * `mode: 'server'`: HTTPS, verified against the CA it writes to STATE_DIR/api-ca.crt, which
 * `start` trusts for `apiFetch`, `authed` and `cli`).
 */
export class Server extends Child {
  constructor(
    readonly stateDir: string,
    readonly port: number,
    readonly extraArgs: string[] = [],
    readonly extraEnv: Record<string, string> = {},
    readonly mode: 'up' | 'server' = 'up',
  ) {
    super();
  }

  /** `carapace server` always serves HTTPS; `carapace up` only when it listens beyond loopback. */
  get https(): boolean {
    if (this.mode === 'server') return true;
    const i = this.extraArgs.indexOf('--listen');
    return i >= 0 && !isLoopbackHost(this.extraArgs[i + 1] ?? '127.0.0.1');
  }

  get url(): string {
    return `${this.https ? 'https' : 'http'}://127.0.0.1:${this.port}`;
  }

  /** Starts the process without waiting for it to serve (for a test that waits for its own condition, e.g. a refusal at start). */
  launch(): ChildProcess {
    // Servers of a test pick a free agent API port unless told one (several may run at once).
    const agentPort = this.extraArgs.includes('--agent-port') || this.extraArgs.includes('--no-agent-api') ? [] : ['--agent-port', '0'];
    const base = this.mode === 'up' ? ['up', '--state-dir', this.stateDir, '--port', String(this.port), '--host-name', 'e2e'] : ['server', '--state-dir', this.stateDir, '--port', String(this.port), ...agentPort];
    return this.spawnCli([...base, ...this.extraArgs], { CARAPACE_CONFIG: join(this.stateDir, 'cli-config.json'), ...this.extraEnv });
  }

  async start(): Promise<void> {
    const proc = this.launch();
    for (let i = 0; i < 200; i++) {
      try {
        // The CA file is written before the API listens (and kept across restarts).
        if (this.https && !(await trustStateDir(this.url, this.stateDir))) throw new Error('no api-ca.crt yet');
        const r = await apiFetch(`${this.url}/healthz`);
        if (r.ok) {
          // Only the server that minted the first admin token has the file (it is written
          // before the API listens); other servers of the same store get theirs from the test.
          const token = await readFile(join(this.stateDir, 'admin-token'), 'utf8').catch(() => undefined);
          if (token !== undefined) tokens.set(this.url, token.trim());
          return;
        }
      } catch {
        // not up yet
      }
      if (proc.exitCode !== null) throw new Error(`server exited early:\n${this.log}`);
      await sleep(100);
    }
    throw new Error(`server did not come up:\n${this.log}`);
  }
}

/** `carapace agent`: one host of a cluster, with its own state directory. */
export class Agent extends Child {
  constructor(
    readonly stateDir: string,
    readonly args: string[],
    readonly extraEnv: Record<string, string> = {},
    readonly wrap: string[] = [],
  ) {
    super();
  }

  async start(): Promise<void> {
    const proc = this.spawnCli(['agent', '--state-dir', this.stateDir, ...this.args], this.extraEnv, this.wrap);
    for (let i = 0; i < 300; i++) {
      if (this.log.includes('carapace agent is up')) return;
      if (proc.exitCode !== null) throw new Error(`agent exited early:\n${this.log}`);
      await sleep(100);
    }
    throw new Error(`agent did not come up:\n${this.log}`);
  }
}

/** Every container the all-in-one's drivers manage (what is really there). */
export async function containers(stateDir: string): Promise<(ContainerInfo & { runtime: string })[]> {
  const logger = pino({ level: 'silent' });
  const out: (ContainerInfo & { runtime: string })[] = [];
  for (const [runtime, make] of [
    ['runc', createRuncDriver],
    ['runsc', createRunscDriver],
  ] as const) {
    const d = make({ stateDir: join(stateDir, 'runtime', runtime), logger });
    for (const c of await d.recover()) out.push({ ...c, runtime });
  }
  return out;
}

/** Removes every container, VM, network, volume mount and secret tmpfs the all-in-one left behind (test cleanup; see agent/teardown.ts). */
export async function destroyAll(stateDir: string, net: { prefix?: string; netns?: string } = {}): Promise<void> {
  await teardownHost(stateDir, net);
}

export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Polls `fn` until it returns a truthy value or the time runs out. */
export async function eventually<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 30_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(200);
  }
}

export { freePort };

/** fetch with the server's admin token (verified against its CA when it is https). */
export function authed(server: string, path: string): Promise<Response> {
  return apiFetch(`${server}${path}`, { headers: { authorization: `Bearer ${tokens.get(server) ?? ''}` } });
}
