/**
 * The one OCI bundle builder, for every tier that runs containers with an OCI runtime: the
 * host drivers (runc, runsc: `oci-driver.ts`) and the guest agent inside a cell
 * (`guest/supervisor.ts`). It writes the hardened config.json of `buildOciSpec`, the
 * container's /etc files, and mounts the private overlay writable layer over the shared,
 * read-only image root. The security settings (Podman's 11 capabilities, no-new-privileges,
 * the containers-common seccomp filter, masked paths, cgroup limits) are therefore written by
 * one function in every tier; what differs is data the caller passes: the network, the cgroup
 * path, the runtime's own tasks, and what to do when overlayfs refuses the image filesystem.
 *
 *   DIR/config.json  hosts  hostname  resolv.conf   (the spec and the files it bind-mounts)
 *   DIR/upper/ work/ merged/                         (the overlay; merged is the container's root)
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { ContainerSpec } from '../model/schemas.js';
import type { HostMount, ImageConfig, ResolverConfig } from './driver.js';
import { initVolumeRoot } from './volume-owner.js';
import { buildOciSpec, DEFAULT_CAPABILITIES, hostsFile, resolvConfFile, tenantResolvConf, resolveUser, type OciSpec, type SpecNetwork } from './oci-spec.js';
import { run } from '../proc/run.js';
import { convertSeccompProfile, goArchOf, type DockerSeccompProfile, type OciSeccomp } from './seccomp.js';

/** A file's text, or undefined when it does not exist. */
async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code; // `as`: fs errors are ErrnoException
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw e;
  }
}

/**
 * The containers-common seccomp profile at `path`, converted for the default capabilities,
 * this architecture and this kernel; undefined when `path` is false (no filter: tests of the
 * converter only). A missing file is an error with `ifMissing: 'fail'` (a host: the profile
 * is a package dependency) or means no filter, logged, with `'none'` (a cell's guest, which
 * reads it from the host's shared /usr).
 */
export async function loadSeccompProfile(path: string | false, ifMissing: 'fail' | 'none', log: Logger): Promise<OciSeccomp | undefined> {
  if (path === false) return undefined;
  const text = ifMissing === 'fail' ? await readFile(path, 'utf8') : await readOptional(path);
  if (text === undefined) {
    log.warn({ path }, 'no seccomp profile; containers run without seccomp');
    return undefined;
  }
  const profile = JSON.parse(text) as DockerSeccompProfile; // `as`: the containers-common profile; the converter tolerates missing fields
  const kernel = (await readOptional('/proc/sys/kernel/osrelease'))?.trim();
  return convertSeccompProfile(profile, { goArch: goArchOf(process.arch), capabilities: DEFAULT_CAPABILITIES, ...(kernel ? { kernelVersion: kernel } : {}) });
}

/** min(1048576, this process's hard RLIMIT_NOFILE): the most open files a container can be given. */
export async function containerNofileLimit(): Promise<number> {
  const limits = (await readOptional('/proc/self/limits')) ?? '';
  const hard = /^Max open files\s+\S+\s+(\S+)/m.exec(limits)?.[1];
  const n = hard === undefined || hard === 'unlimited' ? 1048576 : Number(hard);
  return Number.isFinite(n) && n > 0 ? Math.min(1048576, n) : 1024;
}

/** Everything one bundle needs. */
export interface BundleRequest {
  /** The bundle directory: already created, empty (the caller may keep its own files in it). */
  dir: string;
  id: string;
  /** The unpacked image root: the overlay's read-only lower layer, never modified. */
  rootfs: string;
  image: ImageConfig;
  container: ContainerSpec;
  hostname: string;
  labels: Record<string, string>;
  network: SpecNetwork;
  /** The container's resolver (its tenant network's); absent: the host's, loopback ones dropped. */
  dns?: ResolverConfig;
  /** The container's cgroup, relative to each hierarchy root. */
  cgroupsPath: string;
  /** Host directories bind-mounted into the container (volumes, secret files); see HostMount. */
  mounts?: readonly HostMount[];
  /** Tasks the runtime keeps in the container's cgroup itself (see OciSpecInput). */
  runtimeOwnPids?: number;
  /** The CPU quota while the runtime sets the container up (see OciSpecInput). */
  startupCpu?: number;
  /** From `loadSeccompProfile`; undefined means no filter. */
  seccomp: OciSeccomp | undefined;
  /** From `containerNofileLimit`. */
  nofileLimit: number;
  /**
   * When overlayfs refuses the image filesystem as a lower layer: `fail` (a host: images are
   * on a local filesystem, so a refusal is a real fault), or `copy` the image root into the
   * bundle (a cell: its images come over 9p, which some kernels refuse as a lower layer).
   */
  ifOverlayRefused: 'fail' | 'copy';
  log: Logger;
}

