/**
 * The control plane as one process: the API (fastify), the workload controller, the host
 * monitor (host leases -> failover), token cache and timed audit checkpoints, over a Store.
 * `carapace up` runs it beside a host node over the embedded SQLite store; `carapace server`
 * runs it alone, with the agent API (agentapi/) through which agents on other hosts join and
 * reach the store, and several of them may share one etcd: all serve the API, the elected
 * leader alone runs the loops (leader.ts). It mints the first cluster-admin token once per
 * store.
 */
import { NetworkViewController } from '../control/network-view.js';
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { buildApi, type LogSource } from '../api/server.js';
import { AuditLog } from '../audit/log.js';
import { TokenCache } from '../auth/cache.js';
import type { Env } from '../core/actions.js';
import { ControlPlane } from '../core/control-plane.js';
import { bootstrapToken, newTokenId } from '../core/api-tokens.js';
import { createJoinToken } from '../core/agent-trust.js';
import { auditEntry, SYSTEM } from '../core/audit-context.js';
import { CLUSTER_CA_TARGET, sealClusterCa } from '../core/keys.js';
import { serverKeyring } from './keyring.js';
import { Resources } from '../core/resources.js';
import { WorkloadController } from '../control/controller.js';
import { HostMonitor } from '../control/host-monitor.js';
import { registerStateGauges } from '../metrics/metrics.js';
import type { Store } from '../store/store.js';
import { buildAgentApi } from '../agentapi/server.js';
import { LogHub } from '../agentapi/logs.js';
import { endSession } from '../exec/session.js';
import { CarapaceError } from '../model/errors.js';
import type { LogLine, LogOptions } from '../runtime/driver.js';
import { JOIN_TOKEN_PREFIX } from '../model/keys.js';
import { ensureClusterCa, fingerprintOf, issueServerCertificate, type ClusterCa, type KeyedCert, type ReadCa } from '../pki/x509.js';
import { pemCertificates, type ServingCert } from '../pki/serving.js';
import { writeCliConfig } from './cli-config.js';
import { Leadership } from './leader.js';
import type { Keyring } from '../keyring/keyring.js';

/** The real clock and random ids: the only place the running system makes them. */
export const systemEnv: Env = {
  now: () => new Date().toISOString(),
  newId: () => randomUUID(),
};

export interface ControlServerOptions {
  store: Store;
  /** Audit signing keys and the admin token file live here. */
  stateDir: string;
  port: number;
  listen?: string;
  logger: Logger;
  env?: Env;
  /** Where instance logs and machine consoles of `localHost` come from (the local agent in the all-in-one); other hosts' come through the agent API. */
  logs?: LogSource;
  localHost?: string;
  /** How long an empty cell lives before it is retired (default 60 s; env CARAPACE_CELL_GRACE_MS). */
  cellGraceMs?: number;
  /** Host lease TTL: a host whose lease stands still this long is lost (default 3 s; env CARAPACE_HOST_LEASE_TTL_MS). */
  hostLeaseTtlMs?: number;
  /** Write the admin token (and the pinned CA) to the CLI config of this machine when it is minted (default true). */
  saveCliConfig?: boolean;
  /**
   * HTTPS for the API: `cert`, the operator's (`--tls-cert/--tls-key`, checked by
   * `loadServingCert`), or else a certificate from the cluster CA for this machine's addresses
   * and the `advertise` names, made at each start; the chain (leaf, then CA) is sent so clients
   * can pin the CA. Absent: plain HTTP (the all-in-one on loopback, in-process tests).
   */
  tls?: { cert?: ServingCert; advertise?: string[] };
  /**
   * The agent API (HTTPS, client certificates from the cluster CA): where agents on other hosts
   * join and reach the control plane. Off when absent. `advertise`: extra addresses (IPs or
   * DNS names) agents use to reach this server, added to its certificate.
   */
  agentApi?: { port: number; listen?: string; advertise?: string[] };
  /** This server's name among the servers sharing the store (default `hostname:port`). */
  serverId?: string;
  /** More loops only the leader runs, besides the controller, host monitor and audit checkpoints (e.g. etcd compaction). */
  leaderLoops?: ((signal: AbortSignal) => Promise<void>)[];
  /** Files every audit checkpoint this server signs is also appended to (`--audit-copy FILE`, off the store: audit/copy.ts). */
  auditCopies?: readonly string[];
  /**
   * The cluster keyring (never in the store): it seals the CA's private key in the store, the
   * audit signing key file and the Secrets. Absent: the one of `serverKeyring` for this state
   * dir (CARAPACE_KEYRING, else STATE_DIR/keyring, made on first start).
   */
  keyring?: Keyring;
}

