/**
 * The store URL: how a server is told which Store to open (a flag or config value).
 *
 *   sqlite:PATH                        the embedded SQLite store in file PATH
 *   etcd://HOST:PORT[,HOST:PORT...]    an etcd cluster, by its members' plain-HTTP client addresses
 *
 * Parsing only (pure): opening the store is the caller's job.
 */
import { CarapaceError } from '../model/errors.js';

/** A parsed store URL; `endpoints` are ready for `openEtcdStore`. */
export type StoreUrl = { kind: 'sqlite'; path: string } | { kind: 'etcd'; endpoints: string[] };

/** A hostname, an IPv4 address, or a bracketed IPv6 address, then `:PORT`. */
const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$/;

/**
 * Parse `sqlite:PATH` or `etcd://HOST:PORT,...`. Throws CarapaceError
 * CARAPACE_E_BAD_STORE_URL naming what is wrong and the accepted forms.
 */
export function parseStoreUrl(url: string): StoreUrl {
  const bad = (why: string): CarapaceError =>
    new CarapaceError('CARAPACE_E_BAD_STORE_URL', `bad store URL ${JSON.stringify(url)}: ${why}; use sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]`);
  if (typeof url !== 'string') throw bad('not a string');
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    if (path === '') throw bad('the path is empty');
    if (path.includes('\0')) throw bad('the path contains a NUL byte');
    return { kind: 'sqlite', path };
  }
  if (url.startsWith('etcd://')) {
    const list = url.slice('etcd://'.length);
    if (list === '') throw bad('no HOST:PORT given');
    const endpoints: string[] = [];
    for (const hostPort of list.split(',')) {
      const m = HOST_PORT.exec(hostPort);
      if (!m) throw bad(`${JSON.stringify(hostPort)} is not HOST:PORT`);
      const port = Number(m[2]);
      if (port < 1 || port > 65535) throw bad(`port ${m[2]} is out of range`);
      const endpoint = `http://${m[1]}:${port}`;
      if (endpoints.includes(endpoint)) throw bad(`${hostPort} is listed twice`);
      endpoints.push(endpoint);
    }
    return { kind: 'etcd', endpoints };
  }
  throw bad('unknown scheme');
}
