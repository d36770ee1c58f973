import { mkdtemp, readFile, rm, stat, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isCarapaceError } from '../model/errors.js';
import { addPrimaryKey, ensureKeyring, ensureKeyringFile, keyringFromText, loadKeyring, newKeyLine, openKey, openSecret, parseKeyring, sealKey, sealSecret, secretFingerprint, type Keyring } from './keyring.js';

const ringOf = (...lines: string[]): Keyring => parseKeyring(lines.join('\n'));
const data = { password: 'hunter2-very-secret', 'tls.key': '-----BEGIN KEY-----\nabc\n' };

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-keyring-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return isCarapaceError(e) ? e.code : `not a CarapaceError: ${String(e)}`;
  }
  return undefined;
}

describe('secret box (AES-256-GCM)', () => {
  const a = newKeyLine();
  const b = newKeyLine();

  it('round-trips, with a fresh IV each time, and names its key id', () => {
    const ring = ringOf(a);
    const s1 = sealSecret(ring, 'acme', 'db', data);
    const s2 = sealSecret(ring, 'acme', 'db', data);
    expect(s1.keyId).toBe(a.split(':')[0]);
    expect(s1.iv).not.toBe(s2.iv);
    expect(s1.data).not.toBe(s2.data);
    expect(JSON.stringify(s1)).not.toContain('hunter2');
    expect(Buffer.from(s1.data, 'base64').toString('latin1')).not.toContain('hunter2');
    expect(openSecret(ring, 'acme', 'db', s1)).toEqual(data);
  });

  it('refuses a blob under a key the keyring lacks, or under the wrong key material', () => {
    const sealed = sealSecret(ringOf(a), 'acme', 'db', data);
    expect(codeOf(() => openSecret(ringOf(b), 'acme', 'db', sealed))).toBe('CARAPACE_E_SECRET_UNDECRYPTABLE');
    // Same key id, other key bytes: authentication fails.
    const impostor = `${a.split(':')[0]}:${b.split(':')[1]}`;
    expect(codeOf(() => openSecret(ringOf(impostor), 'acme', 'db', sealed))).toBe('CARAPACE_E_SECRET_UNDECRYPTABLE');
  });

  it('refuses a tampered blob (any flipped byte, a truncated one, another IV)', () => {
    const ring = ringOf(a);
    const sealed = sealSecret(ring, 'acme', 'db', data);
    const body = Buffer.from(sealed.data, 'base64');
    for (const i of [0, Math.floor(body.length / 2), body.length - 1]) {
      const t = Buffer.from(body);
      t[i] = (t[i] ?? 0) ^ 1;
      expect(codeOf(() => openSecret(ring, 'acme', 'db', { ...sealed, data: t.toString('base64') }))).toBe('CARAPACE_E_SECRET_UNDECRYPTABLE');
    }
    expect(codeOf(() => openSecret(ring, 'acme', 'db', { ...sealed, data: body.subarray(0, 10).toString('base64') }))).toBe('CARAPACE_E_SECRET_UNDECRYPTABLE');
    expect(codeOf(() => openSecret(ring, 'acme', 'db', { ...sealed, iv: Buffer.alloc(12).toString('base64') }))).toBe('CARAPACE_E_SECRET_UNDECRYPTABLE');
  });

  it('refuses a blob moved to another secret or another tenant (bound by its additional data)', () => {
    const ring = ringOf(a);
    const sealed = sealSecret(ring, 'acme', 'db', data);
    expect(codeOf(() => openSecret(ring, 'acme', 'db2', sealed))).toBe('CARAPACE_E_SECRET_UNDECRYPTABLE');
    expect(codeOf(() => openSecret(ring, 'other', 'db', sealed))).toBe('CARAPACE_E_SECRET_UNDECRYPTABLE');
    // The separator is not ambiguous: "ac"+"med/b" is not "acme"+"db".
    expect(codeOf(() => openSecret(ring, 'acmed', 'b', sealed))).toBe('CARAPACE_E_SECRET_UNDECRYPTABLE');
  });

  it('opens blobs of every key in the keyring and seals with the first (rotation)', () => {
    const old = sealSecret(ringOf(a), 'acme', 'db', data);
    const rotated = ringOf(b, a);
    expect(openSecret(rotated, 'acme', 'db', old)).toEqual(data);
    expect(sealSecret(rotated, 'acme', 'db', data).keyId).toBe(b.split(':')[0]);
  });

  it('fingerprints without the value: keyed, stable, different for different data', () => {
    const ring = ringOf(a);
    const f = secretFingerprint(ring, data);
    expect(f).toMatch(/^hmac-sha256:[0-9a-f]{16}$/);
    expect(secretFingerprint(ring, { ...data })).toBe(f);
    expect(secretFingerprint(ring, { ...data, password: 'other' })).not.toBe(f);
    expect(secretFingerprint(ringOf(b), data)).not.toBe(f);
  });
});

