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
 * Without a netns path, `--network=none` gives a loopback-only stack. With one, the sandbox
 * joins the agent's namespace by path (the spec names it) and serves it with gVisor's own
 * network stack (`--network=sandbox`, netstack): runsc moves the namespace's addresses from
 * `eth0` into the sandbox and speaks to the link with a packet socket, so the workload's TCP
 * is gVisor's, not the host kernel's.
 *
 * Why not `--network=host` (the host kernel's stack in the namespace, which containers made
 * before recorded `netstack` still use): this runsc (Debian 2022-12) returns EAGAIN from a
 * blocking `read()` on such a socket when no byte is queued yet, instead of waiting. A server
 * that reads before its client's bytes arrived (busybox httpd's child, a second request on a
 * kept-alive connection, any protocol where the server speaks first) takes it for an error
 * and closes: the client gets no answer, or a reset when its bytes land on the closed socket.
 * Through `carapace port-forward` (whose connection is made before the handshake) that was
 * one request in three to ten; straight clients a few percent. Static files failed outright
 * (sendfile's EAGAIN). Seen with `runsc --strace`: `read(0x0 socket:[17], …) = 0 errno=11`
 * in a process that never set O_NONBLOCK.
 *
 * Why the launcher: this runsc refuses `--network=sandbox` ("cannot run with network enabled
 * in root network namespace") on kernels >= 6.x, where /proc/sys/net/core/rmem_default, its
 * test for the root namespace, is visible in every namespace. The namespace is never the
 * root one here (the agent made it for the container), so runsc runs in a mount namespace of
 * its own where /proc/sys/net is an empty tmpfs (`unshare --mount`, private propagation: the
 * host's mounts are untouched); the sandbox mounts its own /proc.
 * The flags and launcher are derived from the stored metadata so every call on a container agrees.
 */
const RUNSC: RuntimeFlavor = {
  name: 'runsc',
  isolation: 'sandbox',
  capabilities: { network: 'namespace', images: 'host-path' },
  defaultPath: '/usr/bin/runsc',
  globalArgs: (root, meta) => ['--root', root, '--platform=ptrace', meta?.netnsPath === undefined ? '--network=none' : meta.netstack ? '--network=sandbox' : '--network=host'],
  netstack: true,
  launcher: (runtimePath, meta) =>
    meta.netstack
      ? { argv: ['/usr/bin/unshare', '--mount', '--propagation', 'private', '/bin/sh', '-c', 'mount -t tmpfs -o size=4k,mode=0555 carapace-no-sysnet /proc/sys/net && exec "$@"', 'runsc', runtimePath], entersNamespace: false }
      : { argv: ['/usr/bin/nsenter', `--net=${meta.netnsPath}`, runtimePath], entersNamespace: true },
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
