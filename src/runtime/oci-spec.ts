/**
 * The hardened OCI runtime spec (config.json) for one container. Pure: every input the
 * spec depends on (paths, the resolved user, the converted seccomp profile) is passed in,
 * so the builder is unit-tested without a runtime. Defaults follow Podman: its 11 default
 * capabilities, no new privileges, the containers-common seccomp profile, masked and
 * read-only /proc and /sys paths, private namespaces and cgroup limits from the spec.
 */
import { CarapaceError, type FieldIssue } from '../model/errors.js';
import type { ContainerSpec } from '../model/schemas.js';
import type { HostMount, ImageConfig } from './driver.js';
import type { OciSeccomp } from './seccomp.js';

/** Podman's default capability set; the only capabilities a container ever gets. */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_NET_BIND_SERVICE',
  'CAP_SETFCAP',
  'CAP_SETGID',
  'CAP_SETPCAP',
  'CAP_SETUID',
  'CAP_SYS_CHROOT',
];

/** Paths hidden from the container (runc / Podman defaults). */
export const MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/proc/interrupts',
  '/sys/firmware',
  '/sys/fs/selinux',
  '/sys/dev/block',
];

/** Paths the container may read but not write (runc / Podman defaults). */
export const READONLY_PATHS: readonly string[] = ['/proc/asound', '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** PATH when neither the image nor the container sets one (Docker's default). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** CFS period used for cpu quotas (the kernel default, 100 ms). */
export const CPU_PERIOD_US = 100_000;

/** The CFS quota of `cpu` CPUs per CPU_PERIOD_US; at least 1 ms, the smallest the kernel takes. */
export function cpuQuota(cpu: number): { quota: number; period: number } {
  return { quota: Math.max(1000, Math.round(cpu * CPU_PERIOD_US)), period: CPU_PERIOD_US };
}

/** Annotation prefix under which labels are kept in config.json. */
export const LABEL_ANNOTATION_PREFIX = 'io.carapace.label.';

/** Minimal typed view of the OCI runtime spec parts this builder writes. */
export interface OciSpec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: { bounding: string[]; effective: string[]; permitted: string[]; inheritable: string[]; ambient: string[] };
    rlimits: { type: string; hard: number; soft: number }[];
    noNewPrivileges: boolean;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: { destination: string; type: string; source: string; options: string[] }[];
  annotations: Record<string, string>;
  linux: {
    cgroupsPath: string;
    resources: {
      devices: { allow: boolean; access: string }[];
      memory: { limit: number; swap: number };
      cpu: { quota: number; period: number };
      pids: { limit: number };
    };
    namespaces: { type: string; path?: string }[];
    maskedPaths: string[];
    readonlyPaths: string[];
    seccomp?: OciSeccomp;
  };
}

/** A resolved numeric process identity. */
export interface ResolvedUser {
  uid: number;
  gid: number;
  additionalGids: number[];
}

/**
 * The container's network namespace: `private`, a new one of its own (loopback only unless
 * something is added to it); `join`, an existing one by path (the one the agent made for the
 * instance); `shared`, none of its own: it stays in the namespace its runtime runs in (runsc
 * launched inside the instance's namespace, or a cell's containers sharing the VM's network).
 */
export type SpecNetwork = { kind: 'private' } | { kind: 'join'; path: string } | { kind: 'shared' };

/** Everything `buildOciSpec` needs; all paths are already derived by the driver. */
export interface OciSpecInput {
  id: string;
  /** The merged (writable-layer) root filesystem. */
  rootfsPath: string;
  image: ImageConfig;
  container: ContainerSpec;
  hostname: string;
  network: SpecNetwork;
  user: ResolvedUser;
  labels: Record<string, string>;
  /** Host files bind-mounted read-only over /etc/hosts, /etc/hostname and /etc/resolv.conf. */
  etcFiles: { hosts: string; hostname: string; resolvConf: string };
  /** Already converted for this container's capabilities; omitted means no seccomp filter. */
  seccomp?: OciSeccomp;
  cgroupsPath: string;
  /**
   * Host tasks the runtime itself keeps in the container's cgroup (gVisor's sentry, gofer and
   * ptrace stubs), added to the pids limit so the limit counts the container's own processes.
   */
  runtimeOwnPids?: number;
  /**
   * The cgroup's CPU quota, in CPUs, while the runtime sets the container up; its caller then
   * narrows it to the container's own `cpu` once the process runs (the guest supervisor does:
   * Supervisor.run in src/guest/supervisor.ts). Absent: the container's own from the start.
   */
  startupCpu?: number;
  /**
   * RLIMIT_NOFILE for the process (soft = hard). Podman uses 1048576 but falls back to the
   * agent's own hard limit, since an unprivileged-by-limits host refuses a higher one.
   */
  nofileLimit: number;
  /** Host directories bind-mounted into the container (checked by `checkHostMounts`). */
  mounts?: readonly HostMount[];
}

