/**
 * The checkpoint signing key: one Ed25519 key pair per control plane, kept in a directory
 * the operator chooses (directory 0700). Given the cluster keyring (servers always are), the
 * private key file is sealed with it (`audit-ed25519.key.sealed`, mode 0600): a copy of the
 * state directory alone does not let anyone sign checkpoints. A clear key file from before
 * (`audit-ed25519.key`) is sealed on the next open and removed; a key sealed with an older key
 * of the keyring is re-sealed under the primary (rotation). Without a keyring (tests, tools)
 * the private key is a clear PKCS#8 PEM file (0600). Created on first use; later opens load
 * it. Verifiers only ever need the public key.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { chmod, link, mkdir, open as openFile, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import { openKey, sealKey, type Keyring, type SealedBlob } from '../keyring/keyring.js';

/** File name of the private key inside the key directory, in clear (no keyring, or from before keys were sealed). */
export const PRIVATE_KEY_FILE = 'audit-ed25519.key';
/** File name of the private key sealed with the keyring (JSON of a sealed blob). */
export const SEALED_KEY_FILE = 'audit-ed25519.key.sealed';
/** File name of the public key inside the key directory (safe to publish). */
export const PUBLIC_KEY_FILE = 'audit-ed25519.pub';
/** What `sealKey` binds an audit signing key to. */
export const AUDIT_KEY_PURPOSE = 'audit-signing-key';

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

async function readIfAny(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if (isErrno(e, 'ENOENT')) return undefined;
    throw e;
  }
}

/** Writes `text` to a fresh temporary file beside `path` (0600, synced) and returns its name. */
async function writeTemp(path: string, text: string): Promise<string> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fh = await openFile(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return tmp;
}

/** Creates `path` holding `text` whole, or returns false when it exists (a hard link is atomic and fails on an existing name). */
async function createWhole(path: string, text: string): Promise<boolean> {
  const tmp = await writeTemp(path, text);
  try {
    await link(tmp, path);
    return true;
  } catch (e) {
    if (isErrno(e, 'EEXIST')) return false;
    throw e;
  } finally {
    await unlink(tmp).catch(() => undefined); // the link (if any) keeps the content
  }
}

