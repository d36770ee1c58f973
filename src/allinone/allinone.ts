/**
 * The all-in-one Carapace: API server, workload controller and a local host agent in one
 * process over the embedded SQLite store in a state directory. `carapace up` runs it in the
 * foreground; tests and benchmarks start it with `startAllInOne` and stop it with the
 * returned handle. Containers are supervised by conmon and outlive this process: stopping
 * (or killing) it leaves them running, and the next start adopts them.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setMaxListeners } from 'node:events';
import { pino, type Logger } from 'pino';
import type { HostAgent } from '../agent/agent.js';
import type { CellManager } from '../agent/cells.js';
import { createHostNode } from '../agent/node.js';
import { instanceMaterial } from '../core/secrets.js';
import { Resources } from '../core/resources.js';
import { openSqliteStore } from '../store/sqlite.js';
import { startControlServer, systemEnv } from '../server/server.js';
import { serverKeyring } from '../server/keyring.js';
import type { VmManager } from '../vm/qemu.js';
import { CarapaceError } from '../model/errors.js';
import { isLoopbackHost } from '../model/netaddr.js';
import type { Manifest } from '../model/schemas.js';

export interface AllInOneOptions {
  stateDir: string;
  port: number;
  listen?: string;
  hostName?: string;
  /** Manifests applied once everything is up (the CLI reads and validates the files before starting). */
  apply?: Manifest[];
  logger?: Logger;
  /** Registries reached without TLS besides loopback ones. */
  insecureRegistries?: string[];
  /** Give containers a bridge network (default true). */
  network?: boolean;
  /** Pre-booted unassigned cells kept on this host (default 0). */
  warmCells?: number;
  /** VM acceleration: `auto` (a timed probe decides), `kvm` or `tcg`. */
  accel?: 'auto' | 'kvm' | 'tcg';
  /** Where machine kernels, initrds and disks are looked up (default STATE_DIR/machine-images). */
  machineImagesDir?: string;
  /** How long an empty cell lives before it is retired (default 60 s; env CARAPACE_CELL_GRACE_MS). */
  cellGraceMs?: number;
  /** CPU overcommit ratio of this host when it first registers (default 4: vCPUs and cpu quotas are time-shared). */
  cpuOvercommit?: number;
  /** Prefix of the host's kernel network objects (default `c`); tests use their own. */
  netPrefix?: string;
  /** The underlay address this host reports (default: the default route's source address). */
  advertiseAddress?: string;
  /** Multiplies probes' initialDelaySeconds and periodSeconds (default 1; env CARAPACE_PROBE_TIME_SCALE). For tests. */
  probeTimeScale?: number;
  /** Grace between SIGTERM and SIGKILL when the agent stops a container (default 10 s). */
  stopGraceMs?: number;
  /** The keyring file (`--keyring`); default CARAPACE_KEYRING, else STATE_DIR/keyring made on first start. */
  keyring?: string;
  /** Off-store copies of the audit checkpoints (`--audit-copy FILE`). */
  auditCopies?: string[];
}

export interface RunningAllInOne {
  /** `http://127.0.0.1:PORT` on loopback, `https://127.0.0.1:PORT` otherwise */
  url: string;
  port: number;
  agent: HostAgent;
  cells: CellManager;
  vms: VmManager;
  /** The first cluster-admin token (from this start, or the one saved in the state dir). */
  adminToken: string;
  /** Stops the server, controller and agent (not the containers) and closes the store. */
  stop(): Promise<void>;
  /** Resolves when everything has stopped. */
  done: Promise<void>;
}

