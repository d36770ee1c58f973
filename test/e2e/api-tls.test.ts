/**
 * The user API over HTTPS, with real processes: a real `carapace server`, the real CLI, a real
 * tcpdump on the loopback interface. A capture of a whole CLI session (login, apply, get,
 * tokens, logs, audit) holds TLS records and neither the admin token nor a string of the
 * manifest; the same capture of a plain-HTTP server on loopback does hold both (so the search
 * would find them). A CLI whose pinned CA is another one refuses before any request: the
 * server logs a failed handshake and nothing it would have written exists. Certificates the
 * operator gives are checked at start (expired, key readable by others, key of another
 * certificate); a self-signed one and one for another host name start, and the CLI refuses
 * them, saying which check failed. `carapace up` stays plain HTTP on loopback and says so, and
 * serves HTTPS (pinned in the config it writes) on any other address. Certificates are made
 * with the project's PKI code.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer as createHttpsServer } from 'node:https';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fingerprintOf, issueCertificate, newCsr, selfSignedCertificate, type KeyedCert } from '../../src/pki/x509.js';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { run } from '../../src/proc/run.js';
import { CLI, destroyAll, eventually, freePort, Server, tempDir, tokens, cli } from './helpers.js';

let tmp: { dir: string; cleanup: () => Promise<void> };
let server: Server;
let token: string;
let fingerprint: string;
const extra: Server[] = [];

beforeAll(async () => {
  tmp = await tempDir('carapace-api-tls-');
  server = new Server(join(tmp.dir, 'server'), await freePort(), ['--no-agent-api'], {}, 'server');
  await server.start();
  token = tokens.get(server.url) ?? '';
  const cfg = JSON.parse(await readFile(join(server.stateDir, 'cli-config.json'), 'utf8')) as { server: string; token: string; caFingerprint: string; ca: string };
  fingerprint = cfg.caFingerprint;
}, 60_000);

afterAll(async () => {
  for (const s of [server, ...extra]) await s?.stop();
  await tmp?.cleanup();
});

/** The CLI with only the given environment for Carapace (no server, token or CA from the test's). */
async function carapace(args: string[], env: Record<string, string>, input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await run(process.execPath, [CLI, ...args], { env, input: input ?? '', timeoutMs: 60_000 });
  return { code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Everything tcpdump sees on lo for `port` while `session` runs; flushed by SIGINT and its exit. */
async function capture(port: number, file: string, session: () => Promise<void>): Promise<Buffer> {
  const p: ChildProcess = spawn('tcpdump', ['-i', 'lo', '-U', '-s', '0', '-w', file, 'tcp', 'port', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
  await eventually(async () => err.includes('listening on') || p.exitCode !== null, 10_000, 'tcpdump listening');
  if (p.exitCode !== null) throw new Error(`tcpdump failed: ${err}`);
  try {
    await session();
  } finally {
    p.kill('SIGINT');
    await exited;
  }
  return readFile(file);
}

const has = (buf: Buffer, s: string | Buffer): boolean => buf.includes(s);

describe('the user API over HTTPS', () => {
  it('a CLI session sends no token and no manifest in clear (and the same search finds both over plain HTTP)', async () => {
    const marker = `manifest-marker-${Math.random().toString(36).slice(2)}`;
    const manifest = (tenant: string): string =>
      [
        JSON.stringify({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: tenant } }),
        JSON.stringify({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant }, spec: { image: '127.0.0.1:5999/none:1', isolation: 'host', cpu: 0.1, memory: '16Mi', env: { MARKER: marker } } }),
      ].join('\n---\n');
    const session = async (url: string, cfg: string, login: string[]): Promise<string> => {
      const env = { CARAPACE_CONFIG: cfg };
      const steps: [string[], string?][] = [[['login', url, '--token', token, ...login]], [['apply', '-f', '-'], manifest(url.startsWith('https') ? 'sniffed' : 'clear')], [['get', 'services', '-o', 'yaml']], [['get', 'tenants']], [['token', 'create', '--name', 'sniffed', '--role', 'cluster-admin']], [['audit', 'export', '--since', '10m']]];
      let out = '';
      for (const [args, input] of steps) {
        const r = await carapace(args, env, input);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
        out += r.stdout;
      }
      // Logs of an instance that runs nowhere: refused, but the request (and its token) went out.
      await carapace(['logs', 'sniffed/web-0'], env);
      return out;
    };

    const port = server.port;
    let printed = '';
    const tls = await capture(port, join(tmp.dir, 'tls.pcap'), async () => {
      printed = await session(server.url, join(tmp.dir, 'login.json'), ['--ca-fingerprint', fingerprint]);
    });
    expect(printed).toContain(marker); // the session really moved the manifest and read it back
    const minted = printed.split('\n').find((l) => l.startsWith('cpt_')) ?? '';
    expect(minted).not.toBe('');
    // TLS records (handshake 0x16 and application data 0x17, version 3.3) and nothing readable.
    expect(has(tls, Buffer.from([0x16, 0x03, 0x01])) || has(tls, Buffer.from([0x16, 0x03, 0x03]))).toBe(true);
    expect(has(tls, Buffer.from([0x17, 0x03, 0x03]))).toBe(true);
    expect(tls.length).toBeGreaterThan(5_000);
    for (const secret of [token, token.split('.')[1] ?? token, minted, marker, 'Bearer', 'carapace/v1']) expect(has(tls, secret), `${secret.slice(0, 12)}… in the TLS capture`).toBe(false);
    // The login pinned the CA.
    const saved = JSON.parse(await readFile(join(tmp.dir, 'login.json'), 'utf8')) as { caFingerprint: string; server: string };
    expect(saved).toMatchObject({ server: server.url, caFingerprint: fingerprint });

    // Control: a plain-HTTP server on loopback (as `carapace up` serves), same session: the
    // capture holds the token and the manifest, so the search above would have found them.
    const store: Store = await openSqliteStore({ path: join(tmp.dir, 'plain.db'), logger: pino({ level: 'silent' }) });
    const plainPort = await freePort();
    const plain: RunningControlServer = await startControlServer({ store, stateDir: join(tmp.dir, 'plain'), port: plainPort, logger: pino({ level: 'silent' }), saveCliConfig: false });
    const ac = new AbortController();
    const loops = plain.run(ac.signal);
    try {
      const keep = token;
      token = plain.adminToken;
      const clear = await capture(plainPort, join(tmp.dir, 'clear.pcap'), async () => {
        await session(plain.url, join(tmp.dir, 'plain.json'), []);
      });
      token = keep;
      expect(has(clear, plain.adminToken)).toBe(true);
      expect(has(clear, marker)).toBe(true);
      expect(has(clear, 'Bearer')).toBe(true);
    } finally {
      ac.abort();
      await loops.catch(() => undefined);
      await plain.close();
      await store.close();
    }
  }, 180_000);

  it('a CLI with a wrong pinned CA refuses before sending anything: no request reaches the server', async () => {
    const cfg = join(tmp.dir, 'wrong.json');
    // login with a fingerprint that is not the server's: refused, nothing saved.
    const wrong = `${fingerprint.slice(0, 60)}${fingerprint.slice(60) === 'ffff' ? '0000' : 'ffff'}`;
    const login = await carapace(['login', server.url, '--ca-fingerprint', wrong, '--token', token], { CARAPACE_CONFIG: cfg });
    expect(login.code).toBe(1);
    expect(login.stderr).toMatch(/^error CARAPACE_E_TLS_UNVERIFIED: .*CA fingerprint mismatch/m);
    expect(existsSync(cfg)).toBe(false);
    // A config that pins another CA (another cluster's), with a good token.
    const other = await selfSignedCertificate({ commonName: 'Another cluster CA', ca: true });
    await writeFile(cfg, JSON.stringify({ server: server.url, token, caFingerprint: fingerprintOf(other.certPem), ca: other.certPem }), { mode: 0o600 });
    const before = (server.log.match(/API: TLS handshake failed/g) ?? []).length;
    const tenant = { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'never' } };
    const apply = await carapace(['apply', '-f', '-'], { CARAPACE_CONFIG: cfg }, JSON.stringify(tenant));
    expect(apply.code).toBe(1);
    expect(apply.stderr).toMatch(/^error CARAPACE_E_TLS_UNVERIFIED: refusing https:\/\/127\.0\.0\.1:\d+: CA fingerprint mismatch: the server presents a CA with sha256 [0-9a-f]{64}, the config file .* pins [0-9a-f]{64}.*nothing was sent$/m);
    expect(apply.stderr.trim().split('\n')).toHaveLength(1);
    // The WebSocket path (exec) checks the same way.
    const exec = await carapace(['exec', 'never/x', '--', 'true'], { CARAPACE_CONFIG: cfg });
    expect(exec.code).toBe(1);
    expect(exec.stderr).toMatch(/^error CARAPACE_E_TLS_UNVERIFIED: .*CA fingerprint mismatch/m);
    // The server saw handshakes fail and no request: the tenant was never written, no audit record names it.
    await eventually(async () => (server.log.match(/API: TLS handshake failed/g) ?? []).length > before, 10_000, 'the server logs the failed handshake');
    expect((await cli(server.url, ['get', 'tenant', 'never'])).stderr).toMatch(/CARAPACE_E_NOT_FOUND/);
    expect((await cli(server.url, ['audit', 'export', '--since', '10m'])).stdout).not.toContain('"never"');
    // No CA pinned at all: refused, with what to do.
    await writeFile(cfg, JSON.stringify({ server: server.url, token }), { mode: 0o600 });
    const unpinned = await carapace(['get', 'tenants'], { CARAPACE_CONFIG: cfg });
    expect(unpinned.code).toBe(1);
    expect(unpinned.stderr).toMatch(/^error CARAPACE_E_TLS_NOT_PINNED: .*carapace login https:\/\/127\.0\.0\.1:\d+ --ca-fingerprint/m);
  }, 120_000);

  describe('certificates given by the operator', () => {
    let ca: KeyedCert;
    let caFile: string;

    beforeAll(async () => {
      ca = await selfSignedCertificate({ commonName: 'Operator CA', ca: true });
      caFile = join(tmp.dir, 'operator-ca.crt');
      await writeFile(caFile, ca.certPem);
    });

    /** A certificate from the operator's CA, written as NAME.crt (leaf + CA) and NAME.key. */
    async function leafFiles(name: string, o: { ips?: string[]; dns?: string[]; now?: Date; days?: number; keyMode?: number }): Promise<{ cert: string; key: string; certPem: string; keyPem: string }> {
      const { keyPem, csrPem } = await newCsr('api');
      const { certPem } = await issueCertificate(ca, { csrPem, commonName: 'api', usage: 'server', dnsNames: o.dns ?? [], ipAddresses: o.ips ?? [], validityDays: o.days ?? 30, ...(o.now ? { now: o.now } : {}) });
      return written(name, `${certPem}\n${ca.certPem}`, keyPem, o.keyMode);
    }

    async function written(name: string, certPem: string, keyPem: string, keyMode = 0o600): Promise<{ cert: string; key: string; certPem: string; keyPem: string }> {
      const cert = join(tmp.dir, `${name}.crt`);
      const key = join(tmp.dir, `${name}.key`);
      await writeFile(cert, certPem);
      await writeFile(key, keyPem);
      await chmod(key, keyMode);
      return { cert, key, certPem, keyPem };
    }

    /** `carapace server --tls-cert --tls-key` in its own state dir: 'up' once it says so, or its exit code and output. */
    async function serve(name: string, f: { cert: string; key: string }): Promise<{ s: Server; up: boolean; code: number | null }> {
      const s = new Server(join(tmp.dir, name), await freePort(), ['--no-agent-api', '--tls-cert', f.cert, '--tls-key', f.key], {}, 'server');
      extra.push(s);
      const p = s.launch();
      await eventually(async () => s.log.includes('carapace server is up') || p.exitCode !== null, 30_000, `${name} up or exited`);
      if (p.exitCode !== null) return { s, up: false, code: p.exitCode };
      return { s, up: true, code: null };
    }

    it('refuses at start an expired certificate, a key readable by others, and a key of another certificate', async () => {
      const expired = await leafFiles('expired', { ips: ['127.0.0.1'], now: new Date(Date.now() - 10 * 86_400_000), days: 2 });
      const e = await serve('s-expired', expired);
      expect(e.up).toBe(false);
      expect(e.code).toBe(1);
      expect(e.s.log).toMatch(/error CARAPACE_E_TLS_CERT_EXPIRED: the certificate in .*expired\.crt expired at \d{4}-\d\d-\d\dT/);
      expect(e.s.log).toMatch(/^ {2}--tls-cert: /m);

      const open = await leafFiles('open', { ips: ['127.0.0.1'], keyMode: 0o644 });
      const o = await serve('s-open', open);
      expect(o.up).toBe(false);
      expect(o.s.log).toMatch(/error CARAPACE_E_TLS_KEY_PERMISSIONS: the private key .*open\.key is readable by group or others \(mode 644\)/);
      expect(o.s.log).toMatch(/^ {2}--tls-key: /m);

      const a = await leafFiles('a', { ips: ['127.0.0.1'] });
      const b = await leafFiles('b', { ips: ['127.0.0.1'] });
      const mixed = await serve('s-mixed', { cert: a.cert, key: b.key });
      expect(mixed.up).toBe(false);
      expect(mixed.s.log).toMatch(/error CARAPACE_E_TLS_CERT_INVALID: the private key in .*b\.key does not belong to the certificate/);
    }, 120_000);

    it('serves a good one (the CLI verifies it against the operator CA) and the CLI refuses one for another host name', async () => {
      const good = await serve('s-good', await leafFiles('good', { ips: ['127.0.0.1'] }));
      expect(good.up).toBe(true);
      const goodToken = (await readFile(join(good.s.stateDir, 'admin-token'), 'utf8')).trim();
      const ok = await carapace(['get', 'tenants'], { CARAPACE_CONFIG: '/nonexistent/c.json', CARAPACE_SERVER: good.s.url, CARAPACE_TOKEN: goodToken, CARAPACE_CA_FILE: caFile });
      expect(ok.code, ok.stderr).toBe(0);
      // The config written at its start pins the CA of the chain it serves.
      expect(JSON.parse(await readFile(join(good.s.stateDir, 'cli-config.json'), 'utf8'))).toMatchObject({ server: good.s.url, ca: expect.stringContaining('BEGIN CERTIFICATE') });
      await good.s.stop();

      const other = await serve('s-host', await leafFiles('host', { dns: ['api.other.example'] }));
      expect(other.up).toBe(true);
      const r = await carapace(['get', 'tenants'], { CARAPACE_CONFIG: '/nonexistent/c.json', CARAPACE_SERVER: other.s.url, CARAPACE_TOKEN: 'cpt_x.y', CARAPACE_CA_FILE: caFile });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^error CARAPACE_E_TLS_UNVERIFIED: refusing https:\/\/127\.0\.0\.1:\d+: host name not in the certificate \(.*\); .*nothing was sent$/m);
      await other.s.stop();
    }, 120_000);

    it('the CLI pinned to the cluster CA refuses a self-signed certificate, and any CLI an expired one', async () => {
      const self = await selfSignedCertificate({ commonName: 'rogue', ipAddresses: ['127.0.0.1'] });
      const rogue = await serve('s-self', await written('self', self.certPem, self.keyPem));
      expect(rogue.up).toBe(true);
      // The config written by the login of the first test pins the cluster CA.
      const r = await carapace(['--server', rogue.s.url, 'get', 'tenants'], { CARAPACE_CONFIG: join(tmp.dir, 'login.json') });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^error CARAPACE_E_TLS_UNVERIFIED: refusing https:\/\/127\.0\.0\.1:\d+: unknown CA: the server certificate \(CN=rogue\) is not signed by the CA the config file .* pins \(sha256 [0-9a-f]{64}\); nothing was sent$/m);
      expect(rogue.s.log).toMatch(/API: TLS handshake failed/);
      await rogue.s.stop();

      // A server never starts with an expired certificate, but one may expire while it runs:
      // a bare HTTPS server with one shows the CLI's check.
      const { keyPem, csrPem } = await newCsr('api');
      const old = await issueCertificate(ca, { csrPem, commonName: 'api', usage: 'server', ipAddresses: ['127.0.0.1'], validityDays: 1, now: new Date(Date.now() - 5 * 86_400_000) });
      let requests = 0;
      const bare = createHttpsServer({ cert: `${old.certPem}\n${ca.certPem}`, key: keyPem }, (_req, res) => {
        requests++;
        res.end('{}');
      });
      await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
      try {
        const port = (bare.address() as { port: number }).port; // listening on TCP: an AddressInfo
        const x = await carapace(['get', 'tenants'], { CARAPACE_CONFIG: '/nonexistent/c.json', CARAPACE_SERVER: `https://127.0.0.1:${port}`, CARAPACE_TOKEN: 'cpt_x.y', CARAPACE_CA_FILE: caFile });
        expect(x.code).toBe(1);
        expect(x.stderr).toMatch(/^error CARAPACE_E_TLS_UNVERIFIED: refusing .*: the server certificate has expired; nothing was sent$/m);
        expect(requests).toBe(0);
      } finally {
        await new Promise((r) => bare.close(r));
      }
    }, 120_000);
  });

  it('carapace up: plain HTTP on loopback (and says so), HTTPS with the CA pinned in its config on any other address', async () => {
    for (const [name, listen] of [
      ['up-loopback', '127.0.0.1'],
      ['up-any', '0.0.0.0'],
    ] as const) {
      const up = new Server(join(tmp.dir, name), await freePort(), ['--listen', listen, '--net-prefix', 'ctl'], {}, 'up');
      extra.push(up);
      const p = up.launch();
      try {
        await eventually(async () => up.log.includes('carapace all-in-one is up') || p.exitCode !== null, 60_000, `${name} up`);
        expect(p.exitCode, up.log).toBeNull();
        const cfg = JSON.parse(await readFile(join(up.stateDir, 'cli-config.json'), 'utf8')) as { server: string; ca?: string; caFingerprint?: string };
        const env = { CARAPACE_CONFIG: join(up.stateDir, 'cli-config.json') };
        if (listen === '127.0.0.1') {
          expect(up.log).toContain('API on plain HTTP: loopback only');
          expect(cfg.server).toBe(`http://127.0.0.1:${up.port}`);
          expect(cfg.ca).toBeUndefined();
        } else {
          expect(up.log).toContain('API on HTTPS (not loopback)');
          expect(cfg.server).toBe(`https://127.0.0.1:${up.port}`);
          expect(cfg.caFingerprint).toMatch(/^[0-9a-f]{64}$/);
        }
        // The CLI on this machine works with what the config holds, either way.
        const hosts = await carapace(['get', 'hosts', '-o', 'name'], env);
        expect(hosts.code, hosts.stderr).toBe(0);
        expect(hosts.stdout).toContain('host/e2e');
      } finally {
        await up.stop();
        await destroyAll(up.stateDir, { prefix: 'ctl' });
      }
    }
  }, 240_000);
});
