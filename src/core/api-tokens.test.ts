/**
 * The API token writes on a real SQLite store with a real audit log: each leaves its audit
 * record in the same transaction (and none when nothing changed), no record holds a secret
 * or a hash, a token cannot be issued when its record cannot be written, and revoking by name
 * finds exactly one live token the caller may revoke or refuses.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../audit/log.js';
import type { AuditRecord } from '../audit/record.js';
import type { Principal } from '../auth/rbac.js';
import { authenticate, type TokenRecord } from '../auth/tokens.js';
import { tokenKey } from '../model/keys.js';
import { isCarapaceError } from '../model/errors.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { bootstrapToken, issueToken, revokeToken } from './api-tokens.js';
import { contextFor } from './audit-context.js';
import { Resources } from './resources.js';

const NOW = '2026-02-01T00:00:00.000Z';
let dir: string;
let store: SqliteStore;
let audit: AuditLog;
let resources: Resources;
let root: Principal;
let rootToken: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-api-tokens-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  resources = new Resources(store, audit);
  rootToken = (await bootstrapToken(resources, { id: 'root', name: 'bootstrap admin', now: NOW }))!.token; // a fresh store
  root = (await authenticate(store, rootToken))!; // just minted
});
afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

async function records(): Promise<AuditRecord[]> {
  return (await audit.read()).records as AuditRecord[]; // written by this log
}

async function issue(by: Principal, id: string, name: string, grant: { role: 'cluster-admin' | 'tenant-admin' | 'tenant-viewer'; tenant?: string }): Promise<{ token: string; principal: Principal }> {
  const { token } = await issueToken(resources, contextFor(by, '10.0.0.9'), { id, name, ...grant, now: NOW });
  return { token, principal: (await authenticate(store, token))! }; // just minted
}

describe('API token writes', () => {
  it('audit each issue and revoke in the same transaction as the token record, without secrets or hashes', async () => {
    const ci = await issue(root, 'ci1', 'ci', { role: 'tenant-admin', tenant: 'acme' });
    await revokeToken(resources, contextFor(root, '10.0.0.9'), 'ci1', '2026-02-02T00:00:00.000Z');
    const rs = await records();
    expect(rs.map((r) => ({ action: r.action, actor: r.actor, target: r.target, outcome: r.outcome, detail: r.detail, source: r.source }))).toEqual([
      { action: 'token.created', actor: { kind: 'system', id: 'carapace' }, target: { kind: 'Token', name: 'root' }, outcome: 'success', detail: { name: 'bootstrap admin', role: 'cluster-admin', bootstrap: true }, source: undefined },
      { action: 'token.created', actor: { kind: 'user', id: 'token:root' }, target: { kind: 'Token', name: 'ci1', tenant: 'acme' }, outcome: 'success', detail: { name: 'ci', role: 'tenant-admin', tenant: 'acme' }, source: '10.0.0.9' },
      { action: 'token.revoked', actor: { kind: 'user', id: 'token:root' }, target: { kind: 'Token', name: 'ci1', tenant: 'acme' }, outcome: 'success', detail: { name: 'ci', role: 'tenant-admin', tenant: 'acme' }, source: '10.0.0.9' },
    ]);
    const stored = (await store.get<TokenRecord>(tokenKey('ci1')))!.value; // issued above
    const text = JSON.stringify(await audit.read());
    for (const secret of [ci.token, ci.token.split('.')[1]!, rootToken.split('.')[1]!, stored.hash]) expect(text).not.toContain(secret);
    // Revoking again changes nothing and records nothing.
    await revokeToken(resources, contextFor(root), 'ci1', '2026-02-03T00:00:00.000Z');
    expect(await records()).toHaveLength(3);
    expect((await audit.verify()).ok).toBe(true);
  });

  it('issues nothing when the audit record cannot be written', async () => {
    await store.put('audit/head', { corrupt: true }); // a head the log refuses to extend
    await expect(issueToken(resources, contextFor(root), { id: 'ci2', name: 'ci', role: 'cluster-admin', now: NOW })).rejects.toSatisfy((e: unknown) => isCarapaceError(e, 'CARAPACE_E_UNAVAILABLE'));
    expect(await store.get(tokenKey('ci2'))).toBeUndefined();
    await expect(revokeToken(resources, contextFor(root), 'root', NOW)).rejects.toSatisfy((e: unknown) => isCarapaceError(e, 'CARAPACE_E_UNAVAILABLE'));
    expect((await store.get<TokenRecord>(tokenKey('root')))!.value.revokedAt).toBeUndefined(); // bootstrapped in beforeEach
  });

  it('revoke a token by the name it was given, and refuse a name several live tokens share, listing their ids', async () => {
    await issue(root, 'laptop1', 'alice laptop', { role: 'cluster-admin' });
    const byName = await revokeToken(resources, contextFor(root), 'alice laptop', NOW);
    expect(byName).toMatchObject({ id: 'laptop1', name: 'alice laptop', revokedAt: NOW, revokedBy: 'root' });
    expect(byName).not.toHaveProperty('hash');

    await issue(root, 'ci1', 'ci', { role: 'tenant-viewer', tenant: 'acme' });
    await issue(root, 'ci2', 'ci', { role: 'tenant-viewer', tenant: 'acme' });
    const before = (await records()).length;
    const refused = await revokeToken(resources, contextFor(root), 'ci', NOW).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isCarapaceError(refused, 'CARAPACE_E_AMBIGUOUS_NAME')).toBe(true);
    expect((refused as Error).message).toMatch(/ci1, ci2/);
    expect(isCarapaceError(refused) && refused.details.map((d) => d.message)).toEqual([expect.stringMatching(/^token ci1: tenant-viewer of tenant acme/), expect.stringMatching(/^token ci2: /)]);
    expect(await records()).toHaveLength(before); // nothing was changed
    for (const id of ['ci1', 'ci2']) expect((await store.get<TokenRecord>(tokenKey(id)))!.value.revokedAt).toBeUndefined();

    // Once one is revoked by id, the name names the other; then both are revoked and the name
    // is answered with the latest revoked one, unchanged.
    await revokeToken(resources, contextFor(root), 'ci1', NOW);
    expect(await revokeToken(resources, contextFor(root), 'ci', '2026-02-05T00:00:00.000Z')).toMatchObject({ id: 'ci2', revokedAt: '2026-02-05T00:00:00.000Z' });
    const n = (await records()).length;
    expect(await revokeToken(resources, contextFor(root), 'ci', '2026-02-06T00:00:00.000Z')).toMatchObject({ id: 'ci2', revokedAt: '2026-02-05T00:00:00.000Z' });
    expect(await records()).toHaveLength(n);
  });

  it("match names only among the tokens the caller may revoke: another tenant's names neither match nor leak", async () => {
    const acmeAdmin = await issue(root, 'acmeadmin', 'acme admin', { role: 'tenant-admin', tenant: 'acme' });
    await issue(root, 'globexci', 'deploy', { role: 'tenant-admin', tenant: 'globex' });
    await issue(acmeAdmin.principal, 'acmeci', 'deploy', { role: 'tenant-viewer', tenant: 'acme' });
    // Two live "deploy" tokens exist, but acme's admin may revoke only one of them: that one.
    expect(await revokeToken(resources, contextFor(acmeAdmin.principal), 'deploy', NOW)).toMatchObject({ id: 'acmeci', tenant: 'acme' });
    await issue(root, 'globexonly', 'nightly', { role: 'tenant-viewer', tenant: 'globex' });
    await expect(revokeToken(resources, contextFor(acmeAdmin.principal), 'nightly', NOW)).rejects.toSatisfy((e: unknown) => isCarapaceError(e, 'CARAPACE_E_NOT_FOUND'));
    // By id the rule is unchanged: the token exists, and acme's admin may not revoke it.
    await expect(revokeToken(resources, contextFor(acmeAdmin.principal), 'globexonly', NOW)).rejects.toSatisfy((e: unknown) => isCarapaceError(e, 'CARAPACE_E_FORBIDDEN'));
    expect((await store.get<TokenRecord>(tokenKey('globexci')))!.value.revokedAt).toBeUndefined();
  });
});
