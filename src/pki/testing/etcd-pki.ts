/**
 * Certificates for an etcd with mutual TLS in tests, made with the project's own PKI code
 * (`pki/x509.ts`: P-256 keys as PKCS#8, certificates from a CSR): a CA, a server certificate
 * for the member (serverAuth, SAN 127.0.0.1 and localhost) and client certificates
 * (clientAuth). Written as PEM files, keys mode 0600, as an operator would hand them to etcd
 * (`--cert-file`, `--key-file`, `--trusted-ca-file`) and to Carapace (`--etcd-ca`,
 * `--etcd-cert`, `--etcd-key`).
 *
 * Here and not in `store/testing/` because the layer map lets pki/ use store/ and not the
 * other way: `startEtcd({tls})` takes the files, `startTlsEtcd()` below joins the two.
 */
import 'reflect-metadata'; // @peculiar/x509's dependency injection needs the Reflect metadata polyfill, before it loads
import * as x509 from '@peculiar/x509';
import { randomBytes, webcrypto } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEtcd, type EtcdProcess, type EtcdTlsFiles, type StartEtcdOptions } from '../../store/testing/etcd.js';
import { issueCertificate, newCsr, newKeyPair, type KeyedCert } from '../x509.js';

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/**
 * A self-signed P-256 CA (CA:TRUE, keyCertSign), valid from `now` minus a minute for
 * `validityDays`. For tests: the cluster CA is `ensureClusterCa`'s, kept in the store.
 */
export async function newTestCa(commonName: string, o: { now?: Date; validityDays?: number } = {}): Promise<KeyedCert> {
  const now = o.now ?? new Date();
  const { keys, keyPem } = await newKeyPair(); // importing pki/x509 also set @peculiar/x509's crypto provider
  const sn = randomBytes(16);
  sn[0] = (sn[0] ?? 0) & 0x7f; // a positive serial
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: sn.toString('hex'),
    name: `CN=${commonName}`,
    notBefore: new Date(now.getTime() - 60_000),
    notAfter: new Date(now.getTime() + (o.validityDays ?? 365) * 86_400_000),
    signingAlgorithm: ALG,
    keys,
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
  });
  return { certPem: cert.toString('pem'), keyPem };
}

/** A client certificate (clientAuth) and its key from `ca`; `now` and `validityDays` set its dates (expired ones for tests). */
export async function newTestClientCert(ca: KeyedCert, commonName: string, o: { now?: Date; validityDays?: number } = {}): Promise<KeyedCert> {
  const { keyPem, csrPem } = await newCsr(commonName);
  const { certPem } = await issueCertificate(ca, { csrPem, commonName, usage: 'client', validityDays: o.validityDays ?? 365, ...(o.now ? { now: o.now } : {}) });
  return { certPem, keyPem };
}

/**
 * The member's certificate: serverAuth for its clients, and clientAuth too, because etcd's
 * HTTP gateway (`/v3/kv/range`, `/v3/maintenance/snapshot`, …) reaches the member's own gRPC
 * port presenting `--cert-file` as its client certificate; without clientAuth the gateway
 * answers 503 "connection closed" under `--client-cert-auth`. (`issueCertificate` gives one
 * usage per certificate, which is right for the cluster's own certificates.)
 */
async function newMemberCert(ca: KeyedCert): Promise<KeyedCert> {
  const { keys, keyPem } = await newKeyPair();
  const caCert = new x509.X509Certificate(ca.certPem);
  const now = Date.now();
  const sn = randomBytes(16);
  sn[0] = (sn[0] ?? 0) & 0x7f;
  const signingKey = await webcrypto.subtle.importKey('pkcs8', Buffer.from(ca.keyPem.replace(/-----[A-Z ]+-----|\s+/g, ''), 'base64'), ALG, false, ['sign']);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: sn.toString('hex'),
    subject: 'CN=etcd',
    issuer: caCert.subject,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 30 * 86_400_000),
    signingAlgorithm: ALG,
    publicKey: keys.publicKey,
    signingKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
      ]),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem };
}

/** File paths of a client's TLS material, as the `--etcd-ca/--etcd-cert/--etcd-key` flags take them. */
export interface EtcdClientFiles {
  /** The CA certificate that signed the member's server certificate. */
  ca: string;
  cert: string;
  /** Mode 0600. */
  key: string;
}

/** Everything `makeEtcdPki` wrote: the client's files plus the member's. */
export interface EtcdPki extends EtcdClientFiles, EtcdTlsFiles {
  /** The directory holding the files. */
  dir: string;
  /** The CA (with its key: tests issue more client certificates from it). */
  caCert: KeyedCert;
  /** Removes the directory; the etcd member started with these files does it at its `stop()`. */
  cleanup(): Promise<void>;
}

/** Writes `cert` and `key` as `NAME.crt` (0644) and `NAME.key` (0600) in `dir`; returns their paths. */
export async function writeKeyedCert(dir: string, name: string, kc: KeyedCert): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await writeFile(cert, kc.certPem, { mode: 0o644 });
  await writeFile(key, kc.keyPem, { mode: 0o600 });
  return { cert, key };
}

/**
 * A fresh CA, a server certificate for an etcd member on 127.0.0.1/localhost and a client
 * certificate (`CN=carapace`), written to `dir` (default: a new temp dir): `ca.crt`,
 * `server.crt`, `server.key`, `client.crt`, `client.key`.
 */
export async function makeEtcdPki(dir?: string): Promise<EtcdPki> {
  const owned = dir === undefined;
  dir ??= await mkdtemp(join(tmpdir(), 'carapace-etcd-pki-'));
  const where = dir;
  const caCert = await newTestCa('Carapace test etcd CA');
  const ca = join(dir, 'ca.crt');
  await writeFile(ca, caCert.certPem, { mode: 0o644 });
  const s = await writeKeyedCert(dir, 'server', await newMemberCert(caCert));
  const c = await writeKeyedCert(dir, 'client', await newTestClientCert(caCert, 'carapace', { validityDays: 30 }));
  return { dir: where, caCert, ca, cert: c.cert, key: c.key, serverCert: s.cert, serverKey: s.key, cleanup: () => (owned ? rm(where, { recursive: true, force: true }) : Promise.resolve()) };
}

/**
 * `startEtcd` serving TLS with client-certificate authentication, with a fresh PKI from
 * `makeEtcdPki` (removed at `stop()`): the member for tests that run Carapace as it should
 * run on a network (`etcd.storeArgs` gives `--store etcds://… --etcd-ca … --etcd-cert …
 * --etcd-key …`).
 */
export async function startTlsEtcd(opts: Omit<StartEtcdOptions, 'tls'> = {}): Promise<EtcdProcess> {
  const pki = await makeEtcdPki();
  try {
    return await startEtcd({ ...opts, tls: pki });
  } catch (e) {
    await pki.cleanup();
    throw e;
  }
}
