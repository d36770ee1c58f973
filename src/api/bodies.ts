/**
 * The request bodies of the API's non-manifest routes: what the handlers parse (server.ts) and
 * what the OpenAPI document declares (openapi.ts), from the same schemas so the two agree.
 */
import { z } from 'zod';
import { ROLES } from '../auth/rbac.js';

/** `POST /v1/secrets/reencrypt`: every tenant's secrets, or one tenant's. */
export const ReencryptSchema = z.strictObject({ tenant: z.string().min(1).max(63).optional() });

/** `POST /v1/keys/reencrypt`: no options (everything the store holds sealed moves to the primary key). */
export const ReencryptKeysSchema = z.strictObject({});

/** `POST /v1/tokens`: a new API token (a tenant role needs its tenant). */
export const NewTokenSchema = z.strictObject({
  name: z.string().min(1).max(100),
  role: z.enum(ROLES),
  tenant: z.string().min(1).max(63).optional(),
});

/**
 * `POST /v1/audit/verify`: checkpoints kept off the store and the keys that signed them (the
 * CLI reads and checks an `--audit-copy` file first). Checkpoints are checked by the verifier
 * itself, which reports malformed ones rather than refusing the request.
 */
export const VerifyAgainstSchema = z.strictObject({
  checkpoints: z.array(z.unknown()).max(1_000_000),
  publicKeys: z.array(z.string().min(1).max(4096)).max(1000).default([]),
});

/** Request bodies by `METHOD URL`, with the component name the OpenAPI document gives them. */
export const REQUEST_BODIES: Readonly<Record<string, { name: string; schema: z.ZodType; required: boolean }>> = {
  'POST /v1/tokens': { name: 'NewToken', schema: NewTokenSchema, required: true },
  'POST /v1/secrets/reencrypt': { name: 'Reencrypt', schema: ReencryptSchema, required: false },
  'POST /v1/keys/reencrypt': { name: 'ReencryptKeys', schema: ReencryptKeysSchema, required: false },
  'POST /v1/audit/verify': { name: 'VerifyAgainst', schema: VerifyAgainstSchema, required: true },
};
