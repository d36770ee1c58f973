/**
 * Store theft: with a copy of the store alone (and of a server's state directory without its
 * keyring), nobody can mint certificates, sign checkpoints or read secrets. A control server
 * (startControlServer, as `carapace server` runs it, with its keyring file kept outside the
 * state dir) holds a Secret with a known value, the first admin token, another API token and
 * join tokens, and has signed a checkpoint. Then the stolen bytes are searched:
 * - SQLite: the database file with its -wal and -shm, while the server runs and after it
 *   stopped;
 * - etcd (a real member): every key and value read raw through etcd's gateway, a snapshot of
 *   the member (`/v3/maintenance/snapshot`, what `etcdctl snapshot save` writes) and its data
 *   dir (WAL and bbolt file);
 * - the server's state directory (audit-keys and everything else but the keyring).
 * None holds a "PRIVATE KEY" PEM header, the CA's or an audit key's private key (DER, raw
 * scalar; in bytes, base64 at any alignment, base64url or hex), the secret's value, or a
 * token's secret; and no stored value, decoded (base64, base64url, hex), yields the CA's key.
 * Positive controls (the CA certificate, a Config's value) show the searches look where the
 * data is.
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateKeyPair } from '../../src/audit/keys.js';
import { newKeyLine, parseKeyring, type Keyring } from '../../src/keyring/keyring.js';
import { readClusterCa } from '../../src/pki/x509.js';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openEtcdStore } from '../../src/store/etcd.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { startEtcd, type EtcdProcess } from '../../src/store/testing/etcd.js';

const VALUE = 'theft-secret-Xk29Lq-never-in-clear';
const CONFIG_VALUE = 'theft-config-visible-Pz71';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-store-theft-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** What a thief must not find, each as the byte strings that would reveal it. */
interface Needle {
  what: string;
  bytes: Buffer[];
}

/** A private key's PKCS#8 DER and raw scalar, in every encoding a store could hold them in. */
function keyNeedles(what: string, key: KeyObject): Needle[] {
  const der = key.export({ type: 'pkcs8', format: 'der' });
  const d = Buffer.from(key.export({ format: 'jwk' }).d ?? '', 'base64url');
  expect(d.length).toBeGreaterThanOrEqual(32);
  const encodings = (b: Buffer, span: number): Buffer[] => [
    b,
    // base64 of a buffer holding `b` at any offset contains one of these three (aligned) runs
    ...[0, 1, 2].flatMap((k) => [b.subarray(k).toString('base64'), b.subarray(k).toString('base64url')].map((s) => Buffer.from(s.slice(4, 4 + span)))),
    Buffer.from(b.toString('hex').slice(0, 2 * span)),
    Buffer.from(b.toString('hex').slice(0, 2 * span).toUpperCase()),
  ];
  return [
    { what: `${what} (PKCS#8 DER)`, bytes: encodings(der, 40) },
    { what: `${what} (raw private scalar)`, bytes: encodings(d, 24) },
  ];
}

/** The tokens and the secret value. */
function valueNeedles(o: { admin: string; token: string; joinTokens: string[] }): Needle[] {
  const secretOf = (t: string): string => t.slice(t.lastIndexOf('.') + 1);
  return [
    { what: 'the secret value', bytes: [Buffer.from(VALUE), Buffer.from(Buffer.from(VALUE).toString('base64').slice(0, 24))] },
    { what: 'the admin token', bytes: [Buffer.from(o.admin), Buffer.from(secretOf(o.admin))] },
    { what: 'an API token', bytes: [Buffer.from(o.token), Buffer.from(secretOf(o.token))] },
    ...o.joinTokens.map((t, i) => ({ what: `join token ${i + 1}`, bytes: [Buffer.from(t), Buffer.from(secretOf(t))] })),
    { what: 'a PEM private key header', bytes: [Buffer.from('PRIVATE KEY')] },
  ];
}

/** The needles `haystack` holds, by name (empty: nothing found). */
function found(haystack: Buffer, needles: Needle[]): string[] {
  return needles.filter((n) => n.bytes.some((b) => b.length > 0 && haystack.includes(b))).map((n) => n.what);
}

/** Every file under `d` (recursively), concatenated, skipping `except`. */
async function bytesUnder(d: string, except: string[] = []): Promise<Buffer> {
  const out: Buffer[] = [];
  for (const e of await readdir(d, { withFileTypes: true, recursive: true })) {
    const path = join(e.parentPath, e.name);
    if (e.isFile() && !except.includes(path)) out.push(await readFile(path));
  }
  return Buffer.concat(out);
}

/** Every string inside a stored JSON value. */
function stringsOf(v: unknown, out: string[] = []): string[] {
  if (typeof v === 'string') out.push(v);
  else if (Array.isArray(v)) for (const x of v) stringsOf(x, out);
  else if (v && typeof v === 'object') for (const x of Object.values(v)) stringsOf(x, out);
  return out;
}

