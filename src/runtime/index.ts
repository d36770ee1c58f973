/**
 * The container runtime drivers: `runc` (isolation `host`) and `runsc` (gVisor, isolation
 * `sandbox`), both implementing `RuntimeDriver` through the shared conmon-supervised
 * `OciDriver`. Create one driver per runtime per agent; several instances on the same
 * `stateDir` (an agent restart) see the same containers.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { RuntimeDriver } from './driver.js';
import { OciDriver, type OciDriverOptions, type RuntimeFlavor } from './oci-driver.js';
import { killTree, pidInCgroup } from '../proc/pids.js';
import { run } from '../proc/run.js';

export type { DriverCapabilities, RuntimeDriver } from './driver.js';
export { CONTAINER_ID_PATTERN } from './driver.js';
export { OciDriver, UNKNOWN_EXIT_CODE, WaitAbortedError, type OciDriverOptions } from './oci-driver.js';

/** runc on the host: containers share the host kernel (isolation `host`). */
const RUNC: RuntimeFlavor = {
  name: 'runc',
  isolation: 'host',
  capabilities: { network: 'namespace', images: 'host-path' },
  defaultPath: '/usr/sbin/runc',
  globalArgs: (root) => ['--root', root],
  async probe(driver) {
    const bins = await driver.probeBinaries();
    if (!bins.ok) return bins;
    const r = await driver.runtime(['list']);
    return r.code === 0 ? { ok: true } : { ok: false, message: `runc list failed: ${r.stderr.trim()}` };
  },
  // runc writes the host pid; the process and anything it forked die, if still in the container's cgroup.
  execTty: 'flag',
  execPidFileFlag: '--pid-file',
  async killExec(driver, id, _meta, pid) {
    if (pidInCgroup(pid, driver.cgroupPath(id))) killTree(pid);
  },
};

/**
 * gVisor's runsc: the container runs on gVisor's user-space kernel (isolation `sandbox`).
 * The ptrace platform works without KVM (nested virtualisation is unusable on many hosts).
 * Without a netns path, `--network=none` gives a loopback-only stack. With one, runsc is
 * launched inside that namespace (`nsenter --net=PATH runsc --network=host create`): Debian's
 * runsc 2022-12 refuses `--network=sandbox` on current kernels ("cannot run with network
 * enabled in root network namespace": it mistakes every namespace for the root one because
 * /proc/sys/net/core/rmem_default is visible in all of them on kernels >= 6.x). The cost:
 * networking goes through the host kernel's stack inside the container's own namespace
 * (still separated per tenant by the bridge rules) instead of gVisor's netstack. `ip netns
 * exec` is not used because it remounts /sys, where runsc looks for cgroups.
 * The flags are derived from the stored metadata so every call on a container agrees.
 */
const RUNSC: RuntimeFlavor = {
  name: 'runsc',
  isolation: 'sandbox',
  capabilities: { network: 'namespace', images: 'host-path' },
  defaultPath: '/usr/bin/runsc',
  globalArgs: (root, meta) => ['--root', root, '--platform=ptrace', meta?.netnsPath !== undefined ? '--network=host' : '--network=none'],
  createLauncher: (runtimePath, netnsPath) => ['/usr/bin/nsenter', `--net=${netnsPath}`, runtimePath],
  async probe(driver) {
    const bins = await driver.probeBinaries();
    if (!bins.ok) return bins;
    // A real (tiny) sandbox: `runsc do` runs a host binary inside gVisor. It fails where
    // ptrace is forbidden (seccomp'd agents, Yama scope 3) or the kernel lacks what gVisor needs.
    const root = join(driver.runtimeRoot, '..', 'probe');
    await mkdir(root, { recursive: true });
    try {
      const r = await run(driver.runtimePath, ['--root', root, '--platform=ptrace', '--network=none', 'do', '/bin/true'], { timeoutMs: 30_000 });
      if (r.code !== 0) return { ok: false, message: `runsc cannot start a sandbox here (ptrace platform): ${r.stderr.trim().split('\n').pop() ?? ''}` };
      return { ok: true };
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  },
  // runsc's host pids are the sandbox's; the exec'd process is named by its pid inside the sandbox.
  execTty: 'process-file',
  execPidFileFlag: '--internal-pid-file',
  execAsUserFlags: true,
  // The sandbox's own host tasks share its cgroup: about 30 idle here (sentry and gofer
  // threads), more under load. Without this headroom a service with `pids: 64` could not run
  // a shell pipeline, and one with fewer than ~30 could not start at all.
  ownPids: 128,
  // Only the exec'd process itself: this runsc's `kill --pid` does nothing to a process exec
  // did not start (returns 0), so anything it forked runs on, reparented, until it ends.
  async killExec(driver, id, meta, pid) {
    await driver.runtime(['kill', '--pid', String(pid), id, 'KILL'], meta, 10_000).catch(() => undefined);
  },
};

/** Creates the runc driver (isolation `host`) keeping its state under `opts.stateDir`. */
export function createRuncDriver(opts: OciDriverOptions): RuntimeDriver & OciDriver {
  return new OciDriver(RUNC, opts);
}

/** Creates the gVisor runsc driver (isolation `sandbox`) keeping its state under `opts.stateDir`. */
export function createRunscDriver(opts: OciDriverOptions): RuntimeDriver & OciDriver {
  return new OciDriver(RUNSC, opts);
}
