/**
 * `carapace port-forward` as a user runs it: `carapace up` (a child process) with real runc
 * and runsc containers running busybox httpd on a port that is NOT published, and the real
 * CLI forwarding local ports to it through the API. Requests through the forwarded port
 * (several, each its own TCP connection; two at once), a refused port (the stable error, and
 * the forward keeps serving), refusals (a viewer, another tenant's token, an instance not in
 * the tenant), and the audit record (who forwarded which port, never the bytes).
 * The sandbox case makes 30 requests in a row and needs every one answered: on gVisor's
 * host-stack networking about one in three to ten through the forward got no answer or a
 * reset (a blocking read() returning EAGAIN there; see runtime/index.ts), which the sandbox's
 * own network stack does not do.
 * Requires `npm run build`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import { applyDocs, CLI, cli, destroyAll, eventually, freePort, mintToken, Server, tempDir, tokens } from './helpers.js';

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
const PAGE = 'forwarded-page-contents-q7\n';
/** The same page from a CGI script (a forked child writing through a pipe, then httpd to the socket). */
const CGI = '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\ncat /www/index.html\n';

async function apply(docs: object[], extra: string[] = []): Promise<void> {
  const r = await applyDocs(server.url, tmp.dir, docs, extra);
  expect(r.code, r.stdout + r.stderr).toBe(0);
}

/** A token of `role` for `tenant`, minted through the CLI. */
async function token(role: string, tenant: string): Promise<string> {
  const { token: t, result } = await mintToken(server.url, role, tenant);
  expect(result.code, result.stderr).toBe(0);
  return t;
}

/** `carapace port-forward ARGS` running in the background, as a user leaves it in a terminal. */
class Forward {
  readonly proc: ChildProcess;
  out = '';
  err = '';
  readonly exited: Promise<number | null>;

  constructor(args: string[], tokenOverride?: string) {
    this.proc = spawn(process.execPath, [CLI, 'port-forward', ...args], {
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', CARAPACE_SERVER: server.url, CARAPACE_TOKEN: tokenOverride ?? tokens.get(server.url) ?? '', CARAPACE_CONFIG: '/nonexistent/carapace-config.json' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc.stdout?.on('data', (d: Buffer) => (this.out += d.toString()));
    this.proc.stderr?.on('data', (d: Buffer) => (this.err += d.toString()));
    this.exited = new Promise((resolve) => this.proc.once('exit', (code) => resolve(code)));
  }

  /** The local ports it listens on, by remote port, once it says so. */
  async ports(count: number): Promise<Map<number, number>> {
    return eventually(async () => {
      const m = new Map([...this.out.matchAll(/^Forwarding from 127\.0\.0\.1:(\d+) -> [^:]+:(\d+)$/gm)].map((x) => [Number(x[2]), Number(x[1])]));
      if (this.proc.exitCode !== null) throw new Error(`port-forward exited ${this.proc.exitCode}: ${this.err}`);
      return m.size === count ? m : undefined;
    }, 30_000, 'port-forward to listen');
  }

  async stop(): Promise<number | null> {
    if (this.proc.exitCode === null) this.proc.kill('SIGINT');
    return this.exited;
  }
}

/** GET `path` on a fresh connection to 127.0.0.1:port (no keep-alive): status and body, or the socket error's code. */
function get(port: number, path = '/index.html'): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, headers: { connection: 'close' }, timeout: 20_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
    });
    req.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
    // A deadline, so a hung forward fails the test with what it saw instead of hanging it.
    req.on('timeout', () => {
      resolve({ error: 'TIMEOUT' });
      req.destroy();
    });
    req.end();
  });
}

beforeAll(async () => {
  tmp = await tempDir('carapace-e2e-portfwd-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  const web = await buildBusyboxImage({ registry: registry.address, repository: 'e2e/pf-web', tag: '1', cmd: ['httpd', '-f', '-p', '8080', '-h', '/www'], files: { '/www/index.html': PAGE, '/www/cgi-bin/page': { content: CGI, mode: 0o755 } } });
  server = new Server(join(tmp.dir, 'state'), await freePort());
  await server.start();
  // No `ports`: nothing is published; only port-forward reaches 8080.
  const svc = (name: string, tenant: string, isolation: string): object => ({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant }, spec: { image: web.reference, isolation } });
  await apply([
    { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } },
    { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'globex' } },
    svc('web-host', 'acme', 'host'),
    svc('web-sandbox', 'acme', 'sandbox'),
  ], ['--wait', '--timeout', '150']);
}, 240_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'));
  await registry?.stop();
  await tmp?.cleanup();
}, 120_000);

