/**
 * The shared implementation of the OCI runtime drivers (`runc`, `runsc`). Each container is
 * supervised by conmon, not by the agent: conmon holds the container's stdio, writes the
 * k8s-file log and the exit code file, so containers outlive the agent and no exit code is
 * lost. Everything the driver keeps is on disk under `stateDir`, at paths derived from the
 * validated id only:
 *
 *   stateDir/containers/ID/   bundle: config.json, meta.json, etc files, upper/ work/ merged/
 *                             (the private overlay writable layer), ctr.log, pidfile, conmon.pid
 *   stateDir/exits/ID         exit code written by conmon when the container exits
 *   stateDir/runtime/         the runtime's --root (its own state)
 *   stateDir/sock/            conmon's attach socket dir
 *
 * Start takes three process spawns (mount, conmon -> runtime create, runtime start) and no
 * polling: conmon reports the create result on a sync pipe (`_OCI_SYNCPIPE`).
 */
import { spawn } from 'node:child_process';
import { watch, type FSWatcher } from 'node:fs';
import { access, mkdir, open, readFile, readdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Isolation } from '../model/schemas.js';
import { CONTAINER_ID_PATTERN, validateContainerId, type CheckAction, type CheckResult, type ContainerInfo, type DriverCapabilities, type ContainerState, type ExecRun, type ContainerUsage, type LogLine, type LogOptions, type RuntimeDriver, type StartRequest } from './driver.js';
import { K8sLogParser } from './k8s-log.js';
import { containerNofileLimit, loadSeccompProfile, prepareBundle } from './bundle.js';
import { checkHostMounts, labelsFromAnnotations, type OciSpec } from './oci-spec.js';
import { pidAlive } from '../proc/pids.js';
import { run } from '../proc/run.js';
import { sleep } from '../proc/sleep.js';
import { execCheck, httpGetCheck, tcpSocketCheck } from './probe-check.js';
import type { OciSeccomp } from './seccomp.js';
import { CarapaceError } from '../model/errors.js';
import type { ExecOptions } from '../exec/frames.js';
import { spawnExec } from '../exec/process.js';

/** Exit code reported when a container is gone and nothing recorded its real exit code. */
export const UNKNOWN_EXIT_CODE = 137;

/** Where the default seccomp profile lives (Debian golang-github-containers-common). */
export const DEFAULT_SECCOMP_PROFILE = '/usr/share/containers/seccomp.json';

/** Options shared by the runc and runsc factories. */
export interface OciDriverOptions {
  /** Directory the driver owns for bundles, logs, exit files and runtime state. */
  stateDir: string;
  logger: Logger;
  /** Path of the runtime binary; defaults to the Debian location. */
  runtimePath?: string;
  /** Path of conmon; defaults to `/usr/bin/conmon`. */
  conmonPath?: string;
  /** Seccomp profile in containers-common format; `false` disables seccomp (tests of the converter only). */
  seccompProfilePath?: string | false;
}

/** What differs between runc and runsc. */
export interface RuntimeFlavor {
  name: string;
  isolation: Isolation;
  capabilities: DriverCapabilities;
  defaultPath: string;
  /** Global flags (before the subcommand) for a container; must be identical for every call on it. */
  globalArgs(root: string, meta: NetMeta | undefined): string[];
  /**
   * Whether a new container in a network namespace is recorded with `netstack: true` (the
   * runtime serves the namespace with its own network stack: runsc's `--network=sandbox`).
   * Containers recorded without it keep the way they were made (globalArgs and launcher read it).
   */
  netstack?: boolean;
  /**
   * How the runtime is launched (conmon's `create` and every later call) when the container
   * joins a network namespace: a wrapper command placed before the runtime (`argv`, ending
   * with the runtime's path), and whether that wrapper puts the runtime inside the namespace
   * (`entersNamespace`: the spec then names none) or the spec joins it by path. Undefined: the
   * runtime itself, with the namespace path in the OCI spec.
   */
  launcher?(runtimePath: string, meta: NetMeta & { netnsPath: string }): { argv: string[]; entersNamespace: boolean };
  /** A trivial real check that the runtime works here; a reason when it does not. */
  probe(driver: OciDriver): Promise<{ ok: true } | { ok: false; message: string }>;
  /**
   * How `exec` is told to give the process a terminal (our side of the runtime client is a
   * pty of ours: exec/process.ts). `flag`: `--tty` (runc). `process-file`: a process.json
   * (the container's own process, with the command and `terminal: true`) passed with
   * `--process`: this runsc has no tty flag, and only a process spec's `terminal` makes it
   * hand its stdin to the sandbox as the process's tty (seen here: without it, `stty` in the
   * session fails with ENOTTY).
   */
  execTty: 'flag' | 'process-file';
  /** The `exec` flag that writes the exec'd process's pid to a file (the pid `killExec` gets). */
  execPidFileFlag: string;
  /**
   * Whether `exec` must be told the container's user and groups (`--user`, `--additional-gids`):
   * runsc's exec otherwise runs as root, not as the container's user (runc's takes them from
   * the bundle).
   */
  execAsUserFlags?: boolean;
  /** Kills a process started by `exec` in the container (a health check that timed out); runc: with its children, runsc: itself only. */
  killExec(driver: OciDriver, id: string, meta: NetMeta, pid: number): Promise<void>;
  /**
   * Host tasks the runtime itself keeps in the container's cgroup, added to the pids limit
   * so the limit counts the container's own processes (gVisor: sentry, gofer, ptrace stubs).
   */
  ownPids?: number;
}