export interface RunningControlServer {
  url: string;
  port: number;
  resources: Resources;
  controlPlane: ControlPlane;
  audit: AuditLog;
  /**
   * The first cluster-admin token (from this start, or the one saved in the state dir);
   * empty on a server that did not mint it and has no saved copy (another server of the
   * same store did).
   */
  adminToken: string;
  adminTokenCreated: boolean;
  /** `https://127.0.0.1:PORT` of the agent API, when it runs. */
  agentApiUrl?: string;
  /** sha256 of the cluster CA certificate (what join tokens pin). */
  caFingerprint: string;
  /**
   * With TLS: the CA the API's certificate chains to, as clients pin it (PEM and sha256 hex;
   * the cluster CA, or the CA in the operator's chain; absent when that chain has none). Also
   * saved to STATE_DIR/api-ca.crt.
   */
  apiCa?: { pem: string; fingerprint: string };
  /** Leadership among the servers of this store: whether this one runs the loops now. */
  leadership: Leadership;
  /**
   * Runs until `signal` aborts: the token cache always; the controller, host monitor and
   * timed checkpoints (and `leaderLoops`) while this server is the leader.
   */
  run(signal: AbortSignal): Promise<void>;
  /** Stops listening. */
  close(): Promise<void>;
}

function envNumber(name: string): number | undefined {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v >= 0 && process.env[name] !== undefined && process.env[name] !== '' ? v : undefined;
}

/**
 * Logs and consoles: from the local agent for its own host (the all-in-one), from other hosts'
 * agents through the agent API's log hub.
 */
