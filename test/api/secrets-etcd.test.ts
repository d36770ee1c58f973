/**
 * Secrets at rest on a real etcd: after applying a Secret (and a Config as the positive
 * control), the secret's value is in none of etcd's bytes: not in any key or value read raw
 * (a range over the whole keyspace through etcd's own gateway, below Carapace's store), not in
 * a snapshot of the member (`/v3/maintenance/snapshot`, what `etcdctl snapshot save` writes),
 * not in the member's data dir (WAL and bbolt file). The config's value is found by the same
 * searches, so they do look where the data is. The sealed record decrypts with the keyring.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/log.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { newKeyLine, parseKeyring } from '../../src/keyring/keyring.js';
import { secretData } from '../../src/core/secrets.js';
import { openEtcdStore, type EtcdStore } from '../../src/store/etcd.js';
import { startEtcd, type EtcdProcess } from '../../src/store/testing/etcd.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';

const VALUE = 'etcd-secret-Vb72q-never-in-clear';
const CONFIG_VALUE = 'etcd-config-visible-Lm31';

let etcd: EtcdProcess;
let store: EtcdStore;
let keysDir: string;
const ring = parseKeyring(newKeyLine());
let n = 0;
const env = { now: () => new Date().toISOString(), newId: () => `uid-${++n}` };

beforeAll(async () => {
  etcd = await startEtcd();
  keysDir = await mkdtemp(join(tmpdir(), 'carapace-secrets-etcd-'));
  store = await openEtcdStore({ endpoints: [etcd.endpoint], prefix: 'carapace/' });
  const audit = await AuditLog.open({ store, keyDir: keysDir });
  const cp = new ControlPlane(new Resources(store, audit, env), env, undefined, ring);
  const m = (kind: string, name: string, spec: unknown): never => ({ apiVersion: 'carapace/v1', kind, metadata: { name, ...(kind === 'Tenant' ? {} : { tenant: 'acme' }) }, spec }) as never; // valid manifests, parsed shapes
  await cp.handle({ type: 'apply', manifest: m('Tenant', 'acme', {}) });
  await cp.handle({ type: 'apply', manifest: m('Secret', 'db', { data: { password: VALUE }, onChange: 'update' }) });
  await cp.handle({ type: 'apply', manifest: m('Config', 'app', { data: { 'app.yaml': CONFIG_VALUE }, onChange: 'update' }) });
}, 60_000);

afterAll(async () => {
  await store?.close();
  await etcd?.stop();
  await rm(keysDir, { recursive: true, force: true });
});

/** Every file under `dir`, concatenated. */
async function bytesUnder(dir: string): Promise<Buffer> {
  const out: Buffer[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(await readFile(join(e.parentPath, e.name)));
  }
  return Buffer.concat(out);
}

describe('a secret on etcd', () => {
  it('decrypts through the keyring', async () => {
    expect(await secretData(store, ring, 'acme', 'db')).toEqual({ password: VALUE });
  });

  it('is in no key or value of the whole keyspace, read raw', async () => {
    const r = await fetch(`${etcd.endpoint}/v3/kv/range`, { method: 'POST', body: JSON.stringify({ key: Buffer.from([0]).toString('base64'), range_end: Buffer.from([0]).toString('base64') }) });
    const body = (await r.json()) as { kvs?: { key: string; value?: string }[] };
    const text = (body.kvs ?? []).map((kv) => `${Buffer.from(kv.key, 'base64').toString('utf8')}=${Buffer.from(kv.value ?? '', 'base64').toString('utf8')}`).join('\n');
    expect(text).toContain('carapace/sealed/secrets/acme/db=');
    expect(text).toContain(CONFIG_VALUE);
    expect(text).not.toContain(VALUE);
  });

  it('is in no byte of a snapshot of the member, nor of its data dir', async () => {
    const r = await fetch(`${etcd.endpoint}/v3/maintenance/snapshot`, { method: 'POST', body: '{}' });
    // The gateway streams the snapshot as JSON objects, each carrying a base64 chunk.
    const chunks = (await r.text()).split('\n').filter((l) => l.trim() !== '').map((l) => Buffer.from((JSON.parse(l) as { result?: { blob?: string } }).result?.blob ?? '', 'base64'));
    const snapshot = Buffer.concat(chunks);
    expect(snapshot.length).toBeGreaterThan(4096);
    expect(snapshot.includes(Buffer.from(CONFIG_VALUE))).toBe(true);
    expect(snapshot.includes(Buffer.from(VALUE))).toBe(false);
    const disk = await bytesUnder(etcd.dataDir);
    expect(disk.includes(Buffer.from(CONFIG_VALUE))).toBe(true);
    expect(disk.includes(Buffer.from(VALUE))).toBe(false);
  });
});
