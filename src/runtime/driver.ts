/**
 * The runtime driver contract (after Nomad's driver plugins): everything the host agent
 * needs from a container runtime, and nothing about the control plane. Drivers: `runc`
 * (isolation `host`) and `runsc` (gVisor, isolation `sandbox`) on the host, and one
 * `CellRuntime` per cell VM (isolation `cell` or `dedicated`: runc inside the VM, driven
 * through its guest agent). The agent asks a driver what it does (`capabilities`) instead of
 * testing which tier it is. A driver must tolerate the agent dying at any point: containers
 * outlive the agent (supervised by conmon on the host, by the guest agent in a cell) and
 * `recover`/`inspect` find them again. One contract suite (test/runtime/contract.ts) runs
 * against every driver.
 */
import type { ContainerSpec, Isolation } from '../model/schemas.js';
import type { ExecOptions } from '../exec/frames.js';
import type { ExecProcess } from '../exec/process.js';

/** Container ids every driver accepts (`StartRequest.id`); drivers derive paths from them. */
export const CONTAINER_ID_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,63}$/;

/** Throws a clear error for an id outside CONTAINER_ID_PATTERN (before any path is derived from it). */
export function validateContainerId(id: string): void {
  if (!CONTAINER_ID_PATTERN.test(id)) throw new Error(`invalid container id ${JSON.stringify(id)}: must match ${CONTAINER_ID_PATTERN.source}`);
}

/** The parts of an OCI image config a container start needs. */
export interface ImageConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  /** `uid[:gid]` or a name; empty means root. */
  user: string;
}

/** What a container's /etc/resolv.conf says. */
export interface ResolverConfig {
  nameservers: string[];
  search: string[];
}

/**
 * A host directory given to a container at `destination` (a mounted volume, or an instance's
 * secret/config files). Bind-mounted with nosuid and nodev (and ro when `readOnly`): whatever
 * a tenant writes there (a setuid binary, a device node) stays inert. Cells do not take host
 * paths: their volumes reach the VM as block devices.
 */
export type HostMount = {
  kind: 'bind';
  source: string;
  destination: string;
  readOnly: boolean;
  /**
   * `source` is a volume's filesystem root: a fresh one, mounted read-write, first takes the
   * owner and mode of the image's directory at `destination` (see volume-owner.ts).
   */
  volume?: boolean;
};

export interface StartRequest {
  /**
   * Runtime container id, unique per start attempt, `[a-z0-9][a-z0-9_.-]*`, at most 64.
   * The agent derives it; drivers use it for every path they create.
   */
  id: string;
  /** The unpacked image root filesystem; shared by instances and never modified. */
  rootfs: string;
  image: ImageConfig;
  container: ContainerSpec;
  /** Network namespace to join (a path such as /var/run/netns/NAME); none means a private loopback-only one. */
  netnsPath?: string;
  /** Hostname inside the container. */
  hostname: string;
  /**
   * The container's resolver: its tenant network's DNS server and search domains. Absent: the
   * host's resolvers (loopback ones dropped). Cells ignore it: their containers use the VM's,
   * which the cell was given on its tenant network.
   */
  dns?: ResolverConfig;
  /** Opaque labels kept with the container (tenant, instance, attempt) and returned by recover/inspect. */
  labels: Record<string, string>;
  /**
   * Host directories mounted into the container (see HostMount), in order; destinations are
   * checked by the spec builder (absolute, no `..`, not under /proc, /sys or /dev, not twice).
   */
  mounts?: HostMount[];
}

export type ContainerState =
  | { status: 'running'; pid: number; startedAt: string }
  /**
   * `oomKilled`: the kernel's OOM killer killed a process in the container's cgroup (set when
   * the driver can tell; absent when it cannot or nothing was killed).
   */
  | { status: 'exited'; exitCode: number; startedAt?: string; finishedAt: string; oomKilled?: boolean }
  /** Created by the runtime but never started (agent died between create and start). */
  | { status: 'created' };

export interface ContainerInfo {
  id: string;
  labels: Record<string, string>;
  state: ContainerState;
}

export interface LogLine {
  /** RFC 3339 time the line was written. */
  time: string;
  stream: 'stdout' | 'stderr';
  text: string;
}

export interface LogOptions {
  follow: boolean;
  /** Only the last N lines (before following). */
  tail?: number;
  signal?: AbortSignal;
}

