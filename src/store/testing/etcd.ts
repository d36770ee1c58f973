/**
 * A real, single-member etcd for tests and local experiments: started from the host's `etcd`
 * binary (Debian: `apt-get install -y etcd-server`, v3.4) on loopback with free ports and a
 * temp data dir. Used by the etcd store's tests and by later multi-host and HA tests.
 *
 * The process can be killed with any signal and restarted on the same data dir and ports, so
 * clients holding the endpoint reconnect to the same member (durability and failover tests).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Options for {@link startEtcd}. */
export interface StartEtcdOptions {
  /** The binary; default `$ETCD_BIN` or `etcd` on the PATH. */
  binary?: string;
  /** How long to wait for the member to report healthy, in ms. Default 30,000. */
  readyTimeoutMs?: number;
  /** Extra flags, e.g. `['--max-txn-ops', '1024']`. */
  extraArgs?: string[];
}

/** A running (or stopped, restartable) etcd member started by {@link startEtcd}. */
export interface EtcdProcess {
  /** The client URL, e.g. `http://127.0.0.1:43211`; stays the same across restarts. */
  readonly endpoint: string;
  readonly dataDir: string;
  /** The current process id (changes on restart). */
  readonly pid: number;
  /** Send `signal` (default SIGKILL) and wait until the process has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Start the member again on the same data dir and ports (after `kill`); resolves when healthy. */
  restart(): Promise<void>;
  /** Stop the member (SIGTERM, then SIGKILL after 5 s) and delete its data dir. Idempotent. */
  stop(): Promise<void>;
}

/** Thrown when the etcd binary is not installed; the message says how to install it. */
export class EtcdNotInstalledError extends Error {
  constructor(binary: string) {
    super(`cannot run etcd (${binary}): not installed. Install it with \`apt-get install -y etcd-server\` (Debian) or set ETCD_BIN`);
    this.name = 'EtcdNotInstalledError';
  }
}

/** A TCP port that was free a moment ago (the OS picked it); etcd binds it right after. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      // listen on a TCP host always yields an AddressInfo object, never a string or null
      const port = (addr as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once GET /health answers `"health":"true"` (a leader is elected and serving). */
async function waitHealthy(endpoint: string, timeoutMs: number, exited: () => Error | undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const gone = exited();
    if (gone) throw gone;
    try {
      const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const body = (await res.json()) as { health?: unknown };
      if (body.health === 'true') return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`etcd at ${endpoint} not healthy after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Start a fresh single-member etcd on 127.0.0.1 with random free ports and a new temp data
 * dir; resolves when it is healthy. Rejects with EtcdNotInstalledError when the binary is
 * missing. Call `stop()` when done (it removes the data dir).
 */
export async function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdProcess> {
  const binary = opts.binary ?? process.env.ETCD_BIN ?? 'etcd';
  // A port can be taken by someone else between freePort() and etcd's bind: try a few pairs.
  for (let attempt = 1; ; attempt++) {
    const dataDir = await mkdtemp(join(tmpdir(), 'carapace-etcd-'));
    const clientPort = await freePort();
    let peerPort = await freePort();
    while (peerPort === clientPort) peerPort = await freePort(); // the OS may hand the same port out twice
    const endpoint = `http://127.0.0.1:${clientPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    const args = [
      '--name', 'default',
      '--data-dir', dataDir,
      '--listen-client-urls', endpoint,
      '--advertise-client-urls', endpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `default=${peer}`,
      '--initial-cluster-token', `carapace-test-${clientPort}`,
      '--initial-cluster-state', 'new',
      '--logger', 'zap',
      '--log-level', 'warn',
      ...(opts.extraArgs ?? []),
    ];
    const member = new Member(binary, args, endpoint, dataDir, opts.readyTimeoutMs ?? 30_000);
    try {
      await member.launch();
      return member;
    } catch (e) {
      await member.stop();
      const portClash = e instanceof Error && /address already in use/.test(e.message);
      if (!portClash || attempt >= 3) throw e;
    }
  }
}

/** Members whose process may be running, killed if this process exits without stopping them. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

class Member implements EtcdProcess {
  private child: ChildProcess | undefined;
  private output = '';
  private stopped = false;

  constructor(
    private readonly binary: string,
    private readonly args: string[],
    readonly endpoint: string,
    readonly dataDir: string,
    private readonly readyTimeoutMs: number,
  ) {}

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  async launch(): Promise<void> {
    this.output = '';
    const child = spawn(this.binary, this.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    running.add(child);
    child.once('exit', () => running.delete(child));
    let spawnError: Error | undefined;
    child.once('error', (e: NodeJS.ErrnoException) => {
      spawnError = e.code === 'ENOENT' ? new EtcdNotInstalledError(this.binary) : e;
    });
    // Keep the last 8 KiB of logs for error messages; etcd logs to stderr.
    const keep = (d: Buffer): void => {
      this.output = (this.output + d.toString()).slice(-8192);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const exited = (): Error | undefined =>
      spawnError ??
      (child.exitCode !== null || child.signalCode !== null ? new Error(`etcd exited (${child.exitCode ?? child.signalCode}) before it was healthy`) : undefined);
    try {
      await waitHealthy(this.endpoint, this.readyTimeoutMs, exited);
    } catch (e) {
      if (e instanceof EtcdNotInstalledError) throw e;
      throw new Error(`${(e as Error).message}; its log ends:\n${this.output}`, { cause: e }); // waitHealthy only throws Errors
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    // No pid: the spawn failed, there is nothing to kill.
    if (!child || child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    await exited;
  }

  async restart(): Promise<void> {
    if (this.stopped) throw new Error('etcd member was stopped; start a new one');
    await this.kill();
    await this.launch();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), 5000);
    try {
      await this.kill('SIGTERM');
    } finally {
      clearTimeout(timer);
    }
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
