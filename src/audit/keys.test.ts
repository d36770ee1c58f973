/**
 * The audit signing key at rest: given the keyring, the key file is sealed (no PEM on disk),
 * reopens as the same key, is made once by concurrent opens; a clear key file from before is
 * sealed and removed; a key sealed with an older key of the keyring is re-sealed under the
 * primary; a keyring without the sealing key, or a damaged file, is refused with its code.
 */
import { generateKeyPairSync } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newKeyLine, parseKeyring, type SealedBlob } from '../keyring/keyring.js';
import { loadOrCreateKeyPair, PRIVATE_KEY_FILE, SEALED_KEY_FILE } from './keys.js';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-audit-keys-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const oldLine = newKeyLine();
const newLine = newKeyLine();
const idOf = (l: string): string => l.split(':')[0] ?? '';

/** Every byte of every file in `d`. */
async function bytesOf(d: string): Promise<string> {
  const names = await readdir(d);
  return (await Promise.all(names.map((n) => readFile(join(d, n), 'utf8')))).join('\n');
}

describe('audit signing key sealed with the keyring', () => {
  it('is made once, sealed (no private key on disk), and reopens as the same key', async () => {
    const d = join(dir, 'fresh');
    const ring = parseKeyring(oldLine);
    const all = await Promise.all([1, 2, 3].map(() => loadOrCreateKeyPair(d, undefined, ring)));
    expect(new Set(all.map((k) => k.keyId)).size).toBe(1);
    expect((await readdir(d)).sort()).toEqual([SEALED_KEY_FILE, 'audit-ed25519.pub']);
    expect((await stat(join(d, SEALED_KEY_FILE))).mode & 0o777).toBe(0o600);
    const raw = all[0]?.privateKey.export({ format: 'jwk' }).d ?? '';
    const disk = await bytesOf(d);
    expect(disk).not.toContain('PRIVATE KEY');
    expect(disk).not.toContain(raw);
    expect(disk).not.toContain(Buffer.from(raw, 'base64url').toString('base64'));
    expect((await loadOrCreateKeyPair(d, undefined, ring)).keyId).toBe(all[0]?.keyId);
    // Without the keyring the sealed key is not used as if there were none.
    await expect(loadOrCreateKeyPair(d)).rejects.toMatchObject({ code: 'CARAPACE_E_KEYRING_KEY_MISSING' });
  });

  it('seals a clear key file from before and removes it; the key stays the same', async () => {
    const d = join(dir, 'legacy');
    const clear = await loadOrCreateKeyPair(d); // no keyring: the old layout
    expect((await readdir(d)).sort()).toEqual([PRIVATE_KEY_FILE, 'audit-ed25519.pub']);
    const sealed = await loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine));
    expect(sealed.keyId).toBe(clear.keyId);
    expect((await readdir(d)).sort()).toEqual([SEALED_KEY_FILE, 'audit-ed25519.pub']);
    expect(await bytesOf(d)).not.toContain('PRIVATE KEY');
    // A clear copy of the same key (a crash between sealing and removing) goes at the next open; another key is left alone.
    const pem = clear.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    await writeFile(join(d, PRIVATE_KEY_FILE), pem, { mode: 0o600 });
    await loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine));
    expect((await readdir(d)).sort()).toEqual([SEALED_KEY_FILE, 'audit-ed25519.pub']);
    const other = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    await writeFile(join(d, PRIVATE_KEY_FILE), other, { mode: 0o600 });
    expect((await loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine))).keyId).toBe(clear.keyId);
    expect(await readFile(join(d, PRIVATE_KEY_FILE), 'utf8')).toBe(other);
  });

  it('is re-sealed under a new primary key at the next open; then the old key is not needed', async () => {
    const d = join(dir, 'rotate');
    const first = await loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine));
    const blob = (): Promise<SealedBlob> => readFile(join(d, SEALED_KEY_FILE), 'utf8').then((t) => JSON.parse(t) as SealedBlob);
    expect((await blob()).keyId).toBe(idOf(oldLine));
    expect((await loadOrCreateKeyPair(d, undefined, parseKeyring(`${newLine}\n${oldLine}`))).keyId).toBe(first.keyId);
    expect((await blob()).keyId).toBe(idOf(newLine));
    expect((await stat(join(d, SEALED_KEY_FILE))).mode & 0o777).toBe(0o600);
    expect((await loadOrCreateKeyPair(d, undefined, parseKeyring(newLine))).keyId).toBe(first.keyId);
    expect((await readdir(d)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('refuses a keyring without the sealing key (naming it) and a damaged file', async () => {
    const d = join(dir, 'refuse');
    await loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine));
    await expect(loadOrCreateKeyPair(d, undefined, parseKeyring(newLine))).rejects.toMatchObject({ code: 'CARAPACE_E_KEYRING_KEY_MISSING', message: expect.stringContaining(`sealed with key "${idOf(oldLine)}"`) });
    await writeFile(join(d, SEALED_KEY_FILE), 'not json');
    await expect(loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine))).rejects.toMatchObject({ code: 'CARAPACE_E_SEALED_KEY_INVALID' });
    const b = JSON.parse(await readFile(join(dir, 'fresh', SEALED_KEY_FILE), 'utf8')) as SealedBlob;
    await writeFile(join(d, SEALED_KEY_FILE), JSON.stringify({ ...b, data: Buffer.from('x'.repeat(64)).toString('base64') }));
    await expect(loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine))).rejects.toMatchObject({ code: 'CARAPACE_E_SEALED_KEY_INVALID' });
  });

  it('tightens a key file readable by others to 0600', async () => {
    const d = join(dir, 'loose');
    await mkdir(d);
    await writeFile(join(d, PRIVATE_KEY_FILE), generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
    await chmod(join(d, PRIVATE_KEY_FILE), 0o644);
    await loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine));
    expect((await stat(join(d, SEALED_KEY_FILE))).mode & 0o777).toBe(0o600);
    await chmod(join(d, SEALED_KEY_FILE), 0o644);
    await loadOrCreateKeyPair(d, undefined, parseKeyring(oldLine));
    expect((await stat(join(d, SEALED_KEY_FILE))).mode & 0o777).toBe(0o600);
  });
});
