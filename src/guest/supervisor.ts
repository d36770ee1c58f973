/**
 * The guest agent's container supervisor: runs each container with `runc run` in the
 * foreground as the agent's own child, so exit codes come straight from the process and
 * stdout/stderr stream line by line. Each container gets a bundle on tmpfs under
 * `stateDir/containers/ID` with an overlay writable layer over the read-only rootfs of the
 * images share (falling back to a copy into tmpfs when overlay refuses the lower fs), and
 * the hardened spec, both made by the hosts' own bundle builder (`runtime/bundle.ts`), without
 * a network namespace: the cell's containers share the VM's network, the VM is the isolation
 * boundary.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, copyFile, mkdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { Logger } from 'pino';
import { containerNofileLimit, loadSeccompProfile, prepareBundle } from '../runtime/bundle.js';
import { cpuQuota } from '../runtime/oci-spec.js';
import type { CheckResult } from '../runtime/driver.js';
import { execCheck, httpGetCheck, tcpSocketCheck } from '../runtime/probe-check.js';
import { killTree, pidInCgroup } from '../proc/pids.js';
import { run as runCmd } from '../proc/run.js';
import type { OciSeccomp } from '../runtime/seccomp.js';
import { ContainerSpecSchema } from '../model/schemas.js';
import { GuestVolumes } from './volumes.js';
import { MAX_LOG_TEXT_CHARS, type GuestErrorCode, type HostMessage, type WireCheckAction, type WireContainerState } from './protocol.js';

/** Options of the supervisor; the defaults are the in-VM layout, tests override them. */
export interface SupervisorOptions {
  /** tmpfs directory for bundles and runc's state root. */
  stateDir: string;
  /** Where the images share is mounted; every rootfs must be under it. */
  imagesRoot: string;
  runcPath: string;
  /** cgroup parent of the containers (`PARENT/ID`), relative to the cgroup root(s). */
  cgroupParent: string;
  /** containers-common seccomp profile, or false for none. */
  seccompProfilePath: string | false;
  /** runc `--no-pivot` (needed when `/` is the initramfs); 'auto' detects it. */
  noPivot: boolean | 'auto';
  /** Lines kept per container for `logs`. */
  logTailLines: number;
  logger: Logger;
  /** Where volumes' disks are found (default /sys/block) and how long one may take to appear: tests and the fuzzer point them at an empty directory. */
  volumeDevices?: { sysBlock?: string; deviceTimeoutMs?: number };
}

/** A supervisor failure with the protocol error code to report. */
export class SupervisorError extends Error {
  constructor(
    readonly code: GuestErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'SupervisorError';
  }
}

/** A kept log line. */
export interface KeptLine {
  seq: number;
  stream: 'stdout' | 'stderr';
  time: string;
  text: string;
}

/** Callbacks from the supervisor to the agent. */
export interface SupervisorEvents {
  state(containerId: string, state: WireContainerState): void;
  log(containerId: string, line: KeptLine): void;
}

interface Ctr {
  id: string;
  labels: Record<string, string>;
  state: WireContainerState;
  bundle: string;
  child?: ChildProcess;
  exited: Promise<void>;
  ring: KeptLine[];
  seq: number;
  overlay: boolean;
  stderrTail: string[];
}

type RunRequest = Extract<HostMessage, { type: 'run' }>;

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Unmounts `target` when something is mounted there (lazily if a plain umount is refused). */
async function unmountIfMounted(target: string): Promise<void> {
  if (!(await readOptional('/proc/self/mounts'))?.split('\n').some((l) => l.split(' ')[1] === target)) return;
  const u = await runCmd('umount', [target]);
  if (u.code !== 0) await runCmd('umount', ['-l', target]);
}

