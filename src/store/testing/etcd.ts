/**
 * A real, single-member etcd for tests and local experiments: started from the host's `etcd`
 * binary (Debian: `apt-get install -y etcd-server`, v3.4) on loopback with free ports and a
 * temp data dir. Used by the etcd store's tests and by later multi-host and HA tests.
 *
 * The process can be killed with any signal and restarted on the same data dir and ports, so
 * clients holding the endpoint reconnect to the same member (durability and failover tests).
 *
 * With `{tls: FILES}` the member serves its clients over TLS and asks each for a certificate
 * from its CA (`--client-cert-auth`), as a production etcd should, and `storeUrl`/`storeArgs`/
 * `storeOptions` carry the client's files to servers and clients. The files are made with the
 * project's own PKI code by `pki/testing/etcd-pki.ts` (`startTlsEtcd()` does both): the layer
 * map keeps store/ from importing pki/.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EtcdStoreOptions } from '../etcd.js';

/** Options for {@link startEtcd}. */
export interface StartEtcdOptions {
  /** The binary; default `$ETCD_BIN` or `etcd` on the PATH. */
  binary?: string;
  /** How long to wait for the member to report healthy, in ms. Default 30,000. */
  readyTimeoutMs?: number;
  /** Extra flags, e.g. `['--max-txn-ops', '1024']`. */
  extraArgs?: string[];
  /** Serve clients over TLS with client-certificate authentication, with these files (see the module comment). */
  tls?: EtcdTlsFiles;
}

/**
 * PEM files for a TLS member: its certificate (SAN 127.0.0.1; serverAuth and clientAuth,
 * which etcd's HTTP gateway presents to the member's own gRPC port), its key, the CA that
 * signed client certificates, and one client's certificate and key.
 */
export interface EtcdTlsFiles {
  ca: string;
  serverCert: string;
  serverKey: string;
  cert: string;
  key: string;
  /** Called once the member is stopped: the member owns the files from then on. */
  cleanup?(): Promise<void>;
}

/** The client's PEM texts for a TLS member: what `openEtcdStore`'s `tls` option takes. */
export interface EtcdClientPems {
  ca: string;
  cert: string;
  key: string;
}

/** A running (or stopped, restartable) etcd member started by {@link startEtcd}. */
export interface EtcdProcess {
  /** The client URL, e.g. `http://127.0.0.1:43211` (`https://` with TLS); stays the same across restarts. */
  readonly endpoint: string;
  /** The store URL for `carapace server --store`: `etcd://127.0.0.1:PORT`, or `etcds://…` with TLS. */
  readonly storeUrl: string;
  /** `['--store', storeUrl]`, plus `--etcd-ca/--etcd-cert/--etcd-key FILE` with TLS: a server's or agent's store flags. */
  readonly storeArgs: string[];
  /** With TLS: the files it was started with. */
  readonly pki: EtcdTlsFiles | undefined;
  /** With TLS: the client's PEM texts. */
  readonly clientTls: EtcdClientPems | undefined;
  /** `{endpoints, tls?}` for `openEtcdStore` (add a prefix, a logger…). */
  readonly storeOptions: EtcdStoreOptions;
  /**
   * POST a JSON body to the member's HTTP gateway (e.g. `/v3/kv/range`), with the client
   * certificate under TLS; resolves with the status and the raw body.
   */
  post(path: string, body: unknown): Promise<{ status: number; body: Buffer }>;
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

/**
 * One HTTP(S) request to the member, with the client certificate under TLS (Node's fetch
 * takes no client certificate); rejects after `timeoutMs`.
 */
function httpCall(endpoint: string, tls: EtcdClientPems | undefined, method: string, path: string, body: string | undefined, timeoutMs: number): Promise<{ status: number; body: Buffer }> {
  if (!tls) {
    return fetch(`${endpoint}${path}`, { method, ...(body !== undefined ? { body } : {}), signal: AbortSignal.timeout(timeoutMs) }).then(async (res) => ({ status: res.status, body: Buffer.from(await res.arrayBuffer()) }));
  }
  return new Promise((resolve, reject) => {
    const req = request(`${endpoint}${path}`, { method, ca: tls.ca, cert: tls.cert, key: tls.key, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from ${endpoint}${path} in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** Resolves once GET /health answers `"health":"true"` (a leader is elected and serving). */
async function waitHealthy(endpoint: string, tls: EtcdClientPems | undefined, timeoutMs: number, exited: () => Error | undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: string;
  for (;;) {
    const gone = exited();
    if (gone) throw gone;
    try {
      const res = await httpCall(endpoint, tls, 'GET', '/health', undefined, 1000);
      const body = JSON.parse(res.body.toString()) as { health?: unknown };
      if (body.health === 'true') return;
      last = res.body.toString();
    } catch (e) {
      last = e instanceof Error ? e.message : String(e); // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`etcd at ${endpoint} not healthy after ${timeoutMs} ms (last: ${last})`);
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
  const pki = opts.tls;
  const tls = pki !== undefined;
  // A port can be taken by someone else between freePort() and etcd's bind: try a few pairs.
  for (let attempt = 1; ; attempt++) {
    const dataDir = await mkdtemp(join(tmpdir(), 'carapace-etcd-'));
    const clientPort = await freePort();
    let peerPort = await freePort();
    while (peerPort === clientPort) peerPort = await freePort(); // the OS may hand the same port out twice
    const endpoint = `${tls ? 'https' : 'http'}://127.0.0.1:${clientPort}`;
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
      ...(pki ? ['--cert-file', pki.serverCert, '--key-file', pki.serverKey, '--trusted-ca-file', pki.ca, '--client-cert-auth'] : []),
      ...(opts.extraArgs ?? []),
    ];
    const clientTls = pki ? { ca: await readFile(pki.ca, 'utf8'), cert: await readFile(pki.cert, 'utf8'), key: await readFile(pki.key, 'utf8') } : undefined;
    const member = new Member(binary, args, endpoint, dataDir, pki, clientTls, opts.readyTimeoutMs ?? 30_000);
    try {
      await member.launch();
      return member;
    } catch (e) {
      await member.stop(true); // the caller's TLS files stay for the next attempt (or the caller's cleanup)
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
    readonly pki: EtcdTlsFiles | undefined,
    readonly clientTls: EtcdClientPems | undefined,
    private readonly readyTimeoutMs: number,
  ) {}

  get storeUrl(): string {
    return this.endpoint.replace(/^https:\/\//, 'etcds://').replace(/^http:\/\//, 'etcd://');
  }

  get storeArgs(): string[] {
    const p = this.pki;
    return ['--store', this.storeUrl, ...(p ? ['--etcd-ca', p.ca, '--etcd-cert', p.cert, '--etcd-key', p.key] : [])];
  }

  get storeOptions(): EtcdStoreOptions {
    return { endpoints: [this.endpoint], ...(this.clientTls ? { tls: this.clientTls } : {}) };
  }

  post(path: string, body: unknown): Promise<{ status: number; body: Buffer }> {
    return httpCall(this.endpoint, this.clientTls, 'POST', path, JSON.stringify(body), 30_000);
  }

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
      await waitHealthy(this.endpoint, this.clientTls, this.readyTimeoutMs, exited);
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

  /** `keepTlsFiles`: a failed start leaves the TLS files to the caller. */
  async stop(keepTlsFiles = false): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), 5000);
    try {
      await this.kill('SIGTERM');
    } finally {
      clearTimeout(timer);
    }
    await rm(this.dataDir, { recursive: true, force: true });
    if (!keepTlsFiles) await this.pki?.cleanup?.();
  }
}
