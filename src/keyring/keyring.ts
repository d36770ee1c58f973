/**
 * The cluster keyring and what it seals: AES-256-GCM (node:crypto) under key-encryption keys
 * that are never in the store. Keys come from a keyring file given to the servers
 * (`--keyring FILE`, or its text in CARAPACE_KEYRING; `--secrets-keyring` is the older name):
 * one `keyId:base64key` per line, the first line the primary key (everything is sealed with
 * it), the others kept to open what older keys sealed until `carapace keys reencrypt` has
 * moved everything to the primary.
 *
 * Sealed with it: Secrets' values (bound to their tenant and name), the cluster CA's private
 * key (`pki/ca`) and each server's audit signing key (its key file). A sealed blob names its
 * key id, and its authenticated additional data binds it to its purpose: a blob copied onto
 * another record (another secret's, another tenant's, the CA's) fails authentication instead
 * of decrypting.
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

/** Where a keyring came from, for errors: the flag or variable (the field path) and the file. */
export interface KeyringSource {
  /** `--keyring`, `--secrets-keyring` or `CARAPACE_KEYRING`. */
  path: string;
  /** The file, or the variable's name. */
  where: string;
}

function badKeyring(message: string, path = 'keyring'): CarapaceError {
  return new CarapaceError('CARAPACE_E_BAD_KEYRING', message, [{ path, message }]);
}

/** Parses a keyring file's text; `where` names the file in errors. Blank lines and `#` comments are skipped. */
export function parseKeyring(text: string, where = 'keyring', path = 'keyring'): Keyring {
  const keys = new Map<string, Buffer>();
  let primary: string | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = line.indexOf(':');
    const id = at < 0 ? '' : line.slice(0, at);
    const b64 = at < 0 ? '' : line.slice(at + 1);
    if (!KEY_ID.test(id)) throw badKeyring(`${where} line ${i + 1}: must be keyId:base64key with a key id of 1 to 64 of [A-Za-z0-9._-]`, path);
    const key = Buffer.from(b64, 'base64');
    if (key.length !== KEY_BYTES || key.toString('base64') !== b64) throw badKeyring(`${where} line ${i + 1}: key "${id}" must be ${KEY_BYTES} bytes in base64 (e.g. from \`carapace keys rotate\`)`, path);
    if (keys.has(id)) throw badKeyring(`${where} line ${i + 1}: key id "${id}" appears twice`, path);
    keys.set(id, key);
    primary ??= id;
  });
  if (primary === undefined) throw badKeyring(`${where}: holds no key`, path);
  return { primary, keys };
}

/**
 * Reads a keyring file; refuses one that group or others may read (it must be 0600 or
 * stricter). `flag` names the option it came from in errors (their field path).
 */
export async function loadKeyring(file: string, flag = '--keyring'): Promise<Keyring> {
  let mode: number;
  let text: string;
  try {
    mode = (await stat(file)).mode;
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw badKeyring(`cannot read the keyring ${file}: ${(e as Error).message}`, flag); // fs errors are Errors
  }
  if ((mode & 0o077) !== 0) throw badKeyring(`the keyring ${file} is readable by group or others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`, flag);
  return parseKeyring(text, file, flag);
}

/** A fresh keyring line: a new 256-bit key with an id naming when it was made. */
export function newKeyLine(now = new Date()): string {
  const id = `k${now.toISOString().slice(0, 10).replaceAll('-', '')}-${randomBytes(3).toString('hex')}`;
  return `${id}:${randomBytes(KEY_BYTES).toString('base64')}`;
}

/**
 * Parses a keyring given as text in an environment variable (`CARAPACE_KEYRING` for servers):
 * the file's lines, which may also be separated by commas or spaces (one-line variables).
 */
export function keyringFromText(text: string, variable: string): Keyring {
  return parseKeyring(text.replace(/[,\s]+/g, '\n'), variable, variable);
}

/**
 * Creates a keyring file holding one new key, unless the file exists (then it is only
 * loaded); says whether it made it. For servers given no keyring: the state dir keeps it.
 */
