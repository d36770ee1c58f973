/**
 * Bearer tokens: their shape, minting (pure apart from the random secret), authenticating
 * and listing. Storing and revoking them are writes with an audit record: core/api-tokens.ts.
 *
 * A token looks like `cpt_<id>.<secret>`: `id` names its record (`tokens/<id>` in the Store,
 * so authentication is one `get`, not a scan) and `secret` is 32 random bytes, base64url. The
 * full token is shown once, when it is minted; the Store keeps only its SHA-256.
 *
 * Why a plain SHA-256 and not bcrypt/scrypt/argon2: those slow hashes exist to protect
 * low-entropy secrets (passwords) against offline guessing. Our secrets are 256 random bits;
 * nobody can enumerate 2^256 candidates however fast the hash is, so a slow KDF would only
 * add milliseconds to every API request. A stolen store therefore does not yield usable
 * tokens. (The hash covers the whole token, id included, so a record's hash cannot be
 * replayed under another id.)
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { CarapaceError } from '../model/errors.js';
import { tokenKey, TOKENS_KEY_PREFIX } from '../model/keys.js';
import type { Store } from '../store/store.js';
import { canRevokeToken, isTenantRole, ROLES, type Principal, type Role } from './rbac.js';

/** What every token starts with, so secret scanners (and people) recognise it. */
export const TOKEN_PREFIX = 'cpt_';

const ID_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
const SECRET_BYTES = 32;
/** 32 bytes in unpadded base64url are 43 characters. */
const TOKEN_RE = /^cpt_([a-z0-9][a-z0-9-]{0,62})\.([A-Za-z0-9_-]{43})$/;

/** A token as stored: everything but the secret. */
export interface TokenRecord {
  id: string;
  /** A human label ("ci-deploy", "alice laptop"). */
  name: string;
  role: Role;
  /** Set exactly for tenant roles. */
  tenant?: string;
  createdAt: string;
  /** The token id (or "bootstrap") that minted this one. */
  createdBy: string;
  revokedAt?: string;
  revokedBy?: string;
  /** Hex SHA-256 of the full token string. */
  hash: string;
}

/** A token record without its hash, for listing to users. */
export type TokenInfo = Omit<TokenRecord, 'hash'>;

/** Input of {@link createToken}: the caller passes ids and timestamps (deterministic writes). */
export interface NewToken {
  role: Role;
  tenant?: string;
  name: string;
  /** ISO timestamp or Date of creation. */
  now: string | Date;
  /** Lowercase letters, digits and '-', at most 63 characters; unique among tokens ever minted. */
  id: string;
  /** Who mints it: the issuer's token id, or "bootstrap". */
  createdBy: string;
}

