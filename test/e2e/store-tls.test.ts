/**
 * The store flags through the real binary (issue 18): `carapace server` and `carapace agent
 * --store` refuse, before touching anything, a plain `etcd://` on a non-loopback address
 * without `--insecure-store`, an `etcds://` without its certificate flags, certificate flags
 * with a plain URL, a key file others can read and an expired client certificate, each with
 * its code, the flag's name and exit 1. A server on a real etcd with TLS and client
 * certificates comes up and its writes land in that etcd; a server on a plain etcd on
 * loopback comes up too and says in its log that this is for development and tests.
 * Requires `npm run build`.
 */
import { chmod, copyFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeEtcdPki, newTestClientCert, startTlsEtcd, writeKeyedCert, type EtcdPki } from '../../src/pki/testing/etcd-pki.js';
import { objectKey } from '../../src/model/keys.js';
import { run } from '../../src/proc/run.js';
import { openEtcdStore } from '../../src/store/etcd.js';
import { startEtcd, type EtcdProcess } from '../../src/store/testing/etcd.js';
import { apiFetch, CLI, freePort, Server, tempDir, tokens } from './helpers.js';

let tmp: Awaited<ReturnType<typeof tempDir>>;
let pki: EtcdPki;
beforeAll(async () => {
  tmp = await tempDir('carapace-store-tls-');
  pki = await makeEtcdPki(tmp.dir);
});
afterAll(async () => {
  await tmp?.cleanup();
});

/** `carapace ARGS` that must stop at once; its exit code and stderr. */
async function refused(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const r = await run(process.execPath, [CLI, ...args], { env: { PATH: process.env['PATH'] ?? '', CARAPACE_CONFIG: '/nonexistent/carapace-config.json' }, timeoutMs: 30_000 });
  return { code: r.code, stderr: r.stderr };
}

describe('store flags refused at start', () => {
  const certFlags = (): string[] => ['--etcd-ca', pki.ca, '--etcd-cert', pki.cert, '--etcd-key', pki.key];

  it('plain etcd:// on a non-loopback address, without --insecure-store: server and agent', async () => {
    for (const cmd of ['server', 'agent']) {
      const stateDir = join(tmp.dir, `insecure-${cmd}`);
      const r = await refused([cmd, '--store', 'etcd://192.0.2.1:2379', '--state-dir', stateDir, ...(cmd === 'server' ? ['--port', '0', '--no-agent-api'] : [])]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/^error CARAPACE_E_INSECURE_STORE: refusing plain etcd at 192\.0\.2\.1:2379, which is not loopback: the store holds the cluster CA's private key/);
      expect(r.stderr).toContain('Use etcds://HOST:PORT with --etcd-ca, --etcd-cert and --etcd-key');
      expect(r.stderr).toContain('  --store: plain etcd:// on a non-loopback address');
      // Refused before anything was made: no state dir (an agent would have made its dirs, a server its audit keys).
      await expect(readdir(stateDir)).rejects.toThrow(/ENOENT/);
    }
  });

  it('etcds:// without the certificate flags, and the flags with a plain URL', async () => {
    const missing = await refused(['server', '--store', 'etcds://127.0.0.1:2379', '--state-dir', join(tmp.dir, 'x'), '--etcd-ca', pki.ca]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error CARAPACE_E_STORE_FLAGS: an etcds:\/\/ store needs .* give --etcd-cert FILE, --etcd-key FILE/);
    expect(missing.stderr).toContain('  --etcd-cert: missing\n  --etcd-key: missing');
    const plain = await refused(['agent', '--store', 'etcd://127.0.0.1:2379', '--state-dir', join(tmp.dir, 'x'), ...certFlags()]);
    expect(plain.code).toBe(1);
    expect(plain.stderr).toMatch(/^error CARAPACE_E_STORE_FLAGS: --etcd-ca, --etcd-cert and --etcd-key are for an etcds:\/\/ store .*write the URL as etcds:\/\/127\.0\.0\.1:2379/);
    const joined = await refused(['agent', '--join', 'https://127.0.0.1:7443', '--state-dir', join(tmp.dir, 'x'), ...certFlags()]);
    expect(joined.code).toBe(1);
    expect(joined.stderr).toMatch(/^error CARAPACE_E_STORE_FLAGS: --etcd-ca, --etcd-cert, --etcd-key are for an agent on the store \(--store\)/);
  });

  it('a key file readable by others, and an expired client certificate, naming the file', async () => {
    const openKey = join(tmp.dir, 'open.key');
    await copyFile(pki.key, openKey);
    await chmod(openKey, 0o644);
    const r = await refused(['server', '--store', 'etcds://127.0.0.1:2379', '--state-dir', join(tmp.dir, 'x'), '--etcd-ca', pki.ca, '--etcd-cert', pki.cert, '--etcd-key', openKey]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error CARAPACE_E_BAD_ETCD_TLS_FILE: the etcd client key \S+open\.key \(--etcd-key\) is accessible by group or others \(mode 644\)/);
    expect(r.stderr).toContain(`chmod 600 ${openKey}`);
    const expired = await writeKeyedCert(tmp.dir, 'expired', await newTestClientCert(pki.caCert, 'carapace', { now: new Date(Date.now() - 400 * 86_400_000), validityDays: 10 }));
    const e = await refused(['agent', '--store', 'etcds://127.0.0.1:2379', '--state-dir', join(tmp.dir, 'x'), '--etcd-ca', pki.ca, '--etcd-cert', expired.cert, '--etcd-key', expired.key]);
    expect(e.code).toBe(1);
    expect(e.stderr).toMatch(/^error CARAPACE_E_ETCD_CERT_EXPIRED: the etcd client certificate \S+expired\.crt \(--etcd-cert\) expired at \d{4}-\d\d-\d\dT/);
  });
});

describe('servers on real etcd members', () => {
  let tlsEtcd: EtcdProcess | undefined;
  let plainEtcd: EtcdProcess | undefined;
  const servers: Server[] = [];
  afterAll(async () => {
    for (const s of servers) await s.stop();
    await tlsEtcd?.stop();
    await plainEtcd?.stop();
  });

  it('over TLS with client certificates: the server comes up and its writes are in that etcd', async () => {
    tlsEtcd = await startTlsEtcd();
    const server = new Server(join(tmp.dir, 'tls-server'), await freePort(), [...tlsEtcd.storeArgs, '--no-agent-api'], {}, 'server');
    servers.push(server);
    await server.start();
    expect(server.log).not.toContain('plain etcd');
    const r = await apiFetch(`${server.url}/v1/tenants/acme`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${tokens.get(server.url) ?? ''}`, 'content-type': 'application/json' },
      body: JSON.stringify({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } }),
    });
    expect(r.status, await r.clone().text()).toBeLessThan(300);
    const store = await openEtcdStore(tlsEtcd.storeOptions);
    try {
      expect((await store.get(objectKey('Tenant', 'acme')))?.value).toMatchObject({ kind: 'Tenant', metadata: { name: 'acme' } });
    } finally {
      await store.close();
    }
  });

  it('plain etcd on loopback: the server comes up and says it is for development and tests', async () => {
    plainEtcd = await startEtcd();
    const server = new Server(join(tmp.dir, 'plain-server'), await freePort(), ['--store', plainEtcd.storeUrl, '--no-agent-api'], {}, 'server');
    servers.push(server);
    await server.start();
    expect(server.log).toContain('plain etcd on loopback: no TLS, no client authentication; fine for development and tests, use etcds:// with client certificates on a network');
  });
});
