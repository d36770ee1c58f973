/**
 * The store URL: how a server is told which Store to open (a flag or config value).
 *
 *   sqlite:PATH                         the embedded SQLite store in file PATH
 *   etcds://HOST:PORT[,HOST:PORT...]    an etcd cluster over TLS with client certificates
 *                                       (the members' https client addresses)
 *   etcd://HOST:PORT[,HOST:PORT...]     an etcd cluster in plain text without authentication
 *                                       (loopback, or a network nobody else is on)
 *
 * Parsing and the checks that need no I/O (pure): which flags fit which URL, and whether a
 * plain etcd is on loopback. Reading the certificate files and opening the store is the
 * caller's job (`etcd-tls.ts`, `server/run.ts`).
 */
import { CarapaceError, type FieldIssue } from '../model/errors.js';

/** A parsed store URL; `endpoints` are ready for `openEtcdStore` (`https://` when `tls`). */
export type StoreUrl = { kind: 'sqlite'; path: string } | { kind: 'etcd'; endpoints: string[]; tls: boolean };

/** A hostname, an IPv4 address, or a bracketed IPv6 address, then `:PORT`. */
const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$/;

/** The accepted forms, as error messages name them. */
export const STORE_URL_FORMS = 'sqlite:PATH, etcds://HOST:PORT[,HOST:PORT...] (TLS with client certificates) or etcd://HOST:PORT[,HOST:PORT...] (plain)';

/**
 * Parse `sqlite:PATH`, `etcds://HOST:PORT,...` or `etcd://HOST:PORT,...`. Throws
 * CarapaceError CARAPACE_E_BAD_STORE_URL naming what is wrong and the accepted forms.
 */
export function parseStoreUrl(url: string): StoreUrl {
  const bad = (why: string): CarapaceError => new CarapaceError('CARAPACE_E_BAD_STORE_URL', `bad store URL ${JSON.stringify(url)}: ${why}; use ${STORE_URL_FORMS}`, [{ path: '--store', message: why }]);
  if (typeof url !== 'string') throw bad('not a string');
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    if (path === '') throw bad('the path is empty');
    if (path.includes('\0')) throw bad('the path contains a NUL byte');
    return { kind: 'sqlite', path };
  }
  const scheme = /^(etcds?):\/\//.exec(url)?.[1];
  if (scheme !== undefined) {
    const tls = scheme === 'etcds';
    const list = url.slice(scheme.length + 3);
    if (list === '') throw bad('no HOST:PORT given');
    const endpoints: string[] = [];
    for (const hostPort of list.split(',')) {
      const m = HOST_PORT.exec(hostPort);
      if (!m) throw bad(`${JSON.stringify(hostPort)} is not HOST:PORT`);
      const port = Number(m[2]);
      if (port < 1 || port > 65535) throw bad(`port ${m[2]} is out of range`);
      const endpoint = `${tls ? 'https' : 'http'}://${m[1]}:${port}`;
      if (endpoints.includes(endpoint)) throw bad(`${hostPort} is listed twice`);
      endpoints.push(endpoint);
    }
    return { kind: 'etcd', endpoints, tls };
  }
  throw bad('unknown scheme');
}

/**
 * True for an endpoint whose host is a loopback address written out: `127.0.0.0/8`, `[::1]`
 * or `localhost`. Other names are not looked up: what a name resolves to can change after
 * the check, so a name counts as a network address.
 */
