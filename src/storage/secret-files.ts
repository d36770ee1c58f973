/**
 * Secret and config files of host-tier instances (runc, runsc): one directory per instance
 * and mounted set (a Secret or a Config), on a tmpfs the agent owns, that the agent
 * bind-mounts read-only into the container. A secret's value is therefore never on the
 * host's disk (only in memory; see README.md about swap).
 *
 *   RUN/                          tmpfs (mounted here by `init` unless RUN already is one), 0700
 *   RUN/INSTANCE/SET/             0755: the directory bound into the container
 *   RUN/INSTANCE/SET/..data       -> ..DATA-DIR (a symlink, swapped atomically on update)
 *   RUN/INSTANCE/SET/..DATA-DIR/  0755, one file per key, 0444
 *   RUN/INSTANCE/SET/KEY          -> ..data/KEY
 *
 * The update is Kubernetes' AtomicWriter: a complete new data directory, then one rename(2)
 * of a symlink over `..data`, so a reader opening KEY sees the old set or the new one, never
 * a mix. Renaming a whole new directory over SET would not do: the container's bind mount
 * holds SET's inode, and would keep showing the old one.
 */
import { randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, readlink, rename, rm, statfs, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import { withFileLock } from '../proc/file-lock.js';
import { run, runOrThrow } from '../proc/run.js';
import { VOLUME_ID_PATTERN } from './volume-store.js';

/** The tmpfs superblock magic number, as statfs reports the type. */
export const TMPFS_MAGIC = 0x01021994;

/** Keys of a Secret's or Config's data: file names (the model's rule); `..`-prefixed names are ours. */
export const FILE_KEY_PATTERN = /^[A-Za-z0-9._-]{1,253}$/;

/** The most bytes one set may hold (a Secret or Config holds at most 64 KiB; headroom for encodings). */
export const MAX_SET_BYTES = 1024 * 1024;

/** Options of the store. */
export interface SecretFilesOptions {
  /** The run directory (e.g. /run/carapace/files); a tmpfs is mounted on it unless it already is one. */
  runDir: string;
  logger: Logger;
  /** Size of the tmpfs mounted by `init` (bounds what secrets can take of the host's memory). Default 64 MiB. */
  tmpfsBytes?: number;
}

const DATA_LINK = '..data';
const DATA_TMP_LINK = '..data_tmp';

function checkName(value: string, field: string, pattern: RegExp): void {
  if (typeof value !== 'string' || !pattern.test(value) || value === '.' || value.startsWith('..')) {
    throw new CarapaceError('CARAPACE_E_VALIDATION', `invalid ${field} ${JSON.stringify(value)}`, [{ path: field, message: `must match ${pattern.source} and not start with '..'` }]);
  }
}

/**
 * The per-instance file sets. Calls are serialised by a lock file on the tmpfs (so a dying
 * agent and its successor do not interleave); every call is idempotent.
 */
export class SecretFiles {
  readonly runDir: string;
  private readonly log: Logger;
  private readonly tmpfsBytes: number;

  constructor(opts: SecretFilesOptions) {
    this.runDir = opts.runDir;
    this.log = opts.logger.child({ component: 'secret-files' });
    this.tmpfsBytes = opts.tmpfsBytes ?? 64 * 1024 * 1024;
  }

  /**
   * Makes sure the run directory is on a tmpfs, mounting one (nosuid, nodev, noexec, 0700,
   * sized, without swap where the kernel allows) when it is not. Call before anything else.
   * Returns whether it mounted one.
   */
  async init(): Promise<boolean> {
    await mkdir(this.runDir, { recursive: true, mode: 0o700 });
    if ((await statfs(this.runDir)).type === TMPFS_MAGIC) return false;
    const base = `mode=0700,size=${this.tmpfsBytes}`;
    // noswap (Linux 6.4+): the pages of secrets never go to a swap device either.
    const r = await run('mount', ['-t', 'tmpfs', '-o', `nosuid,nodev,noexec,${base},noswap`, 'carapace-files', this.runDir]);
    if (r.code !== 0) await runOrThrow('mount', ['-t', 'tmpfs', '-o', `nosuid,nodev,noexec,${base}`, 'carapace-files', this.runDir]);
    if ((await statfs(this.runDir)).type !== TMPFS_MAGIC) throw new Error(`${this.runDir} is not a tmpfs after mounting one`);
    this.log.info({ runDir: this.runDir, noswap: r.code === 0 }, 'tmpfs mounted for secret files');
    return true;
  }

  /** The host directory of set `set` of `instance` (the bind mount's source). */
  dir(instance: string, set: string): string {
    checkName(instance, 'instance', VOLUME_ID_PATTERN);
    checkName(set, 'set', VOLUME_ID_PATTERN);
    return join(this.runDir, instance, set);
  }

  /**
   * Writes (or replaces, atomically) the files of set `set` of `instance`: one file per
   * key of `files`. Returns the directory to bind-mount read-only. Keys no longer present
   * disappear; an unchanged set is rewritten just the same (cheap: it is in memory).
   */
  async write(instance: string, set: string, files: Record<string, string | Uint8Array>): Promise<string> {
    const dir = this.dir(instance, set);
    const keys = Object.keys(files).sort();
    let total = 0;
    for (const k of keys) {
      checkName(k, `files.${k}`, FILE_KEY_PATTERN);
      const v = files[k] ?? '';
      total += typeof v === 'string' ? Buffer.byteLength(v) : v.byteLength;
    }
    if (total > MAX_SET_BYTES) throw new CarapaceError('CARAPACE_E_VALIDATION', `set ${set} holds ${total} bytes, more than ${MAX_SET_BYTES}`, [{ path: 'files', message: `at most ${MAX_SET_BYTES} bytes` }]);
    await this.locked(async () => {
      // 0755 directories, 0444 files: the container's process may run as any uid (no way
      // to know which group to give), and the bind mount is read-only anyway, so there is
      // nothing to gain from write bits or from hiding the files from other users of the
      // same container (the container is the unit of trust). The host side is closed by
      // RUN's 0700.
      await mkdir(join(this.runDir, instance), { recursive: true, mode: 0o755 });
      await mkdir(dir, { recursive: true, mode: 0o755 });
      const data = `..${new Date().toISOString().replace(/[:.]/g, '_')}.${randomBytes(4).toString('hex')}`;
      await mkdir(join(dir, data), { mode: 0o755 });
      await chmod(join(dir, data), 0o755);
      for (const k of keys) {
        const file = join(dir, data, k);
        await writeFile(file, files[k] ?? '', { mode: 0o444 });
        await chmod(file, 0o444);
      }
      await rm(join(dir, DATA_TMP_LINK), { force: true });
      await symlink(data, join(dir, DATA_TMP_LINK));
      await rename(join(dir, DATA_TMP_LINK), join(dir, DATA_LINK)); // the switch: atomic
      const wanted = new Set(keys);
      for (const k of keys) {
        const link = join(dir, k);
        const target = await readlink(link).catch(() => undefined);
        if (target !== `${DATA_LINK}/${k}`) {
          await rm(link, { force: true, recursive: true });
          await symlink(`${DATA_LINK}/${k}`, link);
        }
      }
      for (const f of await readdir(dir)) {
        if (f.startsWith('..')) {
          if (f !== DATA_LINK && f !== data) await rm(join(dir, f), { recursive: true, force: true });
        } else if (!wanted.has(f)) {
          await unlink(join(dir, f));
        }
      }
    });
    // Keys and sizes only: never a value.
    this.log.debug({ instance, set, keys, bytes: total }, 'files written');
    return dir;
  }

  /** Removes every set of `instance`. Idempotent. */
  async remove(instance: string): Promise<void> {
    checkName(instance, 'instance', VOLUME_ID_PATTERN);
    await this.locked(() => rm(join(this.runDir, instance), { recursive: true, force: true }));
  }

  /** The instances that have files here. */
  async instances(): Promise<string[]> {
    return this.locked(async () => (await readdir(this.runDir)).filter((f) => VOLUME_ID_PATTERN.test(f)).sort());
  }

  /**
   * After a restart: finishes or drops interrupted writes (a set whose first write never
   * switched `..data` is removed: the caller writes it again), removes data directories no
   * longer current, and removes instances not in `keep` (when given). Idempotent.
   */
  async recover(keep?: ReadonlySet<string>): Promise<{ removed: string[]; repaired: string[] }> {
    return this.locked(async () => {
      const out = { removed: [] as string[], repaired: [] as string[] };
      for (const instance of await readdir(this.runDir)) {
        if (instance === '.lock') continue;
        const idir = join(this.runDir, instance);
        if (!VOLUME_ID_PATTERN.test(instance) || (keep && !keep.has(instance))) {
          await rm(idir, { recursive: true, force: true });
          out.removed.push(instance);
          continue;
        }
        for (const set of await readdir(idir)) {
          const dir = join(idir, set);
          const current = await readlink(join(dir, DATA_LINK)).catch(() => undefined);
          if (current === undefined) {
            await rm(dir, { recursive: true, force: true });
            out.repaired.push(`${instance}/${set}: removed an incomplete first write`);
            continue;
          }
          for (const f of await readdir(dir)) {
            if (f.startsWith('..') && f !== DATA_LINK && f !== current) {
              await rm(join(dir, f), { recursive: true, force: true });
              out.repaired.push(`${instance}/${set}: removed ${f}`);
            } else if (!f.startsWith('..') && (await lstat(join(dir, f))).isSymbolicLink() && (await lstat(join(dir, current, f)).catch(() => undefined)) === undefined) {
              await unlink(join(dir, f));
              out.repaired.push(`${instance}/${set}: removed the stale key ${f}`);
            }
          }
        }
      }
      return out;
    });
  }

  /**
   * Removes everything and unmounts the tmpfs if it is mounted at the run directory itself
   * (host shutdown for good, or a test's cleanup). Containers still binding a set keep their
   * view of it until they end.
   */
  async teardown(): Promise<void> {
    await rm(this.runDir, { recursive: true, force: true }).catch(() => undefined);
    const mounted = await run('mountpoint', ['-q', this.runDir]);
    if (mounted.code === 0) await runOrThrow('umount', [this.runDir]);
    await rm(this.runDir, { recursive: true, force: true });
  }

  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(join(this.runDir, '.lock'), fn, { timeoutMs: 30_000 });
  }
}