describe('keyring files', () => {
  it('parses keyId:base64key lines, first is primary; refuses malformed ones with CARAPACE_E_BAD_KEYRING', () => {
    const a = newKeyLine();
    const b = newKeyLine();
    const ring = parseKeyring(`# comment\n\n${a}\n${b}\n`);
    expect(ring.primary).toBe(a.split(':')[0]);
    expect(ring.keys.size).toBe(2);
    for (const bad of ['', 'nokey', `bad id!:${a.split(':')[1]}`, 'k1:c2hvcnQ=', `${a}\n${a}`]) expect(codeOf(() => parseKeyring(bad))).toBe('CARAPACE_E_BAD_KEYRING');
  });

  it('creates a 0600 keyring once, refuses a group-readable one, and adds a new primary key in front', async () => {
    const file = join(dir, 'ring');
    const first = await ensureKeyring(file);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await ensureKeyring(file)).primary).toBe(first.primary);
    const id = await addPrimaryKey(file);
    const after = await loadKeyring(file);
    expect(after.primary).toBe(id);
    expect([...after.keys.keys()]).toEqual([id, first.primary]);
    await chmod(file, 0o644);
    await expect(loadKeyring(file)).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', details: [{ path: '--keyring' }] });
    await expect(loadKeyring(file, '--secrets-keyring')).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', message: expect.stringMatching(/readable by group or others \(mode 644\)/), details: [{ path: '--secrets-keyring' }] });
    await chmod(file, 0o640);
    await expect(loadKeyring(file)).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', message: expect.stringMatching(/mode 640/) });
    await expect(ensureKeyringFile(file)).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING' });
    await chmod(file, 0o600);
    expect((await ensureKeyringFile(file)).created).toBe(false);
    const fresh = join(dir, 'fresh');
    const made = await addPrimaryKey(fresh);
    expect((await readFile(fresh, 'utf8')).startsWith(`${made}:`)).toBe(true);
    await writeFile(join(dir, 'junk'), 'junk\n', { mode: 0o600 });
    await expect(loadKeyring(join(dir, 'junk'))).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING' });
    await expect(loadKeyring(join(dir, 'missing'))).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING' });
  });
});

describe('sealed keys', () => {
  const a = newKeyLine();
  const b = newKeyLine();
  const pem = '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIExample\n-----END PRIVATE KEY-----\n';

  it('seals a key under the primary, bound to its purpose; opens with any key of the ring', () => {
    const blob = sealKey(ringOf(a), 'pki/ca', pem);
    expect(blob.keyId).toBe(a.split(':')[0]);
    expect(JSON.stringify(blob)).not.toContain('PRIVATE KEY');
    expect(openKey(ringOf(b, a), 'pki/ca', blob, 'the CA key')).toBe(pem);
    // Another purpose (a CA blob put in an audit key file) does not open.
    expect(() => openKey(ringOf(a), 'audit-signing-key', blob, 'the audit key')).toThrow(expect.objectContaining({ code: 'CARAPACE_E_SEALED_KEY_INVALID' }));
  });

  it('names the missing key id when the keyring lacks it, and refuses altered or malformed blobs', () => {
    const blob = sealKey(ringOf(a), 'pki/ca', pem);
    const id = a.split(':')[0] ?? '';
    let err: unknown;
    try {
      openKey(ringOf(b), 'pki/ca', blob, 'the CA key');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'CARAPACE_E_KEYRING_KEY_MISSING', details: [{ path: 'keyring' }] });
    expect((err as Error).message).toContain(`sealed with key "${id}"`);
    const body = Buffer.from(blob.data, 'base64');
    body[0] = (body[0] ?? 0) ^ 1;
    expect(codeOf(() => openKey(ringOf(a), 'pki/ca', { ...blob, data: body.toString('base64') }, 'x'))).toBe('CARAPACE_E_SEALED_KEY_INVALID');
    expect(codeOf(() => openKey(ringOf(a), 'pki/ca', { ...blob, iv: 'AAAA' }, 'x'))).toBe('CARAPACE_E_SEALED_KEY_INVALID');
    for (const bad of [undefined, null, 'text', { v: 2, keyId: id, iv: blob.iv, data: blob.data }, { v: 1, keyId: id }]) expect(codeOf(() => openKey(ringOf(a), 'pki/ca', bad, 'x'))).toBe('CARAPACE_E_SEALED_KEY_INVALID');
  });

  it('reads a keyring from a variable, lines separated by newlines, commas or spaces; refuses a malformed one naming the variable', () => {
    const ring = keyringFromText(`${a}, ${b}`, 'CARAPACE_KEYRING');
    expect([...ring.keys.keys()]).toEqual([a.split(':')[0], b.split(':')[0]]);
    expect(keyringFromText(`${a}\n${b}\n`, 'CARAPACE_KEYRING').primary).toBe(a.split(':')[0]);
    let err: unknown;
    try {
      keyringFromText('k1:short', 'CARAPACE_KEYRING');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'CARAPACE_E_BAD_KEYRING', details: [{ path: 'CARAPACE_KEYRING' }] });
    expect((err as Error).message).toMatch(/^CARAPACE_KEYRING line 1: key "k1" must be 32 bytes/);
  });
});