/** CPU and memory use of one container, from its cgroup. */
export interface ContainerUsage {
  cpuSeconds: number;
  memoryBytes: number;
}

/**
 * One health check to run against a running container (a probe handler, resolved by the
 * agent). `host` of httpGet/tcpSocket is the address to connect to (the container's address
 * on its bridge); drivers whose containers have no address of their own (cells: the VM's
 * loopback) ignore it.
 */
export type CheckAction =
  | { exec: { command: string[] } }
  | { httpGet: { path: string; port: number; host?: string } }
  | { tcpSocket: { port: number; host?: string } };

/** The outcome of one check: `ok`, or why not, in one line (`HTTP GET http://…: 503`). */
export interface CheckResult {
  ok: boolean;
  message: string;
}

/**
 * What a driver does for its containers and what it needs from the agent, as data (Nomad's
 * driver `Capabilities`). The agent branches on these, never on a tier's or driver's name.
 */
export interface DriverCapabilities {
  /**
   * How a container gets its network.
   * - `namespace`: the agent makes a network namespace per container on the host (an
   *   address on the tenant's bridge, its published ports, the tenant's rules) and passes it
   *   as `StartRequest.netnsPath`; network checks connect to that address.
   * - `vm`: the container shares its VM's network. The agent makes nothing; the driver
   *   publishes the spec's host ports itself (forwards into the VM) and runs network checks
   *   from inside the VM (`CheckAction` hosts are ignored).
   */
  readonly network: 'namespace' | 'vm';
  /**
   * How the unpacked image root (`StartRequest.rootfs`, a host path) reaches the container.
   * - `host-path`: the driver uses it where it is on the host.
   * - `shared-into-vm`: the host's image directory is shared read-only into the VM; the
   *   driver maps the path into the VM and refuses a rootfs outside that directory.
   * (Volumes will be declared the same way.)
   */
  readonly images: 'host-path' | 'shared-into-vm';
}

/** A process `exec` started in a container: its I/O, and how to end it from outside. */
export interface ExecRun {
  process: ExecProcess;
  /** Kills what the exec started in the container (the client went away before it ended). */
  kill(): Promise<void>;
}

export interface RuntimeDriver {
  /** Names the driver in logs and metrics (`runc`, `runsc`, `cell:NAME`); never branched on. */
  readonly name: string;
  readonly isolation: Isolation;
  readonly capabilities: DriverCapabilities;
  /** Whether this host can run the driver (binary present, a trivial container works); a reason if not. */
  probe(): Promise<{ ok: true } | { ok: false; message: string }>;
  /** Creates and starts the container; resolves once its process runs (or rejects with a clear message). */
  start(req: StartRequest): Promise<ContainerInfo>;
  /** Sends SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. Idempotent. */
  stop(id: string, graceMs: number): Promise<void>;
  /** Removes the container and everything the driver made for it (bundle, writable layer, logs). Idempotent. */
  destroy(id: string): Promise<void>;
  /** Current state; undefined when the driver knows no such container. */
  inspect(id: string): Promise<ContainerInfo | undefined>;
  /** Resolves with the final state once the container has exited (immediately if it already has). */
  wait(id: string, signal?: AbortSignal): Promise<Extract<ContainerState, { status: 'exited' }>>;
  logs(id: string, opts: LogOptions): AsyncIterable<LogLine>;
  /** Every container this driver manages on this host, so a restarted agent can adopt or clean them. */
  recover(): Promise<ContainerInfo[]>;
  usage(id: string): Promise<ContainerUsage | undefined>;
  /**
   * Runs one health check against a running container and reports the outcome. Never waits
   * much longer than `timeoutMs`: a check that takes longer fails, and an `exec` still
   * running then is killed. Resolves (never rejects) for a failing check; rejects only
   * when it could not be attempted at all (e.g. an invalid id).
   */
  check(id: string, action: CheckAction, timeoutMs: number): Promise<CheckResult>;
  /**
   * Starts `opts.command` in the running container `id` for an interactive session, with a
   * terminal or with pipes (`opts.tty`), as the container's own user and settings. Rejects
   * with CARAPACE_E_INSTANCE_NOT_RUNNING when the container does not run. Optional: the agent
   * answers CARAPACE_E_EXEC_UNSUPPORTED for a driver without it (every driver has it today:
   * runc, runsc, and cells through their guest agent).
   */
  exec?(id: string, opts: ExecOptions): Promise<ExecRun>;
}
