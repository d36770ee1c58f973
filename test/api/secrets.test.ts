/**
 * Secrets and Configs over real HTTP with a real SQLite store and audit log: a secret's value
 * goes in through apply and never comes out (not in admin or viewer reads, lists, watch
 * streams, the event stream, the audit export, nor the SQLite file and its WAL on disk); a
 * config's does (it is not secret). Bad references are refused with their codes and field
 * paths. Rotation: a server restarted with a new primary key re-encrypts every secret on
 * `POST /v1/secrets/reencrypt` (audited), after which the old key is no longer needed. A
 * server without a keyring refuses Secret writes.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { AuditLog } from '../../src/audit/log.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { authenticate } from '../../src/auth/tokens.js';
import { bootstrapToken } from '../../src/core/api-tokens.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { newKeyLine, parseKeyring, type Keyring, type SealedBlob } from '../../src/keyring/keyring.js';
import { instanceMaterial, secretData } from '../../src/core/secrets.js';
import { sealedSecretKey } from '../../src/model/keys.js';
import type { Instance } from '../../src/model/objects.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';

const VALUE = 'pw-Zq8xT3-never-in-clear';
const VALUE2 = 'pw-second-Kd93-never-in-clear';
const CONFIG_VALUE = 'config-visible-Hy47';

let dir: string;
let store: Store;
let audit: AuditLog;
let resources: Resources;
let app: FastifyInstance;
let base = '';
let admin = '';
let viewer = '';
let n = 0;
const env = { now: () => new Date().toISOString(), newId: () => `uid-${++n}` };
const oldLine = newKeyLine();
const newLine = newKeyLine();
const ring: Keyring = parseKeyring(oldLine);
const idOf = (line: string): string => line.split(':')[0] ?? '';
/** Every byte any stream sent during the run, to search afterwards. */
const streamed: string[] = [];
const streams = new AbortController();

const M = (kind: string, name: string, spec: Record<string, unknown>): Record<string, unknown> => ({ apiVersion: 'carapace/v1', kind, metadata: { name, tenant: 'acme' }, spec });
const svc = (name: string, spec: Record<string, unknown>): Record<string, unknown> => M('Service', name, { image: '127.0.0.1:5000/x/web:1', isolation: 'host', ...spec });

async function call(method: string, path: string, body?: unknown, token = admin, url = base): Promise<{ status: number; json: any; text: string }> {
  const r = await fetch(`${url}${path}`, { method, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await r.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: r.status, json, text };
}

/** Follows an SSE stream in the background, appending what arrives to `streamed`. */
async function follow(path: string, token: string): Promise<void> {
  const r = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` }, signal: streams.signal });
  expect(r.status).toBe(200);
  const reader = r.body?.getReader();
  const dec = new TextDecoder();
  void (async () => {
    try {
      for (;;) {
        const c = await reader?.read();
        if (!c || c.done) return;
        streamed.push(dec.decode(c.value));
      }
    } catch {
      // aborted at the end of the run
    }
  })();
}

/** Waits until the streams carried `text` (a condition with a deadline, not a fixed sleep). */
async function streamedSoon(text: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!streamed.join('').includes(text)) {
    if (Date.now() > deadline) throw new Error(`the streams never carried ${text}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function records(): Promise<AuditRecord[]> {
  return (await audit.read()).records as AuditRecord[]; // all written by this log
}

function api(cp: ControlPlane): FastifyInstance {
  return buildApi({ controlPlane: cp, store, logs: { logs: async function* () {} }, logger: pino({ level: 'silent' }), auth: { authenticate: (t) => authenticate(store, t) }, env, audit });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-secrets-api-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  resources = new Resources(store, audit, env);
  app = api(new ControlPlane(resources, env, undefined, ring));
  base = (await app.listen({ port: 0, host: '127.0.0.1' })).replace('localhost', '127.0.0.1');
  admin = (await bootstrapToken(resources, { id: 'root', name: 'root', now: env.now() }))!.token; // a fresh store
  expect((await call('PUT', '/v1/tenants/acme', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} })).status).toBe(201);
  viewer = (await call('POST', '/v1/tokens', { name: 'look', role: 'tenant-viewer', tenant: 'acme' })).json.token;
  await follow('/v1/watch/secrets', admin);
  await follow('/v1/watch/secrets?tenant=acme', viewer);
  await follow('/v1/events', admin);
  await follow('/v1/events', viewer);
  await follow('/v1/watch/configs', viewer);
});

