import { describe, expect, it } from 'vitest';
import { isCarapaceError } from '../model/errors.js';
import { checkStoreFlags, isLoopbackEndpoint, parseStoreUrl, type StoreFlags } from './url.js';

describe('parseStoreUrl', () => {
  it('parses sqlite:PATH, absolute or relative', () => {
    expect(parseStoreUrl('sqlite:/var/lib/carapace/store.db')).toEqual({ kind: 'sqlite', path: '/var/lib/carapace/store.db' });
    expect(parseStoreUrl('sqlite:state/store.db')).toEqual({ kind: 'sqlite', path: 'state/store.db' });
    expect(parseStoreUrl('sqlite::memory:')).toEqual({ kind: 'sqlite', path: ':memory:' });
  });

  it('parses etcd://HOST:PORT lists into http endpoints, in order', () => {
    expect(parseStoreUrl('etcd://127.0.0.1:2379')).toEqual({ kind: 'etcd', endpoints: ['http://127.0.0.1:2379'], tls: false });
    expect(parseStoreUrl('etcd://etcd-1.internal:2379,etcd-2.internal:2379,10.0.0.3:12379')).toEqual({
      kind: 'etcd',
      endpoints: ['http://etcd-1.internal:2379', 'http://etcd-2.internal:2379', 'http://10.0.0.3:12379'],
      tls: false,
    });
    expect(parseStoreUrl('etcd://[::1]:2379,[fd00::2]:2379')).toEqual({ kind: 'etcd', endpoints: ['http://[::1]:2379', 'http://[fd00::2]:2379'], tls: false });
  });

  it('parses etcds://HOST:PORT lists into https endpoints with tls', () => {
    expect(parseStoreUrl('etcds://127.0.0.1:2379')).toEqual({ kind: 'etcd', endpoints: ['https://127.0.0.1:2379'], tls: true });
    expect(parseStoreUrl('etcds://etcd-1.internal:2379,10.0.0.3:12379,[fd00::2]:2379')).toEqual({
      kind: 'etcd',
      endpoints: ['https://etcd-1.internal:2379', 'https://10.0.0.3:12379', 'https://[fd00::2]:2379'],
      tls: true,
    });
  });

  it.each([
    ['', /unknown scheme/],
    ['/var/lib/store.db', /unknown scheme/],
    ['postgres://db:5432', /unknown scheme/],
    ['ETCD://h:2379', /unknown scheme/],
    ['sqlite:', /path is empty/],
    ['sqlite:a\0b', /NUL/],
    ['etcd://', /no HOST:PORT/],
    ['etcd://h', /"h" is not HOST:PORT/],
    ['etcd://h:', /not HOST:PORT/],
    ['etcd://:2379', /not HOST:PORT/],
    ['etcd://h:2379,', /"" is not HOST:PORT/],
    ['etcd://h:2379, g:2379', /" g:2379" is not HOST:PORT/],
    ['etcd://http://h:2379', /not HOST:PORT/],
    ['etcd://h:2379/path', /not HOST:PORT/],
    ['etcd://user@h:2379', /not HOST:PORT/],
    ['etcd://h:0', /port 0 is out of range/],
    ['etcd://h:65536', /port 65536 is out of range/],
    ['etcd://::1:2379', /not HOST:PORT/],
    ['etcd://h:2379,h:2379', /listed twice/],
    ['etcds://', /no HOST:PORT/],
    ['etcds://h', /"h" is not HOST:PORT/],
    ['etcds://https://h:2379', /not HOST:PORT/],
    ['etcds://h:70000', /port 70000 is out of range/],
    ['etcds://h:2379,h:2379', /listed twice/],
    ['ETCDS://h:2379', /unknown scheme/],
    ['etcdss://h:2379', /unknown scheme/],
    ['etcds:h:2379', /unknown scheme/],
  ])('rejects %j with CARAPACE_E_BAD_STORE_URL', (url, why) => {
    let err: unknown;
    try {
      parseStoreUrl(url);
    } catch (e) {
      err = e;
    }
    expect(isCarapaceError(err, 'CARAPACE_E_BAD_STORE_URL')).toBe(true);
    expect((err as Error).message).toMatch(why); // asserted a CarapaceError above
    expect((err as Error).message).toContain('use sqlite:PATH, etcds://HOST:PORT[,HOST:PORT...] (TLS with client certificates) or etcd://HOST:PORT[,HOST:PORT...] (plain)');
    expect((err as { details: unknown }).details).toEqual([{ path: '--store', message: expect.any(String) }]); // asserted a CarapaceError above
  });
});

describe('isLoopbackEndpoint', () => {
  it.each([
    ['http://127.0.0.1:2379', true],
    ['https://127.8.9.10:2379', true],
    ['http://localhost:2379', true],
    ['http://[::1]:2379', true],
    ['http://10.0.0.1:2379', false],
    ['http://192.0.2.1:2379', false],
    ['http://0.0.0.0:2379', false],
    ['http://[fd00::1]:2379', false],
    ['http://[::ffff:127.0.0.1]:2379', false],
    ['http://etcd.internal:2379', false],
    ['http://127.0.0.1.example.com:2379', false],
    ['http://localhost.example.com:2379', false],
  ])('%s: %s', (endpoint, loopback) => {
    expect(isLoopbackEndpoint(endpoint)).toBe(loopback);
  });
});

