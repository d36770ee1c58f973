/**
 * Test and benchmark fixture: a real OCI registry (Debian's `docker-registry`, distribution
 * 2.8) on a free loopback port, storing into a directory you own. For integration tests,
 * benchmarks and the quick-start script; never for production use.
 *
 * The registry runs under `setpriv --pdeathsig KILL`, so it dies with the process that
 * started it even if that process is killed; an exit hook also kills it on normal exit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Options of {@link startRegistry}. */
export interface StartRegistryOptions {
  /** Directory for the registry's storage and its generated config; created if missing. */
  dir: string;
  /** Port to listen on; default: a free one. */
  port?: number;
  /** Address to listen on; default 127.0.0.1 (tests with network-namespace hosts use a bridge address). */
  host?: string;
  /** Registry binary; default `/usr/bin/docker-registry`. */
  binary?: string;
  /** How long to wait for `/v2/` to answer; default 10 s. */
  readyTimeoutMs?: number;
}

/** A running registry. */
export interface RunningRegistry {
  /** `127.0.0.1:PORT`, the registry part of image references (`${address}/repo:tag`). */
  address: string;
  port: number;
  /** Stops the registry (SIGTERM, then SIGKILL after 5 s). Idempotent; storage is kept. */
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous last resort when a test run ends without calling stop().
  process.on('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error('no port assigned'))));
    });
  });
}

/**
 * Starts a registry and resolves once `GET /v2/` answers 200. Retries on another port if the
 * chosen free port was taken in the meantime (only when `port` is not given). Always pair
 * with `stop()` in an `afterAll`/`finally`.
 */
export async function startRegistry(opts: StartRegistryOptions): Promise<RunningRegistry> {
  const attempts = opts.port === undefined ? 3 : 1;
  let lastError: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      return await startOnce(opts, opts.port ?? (await freePort()));
    } catch (e) {
      lastError = e;
    }
  }
  throw lastError;
}

async function startOnce(opts: StartRegistryOptions, port: number): Promise<RunningRegistry> {
  const storage = join(opts.dir, 'storage');
  await mkdir(storage, { recursive: true });
  const configPath = join(opts.dir, `config-${port}.yml`);
  // YAML is a superset of JSON, so the config is written as JSON to avoid quoting pitfalls.
  const config = {
    version: 0.1,
    log: { level: 'error', accesslog: { disabled: true } },
    storage: { filesystem: { rootdirectory: storage }, delete: { enabled: true } },
    http: { addr: `${opts.host ?? '127.0.0.1'}:${port}`, secret: 'carapace-test-registry' },
  };
  await writeFile(configPath, JSON.stringify(config, null, 2));
  const binary = opts.binary ?? '/usr/bin/docker-registry';
  const usePdeathsig = existsSync('/usr/bin/setpriv');
  const [cmd, args] = usePdeathsig
    ? ['/usr/bin/setpriv', ['--pdeathsig', 'KILL', '--', binary, 'serve', configPath]]
    : [binary, ['serve', configPath]];
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  installExitHook();
  live.add(child);
  let stderr = '';
  child.stderr?.on('data', (b: Buffer) => {
    if (stderr.length < 8192) stderr += b.toString('utf8');
  });
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      live.delete(child);
      resolve();
    });
    child.once('error', (e) => {
      stderr += String(e);
      exited = true;
      live.delete(child);
      resolve();
    });
  });

  const stop = async (): Promise<void> => {
    if (exited) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exitedPromise;
    clearTimeout(timer);
  };

  const address = `${opts.host ?? '127.0.0.1'}:${port}`;
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 10_000);
  while (Date.now() < deadline) {
    if (exited) throw new Error(`docker-registry exited during startup on ${address}: ${stderr.trim().split('\n').pop() ?? ''}`);
    try {
      const res = await fetch(`http://${address}/v2/`, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) return { address, port, stop };
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  await stop();
  throw new Error(`docker-registry on ${address} did not answer /v2/ within the deadline`);
}
