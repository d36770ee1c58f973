/**
 * The all-in-one Carapace: API server, workload controller and a local host agent in one
 * process over the embedded SQLite store in a state directory. `carapace up` runs it in the
 * foreground; tests and benchmarks start it with `startAllInOne` and stop it with the
 * returned handle. Containers are supervised by conmon and outlive this process: stopping
 * (or killing) it leaves them running, and the next start adopts them.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { pino, type Logger } from 'pino';
import { HostAgent } from '../agent/agent.js';
import { buildApi } from '../api/server.js';
import type { Env } from '../core/actions.js';
import { ControlPlane } from '../core/control-plane.js';
import { Resources } from '../core/resources.js';
import { WorkloadController } from '../control/controller.js';
import { createImageStore } from '../image/local-store.js';
import { createNetworkManager } from '../network/network-manager.js';
import { createRuncDriver, createRunscDriver } from '../runtime/index.js';
import { openSqliteStore } from '../store/sqlite.js';
import { CellManager } from '../agent/cells.js';
import { registerStateGauges } from '../metrics/metrics.js';
import { TokenCache } from '../auth/cache.js';
import { AuditLog } from '../audit/log.js';
import { bootstrapToken } from '../auth/tokens.js';
import type { Store } from '../store/store.js';
import { UsageSampler } from '../agent/usage-sampler.js';
import { MachineRunner } from '../agent/machines.js';
import { createVmManager, type VmManager } from '../vm/qemu.js';
import { findKernel } from '../vm/initramfs.js';
import { existsSync } from 'node:fs';
import { setMaxListeners } from 'node:events';
import { fileURLToPath } from 'node:url';
import { readManifests } from '../cli/apply.js';
import { CarapaceError } from '../model/errors.js';

export interface AllInOneOptions {
  stateDir: string;
  port: number;
  listen?: string;
  hostName?: string;
  /** Manifest files applied once everything is up. */
  applyFiles?: string[];
  logger?: Logger;
  /** Registries reached without TLS besides loopback ones. */
  insecureRegistries?: string[];
  /** Give containers a bridge network (default true). */
  network?: boolean;
  /** The bridge and its subnet (default `carapace0`, 10.88.0.0/16); tests use their own. */
  bridge?: { name: string; subnet: string };
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
  /** Multiplies probes' initialDelaySeconds and periodSeconds (default 1; env CARAPACE_PROBE_TIME_SCALE). For tests. */
  probeTimeScale?: number;
  /** Grace between SIGTERM and SIGKILL when the agent stops a container (default 10 s). */
  stopGraceMs?: number;
}

export interface RunningAllInOne {
  /** `http://127.0.0.1:PORT` */
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

/** The real clock and random ids: the only place the running system makes them. */
export const systemEnv: Env = {
  now: () => new Date().toISOString(),
  newId: () => randomUUID(),
};

/** Starts everything and returns once the API is listening and the host is registered. */
export async function startAllInOne(o: AllInOneOptions): Promise<RunningAllInOne> {
  const logger = o.logger ?? pino({ level: process.env['CARAPACE_LOG_LEVEL'] ?? 'info' });
  await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
  const store = await openSqliteStore({ path: join(o.stateDir, 'store.db'), logger });
  // Mutations and the control plane's own actions are recorded in a hash-chained log whose
  // checkpoints are signed with a key generated at first start.
  const audit = await AuditLog.open({ store, keyDir: join(o.stateDir, 'audit-keys'), logger });
  const env = systemEnv;
  // With env: every instance, cell and machine write carries its usage allocation records.
  const resources = new Resources(store, audit, env);
  const controlPlane = new ControlPlane(resources, env);
  const runtimeDir = join(o.stateDir, 'runtime');
  const runc = createRuncDriver({ stateDir: join(runtimeDir, 'runc'), logger });
  const runsc = createRunscDriver({ stateDir: join(runtimeDir, 'runsc'), logger });
  const images = createImageStore({ cacheDir: join(o.stateDir, 'images'), logger, ...(o.insecureRegistries ? { insecureRegistries: o.insecureRegistries } : {}) });
  const network = o.network === false ? undefined : createNetworkManager({ stateDir: join(o.stateDir, 'network'), logger, ...(o.bridge ? { bridge: o.bridge.name, subnet: o.bridge.subnet } : {}) });
  const hostName = o.hostName ?? os.hostname().toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^-+|-+$/g, '') ?? 'local';
  const vms = createVmManager({ stateDir: join(o.stateDir, 'vms'), logger, accel: o.accel ?? 'auto' });
  // The Carapace install (dist/ and node_modules/) is shared read-only into cells: the guest agent runs from it.
  const installDir = fileURLToPath(new URL('../../..', import.meta.url));
  // The agent is made after the cell manager that calls back into it.
  const agentRef: { current?: HostAgent } = {};
  const cells = new CellManager({
    hostName: hostName || 'local',
    resources,
    env,
    logger,
    vms,
    hostImagesRoot: join(o.stateDir, 'images', 'rootfs'),
    installDir,
    warmCells: o.warmCells ?? 0,
    warmSize: { cpu: 2, memoryMiB: 2048 },
    onCellChange: (cell) => agentRef.current?.cellChanged(cell),
  });
  const vmProbe = async (): Promise<{ ok: true } | { ok: false; message: string }> => {
    if (!existsSync('/usr/bin/qemu-system-x86_64')) return { ok: false, message: 'qemu-system-x86_64 is not installed' };
    try {
      findKernel();
    } catch (e) {
      return { ok: false, message: (e as Error).message }; // findKernel throws Error with the reason
    }
    return { ok: true };
  };
  const machineImagesDir = o.machineImagesDir ?? join(o.stateDir, 'machine-images');
  await mkdir(machineImagesDir, { recursive: true });
  const machines = new MachineRunner({ hostName: hostName || 'local', resources, env, logger, vms, imagesDir: machineImagesDir, stateDir: join(o.stateDir, 'machines') });
  // Tests run probes faster: CARAPACE_PROBE_TIME_SCALE=0.1 makes a 10 s period 1 s.
  const probeScale = Number(process.env['CARAPACE_PROBE_TIME_SCALE']);
  const agent = new HostAgent({
    hostName: hostName || 'local',
    resources,
    env,
    logger,
    drivers: { host: runc, sandbox: runsc },
    images,
    cells,
    machines,
    vmProbe,
    overcommit: { cpu: o.cpuOvercommit ?? 4, memory: 1 },
    ...(network ? { network } : {}),
    ...(o.probeTimeScale !== undefined ? { probeTimeScale: o.probeTimeScale } : Number.isFinite(probeScale) && probeScale > 0 ? { probeTimeScale: probeScale } : {}),
    ...(o.stopGraceMs !== undefined ? { stopGraceMs: o.stopGraceMs } : {}),
  });
  agentRef.current = agent;
  const sampleEnv = Number(process.env['CARAPACE_USAGE_SAMPLE_MS']);
  const sampler = new UsageSampler({ hostName: hostName || 'local', resources, env, logger, agent, ...(Number.isFinite(sampleEnv) && sampleEnv > 0 ? { intervalMs: sampleEnv } : {}) });
  const graceEnv = Number(process.env['CARAPACE_CELL_GRACE_MS']);
  const controller = new WorkloadController({ resources, env, logger, ...(o.cellGraceMs !== undefined ? { cellGraceMs: o.cellGraceMs } : Number.isFinite(graceEnv) && graceEnv >= 0 ? { cellGraceMs: graceEnv } : {}) });
  registerStateGauges(resources);
  const tokens = new TokenCache(store, logger);
  const api = buildApi({ controlPlane, store, logs: agent, logger, auth: tokens, env, audit });
  const adminToken = await firstAdminToken(store, env, o.stateDir);

