/**
 * The cell runtime (isolation `cell`): the RuntimeDriver contract against `CellRuntime` over
 * a real `HostChannel` to the real guest agent, in this process, running real runc on this
 * host: the agent listens on a unix socket where QEMU's chardev would be (as in
 * test/guest). No VM: the "VM's network" is this host's, the image share is a directory,
 * and cgroups are the host's v1 under a parent of this run. What needs the VM itself
 * (published ports as QEMU forwards, the 9p image share, cgroup v2 in the guest, fencing) is
 * covered by test/e2e/cells.test.ts and the security probes' cell tier.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CellRuntime } from '../../src/agent/cell-runtime.js';
import { GuestAgent } from '../../src/guest/agent.js';
import { HostChannel } from '../../src/guest/host-channel.js';
import { SocketListenLink } from '../../src/guest/link.js';
import { run } from '../../src/proc/run.js';
import { createVmManager } from '../../src/vm/qemu.js';
import { freeHostPort } from '../network/helpers.js';
import { describeDriverContract, type DriverHarness } from './contract.js';
import { buildRootfs, logger, mountsContaining } from './helpers.js';

const CG_PARENT = `/carapace-cell-contract-${process.pid}`;

/** A cgroup v1 file of a container in the cell, as a number. */
async function cgroupValue(id: string, controller: string, file: string): Promise<number> {
  return Number((await readFile(join('/sys/fs/cgroup', controller, CG_PARENT, id, file), 'utf8')).trim());
}

async function cellHarness(): Promise<DriverHarness> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-cell-contract-'));
  const images = join(dir, 'images');
  const rootfs = join(images, 'busybox', 'rootfs');
  const outsideShare = join(dir, 'elsewhere', 'rootfs');
  const stateDir = join(dir, 'state');
  const sock = join(dir, 'chan.sock');
  await buildRootfs(rootfs);
  await buildRootfs(outsideShare);
  // The bundles live on a tmpfs, as in the VM.
  await mkdir(stateDir);
  const m = await run('mount', ['-t', 'tmpfs', '-o', 'size=256m', 'tmpfs', stateDir]);
  if (m.code !== 0) throw new Error(`cannot mount the guest's tmpfs: ${m.stderr}`);
  const agentAc = new AbortController();
  const agent = new GuestAgent({
    link: new SocketListenLink(sock),
    logger,
    stateDir,
    imagesRoot: images,
    cgroupParent: CG_PARENT,
    runcPath: '/usr/sbin/runc',
    seccompProfilePath: '/usr/share/containers/seccomp.json',
    noPivot: 'auto',
    logTailLines: 100,
    usageIntervalMs: 300,
  });
  const agentDone = agent.start(agentAc.signal);
  const deadline = Date.now() + 10_000;
  while (!existsSync(sock)) {
    if (Date.now() > deadline) throw new Error('the guest agent did not listen');
    await new Promise((r) => setTimeout(r, 20));
  }
  const vms = createVmManager({ stateDir: join(dir, 'vms'), logger, accel: 'tcg' });
  /** The host side, as a host agent builds it when it attaches a cell (cells.ts). */
  const connect = async (): Promise<{ runtime: CellRuntime; ac: AbortController; done: Promise<void> }> => {
    const ac = new AbortController();
    const channel = new HostChannel({ socketPath: sock, cellId: 'cell-contract', logger, reconnectMinMs: 50 });
    const runtime = new CellRuntime({ cellId: 'cell-contract', isolation: 'cell', channel, vms, hostImagesRoot: images, guestImagesRoot: images, logger });
    const done = channel.start(ac.signal);
    await channel.waitReady(10_000);
    return { runtime, ac, done };
  };
  let host = await connect();
  return {
    get driver() {
      return host.runtime;
    },
    rootfs,
    outsideShare,
    freePort: freeHostPort,
    async restart() {
      host.ac.abort();
      await host.done;
      host = await connect();
    },
    async processes(id) {
      return (await readFile(join('/sys/fs/cgroup/pids', CG_PARENT, id, 'cgroup.procs'), 'utf8')).split('\n').filter((l) => l.trim() !== '').length;
    },
    async limits(id) {
      return { memoryBytes: await cgroupValue(id, 'memory', 'memory.limit_in_bytes'), pids: await cgroupValue(id, 'pids', 'pids.max'), cpuQuotaUs: await cgroupValue(id, 'cpu', 'cpu.cfs_quota_us') };
    },
    async leftovers(id) {
      const out: string[] = [];
      for (const p of await mountsContaining(id)) out.push(`mount ${p}`);
      for (const ctl of ['memory', 'cpu', 'cpuacct', 'pids']) if (existsSync(join('/sys/fs/cgroup', ctl, CG_PARENT, id))) out.push(`cgroup ${ctl}`);
      for (const f of [join(stateDir, 'containers', id), join(stateDir, 'runc', id)]) if (existsSync(f)) out.push(f);
      return out;
    },
    async cleanup() {
      host.ac.abort();
      await host.done.catch(() => undefined);
      agentAc.abort(); // the agent stops and removes every container, then its cgroup parent
      await agentDone.catch(() => undefined);
      await run('umount', ['-l', stateDir]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

describeDriverContract('cell runtime (guest agent over its channel, no VM)', {
  capabilities: { network: 'vm', images: 'shared-into-vm' },
  kernel: 'linux',
  runtimeOwnPids: 0,
  setup: cellHarness,
});