/** True when `/` is the initramfs (rootfs), where pivot_root fails and runc needs --no-pivot. */
export async function rootIsInitramfs(): Promise<boolean> {
  const mounts = (await readOptional('/proc/self/mounts')) ?? '';
  const roots = mounts.split('\n').filter((l) => l.split(' ')[1] === '/');
  const last = roots[roots.length - 1];
  return last !== undefined && last.split(' ')[2] === 'rootfs';
}

/** The runtime id of the prewarm container: `_` never appears in the host's container ids (agent/container-id.ts). */
export const PREWARM_ID = 'carapace_prewarm';

/**
 * The CPU quota of a container's cgroup while its runtime sets it up, in CPUs: all of the
 * cell's. That setup (mounts, pivot_root, masked paths, the seccomp filter, capabilities) runs
 * inside the container's cgroup; under emulation it takes tens of ms of CPU, so under a
 * container's own small quota it was throttled for most of a start (cell bench: warm starts of
 * 1.1 s with `cpu: 0.05`, 0.45 s with `cpu: 0.5`). The container's own quota is set the moment
 * its pid is known and before it is reported running (narrowCpu); memory and pids limits
 * hold from the start. The same reasoning as startup CPU boosts for Kubernetes pods.
 */
const STARTUP_CPU = availableParallelism();

/** Supervises the containers of one cell. Create one per agent. */
export class Supervisor {
  private readonly ctrs = new Map<string, Ctr>();
  private readonly log: Logger;
  private seccomp: Promise<OciSeccomp | undefined> | undefined;
  private nofile: Promise<number> | undefined;
  private noPivot: Promise<boolean> | undefined;
  /** Numbers the pid files of exec checks. */
  private execSeq = 0;
  private readonly cgroupV2: Promise<boolean>;
  /** Mounted volumes and delivered file sets (bind-mounted into containers by `run`). */
  readonly volumes: GuestVolumes;

  constructor(
    private readonly opts: SupervisorOptions,
    private readonly events: SupervisorEvents,
  ) {
    this.log = opts.logger.child({ component: 'supervisor' });
    this.volumes = new GuestVolumes(opts.stateDir, opts.volumeDevices);
    this.cgroupV2 = readOptional('/sys/fs/cgroup/cgroup.controllers').then((t) => t !== undefined);
  }

  private get runcRoot(): string {
    return join(this.opts.stateDir, 'runc');
  }

  private runc(args: string[], timeoutMs = 30_000): ReturnType<typeof runCmd> {
    return runCmd(this.opts.runcPath, ['--root', this.runcRoot, ...args], { timeoutMs });
  }

  /** The seccomp filter of every container, loaded once (none, logged, if the shared /usr lacks the profile). */
  private loadSeccomp(): Promise<OciSeccomp | undefined> {
    this.seccomp ??= loadSeccompProfile(this.opts.seccompProfilePath, 'none', this.log);
    return this.seccomp;
  }

  /** The open files limit of every container, read once. */
  private nofileLimit(): Promise<number> {
    this.nofile ??= containerNofileLimit();
    return this.nofile;
  }

  private usePivot(): Promise<boolean> {
    const o = this.opts.noPivot;
    this.noPivot ??= o === 'auto' ? rootIsInitramfs() : Promise.resolve(o);
    return this.noPivot;
  }

  /** The containers' cgroups path (relative to each hierarchy root). */
  cgroupPath(id: string): string {
    return `${this.opts.cgroupParent}/${id}`;
  }

  /** Every container with its state and labels. */
  list(): { containerId: string; labels: Record<string, string>; state: WireContainerState }[] {
    return [...this.ctrs.values()].map((c) => ({ containerId: c.id, labels: c.labels, state: c.state }));
  }

  /** The last `tail` kept lines (all kept when undefined). */
  tail(id: string, tail: number | undefined): KeptLine[] {
    const c = this.ctrs.get(id);
    if (!c) throw new SupervisorError('GUEST_E_NOT_FOUND', `no container ${id} in this cell`);
    return tail === undefined ? [...c.ring] : tail === 0 ? [] : c.ring.slice(-tail);
  }

