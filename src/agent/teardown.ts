/**
 * Removes from this machine everything a host node made from its state directory, for when
 * the node is gone for good (scripts/quickstart-down.sh, test cleanup). Call it only after the
 * process that ran the node (`carapace up` or `carapace agent`) has exited: a live agent would
 * start the work again. The state directory's files (the store, volume images, the image
 * cache) are left for the caller to keep or delete.
 *
 * What it removes, in order (each step goes on when the one before failed for one object):
 * containers of both host drivers (runc, runsc: stopped, then destroyed with their overlay
 * mounts and cgroups), VMs (cells, dedicated VMs, machines), the tenant networks' kernel
 * objects (bridges, VXLANs, taps, namespaces, nftables table, dnsmasq), volumes' mounts and
 * loop devices, and the secret files' tmpfs.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { createTenantNetworking } from '../network/tenant-networking.js';
import { createRuncDriver, createRunscDriver } from '../runtime/index.js';
import { SecretFiles } from '../storage/secret-files.js';
import { VolumeStore } from '../storage/volume-store.js';
import { createVmManager } from '../vm/qemu.js';

/** Options of {@link teardownHost}: what the node ran with. */
export interface TeardownOptions {
  /** The node's `--net-prefix` (default `c`): another prefix's state is refused, and its objects are another node's. */
  prefix?: string;
  /** The network namespace the node ran in, if not the initial one (tests' extra hosts). */
  netns?: string;
  logger?: Logger;
}

/** What {@link teardownHost} found and removed. */
export interface TeardownReport {
  containers: number;
  vms: number;
  /** Volumes that were mounted on the host (a cell's were on its VM's disks). */
  unmounted: number;
}

/** See the module comment. Idempotent: a second call finds nothing. Run as root. */
export async function teardownHost(stateDir: string, o: TeardownOptions = {}): Promise<TeardownReport> {
  const logger = o.logger ?? pino({ level: 'silent' });
  const report: TeardownReport = { containers: 0, vms: 0, unmounted: 0 };
  for (const [runtime, make] of [
    ['runc', createRuncDriver],
    ['runsc', createRunscDriver],
  ] as const) {
    if (!existsSync(join(stateDir, 'runtime', runtime))) continue;
    const d = make({ stateDir: join(stateDir, 'runtime', runtime), logger });
    for (const c of await d.recover().catch(() => [])) {
      await d.stop(c.id, 0).catch(() => undefined);
      await d.destroy(c.id).catch(() => undefined);
      report.containers++;
    }
  }
  if (existsSync(join(stateDir, 'vms'))) {
    // The accelerator only matters for starting VMs; destroying needs none.
    const vms = createVmManager({ stateDir: join(stateDir, 'vms'), logger, accel: 'tcg' });
    for (const vm of vms.recover()) {
      await vms.destroy(vm.id, 0).catch(() => undefined);
      report.vms++;
    }
  }
  // The data plane must use the prefix the agent used: another one refuses the recorded state
  // (and would leave every segment, namespace and tap behind).
  if (existsSync(join(stateDir, 'network'))) {
    await createTenantNetworking({ stateDir: join(stateDir, 'network'), logger, ...(o.prefix !== undefined ? { prefix: o.prefix } : {}), ...(o.netns !== undefined ? { netns: o.netns } : {}) }).removeAll();
  }
  // Volumes left mounted on the host (loop devices), and the secret files' tmpfs.
  if (existsSync(join(stateDir, 'volumes'))) {
    const volumes = new VolumeStore({ stateDir, logger });
    for (const v of await volumes.list().catch(() => [])) {
      // Every one, not only those recorded as mounted: unmount checks the kernel's mount table.
      await volumes.unmount(v.id).catch(() => undefined);
      if (v.attachment === 'host') report.unmounted++;
    }
  }
  if (existsSync(join(stateDir, 'files'))) await new SecretFiles({ runDir: join(stateDir, 'files'), logger }).teardown().catch(() => undefined);
  return report;
}
