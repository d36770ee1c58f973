/**
 * Encryption of Secrets at rest: AES-256-GCM (node:crypto) under a cluster key that is never
 * in the store. Keys come from a keyring file given to the servers (`--secrets-keyring FILE`):
 * one `keyId:base64key` per line, the first line the primary key (new secrets are sealed
 * with it), the others kept to open what older keys sealed until `carapace secrets
 * reencrypt` has moved everything to the primary.
 *
 * A sealed blob names its key id, and its authenticated additional data binds it to its
 * tenant and name: a blob copied onto another secret's record (or another tenant's) fails
 * authentication instead of decrypting.
 */
import { chmod, open as openFile, readFile, stat, writeFile } from 'node:fs/promises';
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { CarapaceError } from '../model/errors.js';

/** A key id as written in the keyring file and in sealed blobs. */
const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;
const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** The cluster's secret keys: the primary seals, every key opens. */
export interface Keyring {
  primary: string;
  /** Key id to 32-byte key, primary included. */
  keys: ReadonlyMap<string, Buffer>;
}

/** A Secret's values as stored: the key id, a fresh 96-bit IV, and ciphertext followed by the GCM tag (base64). */
export interface SealedBlob {
  v: 1;
  keyId: string;
  iv: string;
  data: string;
}

function badKeyring(message: string): CarapaceError {
  return new CarapaceError('CARAPACE_E_BAD_KEYRING', message);
}

/** Parses a keyring file's text; `where` names the file in errors. Blank lines and `#` comments are skipped. */
export function parseKeyring(text: string, where = 'keyring'): Keyring {
  const keys = new Map<string, Buffer>();
  let primary: string | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = line.indexOf(':');
    const id = at < 0 ? '' : line.slice(0, at);
    const b64 = at < 0 ? '' : line.slice(at + 1);
    if (!KEY_ID.test(id)) throw badKeyring(`${where} line ${i + 1}: must be keyId:base64key with a key id of 1 to 64 of [A-Za-z0-9._-]`);
    const key = Buffer.from(b64, 'base64');
    if (key.length !== KEY_BYTES || key.toString('base64') !== b64) throw badKeyring(`${where} line ${i + 1}: key "${id}" must be ${KEY_BYTES} bytes in base64 (e.g. from \`carapace secrets new-key\`)`);
    if (keys.has(id)) throw badKeyring(`${where} line ${i + 1}: key id "${id}" appears twice`);
    keys.set(id, key);
    primary ??= id;
  });
  if (primary === undefined) throw badKeyring(`${where}: holds no key`);
  return { primary, keys };
}

