import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isLoopbackHost } from '../model/netaddr.js';
import { chainFingerprints, loadServingCert, normalFingerprint, pemCertificates } from './serving.js';
import { fingerprintOf, issueCertificate, newCsr, selfSignedCertificate, type KeyedCert } from './x509.js';

let dir: string;
let ca: KeyedCert;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-serving-'));
  ca = await selfSignedCertificate({ commonName: 'Operator CA', ca: true });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A leaf from the test CA, written as FILE.crt (leaf + CA) and FILE.key (0600 unless told). */
async function leaf(name: string, o: { now?: Date; days?: number; keyMode?: number; withCa?: boolean } = {}): Promise<{ certFile: string; keyFile: string; keyPem: string }> {
  const { keyPem, csrPem } = await newCsr('api');
  const { certPem } = await issueCertificate(ca, { csrPem, commonName: 'api', usage: 'server', ipAddresses: ['127.0.0.1'], validityDays: o.days ?? 30, ...(o.now ? { now: o.now } : {}) });
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  await writeFile(certFile, o.withCa === false ? certPem : `${certPem}\n${ca.certPem}`);
  await writeFile(keyFile, keyPem);
  await chmod(keyFile, o.keyMode ?? 0o600);
  return { certFile, keyFile, keyPem };
}

describe('the operator certificate of the API (--tls-cert, --tls-key)', () => {
  it('loads a valid chain with its key, and finds the CA in it', async () => {
    const f = await leaf('good');
    const s = await loadServingCert(f);
    expect(pemCertificates(s.certPem)).toHaveLength(2);
    expect(s.caPem && fingerprintOf(s.caPem)).toBe(fingerprintOf(ca.certPem));
    expect(chainFingerprints(s.certPem)[1]).toBe(fingerprintOf(ca.certPem));
    // A leaf alone: served as is, no CA to pin.
    expect((await loadServingCert(await leaf('alone', { withCa: false }))).caPem).toBeUndefined();
  });

  it('refuses a key readable by others, unreadable or malformed files and a key of another certificate, naming the flag', async () => {
    const open = await leaf('open', { keyMode: 0o644 });
    await expect(loadServingCert(open)).rejects.toMatchObject({ code: 'CARAPACE_E_TLS_KEY_PERMISSIONS', details: [{ path: '--tls-key' }] });
    await expect(loadServingCert({ certFile: join(dir, 'missing.crt'), keyFile: open.keyFile })).rejects.toMatchObject({ code: 'CARAPACE_E_TLS_CERT_INVALID', details: [{ path: '--tls-cert' }] });
    const good = await leaf('good2');
    const junk = join(dir, 'junk.crt');
    await writeFile(junk, 'not a certificate\n');
    await expect(loadServingCert({ certFile: junk, keyFile: good.keyFile })).rejects.toMatchObject({ code: 'CARAPACE_E_TLS_CERT_INVALID', details: [{ path: '--tls-cert' }] });
    const badKey = join(dir, 'bad.key');
    await writeFile(badKey, '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n', { mode: 0o600 });
    await expect(loadServingCert({ certFile: good.certFile, keyFile: badKey })).rejects.toMatchObject({ code: 'CARAPACE_E_TLS_CERT_INVALID', details: [{ path: '--tls-key' }] });
    const other = await leaf('other');
    await expect(loadServingCert({ certFile: good.certFile, keyFile: other.keyFile })).rejects.toMatchObject({ code: 'CARAPACE_E_TLS_CERT_INVALID', message: expect.stringMatching(/does not belong/) });
  });

  it('refuses an expired or not yet valid certificate and says when', async () => {
    const old = await leaf('old', { now: new Date(Date.now() - 10 * 86_400_000), days: 1 });
    await expect(loadServingCert(old)).rejects.toMatchObject({ code: 'CARAPACE_E_TLS_CERT_EXPIRED', message: expect.stringMatching(/expired at \d{4}-/), details: [{ path: '--tls-cert' }] });
    const future = await leaf('future', { now: new Date(Date.now() + 10 * 86_400_000) });
    await expect(loadServingCert(future)).rejects.toMatchObject({ code: 'CARAPACE_E_TLS_CERT_EXPIRED', message: expect.stringMatching(/not valid until \d{4}-/) });
  });
});

describe('fingerprints and loopback', () => {
  it('accepts a fingerprint in hex, upper case or colon-separated, and nothing else', () => {
    const f = fingerprintOf(ca.certPem);
    expect(normalFingerprint(f)).toBe(f);
    expect(normalFingerprint(f.toUpperCase().replace(/(..)(?!$)/g, '$1:'))).toBe(f);
    expect(normalFingerprint(`SHA256:${f}`)).toBe(f);
    expect(normalFingerprint(f.slice(2))).toBeUndefined();
    expect(normalFingerprint('zz'.repeat(32))).toBeUndefined();
  });

  it('knows loopback addresses', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]']) expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ['0.0.0.0', '10.0.0.1', 'example.com', '::', '128.0.0.1']) expect(isLoopbackHost(h), h).toBe(false);
  });
});
