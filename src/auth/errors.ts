/**
 * The error codes identity and authorisation use. Their rows live in the one catalogue
 * (model/errors.ts); {@link AuthError} carries them with the same wire shape as
 * CarapaceError (`{error: {code, message, details}}`).
 */

import { ERROR_CATALOGUE } from '../model/errors.js';

/** The auth codes' catalogue rows (they live in model/errors.ts, the one catalogue). */
export const AUTH_ERROR_CATALOGUE = {
  CARAPACE_E_UNAUTHENTICATED: ERROR_CATALOGUE.CARAPACE_E_UNAUTHENTICATED,
  CARAPACE_E_FORBIDDEN: ERROR_CATALOGUE.CARAPACE_E_FORBIDDEN,
} as const;

/** The auth error codes, as a list (for the catalogue-uniqueness test and docs). */
export const AUTH_ERROR_CODES = Object.keys(AUTH_ERROR_CATALOGUE) as (keyof typeof AUTH_ERROR_CATALOGUE)[]; // keys of a const object literal

/** One of the codes above. */
export type AuthErrorCode = keyof typeof AUTH_ERROR_CATALOGUE;

/**
 * Thrown by the token functions when the caller may not do something. Same wire shape as
 * CarapaceError, so the API can render it unchanged; once the codes are in ERROR_CATALOGUE
 * the lead may replace it by CarapaceError (the constructor arguments are the same).
 */
export class AuthError extends Error {
  readonly status: number;
  constructor(
    readonly code: AuthErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'AuthError';
    this.status = AUTH_ERROR_CATALOGUE[code].status;
  }

  /** The wire shape used by the API (`ErrorBody` in model/errors.ts). */
  toJSON(): { error: { code: string; message: string; details: { path: string; message: string }[] } } {
    return { error: { code: this.code, message: this.message, details: [] } };
  }
}