/** What `prepareBundle` made. */
export interface PreparedBundle {
  spec: OciSpec;
  /** The container's root filesystem (DIR/merged). */
  merged: string;
  /** Whether `merged` is an overlay mount (to unmount on destroy); false after a copy. */
  overlay: boolean;
}

/**
 * Writes the bundle and mounts its writable layer. What can fail on bad input (an image user
 * that does not resolve, nothing to run) fails before anything is mounted. On failure the
 * caller removes the bundle as it would on destroy (unmount `merged` if mounted, remove DIR).
 */
export async function prepareBundle(req: BundleRequest): Promise<PreparedBundle> {
  const { dir } = req;
  const [passwd, group, hostResolv] = await Promise.all([readOptional(join(req.rootfs, 'etc/passwd')), readOptional(join(req.rootfs, 'etc/group')), readOptional('/etc/resolv.conf')]);
  const user = resolveUser(req.image.user, passwd, group);
  const merged = join(dir, 'merged');
  const etcFiles = { hosts: join(dir, 'hosts'), hostname: join(dir, 'hostname'), resolvConf: join(dir, 'resolv.conf') };
  const spec = buildOciSpec({
    id: req.id,
    rootfsPath: merged,
    image: req.image,
    container: req.container,
    hostname: req.hostname,
    network: req.network,
    user,
    labels: req.labels,
    etcFiles,
    ...(req.seccomp ? { seccomp: req.seccomp } : {}),
    cgroupsPath: req.cgroupsPath,
    ...(req.runtimeOwnPids ? { runtimeOwnPids: req.runtimeOwnPids } : {}),
    ...(req.startupCpu !== undefined ? { startupCpu: req.startupCpu } : {}),
    nofileLimit: req.nofileLimit,
    ...(req.mounts ? { mounts: req.mounts } : {}),
  });
  for (const m of req.mounts ?? []) {
    if (!m.volume || m.readOnly) continue;
    const init = await initVolumeRoot(m.source, req.rootfs, m.destination);
    if (init.changed) req.log.info({ volume: m.source, destination: m.destination, uid: init.uid, gid: init.gid, mode: init.mode.toString(8) }, "fresh volume given the image directory's owner");
  }
  await Promise.all([
    mkdir(join(dir, 'upper')),
    mkdir(join(dir, 'work')),
    mkdir(merged),
    writeFile(join(dir, 'config.json'), JSON.stringify(spec)),
    writeFile(etcFiles.hosts, hostsFile(req.hostname)),
    writeFile(etcFiles.hostname, `${req.hostname}\n`),
    // Loopback nameservers are dropped: the host's own resolver is not reachable from the
    // container's namespace (in a cell, the VM's resolver is QEMU's 10.0.2.3).
    writeFile(etcFiles.resolvConf, req.dns ? tenantResolvConf(req.dns) : resolvConfFile(hostResolv ?? '')),
  ]);
  const m = await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${req.rootfs},upperdir=${join(dir, 'upper')},workdir=${join(dir, 'work')}`, merged]);
  if (m.code === 0) return { spec, merged, overlay: true };
  const why = m.stderr.trim().split('\n').filter((l) => l.trim() !== '').pop() ?? `mount exited ${m.code}`;
  if (req.ifOverlayRefused === 'fail') throw new Error(`mounting the writable layer failed: ${why}`);
  req.log.warn({ err: why }, 'overlay over the image root refused; copying the rootfs into the bundle instead');
  // `cp -a`: owners, modes, device nodes and links as in the image.
  const c = await run('cp', ['-a', `${req.rootfs}/.`, merged], { timeoutMs: 300_000 });
  if (c.code !== 0) throw new Error(`copying the rootfs failed: ${c.stderr.trim()}`);
  return { spec, merged, overlay: false };
}
