/**
 * The writes of API tokens: minting one for a caller, revoking one by its id or its name, and
 * minting the first cluster-admin token of a store. Each commits its token record and its
 * audit record in one store transaction (Resources.commitRecords), so a token is never
 * issued or revoked without a trace (invariant 3). The records' shape, the secret and
 * authentication are auth/tokens.ts's; who may grant or revoke what is auth/rbac.ts's.
 *
 * Audit records name the token (its id, name, role and tenant), never its secret or hash.
 */
import { CarapaceError } from '../model/errors.js';
import type { AuditTarget } from '../audit/record.js';
import { canCreateToken, canRevokeToken, type Grant, type Role } from '../auth/rbac.js';
import { createToken, isTokenId, tokenInfo, type TokenInfo, type TokenRecord } from '../auth/tokens.js';
import { BOOTSTRAP_KEY, tokenKey, TOKENS_KEY_PREFIX } from '../model/keys.js';
import { ConflictError, type Entry, type Store } from '../store/store.js';
import { auditEntry, SYSTEM, type AuditContext } from './audit-context.js';
import type { Env } from './actions.js';
import type { Resources } from './resources.js';

/** What a new token is: everything but who issues it (the context says that). */
export interface TokenRequest {
  /** Lowercase letters, digits and '-'; never used before (see {@link newTokenId}). */
  id: string;
  name: string;
  role: Role;
  tenant?: string;
  /** ISO timestamp or Date of creation. */
  now: string | Date;
}

/** A fresh token id from the env's unique ids, in the shape token ids take. */
export function newTokenId(env: Env): string {
  return env
    .newId()
    .replace(/[^a-z0-9]/gi, '')
    .toLowerCase()
    .slice(0, 16);
}

function iso(now: string | Date): string {
  return typeof now === 'string' ? now : now.toISOString();
}

function grantOf(r: Pick<TokenRecord, 'role' | 'tenant'>): Grant {
  return { role: r.role, ...(r.tenant !== undefined ? { tenant: r.tenant } : {}) };
}

/** Where a token's audit records point: the token by id, in its tenant (so the tenant's export shows it). */
function targetOf(r: Pick<TokenRecord, 'id' | 'tenant'>): AuditTarget {
  return { kind: 'Token', name: r.id, ...(r.tenant !== undefined ? { tenant: r.tenant } : {}) };
}

/** What an audit record says about a token: never its secret or hash. */
function detailOf(r: Pick<TokenRecord, 'name' | 'role' | 'tenant'>): Record<string, unknown> {
  return { name: r.name, role: r.role, ...(r.tenant !== undefined ? { tenant: r.tenant } : {}) };
}

/**
 * Mints and stores a token on behalf of `ctx.principal`, refusing (CARAPACE_E_FORBIDDEN /
 * CARAPACE_E_UNAUTHENTICATED) a grant its role does not allow, and CARAPACE_E_ALREADY_EXISTS
 * for an id used before. The returned token is the only copy of the secret.
 */
export async function issueToken(resources: Resources, ctx: AuditContext, input: TokenRequest): Promise<{ token: string; record: TokenRecord }> {
  const grant: Grant = { role: input.role, ...(input.tenant !== undefined ? { tenant: input.tenant } : {}) };
  const d = canCreateToken(ctx.principal, grant);
  if (!d.allowed) throw new CarapaceError(d.code, d.message);
  const minted = createToken({ ...input, createdBy: ctx.principal?.tokenId ?? '' }); // canCreateToken refused an undefined principal
  const key = tokenKey(minted.record.id);
  try {
    await resources.commitRecords([{ op: 'put', key, value: minted.record, expect: { absent: true } }], auditEntry(ctx, iso(input.now), 'token.created', targetOf(minted.record), 'success', detailOf(minted.record)));
  } catch (e) {
    if (e instanceof ConflictError && e.key === key) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `token id "${minted.record.id}" is already used`);
    throw e;
  }
  return minted;
}

/**
 * Mints the first cluster-admin token, once per store: undefined when a bootstrap already
 * happened (even if that token was revoked since). Atomic: of racing callers one wins. The
 * server calls it at first start and prints the token; its audit record is the system's.
 */
