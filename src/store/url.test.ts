import { describe, expect, it } from 'vitest';
import { isCarapaceError } from '../model/errors.js';
import { parseStoreUrl } from './url.js';

describe('parseStoreUrl', () => {
  it('parses sqlite:PATH, absolute or relative', () => {
    expect(parseStoreUrl('sqlite:/var/lib/carapace/store.db')).toEqual({ kind: 'sqlite', path: '/var/lib/carapace/store.db' });
    expect(parseStoreUrl('sqlite:state/store.db')).toEqual({ kind: 'sqlite', path: 'state/store.db' });
    expect(parseStoreUrl('sqlite::memory:')).toEqual({ kind: 'sqlite', path: ':memory:' });
  });

  it('parses etcd://HOST:PORT lists into http endpoints, in order', () => {
    expect(parseStoreUrl('etcd://127.0.0.1:2379')).toEqual({ kind: 'etcd', endpoints: ['http://127.0.0.1:2379'] });
    expect(parseStoreUrl('etcd://etcd-1.internal:2379,etcd-2.internal:2379,10.0.0.3:12379')).toEqual({
      kind: 'etcd',
      endpoints: ['http://etcd-1.internal:2379', 'http://etcd-2.internal:2379', 'http://10.0.0.3:12379'],
    });
    expect(parseStoreUrl('etcd://[::1]:2379,[fd00::2]:2379')).toEqual({ kind: 'etcd', endpoints: ['http://[::1]:2379', 'http://[fd00::2]:2379'] });
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
  ])('rejects %j with CARAPACE_E_BAD_STORE_URL', (url, why) => {
    let err: unknown;
    try {
      parseStoreUrl(url);
    } catch (e) {
      err = e;
    }
    expect(isCarapaceError(err, 'CARAPACE_E_BAD_STORE_URL')).toBe(true);
    expect((err as Error).message).toMatch(why); // asserted a CarapaceError above
    expect((err as Error).message).toContain('use sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]');
  });
});
