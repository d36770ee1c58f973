/**
 * Test and benchmark fixture: builds an OCI image of real third-party software from the
 * Debian packages installed on this host (PostgreSQL, fio, …), without Docker or network.
 *
 * Layers, bottom first:
 * 1. the busybox base layer (busybox-image.ts), shared with every busybox image: a shell and
 *    a userland for entrypoint scripts and exec checks;
 * 2. the host files asked for (`packages` via `dpkg -L`, and `paths`), plus the shared-library
 *    closure of every ELF file among them (`ldd`: the dynamic loader and every library,
 *    transitively), each copied with the symlinks on its way (`/lib` -> `usr/lib`, `libz.so.1`
 *    -> `libz.so.1.2.13`) so that paths resolve in the image as on the host;
 * 3. `/etc/passwd`, `/etc/group` (the base's entries and `users`/`groups`), `/etc/nsswitch.conf`,
 *    directories to create with an owner, and `files`.
 * Files are copied as root:root with their host modes; directories made for `dirs` get the
 * owner asked for. Same host packages and options -> same digest (fixed mtimes, sorted input).
 *
 * Libraries loaded with dlopen (not in ldd's output) must be listed in `paths`.
 */
import { chmod, chown, copyFile, lstat, mkdir, open, readdir, readlink, rm, symlink } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import { runOrThrow } from '../../proc/run.js';
import { busyboxBaseLayer } from './busybox-image.js';
import { buildImage, writeImageFile, type BuiltImage, type ImageFile } from './oci-build.js';

/** A user of the image's /etc/passwd (its primary group is added to /etc/group with the same id and name unless listed in `groups`). */
export interface ImageUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
  /** Default `/bin/sh`. */
  shell?: string;
}

/** A directory made in the image with an owner and mode (a data directory, a socket directory). */
export interface ImageDir {
  path: string;
  uid: number;
  gid: number;
  mode: number;
}

/** Files of one installed Debian package, filtered. */
export interface PackageSelection {
  /** Package name as `dpkg -L` knows it (e.g. `postgresql-15`). */
  name: string;
  /** Keep only paths matching one of these (default: all). */
  include?: RegExp[];
  /** Then drop paths matching one of these (docs, man pages and translations are always dropped). */
  exclude?: RegExp[];
}

/** Options of {@link buildDebianImage}. */
export interface DebianImageOptions {
  /** Registry address (`127.0.0.1:PORT`), e.g. from startRegistry. */
  registry: string;
  /** Repository inside the registry, e.g. `carapace-examples/postgres`. */
  repository: string;
  tag: string;
  /** Installed packages whose files (`dpkg -L`, regular files and symlinks) are copied. */
  packages?: PackageSelection[];
  /** More host paths: files, symlinks, or directories (copied whole). */
  paths?: string[];
  /** Host paths never copied (a directory excludes what is under it), applied to `paths` trees. */
  excludePaths?: string[];
  users?: ImageUser[];
  groups?: { name: string; gid: number; members?: string[] }[];
  dirs?: ImageDir[];
  /** Absolute paths in the image -> content, written last (they win over copied files). */
  files?: Record<string, ImageFile>;
  entrypoint?: string[];
  /** Default `['sh']`. */
  cmd?: string[];
  /** Added to the default `PATH=/usr/sbin:/usr/bin:/sbin:/bin`; a PATH entry here replaces it. */
  env?: string[];
  workingDir?: string;
  /** `uid[:gid]` or a name; default unset (root). */
  user?: string;
  labels?: Record<string, string>;
  volumes?: string[];
}