export async function ensureKeyringFile(file: string, flag = '--keyring'): Promise<{ keyring: Keyring; created: boolean }> {
  let created = false;
  try {
    const fh = await openFile(file, 'wx', 0o600);
    try {
      await fh.writeFile(`${newKeyLine()}\n`);
      await fh.sync();
      created = true;
    } finally {
      await fh.close();
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e; // fs errors carry a code
  }
  return { keyring: await loadKeyring(file, flag), created };
}

/** `ensureKeyringFile` without the news (tests, tools). */
export async function ensureKeyring(file: string): Promise<Keyring> {
  return (await ensureKeyringFile(file)).keyring;
}

/**
 * Adds a new key as the first line (the new primary) of a keyring file, keeping the others,
 * and returns its id. The first step of a rotation (`carapace keys rotate`): then give the
 * file to every server and restart them (each re-seals its audit key file at start), run
 * `carapace keys reencrypt` (the CA key and the Secrets), and only then remove the old key's
 * line.
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

/** AES-256-GCM under the primary key with `aad`: the one sealing of everything the keyring protects. */
function seal(keyring: Keyring, aad: Buffer, plain: Buffer): SealedBlob {
  const key = keyring.keys.get(keyring.primary);
  if (!key) throw new CarapaceError('CARAPACE_E_INTERNAL', 'the keyring has no primary key');
  const iv = randomBytes(IV_BYTES);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  c.setAAD(aad);
  const body = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
  return { v: 1, keyId: keyring.primary, iv: iv.toString('base64'), data: body.toString('base64') };
}

/** The plaintext of a blob sealed with `aad`, or undefined when it does not authenticate (altered, or sealed for another purpose). The key must be in the keyring. */
function unseal(key: Buffer, aad: Buffer, blob: SealedBlob): Buffer | undefined {
  const body = Buffer.from(blob.data, 'base64');
  const iv = Buffer.from(blob.iv, 'base64');
  try {
    if (body.length < TAG_BYTES || iv.length !== IV_BYTES) return undefined;
    const d = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
    d.setAAD(aad);
    d.setAuthTag(body.subarray(body.length - TAG_BYTES));
    return Buffer.concat([d.update(body.subarray(0, body.length - TAG_BYTES)), d.final()]);
  } catch {
    return undefined;
  }
}

/** The additional data of a key sealed for `purpose` (e.g. `pki/ca`, `audit-signing-key`). */
function keyAad(purpose: string): Buffer {
  return Buffer.from(`carapace/sealed-key/v1\u0000${purpose}`, 'utf8');
}

/**
 * Seals private key material (a PEM) under the primary key, bound to `purpose` (`pki/ca` for
 * the cluster CA, `audit-signing-key` for a server's audit key): a blob moved to another
 * purpose does not open.
 */
export function sealKey(keyring: Keyring, purpose: string, keyPem: string): SealedBlob {
  return seal(keyring, keyAad(purpose), Buffer.from(keyPem, 'utf8'));
}

/**
 * Opens what `sealKey` sealed for `purpose`. CARAPACE_E_KEYRING_KEY_MISSING when its key id
 * is not in the keyring (a server given another keyring than the one that sealed it, or an
 * old key removed before `carapace keys reencrypt`); CARAPACE_E_SEALED_KEY_INVALID when it
 * does not authenticate (altered, or sealed for another purpose). `what` names it in errors.
 */
export function openKey(keyring: Keyring, purpose: string, blob: unknown, what: string): string {
  if (!isSealedBlob(blob)) throw new CarapaceError('CARAPACE_E_SEALED_KEY_INVALID', `${what} is not a sealed key (expected {v: 1, keyId, iv, data})`);
  const key = keyring.keys.get(blob.keyId);
  if (!key) throw new CarapaceError('CARAPACE_E_KEYRING_KEY_MISSING', `${what} is sealed with key "${blob.keyId}", which is not in this server's keyring (keys: ${[...keyring.keys.keys()].join(', ')}): give every server of this store the same keyring file, or put key "${blob.keyId}" back`, [{ path: 'keyring', message: `no key "${blob.keyId}"` }]);
  const plain = unseal(key, keyAad(purpose), blob);
  if (!plain) throw new CarapaceError('CARAPACE_E_SEALED_KEY_INVALID', `${what} does not decrypt with key "${blob.keyId}": it was altered or sealed for something else`);
  return plain.toString('utf8');
}

/** Encrypts a secret's data under the primary key, bound to `tenant`/`name`. */
export function sealSecret(keyring: Keyring, tenant: string, name: string, data: Record<string, string>): SealedBlob {
  return seal(keyring, aadOf(tenant, name), Buffer.from(JSON.stringify(data), 'utf8'));
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
  const plain = unseal(key, aadOf(tenant, name), blob);
  if (!plain) throw new CarapaceError('CARAPACE_E_SECRET_UNDECRYPTABLE', `secret "${name}" in tenant "${tenant}" does not decrypt with key "${blob.keyId}": the stored blob was altered or belongs to another secret`);
  return JSON.parse(plain.toString('utf8')) as Record<string, string>; // authenticated: written by sealSecret from such a record
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
