/**
 * The cluster's own certificate authority: an ECDSA P-256 CA created once per store (kept in
 * the store, which only control-plane servers can read, its private key sealed with the
 * cluster keyring, which is not in the store), server certificates for the agent
 * API, and client certificates for agents, issued from a CSR at join time. Built on
 * @peculiar/x509 over WebCrypto because Node can verify certificates but cannot make them
 * (and shelling out to openssl would put key material on command lines and temp files).
 */
import 'reflect-metadata'; // @peculiar/x509's dependency injection needs the Reflect metadata polyfill
import { createHash, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { ConflictError, type Store } from '../store/store.js';
import { CA_KEY } from '../model/keys.js';
import { CarapaceError } from '../model/errors.js';
import { openKey, sealKey, type Keyring, type SealedBlob } from '../keyring/keyring.js';

x509.cryptoProvider.set(x509.CryptoProvider.DEFAULT, webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[1]); // Node's webcrypto is the standard Crypto the library expects (the two-argument overload names the type in every lib setting)

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

/** A certificate with its private key, both PEM. */
export interface KeyedCert {
  certPem: string;
  keyPem: string;
}

/** The CA in memory (private key in clear). `fingerprint` is sha256 of the certificate's DER, hex: what join tokens pin. */
export interface ClusterCa extends KeyedCert {
  fingerprint: string;
}

/**
 * The CA as stored at `pki/ca`: the certificate, its fingerprint and the private key sealed
 * with the keyring's primary key (additional data `pki/ca`), never the PEM.
 */
export interface StoredCa {
  certPem: string;
  fingerprint: string;
  sealedKey: SealedBlob;
}

/** What `sealKey` binds the CA's private key to. */
export const CA_KEY_PURPOSE = 'pki/ca';

/** The stored CA as read: opened, with what it is sealed with (`clear`: a record from before keys were sealed, key in clear). */
export interface ReadCa extends ClusterCa {
  /** The key id it is sealed with, or `clear`. */
  sealedWith: string;
  version: number;
}

/** The record `pki/ca` holds for `ca`, sealed with the keyring's primary key. */
export function storedCaOf(ca: ClusterCa, keyring: Keyring): StoredCa {
  // Only these three fields: a ReadCa's others (its key in clear among them) never go to the store.
  return { certPem: ca.certPem, fingerprint: ca.fingerprint, sealedKey: sealKey(keyring, CA_KEY_PURPOSE, ca.keyPem) };
}

/**
 * Reads and opens the CA at `pki/ca`, or undefined when the store has none. A record from
 * before keys were sealed (`keyPem` in clear) is returned with `sealedWith: 'clear'` (the
 * server seals it at start). CARAPACE_E_KEYRING_KEY_MISSING when the keyring lacks the key it
 * is sealed with (servers of one store given different keyrings), CARAPACE_E_SEALED_KEY_INVALID
 * when the record is malformed or altered.
 */
export async function readClusterCa(store: Store, keyring: Keyring): Promise<ReadCa | undefined> {
  const e = await store.get<Partial<StoredCa> & { keyPem?: unknown }>(CA_KEY);
  if (!e) return undefined;
  const v = e.value;
  if (typeof v.certPem !== 'string' || typeof v.fingerprint !== 'string') throw new CarapaceError('CARAPACE_E_SEALED_KEY_INVALID', `the cluster CA at ${CA_KEY} is malformed (no certificate or fingerprint)`);
  if (fingerprintOf(v.certPem) !== v.fingerprint) throw new CarapaceError('CARAPACE_E_SEALED_KEY_INVALID', `the cluster CA at ${CA_KEY} is altered: its fingerprint does not match its certificate`);
  if (typeof v.keyPem === 'string' && v.sealedKey === undefined) return { certPem: v.certPem, keyPem: v.keyPem, fingerprint: v.fingerprint, sealedWith: 'clear', version: e.version };
  const keyPem = openKey(keyring, CA_KEY_PURPOSE, v.sealedKey, `the cluster CA's private key (${CA_KEY})`);
  return { certPem: v.certPem, keyPem, fingerprint: v.fingerprint, sealedWith: (v.sealedKey as SealedBlob).keyId, version: e.version }; // openKey refused anything but a SealedBlob
}

/** The CA's fingerprint as stored (no keyring needed: the certificate is public), or undefined when the store has no CA. */
export async function clusterCaFingerprint(store: Store): Promise<string | undefined> {
  const e = await store.get<{ fingerprint?: unknown }>(CA_KEY);
  return typeof e?.value.fingerprint === 'string' ? e.value.fingerprint : undefined;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

function derOf(pemText: string): Buffer {
  return Buffer.from(pemText.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

/** sha256 of a PEM certificate's DER, hex. */
export function fingerprintOf(certPem: string): string {
  return createHash('sha256').update(derOf(certPem)).digest('hex');
}

async function importPrivateKey(keyPem: string): Promise<webcrypto.CryptoKey> {
  return webcrypto.subtle.importKey('pkcs8', derOf(keyPem), ALG, false, ['sign']);
}

/** A new P-256 key pair; the private key as PKCS#8 PEM. */
export async function newKeyPair(): Promise<{ keys: webcrypto.CryptoKeyPair; keyPem: string }> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair; // an ECDSA algorithm yields a pair
  return { keys, keyPem: pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)) };
}

function serial(): string {
  // Positive, 16 random bytes (RFC 5280 allows up to 20 octets).
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f;
  return b.toString('hex');
}

/**
 * The cluster CA: created on first use (compare-and-set, so concurrent servers agree on one),
 * its private key sealed with `keyring`; otherwise read and opened (readClusterCa, with its
 * errors). A CA from before keys were sealed comes back with `sealedWith: 'clear'`: sealing
 * it is the core's (`sealClusterCa`, with its audit record).
 */
export async function ensureClusterCa(store: Store, keyring: Keyring, now: Date = new Date()): Promise<ReadCa> {
  const existing = await readClusterCa(store, keyring);
  if (existing) return existing;
  const { keys, keyPem } = await newKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'CN=Carapace cluster CA',
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: new Date(now.getTime() + 10 * 365 * 86_400_000),
    signingAlgorithm: ALG,
    keys,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
  });
  const certPem = cert.toString('pem');
  const ca: ClusterCa = { certPem, keyPem, fingerprint: fingerprintOf(certPem) };
  try {
    const version = await store.put(CA_KEY, storedCaOf(ca, keyring), { absent: true });
    return { ...ca, sealedWith: keyring.primary, version };
  } catch (e) {
    if (!(e instanceof ConflictError)) throw e;
    const won = await readClusterCa(store, keyring); // another server created it first: use theirs
    if (!won) throw e;
    return won;
  }
}