/** Overwrites a clear key file with zeros before removing it (best effort against its bytes lingering on disk). */
async function shred(path: string): Promise<void> {
  try {
    const size = (await stat(path)).size;
    const fh = await openFile(path, 'r+');
    try {
      await fh.write(Buffer.alloc(size), 0, size, 0);
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (e) {
    if (!isErrno(e, 'ENOENT')) throw e;
  }
  await unlink(path).catch((e: unknown) => {
    if (!isErrno(e, 'ENOENT')) throw e;
  });
}

/** The sealed blob in a sealed key file, or CARAPACE_E_SEALED_KEY_INVALID. */
function parseSealed(text: string, path: string): unknown {
  try {
    return JSON.parse(text) as unknown; // checked by openKey
  } catch {
    throw new CarapaceError('CARAPACE_E_SEALED_KEY_INVALID', `${path} is not a sealed key (not JSON): restore it from a backup, or remove it to make a new audit signing key`);
  }
}

/**
 * The private key PEM, sealed in `dir` with `keyring`: opened from the sealed file; else the
 * clear file of an older start sealed (then removed), else a new key sealed. Concurrent opens
 * agree on one key (the sealed file is created whole or not at all). A sealed file under an
 * older key of the keyring is re-sealed under the primary.
 */
async function sealedPrivateKey(dir: string, keyring: Keyring, logger?: Logger): Promise<string> {
  const sealedPath = join(dir, SEALED_KEY_FILE);
  const clearPath = join(dir, PRIVATE_KEY_FILE);
  const what = `the audit signing key ${sealedPath}`;
  let text = await readIfAny(sealedPath);
  if (text === undefined) {
    const clear = await readIfAny(clearPath);
    const pem = clear ?? generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    if (clear !== undefined) checkEd25519(clear, clearPath);
    if (await createWhole(sealedPath, `${JSON.stringify(sealKey(keyring, AUDIT_KEY_PURPOSE, pem))}\n`)) {
      if (clear !== undefined) logger?.info({ dir, keyId: keyring.primary }, 'audit signing key sealed with the keyring; the clear key file is removed');
      else logger?.info({ dir, keyId: keyring.primary }, 'audit signing key created (sealed with the keyring)');
    }
    text = await readFile(sealedPath, 'utf8'); // ours, or the one another process made first
  }
  const blob = parseSealed(text, sealedPath);
  const pem = openKey(keyring, AUDIT_KEY_PURPOSE, blob, what);
  // Left by an older start (or a crash between sealing and removing it): the sealed file holds
  // the same key, so the clear one goes. A different clear key is someone's: left, with a warning.
  const leftover = await readIfAny(clearPath);
  if (leftover !== undefined) {
    const same = (() => {
      try {
        return createPrivateKey(leftover).export({ type: 'pkcs8', format: 'der' }).equals(createPrivateKey(pem).export({ type: 'pkcs8', format: 'der' }));
      } catch {
        return false;
      }
    })();
    if (same) await shred(clearPath);
    else logger?.warn({ path: clearPath }, 'a clear private key file that is not the sealed audit key is left in the key directory; remove it if it is not needed');
  }
  const sealedWith = (blob as SealedBlob).keyId; // openKey refused anything but a SealedBlob
  if (sealedWith !== keyring.primary) {
    const tmp = await writeTemp(sealedPath, `${JSON.stringify(sealKey(keyring, AUDIT_KEY_PURPOSE, pem))}\n`);
    await rename(tmp, sealedPath);
    logger?.info({ dir, from: sealedWith, to: keyring.primary }, 'audit signing key re-sealed under the primary key');
  }
  return pem;
}

function checkEd25519(pem: string, path: string): KeyObject {
  let k: KeyObject;
  try {
    k = createPrivateKey(pem);
  } catch {
    throw new TypeError(`${path} is not a private key`);
  }
  if (k.asymmetricKeyType !== 'ed25519') throw new TypeError(`${path} is not an Ed25519 private key`);
  return k;
}

/**
 * Load the key pair from `dir`, creating the directory and a fresh pair when there is none.
 * With `keyring` the private key is kept sealed (see the file's comment; errors:
 * CARAPACE_E_KEYRING_KEY_MISSING when the keyring lacks the key it was sealed with,
 * CARAPACE_E_SEALED_KEY_INVALID when the file is damaged); without one, in clear, and a
 * sealed file is refused. Safe against two processes starting at once: the loser reads the
 * winner's key. A key file readable by group or others is tightened to 0600 with a warning.
 * Call at startup, before the log is used.
 */
export async function loadOrCreateKeyPair(dir: string, logger?: Logger, keyring?: Keyring): Promise<AuditKeyPair> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const privPath = keyring ? join(dir, SEALED_KEY_FILE) : join(dir, PRIVATE_KEY_FILE);
  const pubPath = join(dir, PUBLIC_KEY_FILE);
  let privPem: string;
  if (keyring) {
    privPem = await sealedPrivateKey(dir, keyring, logger);
  } else {
    if ((await readIfAny(join(dir, SEALED_KEY_FILE))) !== undefined) throw new CarapaceError('CARAPACE_E_KEYRING_KEY_MISSING', `the audit signing key in ${dir} is sealed with a keyring, and none was given`);
    const existing = await readIfAny(privPath);
    if (existing !== undefined) privPem = existing;
    else {
      const pem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      try {
        await writeFile(privPath, pem, { mode: 0o600, flag: 'wx' });
        logger?.info({ dir }, 'audit signing key created');
        privPem = pem;
      } catch (e2) {
        if (!isErrno(e2, 'EEXIST')) throw e2;
        privPem = await readFile(privPath, 'utf8'); // another process won the race; use its key
      }
    }
  }
  const st = await stat(privPath);
  if ((st.mode & 0o077) !== 0) {
    logger?.warn({ path: privPath, mode: (st.mode & 0o777).toString(8) }, 'audit private key was readable by others; setting mode 0600');
    await chmod(privPath, 0o600);
  }
  const privateKey = checkEd25519(privPem, privPath);
  const publicKey = createPublicKey(privateKey);
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  // The public file is derived data: (re)write it when missing or different, never trust it for signing.
  const existingPub = await readIfAny(pubPath);
  if (existingPub !== publicKeyPem) await writeFile(pubPath, publicKeyPem, { mode: 0o644 });
  return { privateKey, publicKey, publicKeyPem, keyId: keyIdOf(publicKey) };
}