export async function bootstrapToken(resources: Resources, input: { id: string; name: string; now: string | Date }): Promise<{ token: string; record: TokenRecord } | undefined> {
  const minted = createToken({ ...input, role: 'cluster-admin', createdBy: 'bootstrap' });
  const key = tokenKey(input.id);
  try {
    await resources.commitRecords(
      [
        { op: 'put', key: BOOTSTRAP_KEY, value: { tokenId: input.id, at: minted.record.createdAt }, expect: { absent: true } },
        { op: 'put', key, value: minted.record, expect: { absent: true } },
      ],
      auditEntry(SYSTEM, minted.record.createdAt, 'token.created', targetOf(minted.record), 'success', { ...detailOf(minted.record), bootstrap: true }),
    );
  } catch (e) {
    if (e instanceof ConflictError && e.key === BOOTSTRAP_KEY) return undefined;
    if (e instanceof ConflictError && e.key === key) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `token id "${input.id}" is already used`);
    throw e;
  }
  return minted;
}

/**
 * The token `ref` names for `ctx`: the token with that id, else the one live token with that
 * name among those the caller may revoke (a user types the name they gave). Several live
 * tokens of that name: CARAPACE_E_AMBIGUOUS_NAME listing their ids. Only revoked ones: the
 * latest revoked (revoking it again changes nothing). None: CARAPACE_E_NOT_FOUND. Tokens the
 * caller may not revoke are never matched by name, so names do not leak across tenants.
 */
async function findToken(store: Store, ctx: AuditContext, ref: string): Promise<Entry<TokenRecord>> {
  if (isTokenId(ref)) {
    const byId = await store.get<TokenRecord>(tokenKey(ref));
    if (byId) return byId;
  }
  const { items } = await store.list<TokenRecord>(TOKENS_KEY_PREFIX);
  const named = items.filter((e) => e.value.name === ref && canRevokeToken(ctx.principal, { id: e.value.id, ...grantOf(e.value) }).allowed);
  const live = named.filter((e) => e.value.revokedAt === undefined);
  const [only] = live;
  if (only && live.length === 1) return only;
  if (live.length > 1) {
    throw new CarapaceError(
      'CARAPACE_E_AMBIGUOUS_NAME',
      `${live.length} live tokens are named "${ref}" (ids ${live.map((e) => e.value.id).join(', ')}); revoke one by its id`,
      live.map((e) => ({ path: 'name', message: `token ${e.value.id}: ${e.value.role}${e.value.tenant !== undefined ? ` of tenant ${e.value.tenant}` : ''}, created ${e.value.createdAt}` })),
    );
  }
  const latest = named.sort((a, b) => (b.value.revokedAt ?? '').localeCompare(a.value.revokedAt ?? ''))[0];
  if (latest) return latest;
  throw new CarapaceError('CARAPACE_E_NOT_FOUND', `token "${ref}" does not exist (no token has that id, and none you may revoke has that name)`);
}

/**
 * Revokes the token `ref` names (its id, or its name: see findToken) on behalf of
 * `ctx.principal`, who must be allowed by canRevokeToken (CARAPACE_E_FORBIDDEN otherwise).
 * Idempotent: revoking a revoked token returns it unchanged and writes nothing. The record
 * stays (for audit); only `revokedAt`/`revokedBy` are set.
 */
export async function revokeToken(resources: Resources, ctx: AuditContext, ref: string, now: string | Date): Promise<TokenInfo> {
  for (let attempt = 0; ; attempt++) {
    const entry = await findToken(resources.store, ctx, ref);
    const rec = entry.value;
    const d = canRevokeToken(ctx.principal, { id: rec.id, ...grantOf(rec) });
    if (!d.allowed) throw new CarapaceError(d.code, d.message);
    if (rec.revokedAt !== undefined) return tokenInfo(rec);
    const next: TokenRecord = { ...rec, revokedAt: iso(now), revokedBy: ctx.principal?.tokenId ?? '' }; // canRevokeToken refused an undefined principal
    const key = tokenKey(rec.id);
    try {
      await resources.commitRecords([{ op: 'put', key, value: next, expect: { version: entry.version } }], auditEntry(ctx, iso(now), 'token.revoked', targetOf(rec), 'success', detailOf(rec)));
      return tokenInfo(next);
    } catch (e) {
      // Someone else wrote the record in between (e.g. revoked it too): read again.
      if (e instanceof ConflictError && e.key === key && attempt < 3) continue;
      if (e instanceof ConflictError && e.key === key) throw new CarapaceError('CARAPACE_E_CONFLICT', `token "${rec.id}" keeps changing; retry`);
      throw e;
    }
  }
}