describe('port-forward to an unpublished port', () => {
  it('host tier, by service: requests through the local port, two connections at once, a refused port', async () => {
    const f = new Forward(['acme/service/web-host', ':8080', ':9']);
    try {
      const ports = await f.ports(2);
      expect(f.out).toContain('-> acme/web-host-0:8080');
      const web = ports.get(8080) ?? 0;
      // httpd may still be starting when --wait returns (no readiness probe): until the first answer.
      await eventually(async () => {
        const r = await get(web);
        return 'status' in r && r.status === 200;
      }, 30_000, 'the first request through the forward');
      for (let i = 0; i < 5; i++) expect(await get(web)).toEqual({ status: 200, body: PAGE });
      // Two connections at once: the first sends half a request and waits; the second is
      // served meanwhile; then the first completes. Each is its own WebSocket and TCP connection.
      const a = connect({ host: '127.0.0.1', port: web });
      let aOut = '';
      a.on('data', (d: Buffer) => (aOut += d.toString()));
      const aEnded = new Promise((r) => a.once('end', r));
      await new Promise((r) => a.once('connect', r));
      a.write('GET /index.html HTTP/1.0\r\n');
      expect(await get(web)).toEqual({ status: 200, body: PAGE });
      a.end('\r\n'); // the request's end, and our half-close: the answer still comes back
      await aEnded;
      expect(aOut).toMatch(/^HTTP\/1\.[01] 200/);
      expect(aOut.endsWith(PAGE)).toBe(true);
      // Nothing listens on 9: the local connection is reset, the error printed, the forward goes on.
      const refused = await get(ports.get(9) ?? 0);
      expect(refused).toEqual({ error: 'ECONNRESET' });
      await eventually(async () => f.err.includes('error CARAPACE_E_PORT_UNREACHABLE: port 9 of instance acme/web-host-0'), 10_000, 'the refusal on stderr');
      expect(await get(web)).toEqual({ status: 200, body: PAGE });
    } finally {
      expect(await f.stop()).toBe(0);
    }
  }, 120_000);

  it('sandbox tier, by instance: 30 requests in a row all answered (static and CGI), a connection that waits before its request, two at once', async () => {
    const f = new Forward(['acme/web-sandbox-0', ':8080']);
    try {
      const web = (await f.ports(1)).get(8080) ?? 0;
      await eventually(async () => {
        const r = await get(web);
        return 'status' in r && r.status === 200;
      }, 30_000, 'the first request through the forward');
      // Every one: on the host-stack networking about one in three to ten failed here.
      const results: unknown[] = [];
      for (let i = 0; i < 30; i++) results.push(await get(web, i % 2 === 0 ? '/index.html' : '/cgi-bin/page'));
      expect(results.filter((r) => JSON.stringify(r) !== JSON.stringify({ status: 200, body: PAGE }))).toEqual([]);
      // The server reads before the client's bytes are there (what failed every time on the
      // host stack): a connection that says nothing for 300 ms, then asks; and meanwhile
      // another connection is served. Each is its own WebSocket and TCP connection.
      const a = connect({ host: '127.0.0.1', port: web });
      let aOut = '';
      a.on('data', (d: Buffer) => (aOut += d.toString()));
      const aEnded = new Promise((r) => a.once('end', r));
      await new Promise((r) => a.once('connect', r));
      await new Promise((r) => setTimeout(r, 300)); // the pause under test, not a wait for a condition
      a.write('GET /index.html HTTP/1.0\r\n');
      expect(await get(web, '/cgi-bin/page')).toEqual({ status: 200, body: PAGE });
      a.end('\r\n');
      await aEnded;
      expect(aOut).toMatch(/^HTTP\/1\.[01] 200/);
      expect(aOut.endsWith(PAGE)).toBe(true);
      expect(f.err).toBe('');
    } finally {
      expect(await f.stop()).toBe(0);
    }
  }, 180_000);

  it('refuses a viewer, another tenant, an instance not in the tenant, a bad port', async () => {
    const viewer = await token('tenant-viewer', 'acme');
    const globex = await token('tenant-admin', 'globex');
    // A viewer may read the instance, so the CLI listens; the first connection is refused and ends it.
    const v = new Forward(['acme/web-host-0', ':8080'], viewer);
    const vPort = (await v.ports(1)).get(8080) ?? 0;
    expect(await get(vPort)).toEqual({ error: 'ECONNRESET' });
    expect(await v.exited).toBe(1);
    expect(v.err).toMatch(/^error CARAPACE_E_FORBIDDEN: a tenant-viewer token is read-only/m);
    // Another tenant's token: refused before anything listens.
    const other = new Forward(['acme/web-host-0', ':8080'], globex);
    expect(await other.exited).toBe(1);
    expect(other.err).toMatch(/^error CARAPACE_E_FORBIDDEN: the token is for tenant "globex"/);
    const notTheirs = new Forward(['globex/web-host-0', ':8080'], globex);
    expect(await notTheirs.exited).toBe(1);
    expect(notTheirs.err).toMatch(/^error CARAPACE_E_NOT_FOUND: /);
    const noService = new Forward(['globex/service/web-host', ':8080'], globex);
    expect(await noService.exited).toBe(1);
    expect(noService.err).toMatch(/^error CARAPACE_E_PORT_FORWARD_UNSUPPORTED: service globex\/web-host has no ready instance/);
    const bad = await cli(server.url, ['port-forward', 'acme/web-host-0', '8080:70000']);
    expect([bad.code, bad.stderr]).toEqual([1, expect.stringMatching(/^error CARAPACE_E_USAGE: invalid ports/)]);
    // The API itself: a plain GET is told to upgrade; a bad port names query.port.
    const auth = { authorization: `Bearer ${tokens.get(server.url) ?? ''}` };
    const plain = await fetch(`${server.url}/v1/tenants/acme/instances/web-host-0/portforward?port=8080`, { headers: auth });
    expect([plain.status, ((await plain.json()) as { error: { code: string } }).error.code]).toEqual([426, 'CARAPACE_E_UPGRADE_REQUIRED']);
    const badPort = await fetch(`${server.url}/v1/tenants/acme/instances/web-host-0/portforward?port=0`, { headers: auth });
    expect([badPort.status, ((await badPort.json()) as { error: { details: { path: string }[] } }).error.details[0]?.path]).toEqual([400, 'query.port']);
  }, 120_000);

  it('audits each forwarded connection with its port, and refusals; never the bytes', async () => {
    const exported = await cli(server.url, ['audit', 'export', '--since', '1h']);
    expect(exported.code, exported.stderr).toBe(0);
    const records = exported.stdout.trim().split('\n').map((l) => JSON.parse(l) as { action: string; outcome: string; actor?: unknown; target: { name: string; tenant?: string }; detail?: { port?: number; code?: string } });
    const pf = records.filter((r) => r.action === 'instance.portforward');
    expect(pf).toContainEqual(expect.objectContaining({ outcome: 'success', target: expect.objectContaining({ name: 'web-host-0', tenant: 'acme' }), detail: expect.objectContaining({ port: 8080 }) }));
    expect(pf).toContainEqual(expect.objectContaining({ outcome: 'success', target: expect.objectContaining({ name: 'web-sandbox-0' }), detail: expect.objectContaining({ port: 8080 }) }));
    expect(pf).toContainEqual(expect.objectContaining({ outcome: 'failure', detail: expect.objectContaining({ code: 'CARAPACE_E_PORT_UNREACHABLE' }) }));
    expect(pf).toContainEqual(expect.objectContaining({ outcome: 'failure', detail: expect.objectContaining({ code: 'CARAPACE_E_FORBIDDEN' }) }));
    expect(exported.stdout).not.toContain('forwarded-page-contents');
    expect(exported.stdout).not.toContain('GET /index.html');
  });
});