/** True when `s` has the shape of a token id (so it can name a record). */
export function isTokenId(s: string): boolean {
  return ID_RE.test(s);
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

function iso(now: string | Date): string {
  return typeof now === 'string' ? now : now.toISOString();
}

/**
 * Mints a token (pure apart from the random secret; nothing is stored). Returns the token,
 * to show the user once, and the record to store. Throws CARAPACE_E_VALIDATION on a bad id,
 * name or role/tenant combination. To store one, see core/api-tokens.ts (issueToken).
 */
export function createToken(input: NewToken): { token: string; record: TokenRecord } {
  if (!ID_RE.test(input.id)) throw new CarapaceError('CARAPACE_E_VALIDATION', 'token id must be 1-63 lowercase letters, digits or "-"', [{ path: 'id', message: 'invalid' }]);
  if (input.name.trim() === '' || input.name.length > 200) throw new CarapaceError('CARAPACE_E_VALIDATION', 'token name must be 1-200 characters', [{ path: 'name', message: 'invalid' }]);
  if (!(ROLES as readonly string[]).includes(input.role)) throw new CarapaceError('CARAPACE_E_VALIDATION', `unknown role "${input.role}"`, [{ path: 'role', message: 'invalid' }]);
  if (isTenantRole(input.role) ? !input.tenant : input.tenant !== undefined) {
    throw new CarapaceError('CARAPACE_E_VALIDATION', `a ${input.role} token ${isTenantRole(input.role) ? 'needs' : 'cannot have'} a tenant`, [{ path: 'tenant', message: 'invalid' }]);
  }
  const token = `${TOKEN_PREFIX}${input.id}.${randomBytes(SECRET_BYTES).toString('base64url')}`;
  const record: TokenRecord = {
    id: input.id,
    name: input.name,
    role: input.role,
    ...(input.tenant !== undefined ? { tenant: input.tenant } : {}),
    createdAt: iso(input.now),
    createdBy: input.createdBy,
    hash: sha256(token).toString('hex'),
  };
  return { token, record };
}

/** Extracts the token from an `Authorization: Bearer <token>` header; undefined when absent or not a bearer header. */
export function bearerFromHeader(header: string | undefined): string | undefined {
  if (header === undefined || header.length > 512) return undefined;
  const m = /^Bearer +(\S+) *$/i.exec(header);
  return m?.[1];
}

/** A hash compared against when the id is unknown, so unknown and wrong tokens take the same time. */
const DUMMY_HASH = sha256('carapace-no-such-token');

/** True when `token` hashes to `record.hash`, compared in constant time. */
export function tokenMatches(token: string, record: Pick<TokenRecord, 'hash'>): boolean {
  const got = sha256(token);
  const want = typeof record.hash === 'string' && /^[0-9a-f]{64}$/.test(record.hash) ? Buffer.from(record.hash, 'hex') : DUMMY_HASH;
  // Both buffers are 32 bytes (SHA-256), as timingSafeEqual requires.
  return timingSafeEqual(got, want) && want !== DUMMY_HASH;
}

/** The principal a live, well-formed record stands for; undefined for revoked or malformed records. */
export function principalOf(record: TokenRecord): Principal | undefined {
  if (record.revokedAt !== undefined) return undefined;
  if (!(ROLES as readonly string[]).includes(record.role)) return undefined;
  if (isTenantRole(record.role) ? typeof record.tenant !== 'string' || record.tenant === '' : record.tenant !== undefined) return undefined;
  return { tokenId: record.id, name: record.name, role: record.role, ...(record.tenant !== undefined ? { tenant: record.tenant } : {}) };
}

/** Splits a token into its id; undefined when it does not have the token shape. */
export function tokenId(token: string): string | undefined {
  return TOKEN_RE.exec(token)?.[1];
}

/**
 * Who `bearer` (the token string, not the header) is, or undefined when it is malformed,
 * unknown, wrong or revoked. One store read; see TokenCache for a cached variant.
 */
export async function authenticate(store: Store, bearer: string | undefined): Promise<Principal | undefined> {
  if (bearer === undefined) return undefined;
  const id = tokenId(bearer);
  if (id === undefined) return undefined;
  const entry = await store.get<TokenRecord>(tokenKey(id));
  return checkToken(bearer, entry?.value);
}

/** Checks a token against its (possibly missing) record; shared by authenticate and the cache. */
export function checkToken(bearer: string, record: TokenRecord | undefined): Principal | undefined {
  if (record === undefined) {
    tokenMatches(bearer, { hash: '' }); // same work as a real comparison
    return undefined;
  }
  if (!tokenMatches(bearer, record)) return undefined;
  return principalOf(record);
}

/** The record without its hash. */
export function tokenInfo(record: TokenRecord): TokenInfo {
  const { hash: _hash, ...info } = record;
  return info;
}

/** The tokens `principal` could revoke (cluster-admin: all; tenant-admin: its tenant's; viewers: only their own), without hashes. */
export async function listTokens(store: Store, principal: Principal | undefined): Promise<TokenInfo[]> {
  const { items } = await store.list<TokenRecord>(TOKENS_KEY_PREFIX);
  return items
    .map((e) => e.value)
    .filter((r) => canRevokeToken(principal, { id: r.id, role: r.role, ...(r.tenant !== undefined ? { tenant: r.tenant } : {}) }).allowed)
    .map(tokenInfo);
}