  /** Starts a container; resolves once runc has started its process. */
  async run(req: RunRequest): Promise<void> {
    const id = req.containerId;
    if (this.ctrs.has(id)) throw new SupervisorError('GUEST_E_EXISTS', `container ${id} already exists in this cell`);
    const rootfs = req.rootfs;
    const images = resolvePath(this.opts.imagesRoot);
    if (resolvePath(rootfs) !== rootfs || !rootfs.startsWith(`${images}/`) || /[,:\n]/.test(rootfs)) {
      throw new SupervisorError('GUEST_E_BAD_REQUEST', `rootfs ${JSON.stringify(rootfs)} must be a normalised absolute path under ${images} without ',' or ':'`);
    }
    const bundle = join(this.opts.stateDir, 'containers', id);
    let exitedResolve!: () => void; // `!`: assigned synchronously by the Promise executor below
    const ctr: Ctr = {
      id,
      labels: req.labels,
      state: { status: 'created' },
      bundle,
      exited: new Promise<void>((r) => (exitedResolve = r)),
      ring: [],
      seq: 0,
      overlay: false,
      stderrTail: [],
    };
    this.ctrs.set(id, ctr);
    const log = this.log.child({ containerId: id });
    const t0 = performance.now();
    try {
      this.volumes.claim(id, req.mounts ?? []);
      await mkdir(this.runcRoot, { recursive: true, mode: 0o700 });
      await mkdir(bundle, { recursive: true, mode: 0o700 });
      const [seccomp, nofileLimit, noPivot] = await Promise.all([this.loadSeccomp(), this.nofileLimit(), this.usePivot()]);
      const made = await prepareBundle({
        dir: bundle,
        id,
        rootfs,
        image: req.image,
        container: req.container,
        hostname: req.hostname,
        labels: req.labels,
        // The cell is the isolation boundary: its containers share the VM's network namespace.
        network: { kind: 'shared' },
        cgroupsPath: this.cgroupPath(id),
        startupCpu: STARTUP_CPU,
        seccomp,
        nofileLimit,
        ifOverlayRefused: 'copy',
        mounts: (req.mounts ?? []).map((m) => ({ kind: 'bind' as const, source: m.source, destination: m.destination, readOnly: m.readOnly, volume: this.volumes.isVolume(m.source) })),
        log,
      });
      ctr.overlay = made.overlay;
      const bundleMs = performance.now() - t0;
      await this.spawnRunc(ctr, noPivot, exitedResolve, () => this.narrowCpu(id, req.container.cpu));
      // Where a start's time went (the bundle: rootfs overlay, config, files; the runtime: `run` until the pid file).
      log.info({ pid: ctr.state.status === 'running' ? ctr.state.pid : undefined, bundleMs: Math.round(bundleMs), runtimeMs: Math.round(performance.now() - t0 - bundleMs) }, 'container started');
    } catch (e) {
      const message = (e as Error).message; // `as`: everything thrown above is an Error
      log.warn({ err: message }, 'container start failed; cleaning up');
      await this.destroy(id).catch((err: unknown) => log.error({ err }, 'cleanup after failed start failed'));
      if (e instanceof SupervisorError) throw e;
      throw new SupervisorError('GUEST_E_START_FAILED', `starting container ${id} failed: ${message}`);
    }
  }

