/**
 * Exec sessions in the guest agent (`carapace exec` into a cell's container; the messages are
 * in protocol.ts). Each session is the supervisor's `runc exec` of the container, spawned by
 * `exec/process.ts` exactly as `OciDriver.exec` does on a host: with the container's own
 * process settings from its bundle, its pid written to a file so it can be killed in the
 * container when the client goes away.
 *
 * The terminal: node-pty, as on the hosts, loaded from the Carapace install the VM mounts
 * read-only over 9p (its node_modules, built for the host's node against the host's glibc and
 * libstdc++, which the guest also runs: its /usr is the host's /usr over 9p, so the native
 * module loads as it does on the host). `runc exec --tty` then makes the container's pty and
 * copies between it and ours, as on a host, so resize (TIOCSWINSZ on ours -> SIGWINCH to runc)
 * and Ctrl-C (a byte the container's terminal turns into SIGINT) behave the same. Not chosen:
 * `--console-socket` (the pty master comes as an fd over SCM_RIGHTS, which Node cannot
 * receive); util-linux `script` (another terminal layer with its own handling of input, and a
 * host package the guest would depend on; busybox in the initramfs has none).
 *
 * exec/process.ts (and node-pty with it) is loaded on the first session, not with the agent: a
 * guest where the native module cannot load still runs its containers, and its exec sessions
 * fail with that error.
 *
 * Flow control: at most EXEC_WINDOW_BYTES of a session's output are unacknowledged by the
 * host; past that the process's output is no longer read (it blocks when its buffer fills)
 * until the host acks. Output is sent in frames of at most MAX_EXEC_CHUNK_BYTES.
 */
import { readFile, rm } from 'node:fs/promises';
import type { Logger } from 'pino';
import { CHANNEL, decodeFrame, encodeFrame, parseResize } from '../exec/frames.js';
import type { ExecProcess } from '../exec/process.js';
import { killTree, pidInCgroup } from '../proc/pids.js';
import { run } from '../proc/run.js';
import { EXEC_WINDOW_BYTES, MAX_EXEC_CHUNK_BYTES, MAX_EXEC_SESSIONS, type GuestMessage, type HostMessage } from './protocol.js';
import { SupervisorError, type Supervisor } from './supervisor.js';

type ExecRequest = Extract<HostMessage, { type: 'exec' }>;

interface Session {
  id: string;
  proc: ExecProcess;
  pidFile: string;
  cgroupPath: string;
  tty: boolean;
  /** Output bytes sent and not yet acknowledged by the host. */
  inflight: number;
  /** Output read while the window was full, sent as acks come (bounded: reading stops at once). */
  pending: { channel: 1 | 2; data: Buffer }[];
  paused: boolean;
  /** The exit code, once the process ended; sent after the pending output. */
  exitCode?: number;
  /** The runc exec's time from spawn to exit, in ms (this guest's clock). */
  guestMs?: number;
  over: boolean;
}

/** The exec sessions of one guest agent. */
export class GuestExecSessions {
  private readonly sessions = new Map<string, Session>();

  constructor(
    private readonly supervisor: Supervisor,
    private readonly send: (msg: GuestMessage) => void,
    private readonly log: Logger,
  ) {}

  /** Sessions running now. */
  get size(): number {
    return this.sessions.size;
  }

  /** Starts a session (throws SupervisorError: GUEST_E_NOT_FOUND when the container does not run, GUEST_E_BUSY when full or the id is in use). */
  async start(req: ExecRequest): Promise<void> {
    const { spawnExec } = await import('../exec/process.js');
    if (this.sessions.has(req.sessionId)) throw new SupervisorError('GUEST_E_BUSY', `exec session ${req.sessionId} already exists`);
    if (this.sessions.size >= MAX_EXEC_SESSIONS) throw new SupervisorError('GUEST_E_BUSY', `this cell already runs ${MAX_EXEC_SESSIONS} exec sessions`);
    const cmd = this.supervisor.execCommand(req.containerId, req.command, req.tty);
    const startedAt = performance.now();
    const proc = spawnExec(cmd.argv, { tty: req.tty, stdin: req.stdin, ...(req.cols !== undefined ? { cols: req.cols } : {}), ...(req.rows !== undefined ? { rows: req.rows } : {}) });
    const s: Session = { id: req.sessionId, proc, pidFile: cmd.pidFile, cgroupPath: cmd.cgroupPath, tty: req.tty, inflight: 0, pending: [], paused: false, over: false };
    this.sessions.set(s.id, s);
    proc.onOutput((stream, data) => {
      if (s.over) return;
      const channel = stream === 'stderr' ? CHANNEL.stderr : CHANNEL.stdout;
      const buf = Buffer.from(data); // a copy: it may wait in `pending` while the source's memory is reused
      for (let off = 0; off < buf.length; off += MAX_EXEC_CHUNK_BYTES) s.pending.push({ channel, data: buf.subarray(off, off + MAX_EXEC_CHUNK_BYTES) });
      this.flush(s);
    });
    void proc.exited.then((code) => {
      s.guestMs = Math.round((performance.now() - startedAt) * 100) / 100;
      s.exitCode = code;
      this.flush(s);
    });
    // Only the program's name: the arguments may hold anything the user typed.
    this.log.info({ sessionId: s.id, containerId: req.containerId, program: req.command[0], tty: req.tty }, 'exec session started');
  }