export interface IssueOptions {
  /** PEM of a PKCS#10 request whose signature is checked, or a public key to certify as is. */
  csrPem: string;
  commonName: string;
  usage: 'client' | 'server';
  /** Subject alternative names (servers). */
  dnsNames?: string[];
  ipAddresses?: string[];
  validityDays: number;
  now?: Date;
}

/** Issues a certificate for a CSR, signed by the CA. Throws when the CSR's signature is bad. */
export async function issueCertificate(ca: KeyedCert, o: IssueOptions): Promise<{ certPem: string; serial: string; notAfter: string }> {
  const csr = new x509.Pkcs10CertificateRequest(o.csrPem);
  if (!(await csr.verify())) throw new Error('the certificate request is not signed by its own key');
  const caCert = new x509.X509Certificate(ca.certPem);
  const now = o.now ?? new Date();
  const notAfter = new Date(now.getTime() + o.validityDays * 86_400_000);
  const sn = serial();
  const names = [...(o.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })), ...(o.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value }))];
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: sn,
    subject: `CN=${o.commonName.replace(/[,=+<>#;"\\]/g, '')}`,
    issuer: caCert.subject,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter,
    signingAlgorithm: ALG,
    publicKey: csr.publicKey,
    signingKey: await importPrivateKey(ca.keyPem),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([o.usage === 'client' ? CLIENT_AUTH : SERVER_AUTH]),
      ...(names.length ? [new x509.SubjectAlternativeNameExtension(names)] : []),
    ],
  });
  return { certPem: cert.toString('pem'), serial: sn, notAfter: notAfter.toISOString() };
}

/** A key and a CSR for `commonName` (what an agent sends when it joins or renews). */
export async function newCsr(commonName: string): Promise<{ keyPem: string; csrPem: string }> {
  const { keys, keyPem } = await newKeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${commonName}`, keys, signingAlgorithm: ALG });
  return { keyPem, csrPem: csr.toString('pem') };
}

/** A server certificate (key made here) for the agent API, valid for the given names. */
export async function issueServerCertificate(ca: KeyedCert, o: { commonName: string; dnsNames: string[]; ipAddresses: string[]; validityDays?: number }): Promise<KeyedCert> {
  const { keyPem, csrPem } = await newCsr(o.commonName);
  const { certPem } = await issueCertificate(ca, { csrPem, commonName: o.commonName, usage: 'server', dnsNames: o.dnsNames, ipAddresses: o.ipAddresses, validityDays: o.validityDays ?? 365 });
  return { certPem, keyPem };
}

/** The common name and serial (lower-case hex, no leading zeros) of a PEM or DER certificate. */
export function certIdentity(cert: string | Buffer): { commonName: string; serial: string; notAfter: string } {
  const c = new X509Certificate(cert);
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(c.subject)?.[1] ?? '';
  return { commonName: cn, serial: c.serialNumber.toLowerCase().replace(/^0+/, ''), notAfter: new Date(c.validTo).toISOString() };
}

/** Normalises a serial as `certIdentity` reports it. */
export function normalSerial(s: string): string {
  return s.toLowerCase().replace(/^0+/, '');
}

/**
 * A self-signed certificate with a fresh key: a CA (`ca: true`, may sign others with
 * `issueCertificate`) or a server certificate for the given names. For operators' own CAs and
 * the tests of certificates the cluster did not make; the cluster CA is `ensureClusterCa`'s.
 */
export async function selfSignedCertificate(o: { commonName: string; ca?: boolean; dnsNames?: string[]; ipAddresses?: string[]; notBefore?: Date; notAfter?: Date }): Promise<KeyedCert> {
  const { keys, keyPem } = await newKeyPair();
  const now = new Date();
  const names = [...(o.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })), ...(o.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value }))];
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${o.commonName.replace(/[,=+<>#;"\\]/g, '')}`,
    notBefore: o.notBefore ?? new Date(now.getTime() - 60_000),
    notAfter: o.notAfter ?? new Date(now.getTime() + 365 * 86_400_000),
    signingAlgorithm: ALG,
    keys,
    extensions: o.ca
      ? [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)]
      : [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([SERVER_AUTH]),
          ...(names.length ? [new x509.SubjectAlternativeNameExtension(names)] : []),
        ],
  });
  return { certPem: cert.toString('pem'), keyPem };
}
