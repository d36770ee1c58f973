/**
 * The certificate the user API serves, when the operator gives one (`carapace server
 * --tls-cert FILE --tls-key FILE`): read and checked once at start, so a server never comes up
 * with a certificate clients must refuse. Also the pin forms the CLI accepts for a CA
 * fingerprint, and the chain helpers both sides use.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { CarapaceError } from '../model/errors.js';
import { fingerprintOf, type KeyedCert } from './x509.js';

/** What the API serves: the key, the chain (leaf first) and the CA clients should pin, when the chain carries one. */
export interface ServingCert extends KeyedCert {
  /** PEM of the CA certificate in the chain (self-signed, CA:true), if any: what the CLI config pins. */
  caPem?: string;
}

/** Every PEM certificate block of a text, in order. */
export function pemCertificates(text: string): string[] {
  return [...text.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => `${m[0]}\n`);
}

/**
 * A CA fingerprint as the user typed it: sha256 hex, lower or upper case, with or without
 * colons (`AB:CD:…`, as openssl and browsers print it). Undefined when it is not 64 hex digits.
 */
export function normalFingerprint(s: string): string | undefined {
  const f = s.trim().replace(/^sha256[:=]/i, '').replace(/:/g, '').toLowerCase();
  return /^[0-9a-f]{64}$/.test(f) ? f : undefined;
}

const bad = (path: string, message: string): CarapaceError => new CarapaceError('CARAPACE_E_TLS_CERT_INVALID', message, [{ path, message }]);

/**
 * Reads and checks the operator's certificate and key: readable PEM, the key belongs to the
 * leaf (the first certificate), the leaf valid at `now`, the key file not readable by group or
 * others. Throws CarapaceError with the flag as field path.
 */
export async function loadServingCert(o: { certFile: string; keyFile: string; now?: Date }): Promise<ServingCert> {
  const now = o.now ?? new Date();
  const read = async (file: string, flag: string): Promise<string> => {
    try {
      return await readFile(file, 'utf8');
    } catch (e) {
      throw bad(flag, `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`); // fs errors are ErrnoExceptions
    }
  };
  const certText = await read(o.certFile, '--tls-cert');
  const keyText = await read(o.keyFile, '--tls-key');
  const mode = (await stat(o.keyFile)).mode;
  if ((mode & 0o077) !== 0) {
    const message = `the private key ${o.keyFile} is readable by group or others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`;
    throw new CarapaceError('CARAPACE_E_TLS_KEY_PERMISSIONS', message, [{ path: '--tls-key', message }]);
  }
  const blocks = pemCertificates(certText);
  if (blocks.length === 0) throw bad('--tls-cert', `${o.certFile} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  let certs: X509Certificate[];
  try {
    certs = blocks.map((b) => new X509Certificate(b));
  } catch (e) {
    throw bad('--tls-cert', `${o.certFile} is not a valid PEM certificate: ${(e as Error).message}`);
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(keyText);
  } catch (e) {
    throw bad('--tls-key', `${o.keyFile} is not a valid PEM private key: ${(e as Error).message}`);
  }
  const leaf = certs[0] as X509Certificate; // at least one block, checked above
  if (!leaf.checkPrivateKey(key)) throw bad('--tls-key', `the private key in ${o.keyFile} does not belong to the certificate in ${o.certFile}`);
  const from = new Date(leaf.validFrom);
  const to = new Date(leaf.validTo);
  const expired = (message: string): CarapaceError => new CarapaceError('CARAPACE_E_TLS_CERT_EXPIRED', message, [{ path: '--tls-cert', message }]);
  if (to.getTime() <= now.getTime()) throw expired(`the certificate in ${o.certFile} expired at ${to.toISOString()}`);
  if (from.getTime() > now.getTime()) throw expired(`the certificate in ${o.certFile} is not valid until ${from.toISOString()}`);
  const caIndex = certs.findIndex((c) => c.ca && c.checkIssued(c));
  const caPem = caIndex >= 0 ? blocks[caIndex] : undefined;
  return { certPem: blocks.join(''), keyPem: keyText, ...(caPem !== undefined ? { caPem } : {}) };
}

/** `fingerprintOf` of each certificate of a PEM chain, in order. */
export function chainFingerprints(chainPem: string): string[] {
  return pemCertificates(chainPem).map(fingerprintOf);
}
