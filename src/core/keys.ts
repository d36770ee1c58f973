/**
 * The writes of keys at rest: sealing the cluster CA's private key in the store under the
 * keyring's primary key (a store from before keys were sealed, at server start; an older key
 * of the keyring, in a rotation), and `carapace keys reencrypt`, which moves everything the
 * store holds sealed (the CA key, every Secret) to the primary key. Each write commits with
 * its audit record (key ids only, never key material). The audit signing key files are not in
 * the store: each server re-seals its own at start (audit/keys.ts).
 */
import type { AuditEntry } from '../audit/record.js';
import { CA_KEY } from '../model/keys.js';
import { needKeyring, reencryptSecrets, type ReencryptResult } from './secrets.js';
import { readClusterCa, storedCaOf } from '../pki/x509.js';
import { ConflictError } from '../store/store.js';
import type { Keyring } from '../keyring/keyring.js';
import type { Resources } from './resources.js';

/** The audit target of the CA's writes. */
export const CLUSTER_CA_TARGET = { kind: 'ClusterCA', name: 'cluster-ca' } as const;

/** What sealing the CA did: `none` (no CA yet), `current` (already under the primary key), `sealed` (was in clear), `resealed` (was under an older key). */
export type CaSealing = 'none' | 'current' | 'sealed' | 'resealed';

/**
 * Seals the CA's private key under the primary key unless it already is: compare-and-set on
 * `pki/ca` with its audit record (`pki.ca.sealed` from clear, `pki.ca.resealed` from an older
 * key; detail `{fromKey?, toKey}`). The certificate, and so its fingerprint, never changes.
 * Several servers may race: the loser re-reads and finds it done. Errors of readClusterCa
 * (CARAPACE_E_KEYRING_KEY_MISSING naming the key id) pass through.
 */
export async function sealClusterCa(r: Resources, keyring: Keyring, entry: (action: string, detail: Record<string, unknown>) => AuditEntry): Promise<CaSealing> {
  for (;;) {
    const read = await readClusterCa(r.store, keyring);
    if (!read) return 'none';
    if (read.sealedWith === keyring.primary) return 'current';
    const clear = read.sealedWith === 'clear';
    try {
      await r.commitRecords(
        [{ op: 'put', key: CA_KEY, value: storedCaOf(read, keyring), expect: { version: read.version } }],
        entry(clear ? 'pki.ca.sealed' : 'pki.ca.resealed', { ...(clear ? {} : { fromKey: read.sealedWith }), toKey: keyring.primary }),
      );
      return clear ? 'sealed' : 'resealed';
    } catch (e) {
      if (!(e instanceof ConflictError) || e.key !== CA_KEY) throw e;
      // Another server sealed it meanwhile: read again.
    }
  }
}

/** What `carapace keys reencrypt` did. */
export interface KeysReencryptResult {
  /** The primary key everything is now sealed with. */
  keyId: string;
  ca: CaSealing;
  secrets: ReencryptResult;
}

/**
 * Moves everything the store holds sealed to the keyring's primary key: the CA's private key
 * and every Secret (reencryptSecrets). Idempotent: run it again after a failure. Afterwards,
 * once every server has been restarted with the keyring (each re-seals its audit key file at
 * start), older keys can be removed from the keyring.
 */
export async function reencryptKeys(r: Resources, keyring: Keyring | undefined, caEntry: (action: string, detail: Record<string, unknown>) => AuditEntry, secretEntry: (tenant: string, name: string, detail: Record<string, unknown>) => AuditEntry): Promise<KeysReencryptResult> {
  const ring = needKeyring(keyring, 'keys reencrypt');
  const ca = await sealClusterCa(r, ring, caEntry);
  const secrets = await reencryptSecrets(r, ring, secretEntry);
  return { keyId: ring.primary, ca, secrets };
}