afterAll(async () => {
  streams.abort();
  await app.close();
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

describe('secrets through the API', () => {
  it('stores a secret write-only: reads show keys, sizes, onChange and resourceVersion, never the value', async () => {
    const created = await call('PUT', '/v1/tenants/acme/secrets/db', M('Secret', 'db', { data: { password: VALUE, user: 'app' }, onChange: 'restart' }));
    expect(created.status, created.text).toBe(201);
    expect(created.text).not.toContain(VALUE);
    expect(created.json.spec).toEqual({ onChange: 'restart', keys: [{ key: 'password', size: VALUE.length }, { key: 'user', size: 3 }] });
    expect(created.json.metadata.resourceVersion).toBeGreaterThan(0);
    const unchanged = await call('PUT', '/v1/tenants/acme/secrets/db', M('Secret', 'db', { data: { password: VALUE, user: 'app' }, onChange: 'restart' }));
    expect(unchanged.status).toBe(200);
    expect(unchanged.json.metadata.resourceVersion).toBe(created.json.metadata.resourceVersion);
    for (const token of [admin, viewer]) {
      for (const path of ['/v1/tenants/acme/secrets/db', '/v1/tenants/acme/secrets', '/v1/secrets']) {
        const r = await call('GET', path, undefined, token);
        expect(r.status, `${path}: ${r.text}`).toBe(200);
        expect(r.text).toContain('password');
        expect(r.text).not.toContain(VALUE);
      }
    }
    // A viewer reads but cannot write, nor rotate keys.
    expect((await call('PUT', '/v1/tenants/acme/secrets/db', M('Secret', 'db', { data: { password: 'x' } }), viewer)).status).toBe(403);
    expect((await call('POST', '/v1/secrets/reencrypt', {}, viewer)).status).toBe(403);
    await streamedSoon('"name":"db"');
  });

  it('stores configs readable by tenant viewers', async () => {
    expect((await call('PUT', '/v1/tenants/acme/configs/app', M('Config', 'app', { data: { 'app.yaml': CONFIG_VALUE, mode: 'fast' } }))).status).toBe(201);
    const r = await call('GET', '/v1/tenants/acme/configs/app', undefined, viewer);
    expect(r.json.spec.data['app.yaml']).toBe(CONFIG_VALUE);
    await streamedSoon(CONFIG_VALUE);
  });

  it('refuses bad references with stable codes and field paths', async () => {
    const cases: [Record<string, unknown>, number, string, string][] = [
      [{ secrets: [{ secret: 'nope' }] }, 422, 'CARAPACE_E_SECRET_NOT_FOUND', 'spec.secrets[0].secret'],
      [{ envFrom: [{ name: 'A', config: 'app', key: 'mode' }, { name: 'B', secret: 'nope', key: 'k' }] }, 422, 'CARAPACE_E_SECRET_NOT_FOUND', 'spec.envFrom[1].secret'],
      [{ configs: [{ config: 'nope', mountPath: '/etc/app' }] }, 422, 'CARAPACE_E_CONFIG_NOT_FOUND', 'spec.configs[0].config'],
      [{ envFrom: [{ name: 'PW', secret: 'db', key: 'passwd' }] }, 422, 'CARAPACE_E_DATA_KEY_NOT_FOUND', 'spec.envFrom[0].key'],
      [{ envFrom: [{ name: 'PW', secret: 'db', config: 'app', key: 'password' }] }, 400, 'CARAPACE_E_VALIDATION', 'spec.envFrom[0].config'],
      [{ envFrom: [{ name: 'PW', key: 'password' }] }, 400, 'CARAPACE_E_VALIDATION', 'spec.envFrom[0].secret'],
      [{ secrets: [{ secret: 'db', mountPath: '/etc/app' }], configs: [{ config: 'app', mountPath: '/etc/app/conf' }] }, 422, 'CARAPACE_E_MOUNT_PATH_CONFLICT', 'spec.configs[0].mountPath'],
      [{ env: { PW: 'x' }, envFrom: [{ name: 'PW', secret: 'db', key: 'password' }] }, 422, 'CARAPACE_E_ENV_CONFLICT', 'spec.envFrom[0].name'],
    ];
    for (const [spec, status, code, path] of cases) {
      const r = await call('PUT', '/v1/tenants/acme/services/bad', svc('bad', spec));
      expect([r.status, r.json.error.code], r.text).toEqual([status, code]);
      expect(r.json.error.details.map((d: { path: string }) => d.path)).toContain(path);
    }
    const big = await call('PUT', '/v1/tenants/acme/secrets/big', M('Secret', 'big', { data: { blob: 'x'.repeat(70_000) } }));
    expect([big.status, big.json.error.code, big.json.error.details[0].path]).toEqual([400, 'CARAPACE_E_VALIDATION', 'spec.data']);
    // Another tenant's secret cannot be named: references are by name within the workload's own tenant.
    expect((await call('PUT', '/v1/tenants/other', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'other' }, spec: {} })).status).toBe(201);
    const cross = await call('PUT', '/v1/tenants/other/services/thief', { ...svc('thief', { secrets: [{ secret: 'db' }] }), metadata: { name: 'thief', tenant: 'other' } });
    expect([cross.status, cross.json.error.code]).toEqual([422, 'CARAPACE_E_SECRET_NOT_FOUND']);
  });

  it("gives an instance's agent the decrypted files and env of what its container uses", async () => {
    const ok = await call('PUT', '/v1/tenants/acme/services/web', svc('web', { secrets: [{ secret: 'db' }], configs: [{ config: 'app', mountPath: '/etc/app' }], envFrom: [{ name: 'DB_PASSWORD', secret: 'db', key: 'password' }, { name: 'MODE', config: 'app', key: 'mode' }] }));
    expect(ok.status, ok.text).toBe(201);
    const inst = { kind: 'Instance', metadata: { name: 'web-0', tenant: 'acme', uid: 'i0', labels: {}, resourceVersion: 1, generation: 1, createdAt: '', updatedAt: '' }, spec: { container: ok.json.spec, host: 'h1' } } as unknown as Instance; // the fields instanceMaterial reads
    const m = await instanceMaterial(resources, ring, inst);
    expect(m.env).toEqual({ DB_PASSWORD: VALUE, MODE: 'fast' });
    expect(m.mounts.map((x) => [x.kind, x.name, x.mountPath, x.onChange, Object.keys(x.files).sort()])).toEqual([
      ['secret', 'db', '/run/secrets/db', 'restart', ['password', 'user']],
      ['config', 'app', '/etc/app', 'update', ['app.yaml', 'mode']],
    ]);
    // The content version moves when the data does.
    const before = m.version;
    expect((await call('PUT', '/v1/tenants/acme/configs/app', M('Config', 'app', { data: { 'app.yaml': CONFIG_VALUE, mode: 'slow' } }))).status).toBe(200);
    expect((await instanceMaterial(resources, ring, inst)).version).not.toBe(before);
  });

  it('an update re-seals the new value and records a different fingerprint', async () => {
    const r = await call('PUT', '/v1/tenants/acme/secrets/db', M('Secret', 'db', { data: { password: VALUE2, user: 'app' }, onChange: 'restart' }));
    expect(r.status).toBe(200);
    expect(r.json.metadata.generation).toBe(2);
    expect(await secretData(store, ring, 'acme', 'db')).toEqual({ password: VALUE2, user: 'app' });
    await streamedSoon('"generation":2');
  });

  it('keeps values out of the audit export (admin and viewer), which records keys and a keyed fingerprint', async () => {
    for (const token of [admin, viewer]) {
      for (const format of ['jsonl', 'csv']) {
        const r = await call('GET', `/v1/audit/records?format=${format}`, undefined, token);
        expect(r.status).toBe(200);
        expect(r.text).toContain('password'); // the keys are recorded
        for (const v of [VALUE, VALUE2]) expect(r.text).not.toContain(v);
      }
    }
    const recs = (await records()).filter((x) => x.target.kind === 'Secret' && x.target.name === 'db' && x.outcome === 'success');
    expect(recs.map((x) => x.action)).toEqual(['create', 'update']);
    const fps = recs.map((x) => x.detail?.['fingerprint']);
    expect(fps.every((f) => typeof f === 'string' && /^hmac-sha256:[0-9a-f]{16}$/.test(f))).toBe(true);
    expect(fps[0]).not.toBe(fps[1]);
    expect(recs[0]?.detail?.['keys']).toEqual(['password', 'user']);
  });

  it('keeps values out of every stream (watch and events, admin and viewer) and out of the SQLite file and its WAL', async () => {
    const all = streamed.join('');
    expect(all).toContain('password');
    for (const v of [VALUE, VALUE2]) expect(all).not.toContain(v);
    const files = ['store.db', 'store.db-wal'].map((f) => join(dir, f)).filter((f) => existsSync(f));
    expect(files.length).toBeGreaterThan(0);
    const bytes = Buffer.concat(await Promise.all(files.map((f) => readFile(f))));
    // The search works: the config's value (not secret) is in those bytes.
    expect(bytes.includes(Buffer.from(CONFIG_VALUE))).toBe(true);
    for (const v of [VALUE, VALUE2]) {
      expect(bytes.includes(Buffer.from(v))).toBe(false);
      expect(bytes.includes(Buffer.from(Buffer.from(v).toString('base64')))).toBe(false);
    }
  });

  it('rotates: a server restarted with a new primary key re-encrypts every secret, audited; then the old key is not needed', async () => {
    const before = (await store.get<SealedBlob>(sealedSecretKey('acme', 'db')))?.value;
    expect(before?.keyId).toBe(idOf(oldLine));
    const rotated = parseKeyring(`${newLine}\n${oldLine}`);
    const app2 = api(new ControlPlane(resources, env, undefined, rotated));
    const base2 = (await app2.listen({ port: 0, host: '127.0.0.1' })).replace('localhost', '127.0.0.1');
    try {
      const bad = await call('POST', '/v1/secrets/reencrypt', { tenant: 'nobody' }, admin, base2);
      expect([bad.status, bad.json.error.code, bad.json.error.details[0].path]).toEqual([404, 'CARAPACE_E_TENANT_NOT_FOUND', 'tenant']);
      const r = await call('POST', '/v1/secrets/reencrypt', {}, admin, base2);
      expect(r.json).toEqual({ keyId: idOf(newLine), reencrypted: 1, current: 0 });
      const after = (await store.get<SealedBlob>(sealedSecretKey('acme', 'db')))?.value;
      expect(after?.keyId).toBe(idOf(newLine));
      expect(await secretData(store, parseKeyring(newLine), 'acme', 'db')).toEqual({ password: VALUE2, user: 'app' });
      await expect(secretData(store, ring, 'acme', 'db')).rejects.toMatchObject({ code: 'CARAPACE_E_SECRET_UNDECRYPTABLE' });
      // Idempotent: nothing left to do, nothing recorded.
      const count = (await records()).length;
      expect((await call('POST', '/v1/secrets/reencrypt', {}, admin, base2)).json).toEqual({ keyId: idOf(newLine), reencrypted: 0, current: 1 });
      expect((await records()).length).toBe(count);
      const rec = (await records()).filter((x) => x.action === 'secret.reencrypted');
      expect(rec.map((x) => [x.target.tenant, x.target.name, x.detail?.['fromKey'], x.detail?.['toKey']])).toEqual([['acme', 'db', idOf(oldLine), idOf(newLine)]]);
    } finally {
      await app2.close();
    }
  });

  it('deletes a secret with its sealed record once nothing uses it; a server without a keyring refuses Secret writes', async () => {
    // In use by service web: refused, naming the user; nothing is deleted.
    const inUse = await call('DELETE', '/v1/tenants/acme/secrets/db');
    expect([inUse.status, inUse.json.error.code]).toEqual([409, 'CARAPACE_E_SECRET_IN_USE']);
    expect(inUse.json.error.message).toMatch(/secret "db" in tenant "acme" is used by service "web"/);
    expect(inUse.json.error.details).toEqual([{ path: 'metadata.name', message: 'used by service "web"' }]);
    expect(await store.get(sealedSecretKey('acme', 'db'))).toBeDefined();
    const configInUse = await call('DELETE', '/v1/tenants/acme/configs/app');
    expect([configInUse.status, configInUse.json.error.code]).toEqual([409, 'CARAPACE_E_CONFIG_IN_USE']);
    expect((await call('DELETE', '/v1/tenants/acme/services/web')).status).toBe(200);
    expect((await call('DELETE', '/v1/tenants/acme/secrets/db')).status).toBe(200);
    expect(await store.get(sealedSecretKey('acme', 'db'))).toBeUndefined();
    expect((await call('DELETE', '/v1/tenants/acme/secrets/db')).status).toBe(404);
    const bare = api(new ControlPlane(resources, env));
    const url = (await bare.listen({ port: 0, host: '127.0.0.1' })).replace('localhost', '127.0.0.1');
    try {
      const r = await call('PUT', '/v1/tenants/acme/secrets/db', M('Secret', 'db', { data: { password: VALUE } }), admin, url);
      expect([r.status, r.json.error.code]).toEqual([503, 'CARAPACE_E_SECRETS_KEYRING_MISSING']);
      expect((await call('POST', '/v1/secrets/reencrypt', {}, admin, url)).json.error.code).toBe('CARAPACE_E_SECRETS_KEYRING_MISSING');
    } finally {
      await bare.close();
    }
  });
});
