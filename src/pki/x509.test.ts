/**
 * The cluster CA at rest: `pki/ca` holds the certificate, its fingerprint and the private key
 * sealed with the keyring, never the PEM; a server with the same keyring opens the same key;
 * one whose keyring lacks the sealing key is refused naming the key id; an altered record is
 * refused; a record from before keys were sealed reads as `clear`.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { newKeyLine, parseKeyring } from '../keyring/keyring.js';
import { CA_KEY } from '../model/keys.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { clusterCaFingerprint, ensureClusterCa, issueCertificate, newCsr, readClusterCa, type StoredCa } from './x509.js';

let store: SqliteStore;
const line = newKeyLine();
const ring = parseKeyring(line);
const idOf = (l: string): string => l.split(':')[0] ?? '';

beforeEach(async () => {
  store = await openSqliteStore({ path: ':memory:' });
});
afterEach(async () => {
  await store.close();
});

describe('the cluster CA at rest', () => {
  it('stores the certificate and the key sealed with the primary key, never the PEM; the same keyring opens it', async () => {
    const made = await ensureClusterCa(store, ring);
    expect(made.sealedWith).toBe(idOf(line));
    const stored = (await store.get<StoredCa & { keyPem?: string }>(CA_KEY))?.value;
    expect(Object.keys(stored ?? {}).sort()).toEqual(['certPem', 'fingerprint', 'sealedKey']);
    expect(JSON.stringify(stored)).not.toContain('PRIVATE KEY');
    expect(stored?.sealedKey.keyId).toBe(idOf(line));
    const der = Buffer.from(made.keyPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64').toString('base64');
    expect(JSON.stringify(stored)).not.toContain(der.slice(0, 40));
    // A second server with the same keyring (another file, same key, newer primary) gets the same CA.
    const again = await ensureClusterCa(store, parseKeyring(`${newKeyLine()}\n${line}`));
    expect([again.fingerprint, again.keyPem, again.sealedWith]).toEqual([made.fingerprint, made.keyPem, idOf(line)]);
    expect(await clusterCaFingerprint(store)).toBe(made.fingerprint);
    // The opened key signs.
    const { csrPem } = await newCsr('host:h1');
    await expect(issueCertificate(again, { csrPem, commonName: 'host:h1', usage: 'client', validityDays: 1 })).resolves.toMatchObject({ serial: expect.any(String) });
  });

  it('refuses a keyring without the sealing key, naming it, and an altered record', async () => {
    await ensureClusterCa(store, ring);
    const other = newKeyLine();
    await expect(ensureClusterCa(store, parseKeyring(other))).rejects.toMatchObject({ code: 'CARAPACE_E_KEYRING_KEY_MISSING', message: expect.stringContaining(`sealed with key "${idOf(line)}", which is not in this server's keyring (keys: ${idOf(other)})`) });
    const e = await store.get<StoredCa>(CA_KEY);
    const v = e?.value as StoredCa;
    const body = Buffer.from(v.sealedKey.data, 'base64');
    body[5] = (body[5] ?? 0) ^ 0x10;
    await store.put(CA_KEY, { ...v, sealedKey: { ...v.sealedKey, data: body.toString('base64') } });
    await expect(readClusterCa(store, ring)).rejects.toMatchObject({ code: 'CARAPACE_E_SEALED_KEY_INVALID' });
    await store.put(CA_KEY, { ...v, fingerprint: '00'.repeat(32) });
    await expect(readClusterCa(store, ring)).rejects.toMatchObject({ code: 'CARAPACE_E_SEALED_KEY_INVALID', message: expect.stringMatching(/fingerprint does not match/) });
    await store.put(CA_KEY, { certPem: v.certPem, fingerprint: v.fingerprint });
    await expect(readClusterCa(store, ring)).rejects.toMatchObject({ code: 'CARAPACE_E_SEALED_KEY_INVALID' });
  });

  it('reads a CA from before keys were sealed as clear (the server seals it at start)', async () => {
    const made = await ensureClusterCa(store, ring);
    await store.put(CA_KEY, { certPem: made.certPem, keyPem: made.keyPem, fingerprint: made.fingerprint });
    const read = await readClusterCa(store, parseKeyring(newKeyLine()));
    expect([read?.sealedWith, read?.keyPem]).toEqual(['clear', made.keyPem]);
  });

  it('agrees on one CA when servers race at first start', async () => {
    const all = await Promise.all([1, 2, 3].map(() => ensureClusterCa(store, ring)));
    expect(new Set(all.map((c) => c.fingerprint)).size).toBe(1);
    expect(new Set(all.map((c) => c.keyPem)).size).toBe(1);
  });
});