/** Reads a keyring file; refuses one that group or others may read (it must be 0600 or stricter). */
export async function loadKeyring(file: string): Promise<Keyring> {
  let mode: number;
  let text: string;
  try {
    mode = (await stat(file)).mode;
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw badKeyring(`cannot read the secrets keyring ${file}: ${(e as Error).message}`); // fs errors are Errors
  }
  if ((mode & 0o077) !== 0) throw badKeyring(`the secrets keyring ${file} is readable by group or others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
  return parseKeyring(text, file);
}

/** A fresh keyring line: a new 256-bit key with an id naming when it was made. */
export function newKeyLine(now = new Date()): string {
  const id = `k${now.toISOString().slice(0, 10).replaceAll('-', '')}-${randomBytes(3).toString('hex')}`;
  return `${id}:${randomBytes(KEY_BYTES).toString('base64')}`;
}

/**
 * Creates a keyring file holding one new key, unless the file exists (then it is only
 * loaded). For `carapace up`, whose state dir keeps the key beside the store.
 */
export async function ensureKeyring(file: string): Promise<Keyring> {
  try {
    const fh = await openFile(file, 'wx', 0o600);
    try {
      await fh.writeFile(`${newKeyLine()}\n`);
    } finally {
      await fh.close();
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e; // fs errors carry a code
  }
  return loadKeyring(file);
}

/**
 * Adds a new key as the first line (the new primary) of a keyring file, keeping the others,
 * and returns its id. The first step of a rotation: then restart the servers, run
 * `carapace secrets reencrypt`, and only then remove the old key's line.
 */
export async function addPrimaryKey(file: string, now = new Date()): Promise<string> {
  let old = '';
  const exists = await stat(file).then(
    () => true,
    () => false,
  );
  if (exists) {
    await loadKeyring(file); // refuses a malformed or group-readable file before it is changed
    old = await readFile(file, 'utf8');
  }
  const line = newKeyLine(now);
  await writeFile(file, `${line}\n${old}`, { mode: 0o600 });
  await chmod(file, 0o600);
  return line.slice(0, line.indexOf(':'));
}

/** The additional data that binds a sealed blob to its secret. */
function aadOf(tenant: string, name: string): Buffer {
  return Buffer.from(`carapace/secret/v1\u0000${tenant}\u0000${name}`, 'utf8');
}

/** Encrypts a secret's data under the primary key, bound to `tenant`/`name`. */
export function sealSecret(keyring: Keyring, tenant: string, name: string, data: Record<string, string>): SealedBlob {
  const key = keyring.keys.get(keyring.primary);
  if (!key) throw new CarapaceError('CARAPACE_E_INTERNAL', 'the keyring has no primary key');
  const iv = randomBytes(IV_BYTES);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  c.setAAD(aadOf(tenant, name));
  const body = Buffer.concat([c.update(JSON.stringify(data), 'utf8'), c.final(), c.getAuthTag()]);
  return { v: 1, keyId: keyring.primary, iv: iv.toString('base64'), data: body.toString('base64') };
}

/** True for a value shaped like a SealedBlob (stored records are checked before use). */
export function isSealedBlob(v: unknown): v is SealedBlob {
  const b = v as Partial<SealedBlob> | null; // each field checked below
  return typeof b === 'object' && b !== null && b.v === 1 && typeof b.keyId === 'string' && typeof b.iv === 'string' && typeof b.data === 'string';
}

/**
 * Decrypts a secret's sealed data; CARAPACE_E_SECRET_UNDECRYPTABLE when its key is not in
 * the keyring, or the blob was altered or belongs to another secret. The message never holds
 * any of the data.
 */
export function openSecret(keyring: Keyring, tenant: string, name: string, blob: SealedBlob): Record<string, string> {
  const key = keyring.keys.get(blob.keyId);
  if (!key) throw new CarapaceError('CARAPACE_E_SECRET_UNDECRYPTABLE', `secret "${name}" in tenant "${tenant}" is sealed with key "${blob.keyId}", which is not in this server's keyring (keys: ${[...keyring.keys.keys()].join(', ')})`);
  const body = Buffer.from(blob.data, 'base64');
  const iv = Buffer.from(blob.iv, 'base64');
  try {
    if (body.length < TAG_BYTES || iv.length !== IV_BYTES) throw new Error('truncated');
    const d = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
    d.setAAD(aadOf(tenant, name));
    d.setAuthTag(body.subarray(body.length - TAG_BYTES));
    const plain = Buffer.concat([d.update(body.subarray(0, body.length - TAG_BYTES)), d.final()]).toString('utf8');
    return JSON.parse(plain) as Record<string, string>; // authenticated: written by sealSecret from such a record
  } catch {
    throw new CarapaceError('CARAPACE_E_SECRET_UNDECRYPTABLE', `secret "${name}" in tenant "${tenant}" does not decrypt with key "${blob.keyId}": the stored blob was altered or belongs to another secret`);
  }
}

/**
 * A non-reversible fingerprint of secret data for audit records: HMAC-SHA256 under a key
 * derived from the primary key (so a guessable value cannot be confirmed from the audit log
 * without the keyring), 16 hex digits. It changes when the primary key does.
 */
export function secretFingerprint(keyring: Keyring, data: Record<string, string>): string {
  const key = keyring.keys.get(keyring.primary) ?? Buffer.alloc(0);
  const fpKey = Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), 'carapace/secret-fingerprint/v1', 32));
  const canonical = JSON.stringify(Object.keys(data).sort().map((k) => [k, data[k]]));
  return `hmac-sha256:${createHmac('sha256', fpKey).update(canonical).digest('hex').slice(0, 16)}`;
}