/**
 * Container paths a host mount may not cover: the kernel's interfaces (a bind over /proc,
 * /sys or /dev would hide or replace what the masked and read-only paths protect) and the
 * files the runtime itself binds.
 */
export const RESERVED_MOUNT_DESTINATIONS: readonly string[] = ['/proc', '/sys', '/dev'];
const RUNTIME_BOUND_FILES: readonly string[] = ['/etc/hosts', '/etc/hostname', '/etc/resolv.conf'];

/** Why `p` is not a usable absolute path, or undefined when it is. */
function pathProblem(p: string): string | undefined {
  if (!p.startsWith('/')) return 'must be an absolute path';
  if (p.includes('\0')) return 'must not contain NUL';
  const parts = p.split('/');
  if (parts.includes('..')) return "must not contain '..'";
  if (parts.includes('.')) return "must not contain '.' segments";
  return undefined;
}

/** `p` without repeated and trailing slashes (`//data/` -> `/data`). */
function cleanPath(p: string): string {
  return `/${p.split('/').filter((s) => s !== '').join('/')}`;
}

/**
 * Checks host mounts before anything is made: sources and destinations absolute without
 * `..`, destinations not `/`, not under /proc, /sys or /dev, not over the runtime's own
 * /etc files, and no destination twice. Throws CARAPACE_E_VALIDATION naming every bad field
 * (`mounts[1].destination`). Returns the mounts with cleaned destinations, parents before
 * children (the runtime applies them in order, so `/data` given after `/data/logs` would
 * hide it).
 */
export function checkHostMounts(mounts: readonly HostMount[]): HostMount[] {
  const issues: FieldIssue[] = [];
  const seen = new Set<string>();
  const out: HostMount[] = [];
  mounts.forEach((m, i) => {
    const srcProblem = pathProblem(m.source);
    if (srcProblem) issues.push({ path: `mounts[${i}].source`, message: srcProblem });
    const dstProblem = pathProblem(m.destination);
    if (dstProblem) {
      issues.push({ path: `mounts[${i}].destination`, message: dstProblem });
      return;
    }
    const dst = cleanPath(m.destination);
    const under = (root: string): boolean => dst === root || dst.startsWith(`${root}/`);
    const reserved = RESERVED_MOUNT_DESTINATIONS.find(under);
    if (dst === '/') issues.push({ path: `mounts[${i}].destination`, message: 'must not be the root directory' });
    else if (reserved) issues.push({ path: `mounts[${i}].destination`, message: `must not be under ${reserved}` });
    else if (RUNTIME_BOUND_FILES.includes(dst)) issues.push({ path: `mounts[${i}].destination`, message: `${dst} is provided by the runtime` });
    else if (seen.has(dst)) issues.push({ path: `mounts[${i}].destination`, message: `${dst} is mounted twice` });
    seen.add(dst);
    out.push({ ...m, destination: dst });
  });
  if (issues.length > 0) throw new CarapaceError('CARAPACE_E_VALIDATION', `invalid container mounts: ${issues.map((x) => `${x.path} ${x.message}`).join('; ')}`, issues);
  const depth = (p: string): number => p.split('/').length;
  // Array.prototype.sort is stable: mounts of equal depth keep their given order.
  return out.sort((a, b) => depth(a.destination) - depth(b.destination));
}

/** The OCI mount of one host mount: a bind without suid or device files, read-only when asked. */
export function hostBindMount(m: HostMount): OciSpec['mounts'][number] {
  return { destination: m.destination, type: 'bind', source: m.source, options: ['bind', 'nosuid', 'nodev', m.readOnly ? 'ro' : 'rw'] };
}