  /**
   * Runs one throwaway container to its end (`busybox true`, the initramfs's static busybox as
   * its whole image) through the path every container takes: the same runtime, bundle, seccomp
   * filter, capabilities, masked paths and cgroup. Under emulation a cell's first container
   * start cost ~3 s more than the next ones (the runtime's, libseccomp's and the kernel's code
   * translated for the first time); an idle cell (a warm one, waiting to be claimed or to take
   * a failover) pays that now instead of in its first real start. Best effort: a failure is
   * logged and changes nothing. Resolves with the time it took, ms.
   */
  async prewarm(busybox = '/bin/busybox'): Promise<number> {
    const t0 = performance.now();
    const id = PREWARM_ID;
    const dir = join(this.opts.stateDir, 'prewarm');
    const rootfs = join(dir, 'rootfs');
    const bundle = join(dir, 'bundle');
    const log = this.log.child({ prewarm: true });
    try {
      await rm(dir, { recursive: true, force: true });
      await mkdir(join(rootfs, 'bin'), { recursive: true });
      await mkdir(bundle, { recursive: true, mode: 0o700 });
      await mkdir(this.runcRoot, { recursive: true, mode: 0o700 });
      await copyFile(busybox, join(rootfs, 'bin/busybox'));
      await chmod(join(rootfs, 'bin/busybox'), 0o755);
      const [seccomp, nofileLimit, noPivot] = await Promise.all([this.loadSeccomp(), this.nofileLimit(), this.usePivot()]);
      await prepareBundle({
        dir: bundle,
        id,
        rootfs,
        image: { entrypoint: ['/bin/busybox'], cmd: ['true'], env: [], workingDir: '/', user: '' },
        container: ContainerSpecSchema.parse({ image: 'carapace/prewarm', cpu: 0.1, memory: 16 }),
        hostname: 'prewarm',
        labels: {},
        network: { kind: 'shared' },
        cgroupsPath: this.cgroupPath(id),
        startupCpu: STARTUP_CPU, // it only ever sets up and ends: never narrowed
        seccomp,
        nofileLimit,
        ifOverlayRefused: 'copy',
        log,
      });
      const r = await this.runc(['run', '--bundle', bundle, ...(noPivot ? ['--no-pivot'] : []), id], 120_000);
      if (r.code !== 0) log.warn({ code: r.code, stderr: r.stderr.trim().slice(-500) }, 'prewarm container failed');
    } catch (err) {
      log.warn({ err }, 'prewarm failed');
    } finally {
      await this.runc(['delete', '--force', id]).catch(() => undefined);
      await unmountIfMounted(join(bundle, 'merged'));
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      await rmdir(join('/sys/fs/cgroup', this.cgroupPath(id))).catch(() => undefined);
    }
    const ms = performance.now() - t0;
    log.info({ ms: Math.round(ms) }, 'prewarm done');
    return ms;
  }

  /**
   * Sets a started container's CPU quota to its own `cpu` (run() starts it with STARTUP_CPU).
   * A cgroup already gone is a container that has already ended (and its runtime removed the
   * cgroup): ENOENT for its directory, ENODEV for a file of one being removed.
   */
  private async narrowCpu(id: string, cpu: number): Promise<void> {
    const { quota, period } = cpuQuota(cpu);
    const cg = this.cgroupPath(id);
    try {
      if (await this.cgroupV2) await writeFile(join('/sys/fs/cgroup', cg, 'cpu.max'), `${quota} ${period}`);
      else {
        await writeFile(join('/sys/fs/cgroup/cpu', cg, 'cpu.cfs_period_us'), String(period));
        await writeFile(join('/sys/fs/cgroup/cpu', cg, 'cpu.cfs_quota_us'), String(quota));
      }
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code; // fs errors are ErrnoExceptions
      if (code !== 'ENOENT' && code !== 'ENODEV') throw e;
    }
  }