/** What the driver stores next to the bundle (meta.json). */
export interface ContainerMeta {
  id: string;
  labels: Record<string, string>;
  netnsPath?: string;
  /**
   * The runtime's own network stack serves the namespace (runsc `--network=sandbox`, see
   * RuntimeFlavor.netstack); absent on containers made before it was (runsc on the host
   * kernel's stack), which every later call must keep treating that way.
   */
  netstack?: boolean;
  createdAt: string;
  startedAt?: string;
}

/** What of a container's record decides how its runtime is called (global flags, launcher). */
export type NetMeta = Pick<ContainerMeta, 'netnsPath' | 'netstack'>;

interface RuntimeStateJson {
  id: string;
  pid: number;
  status: string;
  created?: string;
  annotations?: Record<string, string>;
}

/** Thrown by `wait` when its signal aborts. */
export class WaitAbortedError extends Error {
  constructor(id: string) {
    super(`wait for container ${id} aborted`);
    this.name = 'AbortError';
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // `as`: fs errors are ErrnoException
    throw e;
  }
}

function firstLine(text: string): string {
  return text.trim().split('\n').filter((l) => l.trim() !== '').pop() ?? '';
}

/** The runc/runsc driver; create through `createRuncDriver` / `createRunscDriver`. */
export class OciDriver implements RuntimeDriver {
  readonly name: string;
  readonly isolation: Isolation;
  readonly capabilities: DriverCapabilities;
  /** The runtime binary in use. */
  readonly runtimePath: string;
  /** conmon binary in use. */
  readonly conmonPath: string;
  private readonly stateDir: string;
  private readonly log: Logger;
  private readonly seccompPath: string | false;
  private seccomp: Promise<OciSeccomp | undefined> | undefined;
  private dirsReady: Promise<void> | undefined;
  private nofile: Promise<number> | undefined;
  /** Numbers the pid files of exec checks. */
  private execSeq = 0;

  constructor(
    private readonly flavor: RuntimeFlavor,
    opts: OciDriverOptions,
  ) {
    this.name = flavor.name;
    this.isolation = flavor.isolation;
    this.capabilities = flavor.capabilities;
    this.runtimePath = opts.runtimePath ?? flavor.defaultPath;
    this.conmonPath = opts.conmonPath ?? '/usr/bin/conmon';
    this.stateDir = opts.stateDir;
    this.log = opts.logger.child({ driver: flavor.name });
    this.seccompPath = opts.seccompProfilePath ?? DEFAULT_SECCOMP_PROFILE;
  }

  // ---- paths (all derived from the validated id) ----
  /** The runtime's own state root (`--root`). */
  get runtimeRoot(): string {
    return join(this.stateDir, 'runtime');
  }
  private get exitsDir(): string {
    return join(this.stateDir, 'exits');
  }
  private get containersDir(): string {
    return join(this.stateDir, 'containers');
  }
  private bundle(id: string): string {
    return join(this.containersDir, id);
  }
  private exitFile(id: string): string {
    return join(this.exitsDir, id);
  }
  private merged(id: string): string {
    return join(this.bundle(id), 'merged');
  }
  private logFile(id: string): string {
    return join(this.bundle(id), 'ctr.log');
  }
  /** The cgroup (relative to each v1 hierarchy root) the container runs in. */
  cgroupPath(id: string): string {
    return `/carapace/${id}`;
  }

  private ensureDirs(): Promise<void> {
    this.dirsReady ??= (async () => {
      for (const d of [this.containersDir, this.exitsDir, this.runtimeRoot, join(this.stateDir, 'sock')]) await mkdir(d, { recursive: true, mode: 0o700 });
    })();
    return this.dirsReady;
  }

  /** The full command line (binary first) of a runtime call on a container: launcher, global flags, `args`. */
  runtimeArgv(args: string[], meta?: NetMeta): string[] {
    return [...this.launch(meta).argv, ...this.flavor.globalArgs(this.runtimeRoot, meta), ...args];
  }