/**
 * The process argv, with Kubernetes semantics: `command` replaces the image entrypoint,
 * `args` replaces the image cmd, and a `command` given without `args` runs with no args
 * (the image cmd is dropped). Throws when nothing is left to run.
 */
export function resolveArgs(image: ImageConfig, container: Pick<ContainerSpec, 'command' | 'args'>): string[] {
  let argv: string[];
  if (container.command !== undefined) argv = [...container.command, ...(container.args ?? [])];
  else argv = [...image.entrypoint, ...(container.args ?? image.cmd)];
  if (argv.length === 0) throw new Error('no command to run: the image has no entrypoint or cmd and the container gives no command');
  return argv;
}

/** The environment: image env overlaid by container env, PATH defaulted, HOSTNAME set. */
export function resolveEnv(imageEnv: readonly string[], containerEnv: Record<string, string>, hostname: string): string[] {
  const env = new Map<string, string>();
  for (const kv of imageEnv) {
    const eq = kv.indexOf('=');
    if (eq <= 0) continue; // malformed image entry; nothing sensible to keep
    env.set(kv.slice(0, eq), kv.slice(eq + 1));
  }
  for (const [k, v] of Object.entries(containerEnv)) env.set(k, v);
  if (!env.has('PATH')) env.set('PATH', DEFAULT_PATH);
  if (!env.has('HOSTNAME')) env.set('HOSTNAME', hostname);
  return [...env].map(([k, v]) => `${k}=${v}`);
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
}

function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || line.startsWith('#')) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (Number.isInteger(uid) && Number.isInteger(gid)) out.push({ name: f[0] ?? '', uid, gid });
  }
  return out;
}

interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 3 || line.startsWith('#')) continue;
    const gid = Number(f[2]);
    if (Number.isInteger(gid)) out.push({ name: f[0] ?? '', gid, members: (f[3] ?? '').split(',').filter((m) => m !== '') });
  }
  return out;
}

const NUMERIC = /^[0-9]+$/;

/**
 * Resolves an image `user` (`''`, `uid`, `uid:gid`, `name`, `name:group`) to numeric ids,
 * reading names from the image's /etc/passwd and /etc/group contents (undefined when the
 * file is absent). Supplementary groups come from /etc/group memberships. Throws a clear
 * error for a name that cannot be resolved.
 */
export function resolveUser(user: string, passwd: string | undefined, group: string | undefined): ResolvedUser {
  const spec = user.trim();
  if (spec === '') return { uid: 0, gid: 0, additionalGids: [] };
  const [userPart = '', groupPart] = spec.split(':', 2);
  const users = passwd !== undefined ? parsePasswd(passwd) : [];
  const groups = group !== undefined ? parseGroup(group) : [];

  let uid: number;
  let gid: number;
  let name: string | undefined;
  if (NUMERIC.test(userPart)) {
    uid = Number(userPart);
    const entry = users.find((u) => u.uid === uid);
    gid = entry?.gid ?? 0;
    name = entry?.name;
  } else {
    if (passwd === undefined) throw new Error(`cannot resolve user "${userPart}": the image has no /etc/passwd; use a numeric uid`);
    const entry = users.find((u) => u.name === userPart);
    if (!entry) throw new Error(`cannot resolve user "${userPart}": no such user in the image's /etc/passwd`);
    uid = entry.uid;
    gid = entry.gid;
    name = entry.name;
  }
  if (groupPart !== undefined && groupPart !== '') {
    if (NUMERIC.test(groupPart)) gid = Number(groupPart);
    else {
      if (group === undefined) throw new Error(`cannot resolve group "${groupPart}": the image has no /etc/group; use a numeric gid`);
      const g = groups.find((x) => x.name === groupPart);
      if (!g) throw new Error(`cannot resolve group "${groupPart}": no such group in the image's /etc/group`);
      gid = g.gid;
    }
  }
  const additionalGids =
    name === undefined ? [] : [...new Set(groups.filter((g) => g.members.includes(name) && g.gid !== gid).map((g) => g.gid))];
  return { uid, gid, additionalGids };
}