function logSource(resources: Resources, hub: LogHub, local: LogSource | undefined, localHost: string | undefined): LogSource {
  const remote = (host: string, kind: 'instance' | 'machine', tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine> =>
    hub.stream(host, { kind, tenant, name, follow: opts.follow, ...(opts.tail !== undefined ? { tail: opts.tail } : {}) }, opts);
  return {
    async *logs(tenant, name, opts) {
      const inst = await resources.mustGet('Instance', name, tenant);
      if (local && (localHost === undefined || inst.spec.host === localHost)) yield* local.logs(tenant, name, opts);
      else if (inst.spec.host !== '') yield* remote(inst.spec.host, 'instance', tenant, name, opts);
    },
    async *machineLogs(tenant, name, opts) {
      const m = await resources.mustGet('Machine', name, tenant);
      if (local?.machineLogs && (localHost === undefined || m.status.host === localHost)) yield* local.machineLogs(tenant, name, opts);
      else if (m.status.host !== '') yield* remote(m.status.host, 'machine', tenant, name, opts);
    },
    // Exec sessions go where the instance runs, as its logs do.
    async exec(tenant, name, opts, port) {
      const inst = await resources.get('Instance', name, tenant).catch(() => undefined);
      if (!inst || inst.spec.host === '') endSession(port, { error: { code: 'CARAPACE_E_INSTANCE_NOT_RUNNING', message: `instance ${tenant}/${name} is not placed on a host` } });
      else if (local?.exec && (localHost === undefined || inst.spec.host === localHost)) await local.exec(tenant, name, opts, port);
      else await hub.exec(inst.spec.host, { tenant, name, exec: opts }, port);
    },
    // Forwarded connections too: the agent of the instance's host dials the workload.
    async portForward(tenant, name, port) {
      const inst = await resources.mustGet('Instance', name, tenant);
      if (inst.spec.host === '') throw new CarapaceError('CARAPACE_E_INSTANCE_NOT_RUNNING', `instance ${tenant}/${name} is not placed on a host`);
      if (local?.portForward && (localHost === undefined || inst.spec.host === localHost)) return local.portForward(tenant, name, port);
      return hub.portForward(inst.spec.host, { tenant, name, port });
    },
  };
}

/** Starts the API listening and returns the handle; `run` starts the loops. */
export async function startControlServer(o: ControlServerOptions): Promise<RunningControlServer> {
  const env = o.env ?? systemEnv;
  const { store, logger } = o;
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
  const keyring = o.keyring ?? (await serverKeyring({ stateDir: o.stateDir, logger }));
  // The cluster CA (made once per store, its key sealed with the keyring), before anything is
  // written or listens: a server whose keyring lacks the key it is sealed with (servers of one
  // store given different keyrings) stops here, naming it.
  const caRead = await ensureClusterCa(store, keyring, new Date(env.now()));
  // Mutations and the control plane's own actions are recorded in a hash-chained log whose
  // checkpoints are signed with a key generated at first start (its file sealed with the keyring).
  const audit = await AuditLog.open({ store, keyDir: join(o.stateDir, 'audit-keys'), logger, keyring, copies: o.auditCopies ?? [], now: env.now });
  if (audit.copyPaths.length > 0) logger.info({ copies: audit.copyPaths }, 'audit checkpoints are also appended to off-store copies');
  // With env: every instance, cell and machine write carries its usage allocation records.
  const resources = new Resources(store, audit, env);
  const controlPlane = new ControlPlane(resources, env, undefined, keyring);
  const ca = await sealedCa(caRead, resources, keyring, env, logger);
  const cellGraceMs = o.cellGraceMs ?? envNumber('CARAPACE_CELL_GRACE_MS');
  const ttlMs = o.hostLeaseTtlMs ?? envNumber('CARAPACE_HOST_LEASE_TTL_MS');
  const checkpointMs = envNumber('CARAPACE_AUDIT_CHECKPOINT_MS') || 60_000;
  /** What the leader runs, fresh for each term (a stopped controller's work queue stays stopped). */
  const leaderLoops = [
    (signal: AbortSignal) => new WorkloadController({ resources, env, logger, ...(cellGraceMs !== undefined ? { cellGraceMs } : {}) }).start(signal),
    (signal: AbortSignal) => new NetworkViewController({ resources, logger }).start(signal),
    (signal: AbortSignal) => new HostMonitor({ resources, env, logger, ...(ttlMs !== undefined ? { ttlMs } : {}) }).start(signal),
    (signal: AbortSignal) => audit.runCheckpoints(signal, checkpointMs, env.now),
    ...(o.leaderLoops ?? []),
  ];
  registerStateGauges(resources);
  const tokens = new TokenCache(store, logger);
  // Not leading until the leadership exists, once the port is known (it names this server).
  let leading = (): boolean => false;
  const hub = new LogHub();
  const adminToken = await firstAdminToken(resources, env, o.stateDir);
  // The API's certificate (from the cluster CA read above, or the operator's) and, when asked
  // for, the agent API: up before the API answers, so whoever waits for /healthz finds the
  // join token and the CA file written.
  const serving = o.tls ? (o.tls.cert ?? (await serverCertificate(ca, o.tls.advertise ?? []))) : undefined;
  const apiCaPem = o.tls ? (o.tls.cert ? o.tls.cert.caPem : ca.certPem) : undefined;
  const apiCa = apiCaPem !== undefined ? { pem: apiCaPem, fingerprint: fingerprintOf(apiCaPem) } : undefined;
  // Written before the API answers: whoever waits for /healthz finds it (`--ca-file`).
  if (apiCa) await writeFile(join(o.stateDir, 'api-ca.crt'), apiCa.pem);
  const api = buildApi({
    controlPlane,
    store,
    logs: logSource(resources, hub, o.logs, o.localHost),
    logger,
    auth: tokens,
    env,
    audit,
    health: () => ({ leader: leading() }),
    // The chain: leaf then CA (the cluster's; the operator's file as given).
    ...(serving ? { https: { key: serving.keyPem, cert: o.tls?.cert ? serving.certPem : [...pemCertificates(serving.certPem), ...pemCertificates(ca.certPem)].join('') } } : {}),
  });
  if (serving) {
    // A client that refuses our certificate (wrong pin, unknown CA, wrong name) shows up here,
    // with nothing sent: no request, no token.
    api.server.on('tlsClientError', (err: Error, sock: TLSSocket) => logger.warn({ reason: err.message, remote: sock.remoteAddress }, 'API: TLS handshake failed'));
  }
  let agentApi: Awaited<ReturnType<typeof startAgentApi>> | undefined;
  if (o.agentApi) agentApi = await startAgentApi(resources, controlPlane, env, ca, o.agentApi, o.stateDir, logger, hub, keyring);
  const address = await api.listen({ port: o.port, host: o.listen ?? '127.0.0.1' });
  const port = Number(new URL(address).port);
  const url = `${serving ? 'https' : 'http'}://127.0.0.1:${port}`;
  const leadership = new Leadership({ store, serverId: o.serverId ?? `${os.hostname()}:${port}`, logger, loops: leaderLoops });
  leading = () => leadership.leading;
  if (adminToken.created) {
    // Shown once, like every token secret; also saved 0600 for the CLI on this machine.
    const saved =
      o.saveCliConfig === false
        ? 'nowhere else'
        : await writeCliConfig({ server: url, token: adminToken.token, ...(apiCa ? { caFingerprint: apiCa.fingerprint, ca: apiCa.pem } : {}) }).catch((e: unknown) => `not saved: ${(e as Error).message}`); // fs errors are Errors
    process.stderr.write(`\nFirst cluster-admin token (shown once; saved to ${saved} and ${join(o.stateDir, 'admin-token')}):\n  ${adminToken.token}\n\n`);
  }
  return {
    url,
    port,
    resources,
    controlPlane,
    audit,
    adminToken: adminToken.token,
    adminTokenCreated: adminToken.created,
    caFingerprint: ca.fingerprint,
    ...(apiCa ? { apiCa } : {}),
    ...(agentApi ? { agentApiUrl: agentApi.url } : {}),
    leadership,
    async run(signal) {
      await Promise.all([tokens.start(signal), leadership.start(signal)]);
    },
    close: async () => {
      await api.close();
      await agentApi?.app.close();
      await audit.close();
    },
  };
}

/**
 * The cluster CA as read at start; one from before keys were sealed (its key in clear in the
 * store) is sealed now, with its audit record (`pki.ca.sealed`).
 */
async function sealedCa(read: ReadCa, resources: Resources, keyring: Keyring, env: Env, logger: Logger): Promise<ClusterCa> {
  if (read.sealedWith === 'clear') {
    const done = await sealClusterCa(resources, keyring, (action, detail) => auditEntry(SYSTEM, env.now(), action, CLUSTER_CA_TARGET, 'success', detail));
    // Older revisions of pki/ca keep the clear key until the store's history is compacted.
    logger.warn({ keyId: keyring.primary, done }, 'the cluster CA key was in clear in the store: sealed with the keyring (older store revisions and copies still hold it in clear until compacted)');
  }
  return read;
}

/** Every address of this machine agents might use, for the server certificate. */
function localAddresses(): string[] {
  const out = new Set<string>(['127.0.0.1']);
  for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4') out.add(a.address);
  return [...out];
}

const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;

/**
 * A fresh server certificate from the cluster CA for this machine's IPv4 addresses,
 * `localhost`, its host name and the `advertise` names and addresses (the agent API's and the
 * API's, made at each start).
 */
async function serverCertificate(ca: ClusterCa, advertise: string[]): Promise<KeyedCert> {
  const ips = [...new Set([...localAddresses(), ...advertise.filter((a) => IPV4.test(a))])];
  const names = [...new Set(['localhost', os.hostname(), ...advertise.filter((a) => !IPV4.test(a))])];
  return issueServerCertificate(ca, { commonName: 'carapace-server', dnsNames: names, ipAddresses: ips });
}

/**
 * Starts the agent API with a fresh server certificate for this machine's addresses, and
 * makes a first join token when the cluster has none (printed once, saved 0600 to
 * STATE_DIR/join-token).
 */
async function startAgentApi(
  resources: Resources,
  controlPlane: ControlPlane,
  env: Env,
  ca: ClusterCa,
  o: { port: number; listen?: string; advertise?: string[] },
  stateDir: string,
  logger: Logger,
  logs: LogHub,
  keyring: Keyring,
): Promise<{ app: ReturnType<typeof buildAgentApi>; url: string }> {
  const store = resources.store;
  const tls = await serverCertificate(ca, o.advertise ?? []);
  const app = buildAgentApi({ store, controlPlane, ca, tls, logger, logs, keyring });
  const address = await app.listen({ port: o.port, host: o.listen ?? '0.0.0.0' });
  const port = Number(new URL(address.replace('https://', 'http://')).port);
  const url = `https://127.0.0.1:${port}`;
  if ((await store.list(JOIN_TOKEN_PREFIX)).items.length === 0) {
    const { token } = await createJoinToken(resources, SYSTEM, { caFingerprint: ca.fingerprint, now: new Date(env.now()), ttlMs: 24 * 3_600_000, description: 'first join token' });
    await writeFile(join(stateDir, 'join-token'), `${token}\n`, { mode: 0o600 });
    process.stderr.write(`\nJoin token for agents (valid 24 h; saved to ${join(stateDir, 'join-token')}):\n  carapace agent --join https://<this-server>:${port} --join-token ${token}\n\n`);
  }
  logger.info({ url, fingerprint: ca.fingerprint }, 'agent API listening (mutual TLS)');
  return { app, url };
}

/**
 * Mints the first cluster-admin token once per store and keeps it in STATE_DIR/admin-token
 * (0600) so the operator and scripts on this machine can find it again; later starts read it.
 * A server whose store already has it (another server minted it) and which has no saved copy
 * gets an empty token: it prints nothing and starts normally.
 */
async function firstAdminToken(resources: Resources, env: Env, stateDir: string): Promise<{ token: string; created: boolean }> {
  const file = join(stateDir, 'admin-token');
  const minted = await bootstrapToken(resources, { id: newTokenId(env), name: 'bootstrap admin', now: env.now() });
  if (minted) {
    await writeFile(file, `${minted.token}\n`, { mode: 0o600 });
    return { token: minted.token, created: true };
  }
  return { token: (await readFile(file, 'utf8').catch(() => '')).trim(), created: false };
}