  /**
   * The launcher of every runtime call on a container (the same each time: a runtime launched
   * inside a namespace, runsc on the host stack, must be called inside it every time, as its
   * control socket is an abstract unix socket, which is per network namespace).
   */
  private launch(meta: NetMeta | undefined): { argv: string[]; entersNamespace: boolean } {
    const netnsPath = meta?.netnsPath;
    if (netnsPath === undefined || !this.flavor.launcher) return { argv: [this.runtimePath], entersNamespace: false };
    return this.flavor.launcher(this.runtimePath, { ...meta, netnsPath });
  }

  /** Runs the runtime with the container's global flags. */
  runtime(args: string[], meta?: NetMeta, timeoutMs?: number): ReturnType<typeof run> {
    const [bin, ...rest] = this.runtimeArgv(args, meta);
    return run(bin ?? this.runtimePath, rest, { timeoutMs });
  }

  /** The seccomp filter of every container, loaded once. */
  private loadSeccomp(): Promise<OciSeccomp | undefined> {
    this.seccomp ??= loadSeccompProfile(this.seccompPath, 'fail', this.log);
    return this.seccomp;
  }

  /** The open files limit of every container, read once. */
  private nofileLimit(): Promise<number> {
    this.nofile ??= containerNofileLimit();
    return this.nofile;
  }

  private async readMeta(id: string): Promise<ContainerMeta | undefined> {
    const text = await readOptional(join(this.bundle(id), 'meta.json'));
    if (text === undefined) return undefined;
    try {
      return JSON.parse(text) as ContainerMeta; // `as`: written by this driver (writeMeta)
    } catch {
      return undefined; // torn write from a crash mid-start; treated as unknown metadata
    }
  }

  private async writeMeta(meta: ContainerMeta): Promise<void> {
    const path = join(this.bundle(meta.id), 'meta.json');
    await writeFile(`${path}.tmp`, JSON.stringify(meta));
    await rename(`${path}.tmp`, path);
  }

  /** @inheritdoc */
  probe(): Promise<{ ok: true } | { ok: false; message: string }> {
    return this.flavor.probe(this);
  }

  /** Checks that conmon and the runtime binary run; shared by both flavors' probes. */
  async probeBinaries(): Promise<{ ok: true } | { ok: false; message: string }> {
    for (const bin of [this.runtimePath, this.conmonPath]) {
      try {
        const r = await run(bin, ['--version'], { timeoutMs: 10_000 });
        if (r.code !== 0) return { ok: false, message: `${bin} --version failed: ${firstLine(r.stderr)}` };
      } catch (e) {
        return { ok: false, message: `${bin} is not usable: ${(e as Error).message}` }; // `as`: run rejects with Error
      }
    }
    if (!(await exists('/sys/fs/cgroup/memory/memory.limit_in_bytes')) && !(await exists('/sys/fs/cgroup/cgroup.controllers'))) {
      return { ok: false, message: 'no cgroup memory controller at /sys/fs/cgroup/memory (cgroup v1) or cgroup v2 at /sys/fs/cgroup' };
    }
    await this.ensureDirs();
    return { ok: true };
  }