/** The /etc/hosts content for a container with `hostname`. */
export function hostsFile(hostname: string): string {
  return `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${hostname}\n`;
}

/**
 * The container's resolv.conf from the host's: loopback nameservers are dropped (they point
 * at the host's own resolver, unreachable from the container's network namespace).
 */
export function resolvConfFile(hostResolvConf: string): string {
  const lines = hostResolvConf
    .split('\n')
    .filter((l) => !/^\s*nameserver\s+(127\.|::1\s*$)/.test(l))
    .filter((l) => l.trim() !== '');
  return lines.length > 0 ? `${lines.join('\n')}\n` : '';
}

/**
 * A resolv.conf naming the tenant network's resolver and search domains, so `redis` and
 * `redis.<tenant>.<domain>` both resolve. `ndots:1`: a name with a dot is tried as given first.
 */
export function tenantResolvConf(dns: { nameservers: readonly string[]; search: readonly string[] }): string {
  return [...(dns.search.length > 0 ? [`search ${dns.search.join(' ')}`] : []), ...dns.nameservers.map((n) => `nameserver ${n}`), 'options ndots:1', ''].join('\n');
}

/** Builds the complete config.json object for one container. */
export function buildOciSpec(input: OciSpecInput): OciSpec {
  const { container, image } = input;
  const caps = [...DEFAULT_CAPABILITIES];
  // Podman keeps a non-root process's capabilities in the bounding set only: it can still
  // gain them through setuid binaries / file caps (blocked anyway by no_new_privs), but
  // does not hold them.
  const isRoot = input.user.uid === 0;
  const namespaces: { type: string; path?: string }[] = [
    { type: 'pid' },
    { type: 'ipc' },
    { type: 'uts' },
    { type: 'mount' },
    ...(input.network.kind === 'join' ? [{ type: 'network', path: input.network.path }] : input.network.kind === 'private' ? [{ type: 'network' }] : []),
    { type: 'cgroup' },
  ];
  const memBytes = Math.round(container.memory * 1024 * 1024);
  const spec: OciSpec = {
    ociVersion: '1.0.2-dev',
    process: {
      terminal: false,
      user: { uid: input.user.uid, gid: input.user.gid, ...(input.user.additionalGids.length > 0 ? { additionalGids: input.user.additionalGids } : {}) },
      args: resolveArgs(image, container),
      env: resolveEnv(image.env, container.env, input.hostname),
      cwd: container.workingDir ?? (image.workingDir !== '' ? image.workingDir : '/'),
      capabilities: { bounding: caps, effective: isRoot ? caps : [], permitted: isRoot ? caps : [], inheritable: [], ambient: [] },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: input.nofileLimit, soft: input.nofileLimit }],
      noNewPrivileges: true,
    },
    root: { path: input.rootfsPath, readonly: container.readOnlyRootfs },
    hostname: input.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
      { destination: '/etc/hosts', type: 'bind', source: input.etcFiles.hosts, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] },
      { destination: '/etc/hostname', type: 'bind', source: input.etcFiles.hostname, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] },
      { destination: '/etc/resolv.conf', type: 'bind', source: input.etcFiles.resolvConf, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] },
      ...checkHostMounts(input.mounts ?? []).map(hostBindMount),
    ],
    annotations: Object.fromEntries(Object.entries(input.labels).map(([k, v]) => [LABEL_ANNOTATION_PREFIX + k, v])),
    linux: {
      cgroupsPath: input.cgroupsPath,
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        memory: { limit: memBytes, swap: memBytes },
        cpu: cpuQuota(input.startupCpu ?? container.cpu),
        pids: { limit: container.pids + (input.runtimeOwnPids ?? 0) },
      },
      namespaces,
      maskedPaths: [...MASKED_PATHS],
      readonlyPaths: [...READONLY_PATHS],
      ...(input.seccomp ? { seccomp: input.seccomp } : {}),
    },
  };
  return spec;
}

/** Reads labels back from config.json annotations (inverse of the builder's encoding). */
export function labelsFromAnnotations(annotations: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(annotations ?? {})) if (k.startsWith(LABEL_ANNOTATION_PREFIX)) out[k.slice(LABEL_ANNOTATION_PREFIX.length)] = v;
  return out;
}