describe('checkStoreFlags', () => {
  const files: StoreFlags = { etcdCa: 'ca.crt', etcdCert: 'client.crt', etcdKey: 'client.key' };
  function refusal(url: string, flags: StoreFlags): { code: string; message: string; details: { path: string; message: string }[] } {
    try {
      checkStoreFlags(parseStoreUrl(url), flags);
    } catch (e) {
      if (isCarapaceError(e)) return { code: e.code, message: e.message, details: e.details };
      throw e;
    }
    throw new Error(`${url} with ${JSON.stringify(flags)} was accepted`);
  }

  it('takes etcds:// with all three certificate flags', () => {
    expect(checkStoreFlags(parseStoreUrl('etcds://10.0.0.1:2379'), files)).toEqual({ kind: 'etcd-tls', ca: 'ca.crt', cert: 'client.crt', key: 'client.key' });
  });

  it('refuses etcds:// without the certificate flags, naming each missing one', () => {
    const none = refusal('etcds://10.0.0.1:2379', {});
    expect(none.code).toBe('CARAPACE_E_STORE_FLAGS');
    expect(none.message).toMatch(/give --etcd-ca FILE, --etcd-cert FILE, --etcd-key FILE/);
    expect(none.details.map((d) => d.path)).toEqual(['--etcd-ca', '--etcd-cert', '--etcd-key']);
    const noKey = refusal('etcds://10.0.0.1:2379', { etcdCa: 'ca.crt', etcdCert: 'c.crt' });
    expect(noKey.details).toEqual([{ path: '--etcd-key', message: 'missing' }]);
    expect(refusal('etcds://10.0.0.1:2379', { ...files, etcdKey: '' }).details).toEqual([{ path: '--etcd-key', message: 'missing' }]);
  });

  it('refuses certificate flags with a plain etcd:// or sqlite: URL, and says how to write the etcds:// URL', () => {
    const plain = refusal('etcd://10.0.0.1:2379,10.0.0.2:2379', { etcdCa: 'ca.crt' });
    expect(plain.code).toBe('CARAPACE_E_STORE_FLAGS');
    expect(plain.message).toContain('etcds://10.0.0.1:2379,10.0.0.2:2379');
    expect(plain.details).toEqual([{ path: '--etcd-ca', message: 'not for this store URL (etcd://)' }]);
    expect(refusal('etcd://127.0.0.1:2379', files).details.map((d) => d.path)).toEqual(['--etcd-ca', '--etcd-cert', '--etcd-key']);
    const sqlite = refusal('sqlite:/var/lib/c/store.db', { etcdKey: 'k', insecureStore: true });
    expect(sqlite.code).toBe('CARAPACE_E_STORE_FLAGS');
    expect(sqlite.details.map((d) => d.path)).toEqual(['--etcd-key', '--insecure-store']);
  });

  it('refuses --insecure-store with etcds://', () => {
    const r = refusal('etcds://10.0.0.1:2379', { ...files, insecureStore: true });
    expect(r.code).toBe('CARAPACE_E_STORE_FLAGS');
    expect(r.details.map((d) => d.path)).toEqual(['--etcd-ca', '--etcd-cert', '--etcd-key', '--insecure-store']);
  });

  it('refuses plain etcd on a network address without --insecure-store, and says why', () => {
    for (const url of ['etcd://192.0.2.1:2379', 'etcd://127.0.0.1:2379,192.0.2.1:2379', 'etcd://etcd.internal:2379', 'etcd://localhost.example.com:2379']) {
      const r = refusal(url, {});
      expect(r.code).toBe('CARAPACE_E_INSECURE_STORE');
      expect(r.message).toMatch(/cluster CA's private key, the API token hashes and every tenant's objects/);
      expect(r.message).toMatch(/etcds:\/\/HOST:PORT with --etcd-ca, --etcd-cert and --etcd-key/);
      expect(r.message).not.toContain('127.0.0.1'); // only the network members are named
      expect(r.details).toEqual([{ path: '--store', message: 'plain etcd:// on a non-loopback address' }]);
    }
    expect(checkStoreFlags(parseStoreUrl('etcd://192.0.2.1:2379'), { insecureStore: true })).toEqual({ kind: 'etcd-plain', loopback: false });
  });

  it('lets plain etcd on loopback through (development, tests), saying it is loopback', () => {
    expect(checkStoreFlags(parseStoreUrl('etcd://127.0.0.1:2379,localhost:2380,[::1]:2381'), {})).toEqual({ kind: 'etcd-plain', loopback: true });
    expect(checkStoreFlags(parseStoreUrl('etcd://127.0.0.1:2379'), { insecureStore: true })).toEqual({ kind: 'etcd-plain', loopback: true });
    expect(checkStoreFlags(parseStoreUrl('sqlite:/x.db'), {})).toEqual({ kind: 'sqlite' });
  });
});
