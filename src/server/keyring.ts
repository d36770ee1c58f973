/**
 * Which keyring a server runs with: the cluster's key-encryption keys, never in the store.
 * One source, in this order of preference, and only one may be given:
 * - `--keyring FILE` (or its older name `--secrets-keyring FILE`): `keyId:base64key` lines,
 *   the first the primary, mode 0600;
 * - the `CARAPACE_KEYRING` environment variable: the same lines (newline, comma or space
 *   separated), for servers whose secrets come from the environment;
 * - neither: STATE_DIR/keyring, made (0600) on first start, logged; a state dir of an
 *   all-in-one from before keeps its `secrets.keyring`.
 * Every server of one store must be given the same keyring: one with a keyring that lacks the
 * key the CA is sealed with refuses to start (CARAPACE_E_KEYRING_KEY_MISSING).
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import { ensureKeyringFile, keyringFromText, loadKeyring, type Keyring } from '../keyring/keyring.js';

/** The environment variable a server reads its keyring's text from. */
export const KEYRING_ENV = 'CARAPACE_KEYRING';

/** The keyring file a state dir keeps when none is given: `keyring`, or an older all-in-one's `secrets.keyring`. */
export function defaultKeyringFile(stateDir: string): string {
  const legacy = join(stateDir, 'secrets.keyring');
  return existsSync(legacy) ? legacy : join(stateDir, 'keyring');
}

export interface KeyringChoice {
  /** `--keyring FILE`. */
  keyring?: string;
  /** `--secrets-keyring FILE` (the older name of `--keyring`). */
  secretsKeyring?: string;
  /** The environment (default process.env): CARAPACE_KEYRING. */
  env?: NodeJS.ProcessEnv;
  stateDir: string;
  logger?: Logger;
}

/**
 * Loads the keyring a server was given, or makes STATE_DIR/keyring (see the file's comment).
 * CARAPACE_E_BAD_KEYRING (with the flag or variable as `details` path) for a malformed,
 * unreadable or group-readable one, or for two sources at once.
 */
export async function serverKeyring(o: KeyringChoice): Promise<Keyring> {
  const env = o.env ?? process.env;
  const text = env[KEYRING_ENV];
  const given = [o.keyring !== undefined ? '--keyring' : undefined, o.secretsKeyring !== undefined ? '--secrets-keyring' : undefined, text !== undefined && text !== '' ? KEYRING_ENV : undefined].filter((g): g is string => g !== undefined);
  if (given.length > 1) {
    const message = `give the keyring once: ${given.join(' and ')} are both set`;
    throw new CarapaceError('CARAPACE_E_BAD_KEYRING', message, [{ path: given[1] ?? '', message }]);
  }
  if (o.keyring !== undefined) return loadKeyring(o.keyring, '--keyring');
  if (o.secretsKeyring !== undefined) return loadKeyring(o.secretsKeyring, '--secrets-keyring');
  if (text !== undefined && text !== '') return keyringFromText(text, KEYRING_ENV);
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
  const file = defaultKeyringFile(o.stateDir);
  const { keyring, created } = await ensureKeyringFile(file, '--keyring');
  if (created) o.logger?.warn({ file, keyId: keyring.primary }, 'keyring created: it seals the CA key, audit signing keys and secrets; every server of this store must be given this same file (--keyring), and keep a copy off this machine');
  return keyring;
}