export function isLoopbackEndpoint(endpoint: string): boolean {
  const host = endpoint.replace(/^[a-z]+:\/\//, '').replace(/:\d+$/, '');
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** The store flags given beside `--store` (file names as given; read later). */
export interface StoreFlags {
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  /** `--insecure-store`: plain etcd on a network address is accepted. */
  insecureStore?: boolean;
}

/** What `checkStoreFlags` decided: the certificate files to load (etcds), or a plain etcd's kind of address. */
export type StoreSecurity = { kind: 'sqlite' } | { kind: 'etcd-tls'; ca: string; cert: string; key: string } | { kind: 'etcd-plain'; loopback: boolean };

/**
 * Checks the store flags against the parsed URL before anything is read or opened:
 * - `etcds://` needs all three of `--etcd-ca`, `--etcd-cert`, `--etcd-key`
 *   (CARAPACE_E_STORE_FLAGS, one field issue per missing flag);
 * - those flags with a plain `etcd://` or `sqlite:` URL are refused (they would be ignored,
 *   and an operator who gave them believes the store is authenticated), as is
 *   `--insecure-store` with anything but a plain `etcd://` (CARAPACE_E_STORE_FLAGS);
 * - a plain `etcd://` with a member not on loopback is refused without `--insecure-store`
 *   (CARAPACE_E_INSECURE_STORE): the store holds the cluster CA's key, token hashes and
 *   every tenant's objects, and plain etcd lets anyone who reaches its port read and write it.
 */
export function checkStoreFlags(u: StoreUrl, f: StoreFlags): StoreSecurity {
  const certFlags: [string, string | undefined][] = [
    ['--etcd-ca', f.etcdCa],
    ['--etcd-cert', f.etcdCert],
    ['--etcd-key', f.etcdKey],
  ];
  const given = certFlags.filter(([, v]) => v !== undefined);
  const refuseExtra = (why: string): CarapaceError =>
    new CarapaceError(
      'CARAPACE_E_STORE_FLAGS',
      why,
      [...given.map(([flag]) => flag), ...(f.insecureStore ? ['--insecure-store'] : [])].map((path): FieldIssue => ({ path, message: `not for this store URL (${u.kind === 'sqlite' ? 'sqlite:' : u.tls ? 'etcds://' : 'etcd://'})` })),
    );
  if (u.kind === 'sqlite') {
    if (given.length > 0 || f.insecureStore) throw refuseExtra('--etcd-ca, --etcd-cert, --etcd-key and --insecure-store are for an etcd store; this store is sqlite:');
    return { kind: 'sqlite' };
  }
  if (u.tls) {
    if (f.insecureStore) throw refuseExtra('--insecure-store is for a plain etcd:// store; an etcds:// store is authenticated, drop the flag');
    const missing = certFlags.filter(([, v]) => v === undefined || v === '');
    if (missing.length > 0) {
      throw new CarapaceError(
        'CARAPACE_E_STORE_FLAGS',
        `an etcds:// store needs the CA that signed etcd's certificate and this process's client certificate and key: give ${missing.map(([flag]) => `${flag} FILE`).join(', ')}`,
        missing.map(([path]) => ({ path, message: 'missing' })),
      );
    }
    // All three are non-empty strings (checked just above).
    return { kind: 'etcd-tls', ca: f.etcdCa as string, cert: f.etcdCert as string, key: f.etcdKey as string };
  }
  if (given.length > 0) throw refuseExtra(`--etcd-ca, --etcd-cert and --etcd-key are for an etcds:// store (TLS with client certificates); write the URL as etcds://${u.endpoints.map((e) => e.replace(/^http:\/\//, '')).join(',')}`);
  const remote = u.endpoints.filter((e) => !isLoopbackEndpoint(e));
  if (remote.length > 0 && !f.insecureStore) {
    throw new CarapaceError(
      'CARAPACE_E_INSECURE_STORE',
      `refusing plain etcd at ${remote.map((e) => e.replace(/^http:\/\//, '')).join(', ')}, which is not loopback: the store holds the cluster CA's private key, the API token hashes and every tenant's objects, and plain etcd lets anyone who reaches its port read and change them. Use etcds://HOST:PORT with --etcd-ca, --etcd-cert and --etcd-key (etcd with --client-cert-auth), or give --insecure-store if nobody else is on this network`,
      [{ path: '--store', message: 'plain etcd:// on a non-loopback address' }],
    );
  }
  return { kind: 'etcd-plain', loopback: remote.length === 0 };
}