/** Starts everything and returns once the API is listening and the host is registered. */
export async function startAllInOne(o: AllInOneOptions): Promise<RunningAllInOne> {
  const logger = o.logger ?? pino({ level: process.env['CARAPACE_LOG_LEVEL'] ?? 'info' });
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
  const store = await openSqliteStore({ path: join(o.stateDir, 'store.db'), logger });
  // The keyring is never in the store: --keyring FILE, CARAPACE_KEYRING, or STATE_DIR/keyring
  // made on first start (0600; an older state dir keeps its secrets.keyring).
  const keyring = await serverKeyring({ ...(o.keyring !== undefined ? { keyring: o.keyring } : {}), stateDir: o.stateDir, logger });
  const env = systemEnv;
  // The host node is built first: the server serves its logs.
  // The agent's writes (status, cells) carry usage records but no audit entries of their own.
  const nodeResources = new Resources(store, undefined, env);
  const node = await createHostNode({
    resources: nodeResources,
    env,
    logger,
    stateDir: o.stateDir,
    ...(o.hostName ? { hostName: o.hostName } : {}),
    ...(o.insecureRegistries ? { insecureRegistries: o.insecureRegistries } : {}),
    ...(o.network === false ? { network: false } : {}),
    ...(o.warmCells !== undefined ? { warmCells: o.warmCells } : {}),
    ...(o.accel ? { accel: o.accel } : {}),
    ...(o.machineImagesDir ? { machineImagesDir: o.machineImagesDir } : {}),
    ...(o.cpuOvercommit !== undefined ? { cpuOvercommit: o.cpuOvercommit } : {}),
    ...(o.netPrefix ? { netPrefix: o.netPrefix } : {}),
    ...(o.probeTimeScale !== undefined ? { probeTimeScale: o.probeTimeScale } : {}),
    ...(o.stopGraceMs !== undefined ? { stopGraceMs: o.stopGraceMs } : {}),
    ...(o.advertiseAddress !== undefined ? { advertiseAddress: o.advertiseAddress } : {}),
    // The agent of the all-in-one reads its instances' secrets as the control plane does.
    material: (inst) => instanceMaterial(nodeResources, keyring, inst),
    // One process over its embedded store: no partition can separate the agent from the host
    // monitor judging its lease, so nothing to fence against; a stalled event loop (a loaded
    // 2-core host booting VMs) must not stop its volume users.
    selfFencing: false,
  });
  // Plain HTTP only while nothing but this machine can connect; on any other address the API
  // is HTTPS with a certificate from the cluster CA, as `carapace server`'s.
  const loopback = isLoopbackHost(o.listen ?? '127.0.0.1');
  const server = await startControlServer({
    store,
    stateDir: o.stateDir,
    port: o.port,
    ...(o.listen ? { listen: o.listen } : {}),
    ...(loopback ? {} : { tls: { advertise: o.listen && o.listen !== '0.0.0.0' && o.listen !== '::' ? [o.listen] : [] } }),
    logger,
    env,
    logs: node.agent,
    localHost: node.hostName,
    ...(o.cellGraceMs !== undefined ? { cellGraceMs: o.cellGraceMs } : {}),
    ...(o.auditCopies ? { auditCopies: o.auditCopies } : {}),
    keyring,
  });

  const ac = new AbortController();
  // Every loop and watch of the process listens on this one shutdown signal.
  setMaxListeners(100, ac.signal);
  await node.agent.register();
  const loops = Promise.all([server.run(ac.signal), node.start(ac.signal)]);
  loops.catch((err: unknown) => {
    logger.fatal({ err }, 'control loop crashed');
    ac.abort();
  });
  if (loopback) logger.info({ url: server.url }, 'API on plain HTTP: loopback only');
  else logger.info({ url: server.url, caFingerprint: server.apiCa?.fingerprint }, 'API on HTTPS (not loopback): certificate from the cluster CA');
  logger.info({ url: server.url, stateDir: o.stateDir, host: node.hostName }, 'carapace all-in-one is up');

  if (o.apply && o.apply.length > 0) {
    for (const m of [...o.apply].sort((a, b) => (a.kind === 'Tenant' ? 0 : 1) - (b.kind === 'Tenant' ? 0 : 1))) {
      try {
        await server.controlPlane.handle({ type: 'apply', manifest: m });
      } catch (e) {
        if (e instanceof CarapaceError) logger.error({ code: e.code, details: e.details }, e.message);
        else throw e;
      }
    }
  }

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      ac.abort();
      await server.close();
      await loops.catch(() => undefined);
      await store.close();
      logger.info('carapace all-in-one stopped (containers keep running)');
    })();
    return stopping;
  };
  const done = new Promise<void>((resolve) => {
    ac.signal.addEventListener('abort', () => {
      void stop().then(resolve);
    });
  });
  return { url: server.url, port: server.port, agent: node.agent, cells: node.cells, vms: node.vms, adminToken: server.adminToken, stop, done };
}

/** `carapace up`: runs until SIGTERM or SIGINT, then shuts down gracefully. */
export async function runAllInOne(o: AllInOneOptions): Promise<void> {
  const running = await startAllInOne(o);
  const onSignal = (): void => {
    void running.stop();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  await running.done;
}
