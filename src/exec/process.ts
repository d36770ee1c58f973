/**
 * A process run for an exec session, with a pseudo-terminal or with pipes. Drivers build the
 * command line (`runc exec …`, `runsc exec …`) and hand it here.
 *
 * Why a pty on our side: `runc exec -t` and `runsc exec -t` in the foreground need their own
 * stdin to be a terminal (runc makes the container's pty and copies between the two, sets ours
 * raw, and re-reads our size on SIGWINCH; runsc hands our terminal to the sandbox as the
 * process's tty and forwards SIGINT to its foreground process group). The alternative,
 * `--console-socket`, passes the pty master as an fd over a unix socket (SCM_RIGHTS), which
 * Node cannot receive. node-pty (native, built from source at install like better-sqlite3)
 * gives the terminal, its resize (TIOCSWINSZ, which signals the runtime) and the exit code.
 */
import { spawn } from 'node:child_process';
import { spawn as ptySpawn } from 'node-pty';
import { onDrainOrClose } from './session.js';

/** One running exec process. */
export interface ExecProcess {
  /**
   * Bytes for the process's stdin (ignored once it ended or without stdin). False: they were
   * taken but wait in this process's memory (the process is not reading): send no more until
   * `onInputDrained` calls back (Node's stream backpressure).
   */
  write(data: Uint8Array): boolean;
  /** Once the input buffered by `write` was handed to the process (processes whose write never returns false may omit it). */
  onInputDrained?(listener: () => void): void;
  /** Closes the process's stdin (pipes) or sends the terminal's end-of-file character (tty). */
  endInput(): void;
  /** New terminal size (tty only; ignored otherwise). */
  resize(cols: number, rows: number): void;
  /** Output as it comes: `stdout` (everything, with a terminal) or `stderr`. */
  onOutput(listener: (stream: 'stdout' | 'stderr', data: Uint8Array) => void): void;
  /** Kills the local process (the runtime's exec client); the driver kills what it started in the container. */
  kill(): void;
  /**
   * Stops reading the process's output until `resume` (flow control: the process blocks once
   * its pipe or terminal buffer is full). Used by the cell guest agent when the host has not
   * yet taken what it sent.
   */
  pause(): void;
  resume(): void;
  /**
   * Resolves with the exit code once the process ended and its output was delivered (128+n for
   * a signal). Rejects with a CarapaceError when its end cannot be known (a cell's channel to
   * its guest was lost: CARAPACE_E_UNAVAILABLE); the session's status is then that error.
   */
  readonly exited: Promise<number>;
  /** Cells: how long the command took in the guest (its status's `guestMs`), once it exited. */
  guestMs?(): number | undefined;
}

export interface SpawnExecOptions {
  tty: boolean;
  stdin: boolean;
  cols?: number;
  rows?: number;
}

/** Starts `argv` (binary first) with a pty when `o.tty`, else with pipes. */
export function spawnExec(argv: readonly string[], o: SpawnExecOptions): ExecProcess {
  const [bin, ...args] = argv;
  if (bin === undefined) throw new Error('spawnExec: empty command line');
  return o.tty ? spawnPty(bin, args, o) : spawnPipes(bin, args, o);
}

function spawnPty(bin: string, args: string[], o: SpawnExecOptions): ExecProcess {
  // encoding null: raw bytes both ways (a UTF-8 character split across reads stays whole for the client's terminal to join).
  const p = ptySpawn(bin, args, { name: 'xterm-256color', cols: o.cols ?? 80, rows: o.rows ?? 24, encoding: null, env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', TERM: 'xterm-256color' } });
  const listeners: ((stream: 'stdout' | 'stderr', data: Uint8Array) => void)[] = [];
  let ended = false;
  p.onData((d: string | Buffer) => {
    const bytes = typeof d === 'string' ? Buffer.from(d, 'utf8') : d; // with encoding null node-pty hands Buffers (typed string)
    for (const l of listeners) l('stdout', bytes);
  });
  const exited = new Promise<number>((resolve) => {
    p.onExit(({ exitCode, signal }) => {
      ended = true;
      resolve(signal ? 128 + signal : exitCode);
    });
  });
  return {
    // A terminal's input is typed (or pasted) by a person: node-pty gives no backlog to watch.
    write: (data) => {
      if (!ended && o.stdin) p.write(Buffer.from(data) as unknown as string); // with encoding null the pty writes bytes as given (typed string only)
      return true;
    },
    // ^D: the terminal's EOF character (a pty has no half-close).
    endInput: () => {
      if (!ended && o.stdin) p.write('\x04');
    },
    resize: (cols, rows) => {
      if (!ended) p.resize(cols, rows);
    },
    onOutput: (l) => void listeners.push(l),
    kill: () => {
      if (!ended) p.kill('SIGKILL');
    },
    pause: () => p.pause(),
    resume: () => p.resume(),
    exited,
  };
}

function spawnPipes(bin: string, args: string[], o: SpawnExecOptions): ExecProcess {
  const child = spawn(bin, args, { stdio: [o.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  const listeners: ((stream: 'stdout' | 'stderr', data: Uint8Array) => void)[] = [];
  child.stdout?.on('data', (d: Buffer) => listeners.forEach((l) => l('stdout', d)));
  child.stderr?.on('data', (d: Buffer) => listeners.forEach((l) => l('stderr', d)));
  child.stdin?.on('error', () => undefined); // the process may exit before reading its input (EPIPE)
  // 'close', not 'exit': it comes after stdout and stderr are drained, so no output is lost.
  const exited = new Promise<number>((resolve) => {
    child.on('error', () => resolve(127));
    child.on('close', (code, signal) => resolve(code ?? (signal ? 128 + (osSignal(signal) ?? 9) : 1)));
  });
  return {
    write: (data) => (child.stdin && !child.stdin.writableEnded && !child.stdin.destroyed ? child.stdin.write(data) : true),
    onInputDrained: (l) => {
      const stdin = child.stdin;
      if (!stdin || stdin.writableLength === 0 || stdin.destroyed) return l();
      onDrainOrClose(stdin, l); // 'close' too: a process that exits without reading never drains its pipe
    },
    endInput: () => child.stdin?.end(),
    resize: () => undefined,
    onOutput: (l) => void listeners.push(l),
    kill: () => void child.kill('SIGKILL'),
    pause: () => {
      child.stdout?.pause();
      child.stderr?.pause();
    },
    resume: () => {
      child.stdout?.resume();
      child.stderr?.resume();
    },
    exited,
  };
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15 };
function osSignal(name: string): number | undefined {
  return SIGNALS[name];
}
