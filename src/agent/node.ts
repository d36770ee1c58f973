/**
 * Everything one host runs, assembled: the host agent (containers through runc and runsc),
 * its cells (QEMU microVMs with a guest agent), machines, networking and the usage sampler,
 * over the cluster's Store: the control plane's own (the all-in-one, `carapace agent --store`) or
 * the agent API's RemoteStore (`carapace agent --join`). `carapace up` runs one beside the server in
 * the same process; `carapace agent` runs one on its own (several per machine in tests, each
 * with its own state directory and network prefix). Its workloads outlive it: containers are
 * supervised by conmon and VMs are daemonised QEMU processes, adopted again on the next start.
 */
import { existsSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Env } from '../core/actions.js';
import type { Resources } from '../core/resources.js';
import { createImageStore } from '../image/local-store.js';
import { createTenantNetworking } from '../network/tenant-networking.js';
import { createRuncDriver, createRunscDriver } from '../runtime/index.js';
import { SecretFiles } from '../storage/secret-files.js';
import { VolumeStore } from '../storage/volume-store.js';
import { createVmManager, type VmManager } from '../vm/qemu.js';
import { findKernel } from '../vm/initramfs.js';
import { HostAgent } from './agent.js';
import { CellManager } from './cells.js';
import { InstanceExtras, type MaterialSource } from './instance-extras.js';
import { MachineRunner } from './machines.js';
import { NetworkController } from './network-controller.js';
import { UsageSampler } from './usage-sampler.js';
import { VolumeSnapshotter } from './volume-snapshots.js';
import { hostAddressSource } from './host-address.js';

export interface HostNodeOptions {
  resources: Resources;
  env: Env;
  logger: Logger;
  /** Containers, images, VMs and network state of this host live here. */
  stateDir: string;
  hostName?: string;
  labels?: Record<string, string>;
  insecureRegistries?: string[];
  /** Put workloads on their tenant networks (default true; false: containers get loopback only, tests of other parts). */
  network?: boolean;
  /** Prefix of this agent's kernel network objects (default `c`): two agents in one network namespace need their own. */
  netPrefix?: string;
  /** Addresses of the control plane and the store, which no workload may reach (every host's own addresses are refused anyway). */
  infrastructure?: string[];
  warmCells?: number;
  accel?: 'auto' | 'kvm' | 'tcg';
  machineImagesDir?: string;
  cpuOvercommit?: number;
  /** Multiplies probes' initialDelaySeconds and periodSeconds (tests; env CARAPACE_PROBE_TIME_SCALE). */
  probeTimeScale?: number;
  /** Grace between SIGTERM and SIGKILL when the agent stops a container (default 10 s). */
  stopGraceMs?: number;
  /** The underlay address other hosts reach this one at (`--advertise-address`); default: the default route's source address. */
  advertiseAddress?: string;
  /** Where the decrypted Secret and Config data of an instance placed here comes from; absent: instances using them cannot start. */
  material?: MaterialSource;
  /** Self-fencing (AgentOptions.selfFencing; default true): off only for the all-in-one's embedded agent. */
  selfFencing?: boolean;
}

export interface RunningHostNode {
  hostName: string;
  agent: HostAgent;
  cells: CellManager;
  vms: VmManager;
  /** Registers the host, then runs every loop until `signal` aborts. */
  start(signal: AbortSignal): Promise<void>;
}

/** The host's name as Carapace spells it: lower case, [a-z0-9-]. */
export function defaultHostName(): string {
  return os.hostname().toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^-+|-+$/g, '') || 'local';
}

function envNumber(name: string): number | undefined {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : undefined;
}