  /** Sends what the window allows, then the status once the process ended and its output went. */
  private flush(s: Session): void {
    while (s.pending.length > 0) {
      const next = s.pending[0];
      if (next === undefined || s.inflight + next.data.length > EXEC_WINDOW_BYTES) break;
      s.pending.shift();
      s.inflight += next.data.length;
      this.send({ type: 'execFrame', sessionId: s.id, frame: Buffer.from(encodeFrame(next.channel, next.data)).toString('base64') });
    }
    if (s.pending.length > 0 && !s.paused) {
      s.paused = true;
      s.proc.pause();
    } else if (s.pending.length === 0 && s.paused) {
      s.paused = false;
      s.proc.resume();
    }
    if (s.pending.length === 0 && s.exitCode !== undefined && !s.over) {
      this.send({ type: 'execFrame', sessionId: s.id, frame: Buffer.from(encodeFrame(CHANNEL.status, JSON.stringify({ exitCode: Math.min(255, Math.max(0, s.exitCode)), ...(s.guestMs !== undefined ? { guestMs: s.guestMs } : {}) }))).toString('base64') });
      this.end(s);
    }
  }

  /** The session is over: nothing more is sent for it; its pid file goes unless `kill` still needs it. */
  private end(s: Session, keepPidFile = false): void {
    s.over = true;
    this.sessions.delete(s.id);
    if (!keepPidFile) void rm(s.pidFile, { force: true }).catch(() => undefined);
  }

  /** Input from the host: stdin bytes, a resize, or the end of input. A frame of an unknown session is ignored (it just ended). */
  frame(sessionId: string, frameB64: string): void {
    const s = this.sessions.get(sessionId);
    if (!s) return;
    const f = decodeFrame(Buffer.from(frameB64, 'base64'));
    if (!f) return;
    if (f.channel === CHANNEL.stdin) s.proc.write(f.payload);
    else if (f.channel === CHANNEL.eof) s.proc.endInput();
    else if (f.channel === CHANNEL.resize) {
      const size = parseResize(f.payload);
      if (size) {
        s.proc.resize(size.cols, size.rows);
        if (s.tty) void this.resizeInner(s, size.cols, size.rows);
      }
    }
  }

  /**
   * Sets the size of the container's own terminal too. `runc exec --tty` copies a resize of
   * ours to it on SIGWINCH; crun 1.8 copies the size once, at the start, and never again. The
   * exec'd process's stdin is that terminal: `stty -F /proc/PID/fd/0` (busybox, the guest's
   * root) sets its size, which signals the container's foreground processes as a resize does.
   * Harmless with runc (the same size twice). A session whose process is not known yet, or gone,
   * keeps the size it had.
   */
  private async resizeInner(s: Session, cols: number, rows: number): Promise<void> {
    const pid = Number((await readFile(s.pidFile, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 0 || !pidInCgroup(pid, s.cgroupPath)) return;
    const r = await run('stty', ['-F', `/proc/${pid}/fd/0`, 'rows', String(rows), 'cols', String(cols)]).catch((e: unknown) => ({ code: -1, stderr: String(e) }));
    if (r.code !== 0) this.log.debug({ sessionId: s.id, err: r.stderr }, 'could not resize the container terminal');
  }

  /** The host took `bytes` of a session's output. */
  ack(sessionId: string, bytes: number): void {
    const s = this.sessions.get(sessionId);
    if (!s) return;
    s.inflight = Math.max(0, s.inflight - bytes);
    this.flush(s);
  }

  /**
   * Kills what a session runs in the container (the exec'd process and its children, found
   * by its pid file and checked to be in the container's cgroup) and the local runc client.
   * Nothing more is sent for it. No-op for a session that is over.
   */
  async kill(sessionId: string): Promise<void> {
    const s = this.sessions.get(sessionId);
    if (!s) return;
    this.end(s, true);
    // runc writes the pid file once the process runs; a session killed right after its start
    // waits for it a little (killing only the runc client then could leave the process running).
    let ended = false;
    void s.proc.exited.then(() => (ended = true), () => (ended = true));
    const deadline = Date.now() + 2_000;
    let pid: number;
    for (;;) {
      pid = Number((await readFile(s.pidFile, 'utf8').catch(() => '')).trim());
      if ((Number.isInteger(pid) && pid > 0) || ended || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    if (pidInCgroup(pid, s.cgroupPath)) killTree(pid);
    s.proc.kill();
    await rm(s.pidFile, { force: true }).catch(() => undefined);
    this.log.info({ sessionId }, 'exec session killed');
  }

  /** Kills every session (the host went away: its sessions cannot be resumed). */
  async killAll(): Promise<void> {
    await Promise.all([...this.sessions.keys()].map((id) => this.kill(id)));
  }
}