  /** @inheritdoc */
  async start(req: StartRequest): Promise<ContainerInfo> {
    validateContainerId(req.id);
    const id = req.id;
    if (!req.rootfs.startsWith('/') || /[,:\n]/.test(req.rootfs)) {
      throw new Error(`rootfs ${JSON.stringify(req.rootfs)} must be an absolute path without ',' or ':' (overlayfs option syntax)`);
    }
    // Bad mounts are the caller's input: refused (CARAPACE_E_VALIDATION) before anything exists.
    if (req.mounts) checkHostMounts(req.mounts);
    await this.ensureDirs();
    const dir = this.bundle(id);
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`container ${id} already exists`, { cause: e }); // `as`: fs error
      throw e;
    }
    const log = this.log.child({ containerId: id });
    try {
      const meta: ContainerMeta = { id, labels: req.labels, createdAt: new Date().toISOString(), ...(req.netnsPath !== undefined ? { netnsPath: req.netnsPath, ...(this.flavor.netstack ? { netstack: true } : {}) } : {}) };
      const [seccomp, nofileLimit] = await Promise.all([this.loadSeccomp(), this.nofileLimit(), this.writeMeta(meta)]);
      await prepareBundle({
        dir,
        id,
        rootfs: req.rootfs,
        image: req.image,
        container: req.container,
        hostname: req.hostname,
        labels: req.labels,
        ...(req.dns ? { dns: req.dns } : {}),
        // A runtime launched inside the namespace (runsc on the host stack) must find the spec
        // neither naming it nor asking for a new one (with a new one it would get loopback only).
        network: req.netnsPath === undefined ? { kind: 'private' } : this.launch(meta).entersNamespace ? { kind: 'shared' } : { kind: 'join', path: req.netnsPath },
        cgroupsPath: this.cgroupPath(id),
        ...(req.mounts ? { mounts: req.mounts } : {}),
        ...(this.flavor.ownPids ? { runtimeOwnPids: this.flavor.ownPids } : {}),
        seccomp,
        nofileLimit,
        ifOverlayRefused: 'fail',
        log,
      });

      const pid = await this.conmonCreate(id, meta);
      // Taken before `start`: a short-lived process may exit before `start` returns.
      const startedAt = new Date().toISOString();
      const s = await this.runtime(['start', id], meta);
      if (s.code !== 0) throw new Error(`${this.name} start failed: ${cleanRuntimeMessage(firstLine(s.stderr)) || `exit ${s.code}`}`);
      await this.writeMeta({ ...meta, startedAt });
      log.info({ pid }, 'container started');
      return { id, labels: req.labels, state: { status: 'running', pid, startedAt } };
    } catch (e) {
      const message = (e as Error).message; // `as`: everything thrown above is an Error
      log.warn({ err: message }, 'container start failed; cleaning up');
      await this.destroy(id).catch((err: unknown) => log.error({ err }, 'cleanup after failed start failed'));
      throw new Error(`starting container ${id} with ${this.name} failed: ${message}`, { cause: e });
    }
  }

  /**
   * Launches conmon, which daemonizes and runs `runtime create`; resolves with the container
   * pid conmon reports on the sync pipe, or rejects with the runtime's error message.
   */
  private conmonCreate(id: string, meta: ContainerMeta): Promise<number> {
    const dir = this.bundle(id);
    const [launchPath, ...launchArgs] = this.launch(meta).argv;
    const args = [
      '--api-version', '1',
      '-c', id,
      '-u', id,
      '-r', launchPath ?? this.runtimePath,
      ...launchArgs.flatMap((a) => ['--runtime-arg', a]),
      '-b', dir,
      '-p', join(dir, 'pidfile'),
      '-n', id,
      '--exit-dir', this.exitsDir,
      '-l', `k8s-file:${this.logFile(id)}`,
      '--conmon-pidfile', join(dir, 'conmon.pid'),
      '--socket-dir-path', join(this.stateDir, 'sock'),
      '--full-attach',
      '--log-level', 'error',
      ...this.flavor.globalArgs(this.runtimeRoot, meta).flatMap((a) => ['--runtime-arg', a]),
    ];
    return new Promise((resolve, reject) => {
      // fd 3 is the sync pipe; conmon (and its daemonized child) write the create result there.
      const child = spawn(this.conmonPath, args, {
        stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
        env: { ...process.env, _OCI_SYNCPIPE: '3' },
        detached: true,
      });
      child.unref();
      const sync = child.stdio[3];
      const stderrChunks: Buffer[] = [];
      let buf = '';
      let settled = false;
      const finish = (err: Error | undefined, pid?: number): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sync?.destroy();
        child.stderr?.destroy();
        if (err) reject(err);
        else resolve(pid as number); // `as`: pid is set whenever err is undefined
      };
      const timer = setTimeout(() => finish(new Error('conmon did not report the create result within 60 s')), 60_000);
      child.stderr?.on('data', (b: Buffer) => stderrChunks.push(b));
      child.on('error', (e) => finish(new Error(`cannot run conmon (${this.conmonPath}): ${e.message}`)));
      sync?.on('data', (b: Buffer) => {
        buf += b.toString('utf8');
        // conmon writes one JSON object per message; parse once a full one has arrived.
        for (const line of buf.split('\n')) {
          if (line.trim() === '') continue;
          let msg: { data?: number; message?: string };
          try {
            msg = JSON.parse(line) as { data?: number; message?: string }; // `as`: conmon's sync message shape
          } catch {
            return; // incomplete; wait for more data
          }
          if (typeof msg.data === 'number' && msg.data > 0) finish(undefined, msg.data);
          else finish(new Error(cleanRuntimeMessage(msg.message ?? `conmon reported ${line}`)));
          return;
        }
      });
      sync?.on('error', () => undefined); // EOF/reset after destroy is expected
      sync?.on('close', () => {
        const stderr = Buffer.concat(stderrChunks).toString('utf8');
        finish(new Error(`conmon exited without reporting a result${stderr ? `: ${firstLine(stderr)}` : ''}`));
      });
    });
  }

  /** @inheritdoc */
  async stop(id: string, graceMs: number): Promise<void> {
    validateContainerId(id);
    const info = await this.inspect(id);
    if (!info || info.state.status === 'exited') return;
    const meta = await this.readMeta(id);
    if (info.state.status === 'running' && graceMs > 0) {
      await this.runtime(['kill', id, 'TERM'], meta);
      const exited = await this.waitWithTimeout(id, graceMs);
      if (exited) return;
    }
    const k = await this.runtime(['kill', id, 'KILL'], meta);
    if (k.code !== 0) this.log.debug({ containerId: id, err: firstLine(k.stderr) }, 'kill KILL failed (likely already gone)');
    if (!(await this.waitWithTimeout(id, 15_000))) throw new Error(`container ${id} did not exit within 15 s of SIGKILL`);
  }

  private async waitWithTimeout(id: string, ms: number): Promise<boolean> {
    const ac = new AbortController();
    const t = setTimeout(() => ac.abort(), ms);
    try {
      await this.wait(id, ac.signal);
      return true;
    } catch (e) {
      if (e instanceof WaitAbortedError) return false;
      // The container vanished (destroyed concurrently): nothing left to stop.
      return true;
    } finally {
      clearTimeout(t);
    }
  }

  /** @inheritdoc */
  async destroy(id: string): Promise<void> {
    validateContainerId(id);
    const dir = this.bundle(id);
    const meta = await this.readMeta(id);
    const del = await this.runtime(['delete', '--force', id], meta);
    if (del.code !== 0 && !/does not exist|not exist|no such/i.test(del.stderr)) {
      this.log.warn({ containerId: id, err: firstLine(del.stderr) }, 'runtime delete failed');
    }
    // conmon exits by itself once the container is gone, but lingers for a second or two
    // after writing the exit file; once the exit file exists it has nothing left to do.
    const conmonPid = Number((await readOptional(join(dir, 'conmon.pid')))?.trim());
    for (let i = 0; i < 200 && pidAlive(conmonPid) && !(await exists(this.exitFile(id))); i++) await sleep(10);
    if (pidAlive(conmonPid)) {
      try {
        process.kill(conmonPid, 'SIGKILL');
      } catch {
        // exited between the check and the kill
      }
    }
    if (await this.isMounted(this.merged(id))) {
      const u = await run('umount', [this.merged(id)]);
      if (u.code !== 0) {
        const lazy = await run('umount', ['-l', this.merged(id)]);
        if (lazy.code !== 0) throw new Error(`cannot unmount ${this.merged(id)}: ${firstLine(u.stderr)}`);
      }
    }
    // runsc may leave its (empty) sandbox cgroups behind; rmdir only removes empty ones.
    for (const ctl of ['cpu', 'cpuacct', 'cpuset', 'memory', 'pids', 'devices', 'freezer', 'blkio', 'net_cls', 'net_prio', 'perf_event', 'hugetlb', 'rdma', 'misc', 'systemd', 'unified']) {
      await rmdir(join('/sys/fs/cgroup', ctl, this.cgroupPath(id))).catch(() => undefined);
    }
    await rm(dir, { recursive: true, force: true });
    await rm(this.exitFile(id), { force: true });
    await rm(join(this.stateDir, 'sock', id), { recursive: true, force: true });
  }

  private async isMounted(path: string): Promise<boolean> {
    const mounts = await readFile('/proc/self/mounts', 'utf8');
    return mounts.split('\n').some((l) => l.split(' ')[1] === path);
  }

  /** Exit code and time from conmon's exit file, if it has written one. */
  private async readExit(id: string): Promise<Extract<ContainerState, { status: 'exited' }> | undefined> {
    const path = this.exitFile(id);
    let text: string | undefined;
    let mtime: Date;
    try {
      [text, mtime] = await Promise.all([readFile(path, 'utf8'), stat(path).then((s) => s.mtime)]);
    } catch {
      return undefined;
    }
    const code = parseInt(text.trim(), 10);
    if (!Number.isFinite(code)) return undefined; // written but not yet flushed; caller retries
    const meta = await this.readMeta(id);
    const oom = await this.oomKills(id);
    return { status: 'exited', exitCode: code, ...(meta?.startedAt ? { startedAt: meta.startedAt } : {}), finishedAt: mtime.toISOString(), ...(oom > 0 ? { oomKilled: true } : {}) };
  }

  /**
   * How many processes the kernel's OOM killer killed in the container's cgroup: the
   * `oom_kill` line of memory.oom_control (cgroup v1, kernel 4.13+) or memory.events (v2).
   * The cgroup outlives the container's processes until `destroy` (runtime delete), so an
   * exit read before that still finds it; 0 when it is gone or the kernel does not count.
   */
  private async oomKills(id: string): Promise<number> {
    const cg = this.cgroupPath(id);
    const text = (await readOptional(join('/sys/fs/cgroup/memory', cg, 'memory.oom_control'))) ?? (await readOptional(join('/sys/fs/cgroup', cg, 'memory.events')));
    return oomKillCount(text);
  }

  private async runtimeState(id: string, meta: ContainerMeta | undefined): Promise<RuntimeStateJson | undefined> {
    const r = await this.runtime(['state', id], meta);
    if (r.code !== 0) return undefined;
    try {
      return JSON.parse(r.stdout) as RuntimeStateJson; // `as`: the OCI `state` output
    } catch {
      return undefined;
    }
  }

  private async conmonAlive(id: string): Promise<boolean> {
    const pid = Number((await readOptional(join(this.bundle(id), 'conmon.pid')))?.trim());
    return pidAlive(pid);
  }

  /** @inheritdoc */
  async inspect(id: string): Promise<ContainerInfo | undefined> {
    validateContainerId(id);
    const meta = await this.readMeta(id);
    const bundleExists = meta !== undefined || (await exists(this.bundle(id)));
    const exited = bundleExists ? await this.readExit(id) : undefined;
    if (exited) return { id, labels: meta?.labels ?? {}, state: exited };
    const st = await this.runtimeState(id, meta);
    if (!bundleExists && !st) return undefined;
    const labels = meta?.labels ?? labelsFromAnnotations(st?.annotations);
    const startedAt = meta?.startedAt ?? st?.created ?? new Date(0).toISOString();
    if (st && (st.status === 'running' || st.status === 'paused')) return { id, labels, state: { status: 'running', pid: st.pid, startedAt } };
    if (st && st.status === 'created' && st.pid > 0 && pidAlive(st.pid)) return { id, labels, state: { status: 'created' } };
    // Stopped, or unknown to the runtime. A live conmon writes the exit file right after
    // reaping the process: give it a moment.
    if (bundleExists && (await this.conmonAlive(id))) {
      for (let i = 0; i < 50; i++) {
        await sleep(20);
        const e = await this.readExit(id);
        if (e) return { id, labels, state: e };
        if (!(await this.conmonAlive(id))) break;
      }
      const e = await this.readExit(id);
      if (e) return { id, labels, state: e };
      // conmon lives as long as the container's process: the runtime could not say (a `state`
      // that failed, e.g. runsc busy right after an agent restart), not that it ended. Seen in
      // CI: a running sandbox reported exited, and restarted, after kill -9 of the agent.
      const pid = Number((await readOptional(join(this.bundle(id), 'pidfile')))?.trim());
      if ((await this.conmonAlive(id)) && pidAlive(pid)) return { id, labels, state: { status: 'running', pid, startedAt } };
    }
    // conmon may have finished writing the exit file while we asked the runtime.
    const late = bundleExists ? await this.readExit(id) : undefined;
    if (late) return { id, labels, state: late };
    // conmon is gone (killed, or the host rebooted) and nothing recorded the exit code: the
    // process is gone, so report it exited with UNKNOWN_EXIT_CODE (as if SIGKILLed).
    return {
      id,
      labels,
      state: { status: 'exited', exitCode: UNKNOWN_EXIT_CODE, ...(meta?.startedAt ? { startedAt: meta.startedAt } : {}), finishedAt: new Date().toISOString() },
    };
  }

  /** @inheritdoc */
  wait(id: string, signal?: AbortSignal): Promise<Extract<ContainerState, { status: 'exited' }>> {
    validateContainerId(id);
    return new Promise((resolve, reject) => {
      let watcher: FSWatcher | undefined;
      let done = false;
      let checking = false;
      let again = false;
      const cleanup = (): void => {
        done = true;
        watcher?.close();
        clearInterval(poll);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        if (done) return;
        cleanup();
        reject(new WaitAbortedError(id));
      };
      // `full`: also ask the runtime (conmon may be dead); otherwise only the cheap exit file.
      const check = async (full: boolean): Promise<void> => {
        if (done) return;
        if (checking) {
          again = true;
          return;
        }
        checking = true;
        try {
          const e = await this.readExit(id);
          if (e) {
            cleanup();
            resolve(e);
            return;
          }
          if (full || !(await this.conmonAlive(id))) {
            const info = await this.inspect(id);
            if (done) return;
            if (!info) {
              cleanup();
              reject(new Error(`no such container ${id}`));
            } else if (info.state.status === 'exited') {
              cleanup();
              resolve(info.state);
            }
          }
        } catch (err) {
          cleanup();
          reject(err instanceof Error ? err : new Error(String(err)));
        } finally {
          checking = false;
          if (again && !done) {
            again = false;
            void check(false);
          }
        }
      };
      if (signal?.aborted) {
        reject(new WaitAbortedError(id));
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        watcher = watch(this.exitsDir, (_ev, filename) => {
          if (filename === id) void check(false);
        });
        watcher.on('error', () => undefined); // the safety poll still covers us
      } catch {
        watcher = undefined; // exits dir missing: the poll and the first check decide
      }
      // Safety poll: fs.watch can miss events; also notices a dead conmon.
      const poll = setInterval(() => void check(false), 2000);
      void check(true);
    });
  }

  /** @inheritdoc */
  async *logs(id: string, opts: LogOptions): AsyncIterable<LogLine> {
    validateContainerId(id);
    if (!(await exists(this.bundle(id)))) throw new Error(`no such container ${id}`);
    const path = this.logFile(id);
    const parser = new K8sLogParser();
    let pos = 0;
    let rest = '';
    const readNew = async (): Promise<LogLine[]> => {
      let fh;
      try {
        fh = await open(path, 'r');
      } catch {
        return [];
      }
      const out: LogLine[] = [];
      try {
        const chunk = Buffer.alloc(64 * 1024);
        for (;;) {
          const { bytesRead } = await fh.read(chunk, 0, chunk.length, pos);
          if (bytesRead === 0) break;
          pos += bytesRead;
          rest += chunk.subarray(0, bytesRead).toString('utf8');
          const lines = rest.split('\n');
          rest = lines.pop() ?? '';
          for (const l of lines) {
            const parsed = parser.push(l);
            if (parsed) out.push(parsed);
          }
        }
      } finally {
        await fh.close();
      }
      return out;
    };
    const initial = await readNew();
    const first = opts.tail === undefined ? initial : opts.tail <= 0 ? [] : initial.slice(-opts.tail);
    for (const l of first) yield l;
    if (!opts.follow) {
      for (const l of parser.flush()) yield l;
      return;
    }
    const signal = opts.signal;
    let watcher: FSWatcher | undefined;
    let wake: (() => void) | undefined;
    try {
      try {
        watcher = watch(path, () => wake?.());
        watcher.on('error', () => undefined);
      } catch {
        watcher = undefined; // file not created yet: the timed re-read below covers it
      }
      while (!signal?.aborted) {
        // Check for the end before reading, so the read after it drains everything.
        const finished = (await exists(this.exitFile(id))) || !(await this.conmonAlive(id));
        for (const l of await readNew()) yield l;
        if (finished) {
          for (const l of parser.flush()) yield l;
          return;
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, 250); // cheap re-check; the exit file does not wake the log watcher
          function done(): void {
            clearTimeout(t);
            signal?.removeEventListener('abort', done);
            resolve();
          }
          wake = done;
          signal?.addEventListener('abort', done, { once: true });
        });
        wake = undefined;
      }
    } finally {
      watcher?.close();
    }
  }

  /** @inheritdoc */
  async recover(): Promise<ContainerInfo[]> {
    await this.ensureDirs();
    const ids = new Set((await readdir(this.containersDir)).filter((d) => CONTAINER_ID_PATTERN.test(d)));
    const list = await this.runtime(['list', '--format', 'json']);
    if (list.code === 0 && list.stdout.trim() !== '') {
      try {
        const entries = JSON.parse(list.stdout) as { id: string }[] | null; // `as`: `list --format json` output
        for (const e of entries ?? []) if (CONTAINER_ID_PATTERN.test(e.id)) ids.add(e.id);
      } catch {
        this.log.warn({ stdout: list.stdout.slice(0, 200) }, 'cannot parse runtime list output');
      }
    }
    const out: ContainerInfo[] = [];
    for (const id of [...ids].sort()) {
      const info = await this.inspect(id);
      if (info) out.push(info);
    }
    return out;
  }

  /**
   * @inheritdoc
   * `exec` runs `runtime exec` with the container's own process settings (user, env,
   * capabilities, seccomp come from its bundle); on timeout the exec'd process is killed
   * through the flavor (its pid is written to a file in the bundle). httpGet/tcpSocket
   * connect from the host to `action.*.host`, the container's bridge address; without one
   * (a container started without a network) they fail with a message saying so.
   */
  async check(id: string, action: CheckAction, timeoutMs: number): Promise<CheckResult> {
    validateContainerId(id);
    if ('httpGet' in action) {
      const { host, port, path } = action.httpGet;
      if (host === undefined) return { ok: false, message: `HTTP GET :${port}${path}: container ${id} has no network address to probe (started without a network)` };
      return httpGetCheck(host, port, path, timeoutMs);
    }
    if ('tcpSocket' in action) {
      const { host, port } = action.tcpSocket;
      if (host === undefined) return { ok: false, message: `TCP connect :${port}: container ${id} has no network address to probe (started without a network)` };
      return tcpSocketCheck(host, port, timeoutMs);
    }
    const meta = await this.readMeta(id);
    if (!meta) return { ok: false, message: `exec ${JSON.stringify(action.exec.command)}: no such container ${id}` };
    this.execSeq += 1;
    const pidFile = join(this.bundle(id), `probe-${process.pid}-${this.execSeq}.pid`);
    try {
      const userArgs = await this.execUserArgs(id);
      return await execCheck({
        argv: this.runtimeArgv(['exec', this.flavor.execPidFileFlag, pidFile, ...userArgs, id, ...action.exec.command], meta),
        command: action.exec.command,
        timeoutMs,
        onTimeout: async () => {
          const pid = Number((await readOptional(pidFile))?.trim());
          if (Number.isInteger(pid) && pid > 0) await this.flavor.killExec(this, id, meta, pid);
        },
      });
    } finally {
      await rm(pidFile, { force: true });
    }
  }

  /** The flags that make `exec` run as the container's user, for runtimes that need them (runsc). */
  private async execUserArgs(id: string): Promise<string[]> {
    if (!this.flavor.execAsUserFlags) return [];
    const { user } = (JSON.parse(await readFile(join(this.bundle(id), 'config.json'), 'utf8')) as OciSpec).process; // `as`: written by prepareBundle
    return ['--user', `${user.uid}:${user.gid}`, ...(user.additionalGids ?? []).flatMap((g) => ['--additional-gids', String(g)])];
  }

  /**
   * @inheritdoc
   * `runtime exec [--tty]` in the foreground, with the container's own process settings (as
   * `check`), under a pty of ours for a terminal (exec/process.ts says why). The exec'd
   * process's pid goes to a file in the bundle, so `kill` can end it in the container when
   * the client goes away: killing the runtime client alone would leave it running there.
   */
  async exec(id: string, opts: ExecOptions): Promise<ExecRun> {
    validateContainerId(id);
    const meta = await this.readMeta(id);
    const info = meta ? await this.inspect(id) : undefined;
    if (!meta || info?.state.status !== 'running') throw new CarapaceError('CARAPACE_E_INSTANCE_NOT_RUNNING', `container ${id} is not running`);
    this.execSeq += 1;
    const pidFile = join(this.bundle(id), `exec-${process.pid}-${this.execSeq}.pid`);
    const processFile = join(this.bundle(id), `exec-${process.pid}-${this.execSeq}.json`);
    let how: string[];
    if (opts.tty && this.flavor.execTty === 'process-file') {
      const spec = JSON.parse(await readFile(join(this.bundle(id), 'config.json'), 'utf8')) as OciSpec; // `as`: written by prepareBundle
      await writeFile(processFile, JSON.stringify({ ...spec.process, args: opts.command, terminal: true }), { mode: 0o600 });
      how = ['--process', processFile, id];
    } else {
      how = [...(await this.execUserArgs(id)), ...(opts.tty ? ['--tty'] : []), id, ...opts.command];
    }
    const argv = this.runtimeArgv(['exec', this.flavor.execPidFileFlag, pidFile, ...how], meta);
    const proc = spawnExec(argv, opts);
    // The pid is read once and kept: the runtime client may exit (and its files be removed)
    // just before a client that went away asks for the kill, while what it started still runs
    // in the container (runsc leaves it there).
    let pid: number | undefined;
    const execPid = async (): Promise<number | undefined> => {
      if (pid === undefined) {
        const n = Number((await readOptional(pidFile))?.trim());
        if (Number.isInteger(n) && n > 0) pid = n;
      }
      return pid;
    };
    void proc.exited.finally(async () => {
      await execPid().catch(() => undefined);
      await Promise.all([rm(pidFile, { force: true }), rm(processFile, { force: true })]).catch(() => undefined);
    });
    return {
      process: proc,
      kill: async () => {
        const p = await execPid();
        if (p !== undefined) await this.flavor.killExec(this, id, meta, p);
      },
    };
  }

  /** @inheritdoc */
  async usage(id: string): Promise<ContainerUsage | undefined> {
    validateContainerId(id);
    const cg = this.cgroupPath(id);
    const cpu = await readOptional(join('/sys/fs/cgroup/cpuacct', cg, 'cpuacct.usage'));
    const mem = await readOptional(join('/sys/fs/cgroup/memory', cg, 'memory.usage_in_bytes'));
    if (cpu !== undefined && mem !== undefined) return { cpuSeconds: Number(cpu.trim()) / 1e9, memoryBytes: Number(mem.trim()) };
    // cgroup v2 (unified) hosts.
    const stat2 = await readOptional(join('/sys/fs/cgroup', cg, 'cpu.stat'));
    const mem2 = await readOptional(join('/sys/fs/cgroup', cg, 'memory.current'));
    if (stat2 === undefined || mem2 === undefined) return undefined;
    const usec = /usage_usec (\d+)/.exec(stat2)?.[1];
    return { cpuSeconds: Number(usec ?? 0) / 1e6, memoryBytes: Number(mem2.trim()) };
  }
}

/** The `oom_kill N` count of a memory.oom_control (v1) or memory.events (v2) text; 0 when absent. */
export function oomKillCount(text: string | undefined): number {
  const m = /^oom_kill (\d+)$/m.exec(text ?? '');
  return m?.[1] !== undefined ? Number(m[1]) : 0;
}

/** Strips runc's `time=... level=error msg=` wrapping so the user sees the reason. */
export function cleanRuntimeMessage(message: string): string {
  const m = /msg="((?:[^"\\]|\\.)*)"/.exec(message);
  const text = m?.[1] !== undefined ? m[1].replace(/\\"/g, '"') : message;
  return text.trim();
}
