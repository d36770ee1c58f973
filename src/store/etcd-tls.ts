/**
 * The client side of etcd's mutual TLS: reads and checks the three files an `etcds://` store
 * is opened with (`--etcd-ca`, `--etcd-cert`, `--etcd-key`) before anything connects, so a
 * wrong file is refused at start with its flag and reason instead of as a TLS handshake
 * failure in a retry loop. Checks: each file readable and PEM of the right kind; the key
 * file not readable by group or others (as ssh refuses such a key: `chmod 600`); the client
 * certificate valid now (not expired, not yet valid: says which file and when); the key the
 * certificate's own.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { CarapaceError } from '../model/errors.js';

/** The PEM texts an etcd client presents and trusts, as `openEtcdStore`'s `tls` takes them. */
export interface EtcdClientTls {
  /** The CA certificate(s) that signed the members' server certificates. */
  ca: Buffer;
  /** This process's client certificate (clientAuth), possibly followed by intermediates. */
  cert: Buffer;
  /** Its private key. */
  key: Buffer;
}

function badFile(flag: string, message: string): CarapaceError {
  return new CarapaceError('CARAPACE_E_BAD_ETCD_TLS_FILE', message, [{ path: flag, message }]);
}

async function readPem(flag: string, file: string, what: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (e) {
    throw badFile(flag, `cannot read the ${what} ${file} (${flag}): ${(e as Error).message}`); // fs errors are Errors
  }
}

function firstCertificate(flag: string, file: string, what: string, pem: Buffer): X509Certificate {
  if (!pem.toString('latin1').includes('-----BEGIN CERTIFICATE-----')) throw badFile(flag, `the ${what} ${file} (${flag}) holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  try {
    return new X509Certificate(pem); // parses the first certificate of the file
  } catch (e) {
    throw badFile(flag, `the ${what} ${file} (${flag}) is not a valid PEM certificate: ${(e as Error).message}`); // crypto errors are Errors
  }
}

/**
 * Reads and checks the CA, client certificate and key files. `now` decides validity (tests
 * pass their own). Throws CarapaceError: CARAPACE_E_BAD_ETCD_TLS_FILE (unreadable, not PEM,
 * key open to group or others, key and certificate not a pair, a CA certificate that is not
 * a CA) or CARAPACE_E_ETCD_CERT_EXPIRED (outside its validity), each naming the flag.
 */
export async function loadEtcdClientTls(files: { ca: string; cert: string; key: string }, now: Date = new Date()): Promise<EtcdClientTls> {
  const [ca, cert, key] = [await readPem('--etcd-ca', files.ca, 'etcd CA certificate'), await readPem('--etcd-cert', files.cert, 'etcd client certificate'), await readPem('--etcd-key', files.key, 'etcd client key')];
  const mode = (await stat(files.key)).mode; // readable just above
  if ((mode & 0o077) !== 0) {
    throw badFile('--etcd-key', `the etcd client key ${files.key} (--etcd-key) is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(3, '0')}): a private key must be readable by its owner only; chmod 600 ${files.key}`);
  }
  const caCert = firstCertificate('--etcd-ca', files.ca, 'etcd CA certificate', ca);
  if (!caCert.ca) throw badFile('--etcd-ca', `the etcd CA certificate ${files.ca} (--etcd-ca) is not a CA certificate (no basicConstraints CA:TRUE): give the CA that signed etcd's server certificate (etcd's --trusted-ca-file)`);
  const clientCert = firstCertificate('--etcd-cert', files.cert, 'etcd client certificate', cert);
  const from = new Date(clientCert.validFrom);
  const to = new Date(clientCert.validTo);
  if (now.getTime() > to.getTime()) {
    throw new CarapaceError('CARAPACE_E_ETCD_CERT_EXPIRED', `the etcd client certificate ${files.cert} (--etcd-cert) expired at ${to.toISOString()}; it is now ${now.toISOString()}: issue a new one from the etcd CA`, [{ path: '--etcd-cert', message: `expired at ${to.toISOString()}` }]);
  }
  if (now.getTime() < from.getTime()) {
    throw new CarapaceError('CARAPACE_E_ETCD_CERT_EXPIRED', `the etcd client certificate ${files.cert} (--etcd-cert) is not valid before ${from.toISOString()}; it is now ${now.toISOString()}: check this machine's clock or the certificate's dates`, [{ path: '--etcd-cert', message: `not valid before ${from.toISOString()}` }]);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (e) {
    throw badFile('--etcd-key', `the etcd client key ${files.key} (--etcd-key) is not a PEM private key (or is encrypted): ${(e as Error).message}`); // crypto errors are Errors
  }
  if (!clientCert.checkPrivateKey(privateKey)) throw badFile('--etcd-key', `the etcd client key ${files.key} (--etcd-key) is not the key of the certificate ${files.cert} (--etcd-cert)`);
  return { ca, cert, key };
}
