/**
 * Key rotation end to end, in process: the control server (startControlServer, as `carapace
 * server` runs it) over SQLite with its keyring file, restarted between the steps an operator
 * takes. `keys rotate` (addPrimaryKey) puts a new primary in the file; the restart re-seals the
 * server's audit key file under it; `POST /v1/keys/reencrypt` (cluster-admin, audited) re-seals
 * the CA key and every secret; with the old key removed from the file a restart still works
 * (same CA, secrets readable, agents join, the audit log verifies); with only the old key the
 * start is refused naming the missing key; a second server given another keyring is refused
 * naming the key the CA is sealed with. And a store from before keys were sealed (CA key and
 * audit key file in clear) is sealed at the next start, audited.
 */
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { joinCluster } from '../../src/agentapi/enroll.js';
import { loadOrCreateKeyPair, SEALED_KEY_FILE } from '../../src/audit/keys.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { addPrimaryKey, newKeyLine, parseKeyring, type SealedBlob } from '../../src/keyring/keyring.js';
import { secretData } from '../../src/core/secrets.js';
import { CA_KEY } from '../../src/model/keys.js';
import { ensureClusterCa, type StoredCa } from '../../src/pki/x509.js';
import { serverKeyring } from '../../src/server/keyring.js';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openSqliteStore, type SqliteStore } from '../../src/store/sqlite.js';

const VALUE = 'rotation-secret-Qw83-never-in-clear';
const idOf = (line: string): string => line.split(':')[0] ?? '';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-keys-rotation-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** One start of `carapace server --store sqlite:… --keyring FILE --state-dir DIR`; `stop` closes it and its store. */
async function start(stateDir: string, keyringFile: string, dbPath: string): Promise<{ server: RunningControlServer; store: SqliteStore; stop: () => Promise<void> }> {
  const logger = pino({ level: 'silent' });
  const store = await openSqliteStore({ path: dbPath });
  try {
    const keyring = await serverKeyring({ keyring: keyringFile, stateDir, logger, env: {} });
    const server = await startControlServer({ store, stateDir, port: 0, logger, saveCliConfig: false, keyring, agentApi: { port: 0, listen: '127.0.0.1' } });
    return {
      server,
      store,
      stop: async () => {
        await server.close();
        await store.close();
      },
    };
  } catch (e) {
    await store.close();
    throw e;
  }
}