/** Builds a host node (no I/O beyond creating directories; `start` runs it). */
export async function createHostNode(o: HostNodeOptions): Promise<RunningHostNode> {
  const { resources, env, logger } = o;
  const hostName = o.hostName ?? defaultHostName();
  const runtimeDir = join(o.stateDir, 'runtime');
  const runc = createRuncDriver({ stateDir: join(runtimeDir, 'runc'), logger });
  const runsc = createRunscDriver({ stateDir: join(runtimeDir, 'runsc'), logger });
  const images = createImageStore({ cacheDir: join(o.stateDir, 'images'), logger, ...(o.insecureRegistries ? { insecureRegistries: o.insecureRegistries } : {}) });
  const net = o.network === false ? undefined : createTenantNetworking({ stateDir: join(o.stateDir, 'network'), logger, ...(o.netPrefix ? { prefix: o.netPrefix } : {}) });
  const network = net ? { net, controller: new NetworkController({ hostName, resources, logger, net, controlPlane: o.infrastructure ?? [] }) } : undefined;
  const vms = createVmManager({ stateDir: join(o.stateDir, 'vms'), logger, accel: o.accel ?? 'auto' });
  // The Carapace install (dist/ and node_modules/) is shared read-only into cells: the guest agent runs from it.
  const installDir = fileURLToPath(new URL('../../..', import.meta.url));
  const heartbeatTimeoutMs = envNumber('CARAPACE_CELL_HEARTBEAT_TIMEOUT_MS');
  const bootTimeoutMs = envNumber('CARAPACE_CELL_BOOT_TIMEOUT_MS');
  const cells = new CellManager({
    hostName,
    resources,
    env,
    logger,
    vms,
    hostImagesRoot: join(o.stateDir, 'images', 'rootfs'),
    installDir,
    warmCells: o.warmCells ?? 0,
    warmSize: { cpu: 2, memoryMiB: 2048 },
    ...(heartbeatTimeoutMs ? { heartbeatTimeoutMs } : {}),
    ...(bootTimeoutMs ? { bootTimeoutMs } : {}),
    ...(network ? { network } : {}),
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
  // Volumes (ext4 images: loop-mounted for host-run containers, disks of cells and machines)
  // and secret files (a tmpfs; cells get theirs in the guest).
  const volumes = new VolumeStore({ stateDir: o.stateDir, logger });
  const handOutGraceMs = envNumber('CARAPACE_VOLUME_HANDOUT_GRACE_MS');
  const extras = new InstanceExtras({
    hostName,
    ...(handOutGraceMs !== undefined ? { handOutGraceMs } : {}),
    resources,
    logger,
    volumes,
    files: new SecretFiles({ runDir: join(o.stateDir, 'files'), logger }),
    vms,
    ...(o.material ? { material: o.material } : {}),
  });
  const machineImagesDir = o.machineImagesDir ?? join(o.stateDir, 'machine-images');
  await mkdir(machineImagesDir, { recursive: true });
  const machines = new MachineRunner({
    hostName,
    resources,
    env,
    logger,
    vms,
    imagesDir: machineImagesDir,
    stateDir: join(o.stateDir, 'machines'),
    volumeImage: (tenant, volume) => extras.machineImage(tenant, volume),
    ...(network ? { network } : {}),
  });
  const leaseRenewMs = envNumber('CARAPACE_LEASE_RENEW_MS');
  // The fence grace until the control plane's published lease settings are read (model/fencing.ts).
  const leaseTtlMs = envNumber('CARAPACE_HOST_LEASE_TTL_MS');
  const probeScale = o.probeTimeScale ?? envNumber('CARAPACE_PROBE_TIME_SCALE');
  const volumeSweepMs = envNumber('CARAPACE_VOLUME_SWEEP_MS');
  const filesRefreshMs = envNumber('CARAPACE_FILES_REFRESH_MS');
  const agent = new HostAgent({
    hostName,
    resources,
    extras,
    ...(volumeSweepMs ? { volumeSweepMs } : {}),
    ...(filesRefreshMs ? { filesRefreshMs } : {}),
    env,
    logger,
    drivers: { host: runc, sandbox: runsc },
    images,
    cells,
    machines,
    vmProbe,
    overcommit: { cpu: o.cpuOvercommit ?? 4, memory: 1 },
    hostAddress: hostAddressSource(o.advertiseAddress),
    ...(o.labels ? { labels: o.labels } : {}),
    ...(network ? { network } : {}),
    ...(leaseRenewMs ? { leaseRenewMs } : {}),
    ...(leaseTtlMs ? { leaseTtlMs } : {}),
    ...(o.selfFencing === false ? { selfFencing: false } : {}),
    ...(probeScale ? { probeTimeScale: probeScale } : {}),
    ...(o.stopGraceMs !== undefined ? { stopGraceMs: o.stopGraceMs } : {}),
  });
  // Volume snapshots and restored volumes: their own loop over the same VolumeStore (a slow
  // copy never holds an instance's start); VMs holding a volume are paused for its copy.
  const snapshots = new VolumeSnapshotter({ hostName, resources, logger, volumes, vms, stateDir: o.stateDir, ...(volumeSweepMs ? { resyncMs: volumeSweepMs } : {}) });
  const sampleMs = envNumber('CARAPACE_USAGE_SAMPLE_MS');
  const sampler = new UsageSampler({ hostName, resources, env, logger, agent, ...(sampleMs ? { intervalMs: sampleMs } : {}) });
  return {
    hostName,
    agent,
    cells,
    vms,
    async start(signal) {
      // The control plane may be unreachable when the agent starts (after a reboot during an
      // outage): keep trying; the workloads already on this host run on meanwhile.
      for (let pause = 500; !signal.aborted; pause = Math.min(pause * 2, 10_000)) {
        try {
          await agent.register();
          break;
        } catch (err) {
          logger.warn({ err, retryInMs: pause }, 'cannot register this host yet');
          await delay(pause, undefined, { signal }).catch(() => undefined);
        }
      }
      if (signal.aborted) return;
      await Promise.all([agent.start(signal), sampler.start(signal), snapshots.start(signal)]);
    },
  };
}