/** Paths of a package that a container never needs. */
const ALWAYS_DROPPED = [/^\/usr\/share\/(doc|doc-base|man|info|lintian|bug|bash-completion)\//, /^\/usr\/share\/locale\//, /^\/etc\/init\.d\//, /^\/lib\/systemd\//, /^\/usr\/lib\/systemd\//];
const TOOL_TIMEOUT_MS = 60_000;
/** ldd is given this many files per call; calls run in parallel. */
const LDD_BATCH = 16;
const BASE_PASSWD = ['root:x:0:0:root:/root:/bin/sh', 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false'];
const BASE_GROUP = ['root:x:0:', 'nogroup:x:65534:'];

/** The regular files and symlinks `dpkg -L` lists for a package, filtered, sorted. */
export async function packageFiles(sel: PackageSelection): Promise<string[]> {
  const out = (await runOrThrow('dpkg', ['-L', sel.name], { timeoutMs: TOOL_TIMEOUT_MS })).stdout;
  const files: string[] = [];
  for (const line of out.split('\n')) {
    const p = line.trim();
    if (!p.startsWith('/') || p === '/.') continue;
    if (ALWAYS_DROPPED.some((r) => r.test(p))) continue;
    if (sel.include !== undefined && !sel.include.some((r) => r.test(p))) continue;
    if (sel.exclude?.some((r) => r.test(p)) === true) continue;
    // dpkg lists the package's directories too; a directory is made when a file in it is copied
    // (copying it whole would bring in other packages' files).
    const st = await lstat(p).catch(() => undefined);
    if (st !== undefined && !st.isDirectory()) files.push(p);
  }
  return files.sort();
}

/** Whether a host file starts with the ELF magic. */
async function isElf(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await fh.read(buf, 0, 4, 0);
    return bytesRead === 4 && buf.toString('latin1') === '\x7fELF';
  } finally {
    await fh.close();
  }
}

/**
 * The shared libraries `ldd` resolves for `elfs` (all of them, transitively, and the dynamic
 * loader), as host paths. A library ldd cannot find is an error: the image would not run.
 * Static binaries and non-loadable ELF files (ldd: "not a dynamic executable") have none.
 */
export async function sharedLibraryClosure(elfs: string[]): Promise<string[]> {
  const batches: string[][] = [];
  for (let i = 0; i < elfs.length; i += LDD_BATCH) batches.push(elfs.slice(i, i + LDD_BATCH));
  // ldd runs the loader once per file (~20 ms each): batches run in parallel.
  const found = await Promise.all(batches.map(lddBatch));
  return [...new Set(found.flat())].sort();
}

async function lddBatch(batch: string[]): Promise<string[]> {
  const libs: string[] = [];
  // ldd exits 1 when one of its files is not dynamic; its per-file output still says which.
  const { stdout, stderr } = await runOrThrow('sh', ['-c', 'ldd "$@"; exit 0', 'ldd', ...batch], { timeoutMs: TOOL_TIMEOUT_MS });
  let current = batch.length === 1 ? batch[0] : undefined;
  for (const raw of stdout.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    if (!raw.startsWith('\t') && line.endsWith(':')) {
      current = line.slice(0, -1);
      continue;
    }
    if (/not found/.test(line)) throw new Error(`ldd: ${current ?? '?'} needs ${line}`);
    // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
    const m = /^(?:\S+ => )?(\/\S+) \(0x[0-9a-f]+\)$/.exec(line);
    if (m?.[1] !== undefined) libs.push(m[1]);
  }
  if (/not found/.test(stderr)) throw new Error(`ldd: ${stderr.trim()}`);
  return libs;
}

/**
 * Copies host paths into `rootfs` at the same paths, keeping the symlinks met on the way as
 * symlinks (and copying what they point to). A directory component that is a symlink on the
 * host but already a real directory in the image (the base's /bin, /sbin) stays a directory.
 */
class HostCopier {
  private readonly done = new Set<string>();
  /** ELF regular files copied, for the library closure. */
  readonly elfs: string[] = [];

  constructor(
    private readonly rootfs: string,
    private readonly excluded: string[],
  ) {}

  private isExcluded(p: string): boolean {
    return this.excluded.some((e) => p === e || p.startsWith(`${e}/`));
  }

  /** Copies `path` (absolute, normalised); `whole` copies a directory's contents too. */
  async copy(path: string, whole: boolean): Promise<void> {
    if (!path.startsWith('/') || posix.normalize(path) !== path) throw new Error(`host path must be absolute and normalised: ${path}`);
    const key = `${path}\0${whole}`;
    if (this.done.has(key)) return;
    this.done.add(key);
    const parts = path.split('/').filter((s) => s !== '');
    let cur = '';
    for (const [i, part] of parts.entries()) {
      const next = `${cur}/${part}`;
      const last = i === parts.length - 1;
      const st = await lstat(next);
      const inImage = join(this.rootfs, next);
      const there = await lstat(inImage).catch(() => undefined);
      if (st.isSymbolicLink()) {
        if (!last && there?.isDirectory() === true) {
          cur = next; // the image has a real directory here; keep the host's file under it
          continue;
        }
        const target = await readlink(next);
        const same = there?.isSymbolicLink() === true && (await readlink(inImage)) === target;
        if (there !== undefined && !same) {
          if (there.isDirectory()) throw new Error(`host path ${path}: ${next} is a symlink on the host but a directory in the image`);
          await rm(inImage); // a lower layer's file or link (a busybox applet): the package's wins
        }
        if (!same) {
          await mkdir(dirname(inImage), { recursive: true, mode: 0o755 });
          await symlink(target, inImage);
        }
        const resolved = posix.normalize(target.startsWith('/') ? target : posix.join(cur === '' ? '/' : cur, target));
        const rest = parts.slice(i + 1).join('/');
        await this.copy(rest === '' ? resolved : posix.join(resolved, rest), whole);
        return;
      }
      if (st.isDirectory()) {
        if (there === undefined) {
          await mkdir(inImage, { mode: st.mode & 0o7777 });
          await chmod(inImage, st.mode & 0o7777); // mkdir's mode is masked by the umask
        }
        if (last && whole) {
          for (const name of (await readdir(next)).sort()) {
            const child = `${next}/${name}`;
            if (!this.isExcluded(child)) await this.copy(child, true);
          }
        }
        cur = next;
        continue;
      }
      if (!last) throw new Error(`host path ${path}: ${next} is not a directory`);
      if (st.isFile()) {
        // What is there comes from a lower layer (a busybox applet link such as
        // /usr/bin/setpriv): the package's real program replaces it.
        if (there !== undefined) await rm(inImage, { recursive: true });
        await copyFile(next, inImage);
        await chmod(inImage, st.mode & 0o7777);
        if (await isElf(next)) this.elfs.push(next);
      }
      // Sockets, fifos and devices from a package are not copied: nothing should need them.
    }
  }
}

function passwdLine(u: ImageUser): string {
  return `${u.name}:x:${u.uid}:${u.gid}:${u.name}:${u.home}:${u.shell ?? '/bin/sh'}`;
}

/**
 * Builds the image and pushes it to `registry/repository:tag` (plain HTTP: the registry must
 * be loopback or insecure). Safe to call concurrently for different tags. Run as root.
 */
export async function buildDebianImage(opts: DebianImageOptions): Promise<BuiltImage> {
  const packageLayer = async (rootfs: string): Promise<void> => {
    const copier = new HostCopier(rootfs, opts.excludePaths ?? []);
    for (const sel of opts.packages ?? []) for (const f of await packageFiles(sel)) await copier.copy(f, false);
    for (const p of [...(opts.paths ?? [])].sort()) await copier.copy(p, true);
    for (const lib of await sharedLibraryClosure([...copier.elfs].sort())) await copier.copy(lib, false);
  };
  const etcLayer = async (rootfs: string): Promise<void> => {
    const users = opts.users ?? [];
    const groups = new Map<number, { name: string; members: string[] }>();
    for (const g of opts.groups ?? []) groups.set(g.gid, { name: g.name, members: g.members ?? [] });
    for (const u of users) if (!groups.has(u.gid)) groups.set(u.gid, { name: u.name, members: [] });
    const passwd = [...BASE_PASSWD, ...users.map(passwdLine)].join('\n');
    const group = [...BASE_GROUP, ...[...groups.entries()].sort(([a], [b]) => a - b).map(([gid, g]) => `${g.name}:x:${gid}:${g.members.join(',')}`)].join('\n');
    await writeImageFile(rootfs, '/etc/passwd', `${passwd}\n`);
    await writeImageFile(rootfs, '/etc/group', `${group}\n`);
    // glibc's defaults without this file are "files" too, but say it: no NSS module is in the image.
    await writeImageFile(rootfs, '/etc/nsswitch.conf', 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n');
    for (const d of opts.dirs ?? []) {
      const dest = join(rootfs, d.path);
      await mkdir(dest, { recursive: true, mode: 0o755 });
      await chown(dest, d.uid, d.gid);
      await chmod(dest, d.mode);
    }
    for (const [path, file] of Object.entries(opts.files ?? {}).sort(([a], [b]) => (a < b ? -1 : 1))) await writeImageFile(rootfs, path, file);
  };
  return buildImage({
    registry: opts.registry, repository: opts.repository, tag: opts.tag,
    layers: [
      busyboxBaseLayer(),
      { createdBy: `carapace debian files: ${(opts.packages ?? []).map((p) => p.name).join(' ')}`, populate: packageLayer },
      { createdBy: 'carapace users and files', populate: etcLayer },
    ],
    cmd: opts.cmd ?? ['sh'],
    ...(opts.entrypoint !== undefined ? { entrypoint: opts.entrypoint } : {}),
    ...(opts.env !== undefined ? { env: opts.env } : {}),
    ...(opts.workingDir !== undefined ? { workingDir: opts.workingDir } : {}),
    ...(opts.user !== undefined ? { user: opts.user } : {}),
    ...(opts.labels !== undefined ? { labels: opts.labels } : {}),
    ...(opts.volumes !== undefined ? { volumes: opts.volumes } : {}),
  });
}

/** The version of an installed Debian package (`dpkg-query`), e.g. for an image label. */
export async function packageVersion(name: string): Promise<string> {
  return (await runOrThrow('dpkg-query', ['-W', '-f=${Version}', name], { timeoutMs: TOOL_TIMEOUT_MS })).stdout.trim();
}

