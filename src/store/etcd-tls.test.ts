import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isCarapaceError } from '../model/errors.js';
import { loadEtcdClientTls } from './etcd-tls.js';
import { makeEtcdPki, newTestCa, newTestClientCert, writeKeyedCert, type EtcdPki } from '../pki/testing/etcd-pki.js';

let dir: string;
let pki: EtcdPki;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-etcd-tls-'));
  pki = await makeEtcdPki(dir);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The CarapaceError `loadEtcdClientTls` refuses `files` with. */
async function refusal(files: { ca: string; cert: string; key: string }, now?: Date): Promise<{ code: string; message: string; details: { path: string; message: string }[] }> {
  try {
    await loadEtcdClientTls(files, now);
  } catch (e) {
    if (isCarapaceError(e)) return { code: e.code, message: e.message, details: e.details };
    throw e;
  }
  throw new Error('accepted');
}

/** A file in the test dir holding `text`, mode `mode`. */
async function file(name: string, text: string, mode = 0o600): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, text, { mode });
  await chmod(p, mode);
  return p;
}

describe('loadEtcdClientTls', () => {
  it('reads a CA, a client certificate and its key (PKCS#8 EC, as the project makes them)', async () => {
    const tls = await loadEtcdClientTls(pki);
    expect(tls.ca.toString()).toBe(await readFile(pki.ca, 'utf8'));
    expect(tls.cert.toString()).toContain('-----BEGIN CERTIFICATE-----');
    expect(tls.key.toString()).toContain('-----BEGIN PRIVATE KEY-----');
  });

  it('refuses a file it cannot read, naming the flag', async () => {
    const r = await refusal({ ...pki, cert: join(dir, 'nope.crt') });
    expect(r.code).toBe('CARAPACE_E_BAD_ETCD_TLS_FILE');
    expect(r.message).toMatch(/cannot read the etcd client certificate .*nope\.crt \(--etcd-cert\): ENOENT/);
    expect(r.details.map((d) => d.path)).toEqual(['--etcd-cert']);
  });

  it('refuses a key file readable by group or others: chmod 600', async () => {
    const key = await file('open.key', await readFile(pki.key, 'utf8'), 0o640);
    const r = await refusal({ ...pki, key });
    expect(r.code).toBe('CARAPACE_E_BAD_ETCD_TLS_FILE');
    expect(r.message).toContain(`mode 640`);
    expect(r.message).toContain(`chmod 600 ${key}`);
    expect(r.details.map((d) => d.path)).toEqual(['--etcd-key']);
    await chmod(key, 0o604);
    expect((await refusal({ ...pki, key })).message).toContain('mode 604');
    await chmod(key, 0o400);
    await expect(loadEtcdClientTls({ ...pki, key })).resolves.toBeDefined();
  });

  it('refuses files that are not PEM of the right kind', async () => {
    const garbage = await file('garbage.pem', 'hello\n', 0o644);
    const certPem = await readFile(pki.cert, 'utf8');
    const truncated = await file('truncated.crt', certPem.slice(0, certPem.length / 2) + '\n-----END CERTIFICATE-----\n', 0o644);
    const cases: [Partial<typeof pki>, string, RegExp][] = [
      [{ ca: garbage }, '--etcd-ca', /holds no PEM certificate/],
      [{ cert: garbage }, '--etcd-cert', /holds no PEM certificate/],
      [{ cert: truncated }, '--etcd-cert', /is not a valid PEM certificate/],
      [{ ca: pki.cert }, '--etcd-ca', /is not a CA certificate/],
      [{ key: await file('garbage.key', 'hello\n') }, '--etcd-key', /is not a PEM private key/],
      [{ key: await file('cert-as.key', certPem) }, '--etcd-key', /is not a PEM private key/],
      [{ key: pki.serverKey }, '--etcd-key', /is not the key of the certificate/],
    ];
    for (const [files, flag, why] of cases) {
      const r = await refusal({ ...pki, ...files });
      expect(r.code, String(why)).toBe('CARAPACE_E_BAD_ETCD_TLS_FILE');
      expect(r.message).toMatch(why);
      expect(r.details.map((d) => d.path)).toEqual([flag]);
    }
  });

  it('refuses an expired client certificate, saying which file and when it expired', async () => {
    const twoYearsAgo = new Date(Date.now() - 2 * 365 * 86_400_000);
    const old = await writeKeyedCert(dir, 'expired', await newTestClientCert(pki.caCert, 'carapace', { now: twoYearsAgo, validityDays: 30 }));
    const r = await refusal({ ca: pki.ca, ...old });
    expect(r.code).toBe('CARAPACE_E_ETCD_CERT_EXPIRED');
    const expiredAt = new Date(twoYearsAgo.getTime() + 30 * 86_400_000);
    expect(r.message).toContain(`the etcd client certificate ${old.cert} (--etcd-cert) expired at ${new Date(Math.floor(expiredAt.getTime() / 1000) * 1000).toISOString()}`);
    expect(r.details).toEqual([{ path: '--etcd-cert', message: expect.stringMatching(/^expired at /) }]);
  });

  it('refuses a client certificate that is not valid yet', async () => {
    const later = await writeKeyedCert(dir, 'later', await newTestClientCert(pki.caCert, 'carapace', { now: new Date(Date.now() + 86_400_000) }));
    const r = await refusal({ ca: pki.ca, ...later });
    expect(r.code).toBe('CARAPACE_E_ETCD_CERT_EXPIRED');
    expect(r.message).toMatch(/is not valid before \S+; it is now .*check this machine's clock/);
    // The same files pass once "now" is inside the window (a clock that was wrong).
    await expect(loadEtcdClientTls({ ca: pki.ca, ...later }, new Date(Date.now() + 2 * 86_400_000))).resolves.toBeDefined();
  });

  it('takes a client certificate from another CA than the one named for the server (etcd decides whom it trusts)', async () => {
    const other = await newTestCa('another CA');
    const foreign = await writeKeyedCert(dir, 'foreign', await newTestClientCert(other, 'carapace'));
    await expect(loadEtcdClientTls({ ca: pki.ca, ...foreign })).resolves.toBeDefined();
  });
});
