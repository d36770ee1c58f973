/**
 * The checkpoint signing key: one Ed25519 key pair per control plane, kept as PEM files in a
 * directory the operator chooses (private key mode 0600, directory 0700). Created on first
 * use; later opens load it. Verifiers only ever need the public key.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';

/** File name of the private key inside the key directory. */
export const PRIVATE_KEY_FILE = 'audit-ed25519.key';
/** File name of the public key inside the key directory (safe to publish). */
export const PUBLIC_KEY_FILE = 'audit-ed25519.pub';

/** A loaded signing key pair. */
export interface AuditKeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** The public key as SPKI PEM, for verifiers. */
  publicKeyPem: string;
  /** First 16 hex digits of sha256(SPKI DER): names the key in each checkpoint. */
  keyId: string;
}

/** The key id of a public key (see AuditKeyPair.keyId). Any caller may use it. */
export function keyIdOf(publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex').slice(0, 16);
}

/** Parse a public key given as a KeyObject or as SPKI PEM text. Throws on anything but Ed25519. */
export function toPublicKey(key: KeyObject | string): KeyObject {
  const k = typeof key === 'string' ? createPublicKey(key) : key;
  if (k.type !== 'public' || k.asymmetricKeyType !== 'ed25519') throw new TypeError('audit public key must be an Ed25519 public key');
  return k;
}

function isErrno(e: unknown, code: string): boolean {
  return e instanceof Error && (e as NodeJS.ErrnoException).code === code; // Node fs errors carry a string code
}

/**
 * Load the key pair from `dir`, creating the directory and a fresh pair when there is none.
 * Safe against two processes starting at once: the private key is created with O_EXCL and the
 * loser reads the winner's key. A private key readable by group or others is tightened to
 * 0600 with a warning. Call at startup, before the log is used.
 */
export async function loadOrCreateKeyPair(dir: string, logger?: Logger): Promise<AuditKeyPair> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const privPath = join(dir, PRIVATE_KEY_FILE);
  const pubPath = join(dir, PUBLIC_KEY_FILE);
  let privPem: string;
  try {
    privPem = await readFile(privPath, 'utf8');
  } catch (e) {
    if (!isErrno(e, 'ENOENT')) throw e;
    const pair = generateKeyPairSync('ed25519');
    const pem = pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    try {
      await writeFile(privPath, pem, { mode: 0o600, flag: 'wx' });
      logger?.info({ dir }, 'audit signing key created');
      privPem = pem;
    } catch (e2) {
      if (!isErrno(e2, 'EEXIST')) throw e2;
      privPem = await readFile(privPath, 'utf8'); // another process won the race; use its key
    }
  }
  const st = await stat(privPath);
  if ((st.mode & 0o077) !== 0) {
    logger?.warn({ path: privPath, mode: (st.mode & 0o777).toString(8) }, 'audit private key was readable by others; setting mode 0600');
    await chmod(privPath, 0o600);
  }
  const privateKey = createPrivateKey(privPem);
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new TypeError(`${privPath} is not an Ed25519 private key`);
  const publicKey = createPublicKey(privateKey);
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  // The public file is derived data: (re)write it when missing or different, never trust it for signing.
  let existingPub: string | undefined;
  try {
    existingPub = await readFile(pubPath, 'utf8');
  } catch (e) {
    if (!isErrno(e, 'ENOENT')) throw e;
  }
  if (existingPub !== publicKeyPem) await writeFile(pubPath, publicKeyPem, { mode: 0o644 });
  return { privateKey, publicKey, publicKeyPem, keyId: keyIdOf(publicKey) };
}