  const ac = new AbortController();
  // Every loop and watch of the process listens on this one shutdown signal.
  setMaxListeners(100, ac.signal);
  await agent.register();
  const loops = Promise.all([controller.start(ac.signal), agent.start(ac.signal), tokens.start(ac.signal), sampler.start(ac.signal)]);
  loops.catch((err: unknown) => {
    logger.fatal({ err }, 'control loop crashed');
    ac.abort();
  });
  const address = await api.listen({ port: o.port, host: o.listen ?? '127.0.0.1' });
  const port = Number(new URL(address).port);
  const url = `http://127.0.0.1:${port}`;
  logger.info({ url, stateDir: o.stateDir, host: hostName }, 'carapace all-in-one is up');
  if (adminToken.created) {
    // Shown once, like every token secret; also saved 0600 for the CLI on this machine.
    const saved = await saveCliConfig(url, adminToken.token).catch((e: unknown) => `not saved: ${(e as Error).message}`); // fs errors are Errors
    process.stderr.write(`\nFirst cluster-admin token (shown once; saved to ${saved} and ${join(o.stateDir, 'admin-token')}):\n  ${adminToken.token}\n\n`);
  }

  if (o.applyFiles && o.applyFiles.length > 0) {
    const manifests = await readManifests(o.applyFiles);
    for (const m of [...manifests].sort((a, b) => (a.kind === 'Tenant' ? 0 : 1) - (b.kind === 'Tenant' ? 0 : 1))) {
      try {
        await controlPlane.handle({ type: 'apply', manifest: m });
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
      await api.close();
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
  return { url, port, agent, cells, vms, adminToken: adminToken.token, stop, done };
}

/**
 * Mints the first cluster-admin token once per store and keeps it in STATE_DIR/admin-token
 * (0600) so the operator and scripts on this machine can find it again; later starts read it.
 */
async function firstAdminToken(store: Store, env: Env, stateDir: string): Promise<{ token: string; created: boolean }> {
  const file = join(stateDir, 'admin-token');
  const minted = await bootstrapToken(store, { id: env.newId().replace(/[^a-z0-9]/gi, '').slice(0, 16), name: 'bootstrap admin', now: env.now() });
  if (minted) {
    await writeFile(file, `${minted.token}\n`, { mode: 0o600 });
    return { token: minted.token, created: true };
  }
  return { token: (await readFile(file, 'utf8').catch(() => '')).trim(), created: false };
}

/** The CLI's config file: $CARAPACE_CONFIG or ~/.config/carapace/config.json. */
export function cliConfigPath(): string {
  return process.env['CARAPACE_CONFIG'] ?? join(os.homedir(), '.config', 'carapace', 'config.json');
}

async function saveCliConfig(server: string, token: string): Promise<string> {
  const path = cliConfigPath();
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFile(path, `${JSON.stringify({ server, token }, null, 2)}\n`, { mode: 0o600 });
  return path;
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
