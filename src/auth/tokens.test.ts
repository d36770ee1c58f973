import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ROUTES } from '../model/routes.js';
import { ERROR_CATALOGUE, isCarapaceError } from '../model/errors.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { admit } from './admit.js';
// Storing and revoking tokens are the core's writes (with their audit records); tested here with the rest of the token life.
import { bootstrapToken, issueToken, revokeToken } from '../core/api-tokens.js';
import { contextFor } from '../core/audit-context.js';
import { Resources } from '../core/resources.js';
import { authorize, requestFor, type Principal } from './rbac.js';
import { authenticate, bearerFromHeader, createToken, listTokens, type TokenRecord } from './tokens.js';
import { tokenKey } from '../model/keys.js';

const NOW = '2025-01-01T00:00:00.000Z';
let dir: string;
let store: SqliteStore;
let resources: Resources;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-auth-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  resources = new Resources(store);
});
afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

async function root(): Promise<{ token: string; principal: Principal }> {
  const minted = await bootstrapToken(resources, { id: 'root', name: 'bootstrap admin', now: NOW });
  expect(minted).toBeDefined();
  const principal = await authenticate(store, minted!.token);
  expect(principal).toEqual({ tokenId: 'root', name: 'bootstrap admin', role: 'cluster-admin' });
  return { token: minted!.token, principal: principal! };
}

async function expectAuthError(p: Promise<unknown>, code: 'CARAPACE_E_UNAUTHENTICATED' | 'CARAPACE_E_FORBIDDEN'): Promise<void> {
  await expect(p).rejects.toSatisfy((e: unknown) => isCarapaceError(e, code) && e.status === ERROR_CATALOGUE[code].status);
}

