/**
 * The contract harness of the host's OCI drivers (runc, runsc): a driver on a state
 * directory of the test's own, a busybox image root, the agent's real network manager on a
 * bridge and subnet of the test's own, and what the host shows of a container (its cgroup,
 * mounts, the runtime's state, the driver's files).
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createNetworkManager } from '../../src/network/network-manager.js';
import { runOrThrow } from '../../src/proc/run.js';
import type { OciDriver, OciDriverOptions } from '../../src/runtime/index.js';
import { SecretFiles } from '../../src/storage/secret-files.js';
import { VolumeStore } from '../../src/storage/volume-store.js';
import { freeHostPort, freeSubnet, uniqueTag } from '../network/helpers.js';
import type { DriverHarness } from './contract.js';
import { buildRootfs, logger, mountsContaining } from './helpers.js';

/** The cgroup v1 controllers whose directories a container gets. */
const CONTROLLERS = ['memory', 'cpu', 'cpuacct', 'pids'];

/** One line of a cgroup v1 file of the container. */
async function cgroupValue(id: string, controller: string, file: string): Promise<number> {
  return Number((await readFile(join('/sys/fs/cgroup', controller, 'carapace', id, file), 'utf8')).trim());
}

/** Builds the harness of `create` (createRuncDriver or createRunscDriver). */
export async function ociHarness(
  create: (o: OciDriverOptions) => OciDriver,
  processesOf: (driver: OciDriver, id: string) => Promise<number>,
): Promise<DriverHarness & { readonly driver: OciDriver; readonly stateDir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-contract-'));
  const stateDir = join(dir, 'state');
  const rootfs = join(dir, 'images', 'busybox', 'rootfs');
  const outsideShare = join(dir, 'elsewhere', 'rootfs');
  await buildRootfs(rootfs);
  await buildRootfs(outsideShare);
  const net = createNetworkManager({ stateDir: join(dir, 'net'), logger, bridge: `cct${uniqueTag()}`, subnet: freeSubnet() });
  let driver = create({ stateDir, logger });
  const volumes = new VolumeStore({ stateDir, logger });
  await volumes.recover();
  const files = new SecretFiles({ runDir: join(dir, 'files'), logger });
  await files.init();
  return {
    get driver() {
      return driver;
    },
    stateDir,
    rootfs,
    outsideShare,
    network: {
      setup: (id, ports) => net.setup(id, { ports, isolationKey: 'tenant-a' }),
      teardown: (id) => net.teardown(id),
      freeHostPort,
    },
    freePort: freeHostPort,
    hostMounts: { volumes, files },
    async restart() {
      driver = create({ stateDir, logger });
    },
    processes: (id) => processesOf(driver, id),
    async limits(id) {
      return { memoryBytes: await cgroupValue(id, 'memory', 'memory.limit_in_bytes'), pids: await cgroupValue(id, 'pids', 'pids.max'), cpuQuotaUs: await cgroupValue(id, 'cpu', 'cpu.cfs_quota_us') };
    },
    async leftovers(id) {
      const out: string[] = [];
      for (const m of await mountsContaining(id)) out.push(`mount ${m}`);
      for (const ctl of CONTROLLERS) if (existsSync(join('/sys/fs/cgroup', ctl, 'carapace', id))) out.push(`cgroup ${ctl}`);
      const state = await runOrThrow(driver.runtimePath, ['--root', driver.runtimeRoot, 'state', id]).then(
        () => true,
        () => false,
      );
      if (state) out.push(`${driver.name} state`);
      for (const f of [join(stateDir, 'containers', id), join(stateDir, 'exits', id), join(stateDir, 'sock', id)]) if (existsSync(f)) out.push(f);
      return out;
    },
    async cleanup() {
      await volumes.gc(new Set()).catch(() => undefined);
      await files.teardown().catch(() => undefined);
      await net.gc(new Set()).catch(() => undefined);
      await net.removeBridge().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
