/**
 * `carapace server` and `carapace agent`: the control plane and a host node as separate
 * processes. The server opens the store named by URL (`sqlite:PATH` for one process,
 * `etcd://H:P,...` for several); the agent joins a server's agent API (`--join`, mutual TLS)
 * or opens the same store (`--store`). Both run until SIGTERM or SIGINT and then stop
 * gracefully; workloads keep running.
 */
import { loadKeyring } from '../keyring/keyring.js';
import { serverKeyring } from './keyring.js';

/** For `carapace keys rotate` (the CLI reaches the keyring through the server layer). */
export { addPrimaryKey } from '../keyring/keyring.js';
/** For `carapace audit verify --against FILE` (the CLI reaches the audit code through the server layer). */
export { readAuditCopy } from '../audit/copy.js';
import { lookup } from 'node:dns/promises';
import { mkdir } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { setMaxListeners } from 'node:events';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { createHostNode, defaultHostName, type HostNodeOptions } from '../agent/node.js';
import type { MaterialSource } from '../agent/instance-extras.js';
import { instanceMaterial } from '../core/secrets.js';
import { joinCluster, keepCertificateFresh, loadCredentials, type AgentCredentials } from '../agentapi/enroll.js';
import { RemoteStore } from '../agentapi/remote-store.js';
import { serveLogRequests } from '../agentapi/log-uploader.js';
import { readFileSync } from 'node:fs';
import { certIdentity } from '../pki/x509.js';
import { loadServingCert } from '../pki/serving.js';
import { CarapaceError } from '../model/errors.js';
import { Resources } from '../core/resources.js';
import { openEtcdStore, type EtcdStore } from '../store/etcd.js';
import { openSqliteStore } from '../store/sqlite.js';
import type { Store } from '../store/store.js';
import { loadEtcdClientTls } from '../store/etcd-tls.js';
import { checkStoreFlags, parseStoreUrl, type StoreFlags } from '../store/url.js';
import { startControlServer, systemEnv } from './server.js';

/** The store flags of `server` and `agent` (the CLI reaches the store layer through this one). */
export type { StoreFlags };

/**
 * Opens the store a URL names, with the store flags beside it (`--etcd-ca/--etcd-cert/
 * --etcd-key` for `etcds://`, `--insecure-store`). Everything that can be refused is refused
 * before connecting: flags that do not fit the URL, plain etcd on a network address without
 * `--insecure-store`, unreadable or wrong certificate files, an expired client certificate.
 */
export async function openStoreUrl(url: string, logger: Logger, flags: StoreFlags = {}): Promise<Store> {
  const u = parseStoreUrl(url);
  const security = checkStoreFlags(u, flags);
  if (u.kind === 'sqlite') return openSqliteStore({ path: u.path, logger });
  if (security.kind === 'etcd-tls') {
    const tls = await loadEtcdClientTls(security);
    return openEtcdStore({ endpoints: u.endpoints, tls, logger });
  }
  if (security.kind === 'etcd-plain' && security.loopback) {
    logger.warn({ endpoints: u.endpoints }, 'plain etcd on loopback: no TLS, no client authentication; fine for development and tests, use etcds:// with client certificates on a network');
  } else {
    logger.warn({ endpoints: u.endpoints }, 'plain etcd on a network address (--insecure-store): anyone who reaches its port can read and change the whole store; use etcds:// with client certificates');
  }
  return openEtcdStore({ endpoints: u.endpoints, logger });
}

/** Revisions of history kept for watchers to resume from (etcd keeps all until compacted). */
const HISTORY = 10_000;

/** Compacts an etcd store's history every few minutes, like the SQLite store does on its own. */
async function compactLoop(store: EtcdStore, signal: AbortSignal, logger: Logger): Promise<void> {
  while (!signal.aborted) {
    await delay(5 * 60_000, undefined, { signal }).catch(() => undefined); // aborted: the loop ends
    if (signal.aborted) return;
    const rev = await store.revision().catch(() => 0);
    if (rev > HISTORY) await store.compact(rev - HISTORY).catch((err: unknown) => logger.warn({ err }, 'store compaction failed'));
  }
}