describe('tokens on a real SQLite store', () => {
  it('mints a cpt_ token with 32 random bytes, stores only its hash, and authenticates it', async () => {
    const { principal: admin } = await root();
    const { token, record } = await issueToken(resources, contextFor(admin), { id: 'ci', name: 'ci deploy', role: 'tenant-admin', tenant: 'acme', now: NOW });
    expect(token).toMatch(/^cpt_ci\.[A-Za-z0-9_-]{43}$/);
    expect(Buffer.from(token.split('.')[1]!, 'base64url')).toHaveLength(32);
    expect(record).toMatchObject({ id: 'ci', role: 'tenant-admin', tenant: 'acme', createdAt: NOW, createdBy: 'root' });
    expect(record.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(await authenticate(store, token)).toEqual({ tokenId: 'ci', name: 'ci deploy', role: 'tenant-admin', tenant: 'acme' });
    // Two tokens never share a secret.
    const again = createToken({ id: 'x', name: 'x', role: 'cluster-admin', now: NOW, createdBy: 'root' });
    const again2 = createToken({ id: 'x', name: 'x', role: 'cluster-admin', now: NOW, createdBy: 'root' });
    expect(again.token).not.toBe(again2.token);
  });

  it('never stores the secret: not in the record, not anywhere in the database files', async () => {
    const { token: rootToken, principal: admin } = await root();
    const { token } = await issueToken(resources, contextFor(admin), { id: 'ci', name: 'ci', role: 'tenant-viewer', tenant: 'acme', now: NOW });
    const stored = await store.get<TokenRecord>(tokenKey('ci'));
    const secret = token.split('.')[1]!;
    expect(JSON.stringify(stored)).not.toContain(secret);
    await store.close();
    // The raw bytes of the SQLite file and its WAL: no secret, in any encoding we use.
    const files = (await readdir(dir)).filter((f) => f.startsWith('store.db'));
    expect(files.length).toBeGreaterThan(0);
    for (const t of [token, rootToken]) {
      const s = t.split('.')[1]!;
      for (const f of files) {
        const bytes = await readFile(join(dir, f));
        expect(bytes.includes(Buffer.from(s)), f).toBe(false);
        expect(bytes.includes(Buffer.from(s, 'base64url')), f).toBe(false);
      }
    }
    // Also through SQL, in case a page was compressed away from the raw scan.
    const db = new Database(join(dir, 'store.db'), { readonly: true });
    const rows = db.prepare('SELECT * FROM kv').all();
    db.close();
    expect(JSON.stringify(rows)).not.toContain(secret);
    expect(JSON.stringify(rows)).toContain(createHash('sha256').update(token).digest('hex')); // the hash is what is kept
    store = await openSqliteStore({ path: join(dir, 'store.db') }); // afterEach closes it
    resources = new Resources(store);
  });

  it('refuses wrong, malformed, unknown and absent tokens', async () => {
    const { token } = await root();
    const secret = token.split('.')[1]!;
    const flipped = secret.slice(0, -1) + (secret.endsWith('A') ? 'B' : 'A');
    const bad = [
      undefined,
      '',
      'cpt_',
      `cpt_root.${flipped}`,
      `cpt_nobody.${secret}`,
      `cpt_root.${secret}x`,
      `Bearer ${token}`,
      token.toUpperCase(),
      `xyz_root.${secret}`,
      `cpt_ROOT.${secret}`,
      `cpt_root.${secret.slice(1)}`,
      `cpt_../root.${secret}`,
    ];
    for (const b of bad) expect(await authenticate(store, b), String(b)).toBeUndefined();
    expect(await authenticate(store, token)).toBeDefined();
  });

  it('refuses a revoked token on every non-public route, and revocation is idempotent and kept for audit', async () => {
    const { principal: admin } = await root();
    const { token } = await issueToken(resources, contextFor(admin), { id: 'dev', name: 'dev', role: 'tenant-admin', tenant: 'acme', now: NOW });
    expect(await authenticate(store, token)).toBeDefined();
    const info = await revokeToken(resources, contextFor(admin), 'dev', '2025-01-02T00:00:00.000Z');
    expect(info).toMatchObject({ id: 'dev', revokedAt: '2025-01-02T00:00:00.000Z', revokedBy: 'root' });
    expect(info).not.toHaveProperty('hash');
    const p = await authenticate(store, token);
    expect(p).toBeUndefined();
    for (const route of ROUTES) {
      const d = authorize(p, requestFor(route, { tenant: 'acme', name: 'acme' }));
      if (route.kind !== 'meta') expect(d).toMatchObject({ allowed: false, code: 'CARAPACE_E_UNAUTHENTICATED' });
    }
    expect(await revokeToken(resources, contextFor(admin), 'dev', '2025-01-03T00:00:00.000Z')).toMatchObject({ revokedAt: '2025-01-02T00:00:00.000Z' });
    expect((await store.get(tokenKey('dev')))?.value).toMatchObject({ id: 'dev', revokedAt: '2025-01-02T00:00:00.000Z' });
    await expect(revokeToken(resources, contextFor(admin), 'nope', NOW)).rejects.toSatisfy((e: unknown) => isCarapaceError(e, 'CARAPACE_E_NOT_FOUND'));
  });

  it('refuses privilege escalation through tokens', async () => {
    const { principal: admin } = await root();
    const ta = (await authenticate(store, (await issueToken(resources, contextFor(admin), { id: 'ta', name: 'ta', role: 'tenant-admin', tenant: 'acme', now: NOW })).token))!;
    const tv = (await authenticate(store, (await issueToken(resources, contextFor(admin), { id: 'tv', name: 'tv', role: 'tenant-viewer', tenant: 'acme', now: NOW })).token))!;
    await issueToken(resources, contextFor(admin), { id: 'other', name: 'other', role: 'tenant-admin', tenant: 'globex', now: NOW });

    await expectAuthError(issueToken(resources, contextFor(ta), { id: 'up', name: 'up', role: 'cluster-admin', now: NOW }), 'CARAPACE_E_FORBIDDEN');
    await expectAuthError(issueToken(resources, contextFor(ta), { id: 'side', name: 'side', role: 'tenant-admin', tenant: 'globex', now: NOW }), 'CARAPACE_E_FORBIDDEN');
    await expectAuthError(issueToken(resources, contextFor(tv), { id: 'v2', name: 'v2', role: 'tenant-viewer', tenant: 'acme', now: NOW }), 'CARAPACE_E_FORBIDDEN');
    await expectAuthError(issueToken(resources, contextFor(tv), { id: 'a2', name: 'a2', role: 'tenant-admin', tenant: 'acme', now: NOW }), 'CARAPACE_E_FORBIDDEN');
    await expectAuthError(issueToken(resources, contextFor(undefined), { id: 'anon', name: 'anon', role: 'tenant-viewer', tenant: 'acme', now: NOW }), 'CARAPACE_E_UNAUTHENTICATED');
    for (const id of ['up', 'side', 'v2', 'a2', 'anon']) expect(await store.get(tokenKey(id)), id).toBeUndefined();

    // Revocation: only what one could create (plus one's own token).
    await expectAuthError(revokeToken(resources, contextFor(ta), 'root', NOW), 'CARAPACE_E_FORBIDDEN');
    await expectAuthError(revokeToken(resources, contextFor(ta), 'other', NOW), 'CARAPACE_E_FORBIDDEN');
    await expectAuthError(revokeToken(resources, contextFor(tv), 'ta', NOW), 'CARAPACE_E_FORBIDDEN');
    expect(await authenticate(store, 'x')).toBeUndefined();
    expect((await store.get<TokenRecord>(tokenKey('root')))?.value.revokedAt).toBeUndefined();

    // What a tenant-admin may do, it can.
    const viewer = await issueToken(resources, contextFor(ta), { id: 'v3', name: 'v3', role: 'tenant-viewer', tenant: 'acme', now: NOW });
    expect(viewer.record.createdBy).toBe('ta');
    expect(await listTokens(store, ta)).toEqual(expect.arrayContaining([expect.objectContaining({ id: 'v3' }), expect.objectContaining({ id: 'tv' })]));
    expect((await listTokens(store, ta)).map((t) => t.id).sort()).toEqual(['ta', 'tv', 'v3']);
    expect((await listTokens(store, tv)).map((t) => t.id)).toEqual(['tv']);
    expect((await listTokens(store, admin)).map((t) => t.id).sort()).toEqual(['other', 'root', 'ta', 'tv', 'v3']);
    for (const t of await listTokens(store, admin)) expect(t).not.toHaveProperty('hash');
    await revokeToken(resources, contextFor(tv), 'tv', NOW); // logging out
    expect(await authenticate(store, viewer.token)).toBeDefined();
  });

  it('never reuses or overwrites a token id', async () => {
    const { principal: admin } = await root();
    const first = await issueToken(resources, contextFor(admin), { id: 'dup', name: 'a', role: 'cluster-admin', now: NOW });
    await expect(issueToken(resources, contextFor(admin), { id: 'dup', name: 'b', role: 'cluster-admin', now: NOW })).rejects.toSatisfy((e: unknown) => isCarapaceError(e, 'CARAPACE_E_ALREADY_EXISTS'));
    await expect(issueToken(resources, contextFor(admin), { id: 'root', name: 'x', role: 'cluster-admin', now: NOW })).rejects.toSatisfy((e: unknown) => isCarapaceError(e, 'CARAPACE_E_ALREADY_EXISTS'));
    expect(await authenticate(store, first.token)).toMatchObject({ tokenId: 'dup', name: 'a' });
  });

  it('bootstraps exactly once, even under a race', async () => {
    const results = await Promise.all([0, 1, 2, 3].map((i) => bootstrapToken(resources, { id: `boot${i}`, name: 'b', now: NOW })));
    expect(results.filter((r) => r !== undefined)).toHaveLength(1);
    expect(await bootstrapToken(resources, { id: 'later', name: 'b', now: NOW })).toBeUndefined();
    expect((await store.list('tokens/')).items).toHaveLength(1);
  });

  it('validates token input', () => {
    expect(() => createToken({ id: 'Bad.Id', name: 'x', role: 'cluster-admin', now: NOW, createdBy: 'r' })).toThrow(/token id/);
    expect(() => createToken({ id: 'a', name: ' ', role: 'cluster-admin', now: NOW, createdBy: 'r' })).toThrow(/name/);
    expect(() => createToken({ id: 'a', name: 'x', role: 'tenant-admin', now: NOW, createdBy: 'r' })).toThrow(/needs a tenant/);
    expect(() => createToken({ id: 'a', name: 'x', role: 'cluster-admin', tenant: 'acme', now: NOW, createdBy: 'r' })).toThrow(/cannot have a tenant/);
  });

  it('parses bearer headers', () => {
    expect(bearerFromHeader('Bearer cpt_a.b')).toBe('cpt_a.b');
    expect(bearerFromHeader('bearer  cpt_a.b ')).toBe('cpt_a.b');
    expect(bearerFromHeader('Basic abc')).toBeUndefined();
    expect(bearerFromHeader(undefined)).toBeUndefined();
    expect(bearerFromHeader(`Bearer ${'a'.repeat(600)}`)).toBeUndefined();
  });

  it('refuses with the catalogue codes the API answers 401 and 403', () => {
    expect(ERROR_CATALOGUE.CARAPACE_E_UNAUTHENTICATED.status).toBe(401);
    expect(ERROR_CATALOGUE.CARAPACE_E_FORBIDDEN.status).toBe(403);
  });
});

describe('admit (the per-request seam)', () => {
  it('authenticates the header and authorises the matched route', async () => {
    const { principal: admin } = await root();
    const viewer = await issueToken(resources, contextFor(admin), { id: 'v', name: 'v', role: 'tenant-viewer', tenant: 'acme', now: NOW });
    const auth = { authenticate: (t: string | undefined) => authenticate(store, t) };
    const get = ROUTES.find((r) => r.method === 'GET' && r.url === '/v1/tenants/:tenant/services/:name')!;
    const put = ROUTES.find((r) => r.method === 'PUT' && r.url === '/v1/tenants/:tenant/services/:name')!;
    const listAll = ROUTES.find((r) => r.url === '/v1/services')!;
    expect(await admit(auth, get, `Bearer ${viewer.token}`, { tenant: 'acme', name: 'web' })).toMatchObject({ principal: { tokenId: 'v' }, decision: { allowed: true } });
    expect((await admit(auth, get, `Bearer ${viewer.token}`, { tenant: 'globex', name: 'web' })).decision).toMatchObject({ allowed: false, code: 'CARAPACE_E_FORBIDDEN' });
    expect((await admit(auth, put, `Bearer ${viewer.token}`, { tenant: 'acme', name: 'web' })).decision).toMatchObject({ allowed: false, code: 'CARAPACE_E_FORBIDDEN' });
    expect((await admit(auth, listAll, `Bearer ${viewer.token}`)).decision).toEqual({ allowed: true, postFilter: 'items' });
    expect(await admit(auth, get, undefined, { tenant: 'acme', name: 'web' })).toEqual({ decision: expect.objectContaining({ allowed: false, code: 'CARAPACE_E_UNAUTHENTICATED' }) });
    expect((await admit(auth, get, `Basic ${viewer.token}`, { tenant: 'acme', name: 'web' })).decision).toMatchObject({ code: 'CARAPACE_E_UNAUTHENTICATED' });
  });
});
