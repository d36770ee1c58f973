/**
 * Identity and authorisation: bearer tokens (tokens.ts, cache.ts), roles and RBAC (rbac.ts),
 * the per-request seam (admit.ts) and the error codes to add to the catalogue (errors.ts).
 * See README.md for the rules and how the API, CLI and all-in-one wire it in.
 */
export * from './admit.js';
export * from './cache.js';
export * from './errors.js';
export * from './rbac.js';
export * from './tokens.js';