  /**
   * Spawns `runc run` and resolves once the container process runs (or rejects if it never
   * did); `started`, once its pid is known and before it is reported running, must succeed or
   * the container is failed (run() then destroys it).
   */
  private spawnRunc(ctr: Ctr, noPivot: boolean, exitedResolve: () => void, started: () => Promise<void>): Promise<void> {
    const pidFile = join(ctr.bundle, 'pid');
    const args = ['--root', this.runcRoot, 'run', '--bundle', ctr.bundle, '--pid-file', pidFile, ...(noPivot ? ['--no-pivot'] : []), ctr.id];
    const child = spawn(this.opts.runcPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    ctr.child = child;
    const startedAt = new Date().toISOString();
    this.pipeLines(ctr, child.stdout, 'stdout');
    this.pipeLines(ctr, child.stderr, 'stderr');
    let exitCode: number | undefined;
    let spawnError: Error | undefined;
    child.on('error', (e) => {
      spawnError = e;
    });
    const closed = new Promise<void>((resolve) => {
      child.on('close', (code, signal) => {
        exitCode = code ?? (signal ? 128 + (signalNumber(signal) ?? 9) : 255);
        resolve();
      });
    });
    return (async () => {
      let pid: number | undefined;
      for (;;) {
        const text = await readOptional(pidFile);
        const n = text === undefined ? NaN : Number(text.trim());
        if (Number.isInteger(n) && n > 0) {
          pid = n;
          break;
        }
        if (exitCode !== undefined || spawnError) break;
        await Promise.race([sleep(10), closed]);
      }
      if (pid === undefined) {
        await closed;
        ctr.child = undefined;
        exitedResolve();
        const why = spawnError ? spawnError.message : ctr.stderrTail.slice(-3).join(' | ') || `runc exited with ${exitCode}`;
        throw new Error(why);
      }
      try {
        await started();
      } catch (e) {
        // run() destroys it; its runtime's exit then needs no state of its own.
        void closed.then(() => exitedResolve());
        throw e;
      }
      this.setState(ctr, { status: 'running', pid, startedAt });
      void closed.then(() => {
        ctr.child = undefined;
        this.setState(ctr, { status: 'exited', exitCode: Math.min(255, Math.max(0, exitCode ?? 255)), startedAt, finishedAt: new Date().toISOString() });
        exitedResolve();
      });
    })();
  }

  private setState(ctr: Ctr, state: WireContainerState): void {
    ctr.state = state;
    if (this.ctrs.get(ctr.id) === ctr) this.events.state(ctr.id, state);
  }

  /** Splits a stream into lines (long ones into MAX_LOG_TEXT_CHARS pieces), keeps and reports them. */
  private pipeLines(ctr: Ctr, stream: NodeJS.ReadableStream, name: 'stdout' | 'stderr'): void {
    const decoder = new StringDecoder('utf8');
    let partial = '';
    const emit = (text: string): void => {
      ctr.seq += 1;
      const line: KeptLine = { seq: ctr.seq, stream: name, time: new Date().toISOString(), text };
      ctr.ring.push(line);
      if (ctr.ring.length > this.opts.logTailLines) ctr.ring.shift();
      if (name === 'stderr') {
        ctr.stderrTail.push(text);
        if (ctr.stderrTail.length > 5) ctr.stderrTail.shift();
      }
      this.events.log(ctr.id, line);
    };
    const feed = (s: string): void => {
      partial += s;
      let nl: number;
      while ((nl = partial.indexOf('\n')) !== -1) {
        let line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        while (line.length > MAX_LOG_TEXT_CHARS) {
          emit(line.slice(0, MAX_LOG_TEXT_CHARS));
          line = line.slice(MAX_LOG_TEXT_CHARS);
        }
        emit(line);
      }
      while (partial.length > MAX_LOG_TEXT_CHARS) {
        emit(partial.slice(0, MAX_LOG_TEXT_CHARS));
        partial = partial.slice(MAX_LOG_TEXT_CHARS);
      }
    };
    stream.on('data', (b: Buffer) => feed(decoder.write(b)));
    stream.on('end', () => {
      feed(decoder.end());
      if (partial !== '') emit(partial);
      partial = '';
    });
  }

  /** SIGTERM, then SIGKILL after graceMs; resolves once it exited. No-op when not running. */
  async stop(id: string, graceMs: number): Promise<void> {
    const c = this.ctrs.get(id);
    if (!c) throw new SupervisorError('GUEST_E_NOT_FOUND', `no container ${id} in this cell`);
    if (!c.child) return;
    if (graceMs > 0) {
      await this.runc(['kill', id, 'TERM']);
      if (await Promise.race([c.exited.then(() => true), sleep(graceMs).then(() => false)])) return;
    }
    await this.runc(['kill', '--all', id, 'KILL']);
    const done = await Promise.race([c.exited.then(() => true), sleep(15_000).then(() => false)]);
    if (!done) {
      // runc itself is stuck: kill our child; the container's init dies with its pid namespace only if runc's kill worked.
      c.child?.kill('SIGKILL');
      throw new SupervisorError('GUEST_E_STOP_FAILED', `container ${id} did not exit within 15 s of SIGKILL`);
    }
  }

  /** Kills and removes a container and everything made for it. Idempotent. */
  async destroy(id: string): Promise<void> {
    const c = this.ctrs.get(id);
    if (c?.child) await this.stop(id, 0);
    await this.runc(['delete', '--force', id]).catch(() => undefined);
    const bundle = c?.bundle ?? join(this.opts.stateDir, 'containers', id);
    const merged = join(bundle, 'merged');
    // Unmount whatever is there (overlay, or nothing after a copy fallback).
    await unmountIfMounted(merged);
    await rm(bundle, { recursive: true, force: true });
    await this.volumes.release(id);
    this.ctrs.delete(id);
  }

  /**
   * Runs one health check against a running container from inside the VM: `exec` through
   * `runc exec` (the container's own process settings; on timeout the exec'd process and
   * its children are killed if still in the container's cgroup), `httpGet`/`tcpSocket` to
   * 127.0.0.1 (the cell's containers share the VM's network). A container that is not
   * running fails the check; an unknown one is GUEST_E_NOT_FOUND.
   */
  async check(id: string, action: WireCheckAction, timeoutMs: number): Promise<CheckResult> {
    const c = this.ctrs.get(id);
    if (!c) throw new SupervisorError('GUEST_E_NOT_FOUND', `no container ${id} in this cell`);
    if (c.state.status !== 'running') return { ok: false, message: `container ${id} is not running` };
    if ('httpGet' in action) return httpGetCheck('127.0.0.1', action.httpGet.port, action.httpGet.path, timeoutMs);
    if ('tcpSocket' in action) return tcpSocketCheck('127.0.0.1', action.tcpSocket.port, timeoutMs);
    this.execSeq += 1;
    const pidFile = join(c.bundle, `probe-${this.execSeq}.pid`);
    try {
      return await execCheck({
        argv: [this.opts.runcPath, '--root', this.runcRoot, 'exec', '--pid-file', pidFile, id, ...action.exec.command],
        command: action.exec.command,
        timeoutMs,
        onTimeout: async () => {
          const pid = Number((await readOptional(pidFile))?.trim());
          if (pidInCgroup(pid, this.cgroupPath(id))) killTree(pid);
        },
      });
    } finally {
      await rm(pidFile, { force: true });
    }
  }

  /**
   * The `runc exec` command line of an exec session in a running container (the container's
   * own process settings come from its bundle), where runc writes the exec'd process's pid,
   * and the container's cgroup (a pid is killed only if it is still in it).
   * GUEST_E_NOT_FOUND when the container is unknown or not running.
   */
  execCommand(id: string, command: string[], tty: boolean): { argv: string[]; pidFile: string; cgroupPath: string } {
    const c = this.ctrs.get(id);
    if (!c) throw new SupervisorError('GUEST_E_NOT_FOUND', `no container ${id} in this cell`);
    if (c.state.status !== 'running') throw new SupervisorError('GUEST_E_NOT_FOUND', `container ${id} is not running`);
    this.execSeq += 1;
    const pidFile = join(c.bundle, `exec-${this.execSeq}.pid`);
    return { argv: [this.opts.runcPath, '--root', this.runcRoot, 'exec', '--pid-file', pidFile, ...(tty ? ['--tty'] : []), id, ...command], pidFile, cgroupPath: this.cgroupPath(id) };
  }

  /** CPU and memory of one container from its cgroup; undefined when it has none (not running). */
  async usage(id: string): Promise<{ cpuSeconds: number; memoryBytes: number } | undefined> {
    const cg = this.cgroupPath(id);
    if (await this.cgroupV2) {
      const stat = await readOptional(join('/sys/fs/cgroup', cg, 'cpu.stat'));
      const mem = await readOptional(join('/sys/fs/cgroup', cg, 'memory.current'));
      if (stat === undefined || mem === undefined) return undefined;
      return { cpuSeconds: Number(/usage_usec (\d+)/.exec(stat)?.[1] ?? 0) / 1e6, memoryBytes: Number(mem.trim()) || 0 };
    }
    const cpu = await readOptional(join('/sys/fs/cgroup/cpuacct', cg, 'cpuacct.usage'));
    const mem = await readOptional(join('/sys/fs/cgroup/memory', cg, 'memory.usage_in_bytes'));
    if (cpu === undefined || mem === undefined) return undefined;
    return { cpuSeconds: Number(cpu.trim()) / 1e9 || 0, memoryBytes: Number(mem.trim()) || 0 };
  }

  /** Usage of every running container. */
  async usageAll(): Promise<{ containerId: string; cpuSeconds: number; memoryBytes: number }[]> {
    const out: { containerId: string; cpuSeconds: number; memoryBytes: number }[] = [];
    for (const c of this.ctrs.values()) {
      if (c.state.status !== 'running') continue;
      const u = await this.usage(c.id);
      if (u) out.push({ containerId: c.id, ...u });
    }
    return out;
  }

  /** Stops and destroys every container, then removes the (empty) cgroup parent. */
  async destroyAll(graceMs: number): Promise<void> {
    await Promise.all([...this.ctrs.keys()].map((id) => this.stop(id, graceMs).catch(() => undefined)));
    for (const id of [...this.ctrs.keys()]) await this.destroy(id).catch((err: unknown) => this.log.error({ err, containerId: id }, 'destroy failed'));
    const roots = (await this.cgroupV2) ? ['/sys/fs/cgroup'] : ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'devices', 'freezer', 'blkio', 'net_cls', 'net_prio', 'perf_event', 'hugetlb', 'rdma', 'misc', 'systemd', 'unified'].map((c) => `/sys/fs/cgroup/${c}`);
    for (const r of roots) await rmdir(join(r, this.opts.cgroupParent)).catch(() => undefined);
  }
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15 };
function signalNumber(sig: string): number | undefined {
  return SIGNALS[sig];
}

/** CPU seconds and memory of the whole guest, from /proc/stat and /proc/meminfo. */
export async function cellUsage(): Promise<{ cpuSeconds: number; memoryBytes: number; memoryTotalBytes: number }> {
  const stat = (await readOptional('/proc/stat')) ?? '';
  const f = (/^cpu\s+(.*)$/m.exec(stat)?.[1] ?? '').trim().split(/\s+/).map(Number);
  // user nice system idle iowait irq softirq steal: busy = all but idle and iowait; USER_HZ is 100 on Linux.
  const busy = [0, 1, 2, 5, 6, 7].reduce((s, i) => s + (Number.isFinite(f[i]) ? (f[i] ?? 0) : 0), 0);
  const mem = (await readOptional('/proc/meminfo')) ?? '';
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(mem)?.[1] ?? 0) * 1024;
  const total = kb('MemTotal');
  return { cpuSeconds: busy / 100, memoryBytes: Math.max(0, total - kb('MemAvailable')), memoryTotalBytes: total };
}