/** Runs until a signal; resolves after a graceful stop. */
function untilSignal(ac: AbortController): Promise<void> {
  return new Promise((resolve) => {
    const stop = (): void => {
      ac.abort();
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}

export interface ServerCommandOptions {
  store?: string;
  /** `--etcd-ca/--etcd-cert/--etcd-key` and `--insecure-store`, checked against `store`. */
  storeFlags?: StoreFlags;
  stateDir: string;
  port: number;
  listen: string;
  /** The agent API (mutual TLS); absent: off. */
  agentApi?: { port: number; listen?: string; advertise?: string[] };
  /** The keyring file (`keyId:base64key` lines, mode 0600); absent: CARAPACE_KEYRING, else STATE_DIR/keyring (server/keyring.ts). */
  keyring?: string;
  /** The same under its older name (`--secrets-keyring`). */
  secretsKeyring?: string;
  /** Off-store copies of the audit checkpoints (`--audit-copy FILE`). */
  auditCopies?: string[];
  /** The operator's certificate chain and key for the API (PEM files); absent: one from the cluster CA. */
  tlsCert?: string;
  tlsKey?: string;
  /** Names and addresses clients and agents use to reach this server (added to the certificates). */
  advertise?: string[];
}

/** `carapace server`: the API, controller and host monitor; no containers on this host. */
export async function runServer(o: ServerCommandOptions): Promise<void> {
  const logger = pino({ level: process.env['CARAPACE_LOG_LEVEL'] ?? 'info' });
  const url = o.store ?? `sqlite:${join(o.stateDir, 'store.db')}`;
  // A store URL or flags that will be refused are refused before anything is made on disk.
  checkStoreFlags(parseStoreUrl(url), o.storeFlags ?? {});
  // Loaded before anything opens or listens: a bad keyring stops the start with its reason.
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 }); // the default store and keyring live here
  const keyring = await serverKeyring({ ...(o.keyring !== undefined ? { keyring: o.keyring } : {}), ...(o.secretsKeyring !== undefined ? { secretsKeyring: o.secretsKeyring } : {}), stateDir: o.stateDir, logger });
  const store = await openStoreUrl(url, logger, o.storeFlags);
  // Compaction is cluster-wide: only the leader runs it (etcd; SQLite compacts by itself).
  const leaderLoops = 'compact' in store ? [(signal: AbortSignal) => compactLoop(store as EtcdStore, signal, logger)] : []; // only the etcd store has compact()
  // The API is always HTTPS: the operator's certificate (checked now, before anything
  // listens) or one from the cluster CA.
  const cert = o.tlsCert !== undefined || o.tlsKey !== undefined ? await loadServingCert({ certFile: o.tlsCert ?? '', keyFile: o.tlsKey ?? '' }) : undefined;
  const tls = { ...(cert ? { cert } : {}), advertise: o.advertise ?? [] };
  const server = await startControlServer({ store, stateDir: o.stateDir, port: o.port, listen: o.listen, logger, leaderLoops, tls, ...(o.auditCopies ? { auditCopies: o.auditCopies } : {}), ...(o.agentApi ? { agentApi: o.agentApi } : {}), keyring });
  const caNote = server.apiCa
    ? `API CA fingerprint (sha256): ${server.apiCa.fingerprint}\n  (saved to ${join(o.stateDir, 'api-ca.crt')}); from another machine:\n  carapace login https://<this-server>:${server.port} --ca-fingerprint ${server.apiCa.fingerprint} --token TOKEN`
    : 'the API certificate (--tls-cert) carries no CA certificate: clients need --ca-file with the CA that signed it';
  process.stderr.write(`\nAPI on ${server.url} (HTTPS, ${cert ? 'the certificate of --tls-cert' : 'a certificate from the cluster CA'}).\n${caNote}\n\n`);
  logger.info({ url: server.url, certificate: cert ? 'operator' : 'cluster CA', ...(server.apiCa ? { caFingerprint: server.apiCa.fingerprint } : {}) }, 'API listening (HTTPS)');
  const ac = new AbortController();
  setMaxListeners(100, ac.signal);
  logger.info({ url: server.url, store: url.replace(/\/\/.*@/, '//'), stateDir: o.stateDir }, 'carapace server is up');
  const loops = server.run(ac.signal);
  loops.catch((err: unknown) => {
    logger.fatal({ err }, 'control loop crashed');
    ac.abort();
  });
  await Promise.race([untilSignal(ac), loops.then(() => undefined)]);
  ac.abort();
  await server.close();
  await loops.catch(() => undefined);
  await store.close();
  logger.info('carapace server stopped');
}

export interface AgentCommandOptions extends Omit<HostNodeOptions, 'resources' | 'env' | 'logger'> {
  /** Reach the store directly (`etcds://…` with client certificates, or `etcd://…` on loopback or with `--insecure-store`)… */
  store?: string;
  /** With `store`: `--etcd-ca/--etcd-cert/--etcd-key` and `--insecure-store`. */
  storeFlags?: StoreFlags;
  /** …or join a server's agent API (`https://HOST:PORT`) with a join token (the normal way). */
  join?: string;
  token?: string;
  /** With `store`: the servers' keyring file, so Secrets of this host's instances can be decrypted here (`--keyring`, or `--secrets-keyring`: the flag named in errors). */
  keyring?: { file: string; flag: string };
}

/**
 * The IPv4 addresses of the hosts named in store and server URLs (`etcd://h1:2379,h2:2379`,
 * `https://server:7443`), looked up once at start. A name that does not resolve is skipped:
 * the agent then cannot reach it either.
 */
async function controlPlaneAddresses(urls: string[]): Promise<string[]> {
  const hosts = urls.flatMap((u) => u.replace(/^[a-z0-9+]+:\/\//i, '').split('/')[0]?.split(',') ?? []).map((hp) => hp.replace(/:\d+$/, '').replace(/^\[|\]$/g, ''));
  const found = await Promise.all(hosts.map((h) => lookup(h, { family: 4, all: true }).then((r) => r.map((a) => a.address)).catch(() => [] as string[])));
  return [...new Set(found.flat())].filter((a) => !a.startsWith('127.'));
}

/** `carapace agent`: this host's agent, cells and machines, over the cluster's store or agent API. */
export async function runAgent(o: AgentCommandOptions): Promise<void> {
  const logger = pino({ level: process.env['CARAPACE_LOG_LEVEL'] ?? 'info' });
  const { store: url, storeFlags, join: joinUrl, token, keyring: keyringFile, ...nodeOptions } = o;
  // Loaded before anything starts: a bad keyring stops the agent with its reason.
  const keyring = keyringFile !== undefined ? await loadKeyring(keyringFile.file, keyringFile.flag) : undefined;
  const hostName = o.hostName ?? defaultHostName();
  let store: Store;
  let remote: { store: RemoteStore; creds: AgentCredentials } | undefined;
  if (joinUrl !== undefined) {
    // Credentials from an earlier join are reused; a token is only needed the first time.
    const saved = await loadCredentials(o.stateDir);
    const creds = saved && saved.server === joinUrl.replace(/\/+$/, '') && certIdentity(saved.cert).commonName === `host:${hostName}` ? saved : undefined;
    if (!creds && !token) throw new CarapaceError('CARAPACE_E_BAD_JOIN_TOKEN', `this host has not joined ${joinUrl} yet: give --join-token (from carapace join-token create)`);
    const c = creds ?? (await joinCluster({ server: joinUrl, token: token ?? '', host: hostName, stateDir: o.stateDir }));
    if (!creds) logger.info({ server: c.server, host: hostName }, 'joined the cluster');
    const rs = new RemoteStore({ server: c.server, ca: c.ca, cert: c.cert, key: c.key });
    remote = { store: rs, creds: c };
    store = rs;
  } else if (url !== undefined) {
    store = await openStoreUrl(url, logger, storeFlags);
  } else {
    throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'carapace agent needs --join https://SERVER:PORT (with --join-token the first time) or --store URL');
  }
  // The store's and the server's addresses are infrastructure: no workload may reach them.
  const infrastructure = [...(nodeOptions.infrastructure ?? []), ...(await controlPlaneAddresses([...(url ? [url] : []), ...(joinUrl ? [joinUrl] : [])]))];
  const resources = new Resources(store, undefined, systemEnv);
  // A joined agent gets its instances' secrets from the agent API (which checks they are
  // placed here); one on the store directly decrypts them with the keyring it was given
  // (without one: configs only, and a clear error for instances that use secrets).
  const rs = remote?.store;
  const material: MaterialSource = rs ? (inst) => rs.instanceMaterial(inst.metadata.tenant ?? '', inst.metadata.name) : (inst) => instanceMaterial(resources, keyring, inst);
  const node = await createHostNode({ ...nodeOptions, infrastructure, hostName, resources, env: systemEnv, logger, material });
  const ac = new AbortController();
  setMaxListeners(100, ac.signal);
  const pki = join(o.stateDir, 'pki');
  const loops = Promise.all([
    node.start(ac.signal),
    ...(remote
      ? [
          keepCertificateFresh({ stateDir: o.stateDir, store: remote.store, creds: remote.creds, logger, signal: ac.signal }),
          // Read from disk at each reconnect: a renewed certificate is picked up.
          serveLogRequests({ server: remote.creds.server, tls: () => ({ ca: readFileSync(join(pki, 'ca.crt'), 'utf8'), cert: readFileSync(join(pki, 'agent.crt'), 'utf8'), key: readFileSync(join(pki, 'agent.key'), 'utf8') }), local: node.agent, logger }, ac.signal),
        ]
      : []),
  ]).then(() => undefined);
  loops.catch((err: unknown) => {
    logger.fatal({ err }, 'agent loop crashed');
    ac.abort();
  });
  logger.info({ host: node.hostName, stateDir: o.stateDir }, 'carapace agent is up');
  await Promise.race([untilSignal(ac), loops]);
  ac.abort();
  await loops.catch(() => undefined);
  await store.close();
  logger.info('carapace agent stopped (its workloads keep running)');
}