/** Decodes every stored string every way a key could be hidden in it, and returns the keys whose values yield `der` or `d`. */
async function valuesYielding(store: Store, secrets: Buffer[]): Promise<string[]> {
  const hits: string[] = [];
  for (const e of (await store.list<unknown>('')).items) {
    for (const s of stringsOf(e.value)) {
      const decoded = [Buffer.from(s), Buffer.from(s, 'base64'), Buffer.from(s, 'base64url'), ...(/^[0-9a-f]+$/i.test(s) ? [Buffer.from(s, 'hex')] : [])];
      if (decoded.some((b) => secrets.some((x) => b.includes(x)) || b.includes(Buffer.from('PRIVATE KEY')))) hits.push(e.key);
    }
  }
  return hits;
}

interface Planted {
  server: RunningControlServer;
  keyring: Keyring;
  stateDir: string;
  needles: Needle[];
  /** The CA's key DER and raw scalar (for valuesYielding). */
  caSecrets: Buffer[];
  caCert: string;
  /** The CA's key PEM (for the control that the searches would find it). */
  caKeyPem: string;
}

/** Starts a server over `store` and writes what a thief would want: a secret, tokens, join tokens, a signed checkpoint. */
async function plant(store: Store, name: string): Promise<Planted> {
  const stateDir = join(dir, name, 'state');
  const keyringFile = join(dir, name, 'keyring'); // given to the server, outside its state dir
  const line = newKeyLine();
  await mkdir(join(dir, name), { recursive: true });
  await writeFile(keyringFile, `${line}\n`, { mode: 0o600 });
  const keyring = parseKeyring(line);
  const server = await startControlServer({ store, stateDir, port: 0, logger: pino({ level: 'silent' }), saveCliConfig: false, keyring, agentApi: { port: 0, listen: '127.0.0.1' } });
  const call = async (method: string, path: string, body?: unknown): Promise<any> => {
    const r = await fetch(`${server.url}${path}`, { method, headers: { authorization: `Bearer ${server.adminToken}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    expect(r.status, path).toBeLessThan(300);
    return r.json();
  };
  const M = (kind: string, n: string, spec: Record<string, unknown>, tenant?: string): Record<string, unknown> => ({ apiVersion: 'carapace/v1', kind, metadata: { name: n, ...(tenant ? { tenant } : {}) }, spec });
  await call('PUT', '/v1/tenants/acme', M('Tenant', 'acme', {}));
  await call('PUT', '/v1/tenants/acme/secrets/db', M('Secret', 'db', { data: { password: VALUE } }, 'acme'));
  await call('PUT', '/v1/tenants/acme/configs/app', M('Config', 'app', { data: { 'app.yaml': CONFIG_VALUE } }, 'acme'));
  const token = ((await call('POST', '/v1/tokens', { name: 'ci', role: 'tenant-admin', tenant: 'acme' })) as { token: string }).token;
  const joined = ((await call('POST', '/v1/join-tokens?ttlSeconds=600')) as { token: string }).token;
  const firstJoin = (await readFile(join(stateDir, 'join-token'), 'utf8')).trim();
  await server.audit.checkpoint(new Date().toISOString());
  // The keys a thief wants, opened with the keyring (which the thief does not have).
  const ca = await readClusterCa(store, keyring);
  if (!ca) throw new Error('no CA');
  const caKey = createPrivateKey(ca.keyPem);
  const auditKey = (await loadOrCreateKeyPair(join(stateDir, 'audit-keys'), undefined, keyring)).privateKey;
  expect(server.adminToken).toMatch(/^cpt_/);
  return {
    server,
    keyring,
    stateDir,
    needles: [...keyNeedles('the CA key', caKey), ...keyNeedles('the audit signing key', auditKey), ...valueNeedles({ admin: server.adminToken, token, joinTokens: [joined, firstJoin] })],
    caSecrets: [caKey.export({ type: 'pkcs8', format: 'der' }), Buffer.from(caKey.export({ format: 'jwk' }).d ?? '', 'base64url')],
    caCert: ca.certPem,
    caKeyPem: ca.keyPem,
  };
}

/** The state dir holds no clear private key (it holds the admin and join tokens by design: the operator's copies). */
async function expectStateDirClean(p: Planted): Promise<void> {
  const files = await readdir(join(p.stateDir, 'audit-keys'));
  expect(files.sort()).toEqual(['audit-ed25519.key.sealed', 'audit-ed25519.pub']);
  const bytes = await bytesUnder(p.stateDir);
  const keysOnly = p.needles.filter((n) => /key/.test(n.what) && !/token/.test(n.what));
  expect(found(bytes, keysOnly)).toEqual([]);
  expect(bytes.includes(Buffer.from('PUBLIC KEY'))).toBe(true); // the search looks at the key files
}

describe('a stolen SQLite store', () => {
  it('holds no private key, secret value or token secret, in the file, its WAL or any decoded value', async () => {
    const db = join(dir, 'sqlite-store', 'store.db');
    await mkdir(join(dir, 'sqlite-store'), { recursive: true });
    const store = await openSqliteStore({ path: db });
    let p: Planted | undefined;
    try {
      p = await plant(store, 'sqlite');
      const files = [db, `${db}-wal`, `${db}-shm`].filter((f) => existsSync(f));
      expect(files).toContain(`${db}-wal`);
      const running = Buffer.concat(await Promise.all(files.map((f) => readFile(f))));
      // Positive controls: the certificate and a config's value are in those bytes.
      expect(running.includes(Buffer.from(CONFIG_VALUE))).toBe(true);
      expect(running.includes(Buffer.from(p.caCert.split('\n')[1] ?? 'x'))).toBe(true);
      expect(found(running, p.needles)).toEqual([]);
      expect(await valuesYielding(store, p.caSecrets)).toEqual([]);
      await expectStateDirClean(p);
      // Control: the searches do find the CA key as an older release stored it (PEM in JSON), and its base64 at any offset.
      expect(found(Buffer.from(JSON.stringify({ keyPem: p.caKeyPem })), p.needles)).toEqual(['the CA key (PKCS#8 DER)', 'a PEM private key header']);
      for (const pad of ['', 'x', 'xy']) expect(found(Buffer.from(Buffer.concat([Buffer.from(pad), p.caSecrets[1] ?? Buffer.alloc(0)]).toString('base64')), p.needles)).toEqual(['the CA key (raw private scalar)']);
    } finally {
      await p?.server.close();
      await store.close();
    }
    // After the server stopped (the WAL checkpointed into the file).
    const stopped = Buffer.concat(await Promise.all([db, `${db}-wal`].filter((f) => existsSync(f)).map((f) => readFile(f))));
    expect(stopped.includes(Buffer.from(CONFIG_VALUE))).toBe(true);
    expect(found(stopped, p?.needles ?? [])).toEqual([]);
  }, 60_000);
});

describe('a stolen etcd store', () => {
  let etcd: EtcdProcess | undefined;
  afterAll(async () => {
    await etcd?.stop();
  });

  it('holds no private key, secret value or token secret, in any key or value, a snapshot of the member or its data dir', async () => {
    etcd = await startEtcd();
    const store = await openEtcdStore({ endpoints: [etcd.endpoint], logger: pino({ level: 'silent' }) });
    let p: Planted | undefined;
    try {
      p = await plant(store, 'etcd');
      // Every key and value, read raw through etcd's gateway (below Carapace's store).
      const r = await fetch(`${etcd.endpoint}/v3/kv/range`, { method: 'POST', body: JSON.stringify({ key: Buffer.from([0]).toString('base64'), range_end: Buffer.from([0]).toString('base64') }) });
      const kvs = ((await r.json()) as { kvs?: { key: string; value?: string }[] }).kvs ?? [];
      const raw = Buffer.concat(kvs.flatMap((kv) => [Buffer.from(kv.key, 'base64'), Buffer.from(kv.value ?? '', 'base64')]));
      expect(raw.includes(Buffer.from(CONFIG_VALUE))).toBe(true);
      expect(raw.includes(Buffer.from('pki/ca'))).toBe(true);
      expect(found(raw, p.needles)).toEqual([]);
      expect(await valuesYielding(store, p.caSecrets)).toEqual([]);
      // A snapshot of the member, as `etcdctl snapshot save` takes it (streamed by the gateway as JSON chunks).
      const snap = await fetch(`${etcd.endpoint}/v3/maintenance/snapshot`, { method: 'POST', body: '{}' });
      const snapshot = Buffer.concat(
        (await snap.text())
          .split('\n')
          .filter((l) => l.trim() !== '')
          .map((l) => Buffer.from((JSON.parse(l) as { result?: { blob?: string } }).result?.blob ?? '', 'base64')),
      );
      expect(snapshot.length).toBeGreaterThan(4096);
      expect(snapshot.includes(Buffer.from(CONFIG_VALUE))).toBe(true);
      expect(snapshot.includes(Buffer.from(p.caCert.split('\n')[1] ?? 'x'))).toBe(true);
      expect(found(snapshot, p.needles)).toEqual([]);
      const disk = await bytesUnder(etcd.dataDir);
      expect(disk.includes(Buffer.from(CONFIG_VALUE))).toBe(true);
      expect(found(disk, p.needles)).toEqual([]);
      await expectStateDirClean(p);
    } finally {
      await p?.server.close();
      await store.close();
    }
  }, 90_000);
});