async function call(s: RunningControlServer, method: string, path: string, body?: unknown, token = s.adminToken): Promise<{ status: number; json: any }> {
  const r = await fetch(`${s.url}${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  return { status: r.status, json: await r.json() };
}

const M = (kind: string, name: string, spec: Record<string, unknown>, tenant?: string): Record<string, unknown> => ({ apiVersion: 'carapace/v1', kind, metadata: { name, ...(tenant ? { tenant } : {}) }, spec });

async function caSealedWith(store: SqliteStore): Promise<string> {
  return ((await store.get<StoredCa>(CA_KEY))?.value.sealedKey.keyId ?? 'none') as string;
}

async function auditKeySealedWith(stateDir: string): Promise<string> {
  return (JSON.parse(await readFile(join(stateDir, 'audit-keys', SEALED_KEY_FILE), 'utf8')) as SealedBlob).keyId;
}

describe('key rotation', () => {
  it('moves the CA key, the audit key and the secrets to a new key; then the old key can go, and a server without the new one is refused', async () => {
    const stateDir = join(dir, 'server');
    const db = join(dir, 'store.db');
    const file = join(dir, 'keyring');
    const oldLine = newKeyLine();
    await writeFile(file, `${oldLine}\n`, { mode: 0o600 });

    // First start: everything sealed with the only key.
    let run = await start(stateDir, file, db);
    const fingerprint = run.server.caFingerprint;
    expect((await call(run.server, 'PUT', '/v1/tenants/acme', M('Tenant', 'acme', {}))).status).toBe(201);
    expect((await call(run.server, 'PUT', '/v1/tenants/acme/secrets/db', M('Secret', 'db', { data: { password: VALUE } }, 'acme'))).status).toBe(201);
    const viewer = (await call(run.server, 'POST', '/v1/tokens', { name: 'look', role: 'tenant-viewer', tenant: 'acme' })).json.token as string;
    expect(await caSealedWith(run.store)).toBe(idOf(oldLine));
    expect(await auditKeySealedWith(stateDir)).toBe(idOf(oldLine));
    const auditKeyId = run.server.audit.keyId;
    await run.stop();

    // 1. carapace keys rotate --keyring FILE; 2. restart: the audit key file is re-sealed at start.
    const newId = await addPrimaryKey(file);
    run = await start(stateDir, file, db);
    expect(run.server.audit.keyId).toBe(auditKeyId);
    expect(await auditKeySealedWith(stateDir)).toBe(newId);
    expect(await caSealedWith(run.store)).toBe(idOf(oldLine)); // until keys reencrypt

    // 3. carapace keys reencrypt: operators only; audited; idempotent.
    expect((await call(run.server, 'POST', '/v1/keys/reencrypt', {}, viewer)).status).toBe(403);
    const before = (await run.server.audit.read()).records.length;
    const r = await call(run.server, 'POST', '/v1/keys/reencrypt', {});
    expect([r.status, r.json]).toEqual([200, { keyId: newId, ca: 'resealed', secrets: { keyId: newId, reencrypted: 1, current: 0 } }]);
    const added = ((await run.server.audit.read()).records as AuditRecord[]).slice(before);
    expect(added.map((x) => [x.action, x.outcome, x.target.kind, x.detail?.['fromKey'], x.detail?.['toKey']])).toEqual([
      ['pki.ca.resealed', 'success', 'ClusterCA', idOf(oldLine), newId],
      ['secret.reencrypted', 'success', 'Secret', idOf(oldLine), newId],
    ]);
    expect(added.every((x) => x.actor.id.startsWith('token:'))).toBe(true);
    expect(await caSealedWith(run.store)).toBe(newId);
    const again = await call(run.server, 'POST', '/v1/keys/reencrypt', {});
    expect(again.json).toEqual({ keyId: newId, ca: 'current', secrets: { keyId: newId, reencrypted: 0, current: 1 } });
    expect((await run.server.audit.read()).records.length).toBe(before + 2);
    await run.stop();

    // 4. The old key leaves the file; a restart works: same CA, secrets open, agents join, the log verifies.
    await writeFile(file, `${(await readFile(file, 'utf8')).split('\n')[0] ?? ''}\n`, { mode: 0o600 });
    expect(parseKeyring(await readFile(file, 'utf8')).keys.size).toBe(1);
    run = await start(stateDir, file, db);
    expect(run.server.caFingerprint).toBe(fingerprint);
    expect(run.server.audit.keyId).toBe(auditKeyId);
    expect(await secretData(run.store, parseKeyring(await readFile(file, 'utf8')), 'acme', 'db')).toEqual({ password: VALUE });
    const jt = await call(run.server, 'POST', '/v1/join-tokens?ttlSeconds=600');
    expect(jt.status).toBe(201);
    const creds = await joinCluster({ server: run.server.agentApiUrl ?? '', token: jt.json.token, host: 'h1', stateDir: join(dir, 'h1') });
    expect(new X509Certificate(creds.cert).verify(new X509Certificate(creds.ca).publicKey)).toBe(true);
    expect((await run.server.audit.verify()).ok).toBe(true);
    await run.stop();

    // With only the old key: refused, naming the key it lacks.
    const oldOnly = join(dir, 'old-only.keyring');
    await writeFile(oldOnly, `${oldLine}\n`, { mode: 0o600 });
    await expect(start(stateDir, oldOnly, db)).rejects.toMatchObject({ code: 'CARAPACE_E_KEYRING_KEY_MISSING', message: expect.stringContaining(`sealed with key "${newId}"`) });
    // A second server of the store given its own keyring (another state dir): refused on the CA.
    const stranger = join(dir, 'stranger.keyring');
    await writeFile(stranger, `${newKeyLine()}\n`, { mode: 0o600 });
    await expect(start(join(dir, 'server2'), stranger, db)).rejects.toMatchObject({ code: 'CARAPACE_E_KEYRING_KEY_MISSING', message: expect.stringMatching(new RegExp(`the cluster CA's private key \\(pki/ca\\) is sealed with key "${newId}"`)) });
  }, 120_000);

  it('seals a store from before keys were sealed at the next start: the CA key in the store and the audit key file, audited', async () => {
    const stateDir = join(dir, 'legacy');
    const db = join(dir, 'legacy.db');
    const file = join(dir, 'legacy.keyring');
    const line = newKeyLine();
    await writeFile(file, `${line}\n`, { mode: 0o600 });
    // What an older release left: pki/ca with keyPem in clear, a clear audit key file.
    const store = await openSqliteStore({ path: db });
    const made = await ensureClusterCa(store, parseKeyring(newKeyLine()));
    await store.put(CA_KEY, { certPem: made.certPem, keyPem: made.keyPem, fingerprint: made.fingerprint });
    await store.close();
    const clearKey = await loadOrCreateKeyPair(join(stateDir, 'audit-keys'));

    const run = await start(stateDir, file, db);
    try {
      expect(run.server.caFingerprint).toBe(made.fingerprint);
      const stored = (await run.store.get<Record<string, unknown>>(CA_KEY))?.value ?? {};
      expect(Object.keys(stored).sort()).toEqual(['certPem', 'fingerprint', 'sealedKey']);
      expect(JSON.stringify(stored)).not.toContain('PRIVATE KEY');
      expect(run.server.audit.keyId).toBe(clearKey.keyId);
      expect((await readdir(join(stateDir, 'audit-keys'))).sort()).toEqual(['audit-ed25519.key.sealed', 'audit-ed25519.pub']);
      const sealed = ((await run.server.audit.read()).records as AuditRecord[]).filter((x) => x.action === 'pki.ca.sealed');
      expect(sealed.map((x) => [x.actor.id, x.target.kind, x.detail?.['toKey']])).toEqual([['carapace', 'ClusterCA', idOf(line)]]);
    } finally {
      await run.stop();
    }
  }, 60_000);
});
