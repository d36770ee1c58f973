/**
 * Test and benchmark fixture: builds a tiny OCI image from the host's static busybox
 * (Debian busybox-static) with umoci and pushes it to a registry with skopeo. No network and
 * no Docker needed; about 0.5 s per image.
 *
 * Layer 1 (busybox, applet symlinks, /etc/passwd, /etc/group, /tmp, /root) is byte-for-byte
 * identical for every image built on the same host (fixed mtimes, fixed history dates), so
 * images built with it share that layer in a registry and in an image cache. `files` go in
 * a second layer. Building the same options twice gives the same digest.
 */
import { randomBytes } from 'node:crypto';
import { chmod, lstat, lutimes, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { runOrThrow, type RunResult } from '../../proc/run.js';

/** A file to put into the image: text content (mode 0644) or content with an explicit mode. */
export type ImageFile = string | { content: string | Buffer; mode?: number };

/** Options of {@link buildBusyboxImage}. */
export interface BusyboxImageOptions {
  /** Registry address (`127.0.0.1:PORT`), e.g. from startRegistry. */
  registry: string;
  /** Repository inside the registry, e.g. `test/busybox`. */
  repository: string;
  tag: string;
  entrypoint?: string[];
  /** Default `['sh']`. */
  cmd?: string[];
  /** Added to the default `PATH=/usr/sbin:/usr/bin:/sbin:/bin`; a PATH entry here replaces it. */
  env?: string[];
  workingDir?: string;
  /** `uid[:gid]` or a name; default unset (root). */
  user?: string;
  /** Absolute paths in the image -> content. Parent directories are created (0755). */
  files?: Record<string, ImageFile>;
  /** Labels on the image config. */
  labels?: Record<string, string>;
  /** Static busybox binary to use; default `/bin/busybox`. */
  busybox?: string;
}

/** What was pushed. */
export interface BuiltImage {
  /** `registry/repository:tag`, ready for ImageStore.ensure. */
  reference: string;
  /** `sha256:…` of the pushed manifest; `registry/repository@digest` pins it. */
  digest: string;
}

/** Applets always present (symlinks), whatever `busybox --list-full` says. */
const CORE_APPLETS = [
  'bin/sh', 'bin/echo', 'bin/cat', 'bin/sleep', 'bin/ls', 'bin/mkdir', 'bin/rm', 'bin/touch',
  'bin/date', 'bin/hostname', 'bin/ps', 'bin/grep', 'bin/kill', 'bin/true', 'bin/false',
  'usr/bin/id', 'usr/bin/wget', 'usr/bin/nc', 'usr/bin/env', 'usr/sbin/httpd', 'sbin/ip',
];
const FIXED_TIME = new Date('2000-01-01T00:00:00Z');
const FIXED_TIME_ISO = FIXED_TIME.toISOString();
const DEFAULT_PATH = 'PATH=/usr/sbin:/usr/bin:/sbin:/bin';
const TOOL_TIMEOUT_MS = 60_000;

async function applets(busybox: string): Promise<string[]> {
  const out = (await runOrThrow(busybox, ['--list-full'], { timeoutMs: TOOL_TIMEOUT_MS })).stdout;
  const listed = out.split('\n').map((l) => l.trim()).filter((l) => /^[a-z0-9_/.[\]-]+$/.test(l) && !l.startsWith('/'));
  return [...new Set([...CORE_APPLETS, ...listed])].filter((p) => p !== 'bin/busybox').sort();
}

/** Sets every mtime/atime under `root` (and root itself) to a fixed date, so tar layers are reproducible. */
async function fixTimes(root: string): Promise<void> {
  const entries = await readdir(root, { withFileTypes: true });
  for (const e of entries) {
    const p = join(root, e.name);
    if (e.isDirectory()) await fixTimes(p);
    await lutimes(p, FIXED_TIME, FIXED_TIME);
  }
  await lutimes(root, FIXED_TIME, FIXED_TIME);
}

async function writeImageFile(rootfs: string, path: string, file: ImageFile): Promise<void> {
  if (!path.startsWith('/') || posix.normalize(path) !== path || path === '/') {
    throw new Error(`image file path must be absolute and normalised: ${path}`);
  }
  const dest = join(rootfs, path);
  await mkdir(dirname(dest), { recursive: true, mode: 0o755 });
  const content = typeof file === 'string' ? file : file.content;
  const mode = typeof file === 'string' ? 0o644 : (file.mode ?? 0o644);
  await writeFile(dest, content);
  await chmod(dest, mode);
}

async function populateBase(rootfs: string, busybox: string): Promise<void> {
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'root', 'proc', 'sys', 'dev', 'var']) {
    await mkdir(join(rootfs, d), { recursive: true, mode: 0o755 });
  }
  await mkdir(join(rootfs, 'tmp'), { mode: 0o755 });
  await chmod(join(rootfs, 'tmp'), 0o1777);
  await copyFile(busybox, join(rootfs, 'bin/busybox'));
  await chmod(join(rootfs, 'bin/busybox'), 0o755);
  for (const a of await applets(busybox)) {
    const dest = join(rootfs, a);
    await mkdir(dirname(dest), { recursive: true, mode: 0o755 });
    try {
      await lstat(dest);
    } catch {
      await symlink('/bin/busybox', dest);
    }
  }
  await writeFile(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  await writeFile(join(rootfs, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
  await writeFile(join(rootfs, 'etc/hosts'), '127.0.0.1\tlocalhost\n::1\tlocalhost\n');
  await fixTimes(rootfs);
}

/**
 * Builds the image in a private temp dir (removed afterwards) and pushes it to
 * `registry/repository:tag` (plain HTTP: the registry must be loopback or insecure).
 * Safe to call concurrently for different tags.
 */
export async function buildBusyboxImage(opts: BusyboxImageOptions): Promise<BuiltImage> {
  const busybox = opts.busybox ?? '/bin/busybox';
  const work = await mkdtemp(join(tmpdir(), 'carapace-img-'));
  const umoci = (args: string[]): Promise<RunResult> => runOrThrow('umoci', args, { timeoutMs: TOOL_TIMEOUT_MS });
  try {
    const layout = join(work, 'layout');
    const image = `${layout}:img`;
    const bundle = join(work, 'bundle');
    await umoci(['init', '--layout', layout]);
    await umoci(['new', '--image', image]);
    await umoci(['unpack', '--image', image, bundle]);
    const rootfs = join(bundle, 'rootfs');
    await populateBase(rootfs, busybox);
    await umoci(['repack', '--history.created', FIXED_TIME_ISO, '--history.created_by', 'carapace busybox base', '--image', image, bundle]);

    const files = Object.entries(opts.files ?? {});
    if (files.length > 0) {
      const bundle2 = join(work, 'bundle2');
      await umoci(['unpack', '--image', image, bundle2]);
      const rootfs2 = join(bundle2, 'rootfs');
      for (const [path, file] of files) await writeImageFile(rootfs2, path, file);
      await fixTimes(rootfs2);
      await umoci(['repack', '--history.created', FIXED_TIME_ISO, '--history.created_by', 'carapace files', '--image', image, bundle2]);
    }

    const env = [...(opts.env ?? [])];
    if (!env.some((e) => e.startsWith('PATH='))) env.unshift(DEFAULT_PATH);
    const cfg = ['config', '--image', image, '--created', FIXED_TIME_ISO, '--history.created', FIXED_TIME_ISO,
      '--os', 'linux', '--architecture', process.arch === 'arm64' ? 'arm64' : 'amd64',
      // Clear umoci's defaults so only what we set is in the config.
      '--clear', 'config.env', '--clear', 'config.cmd', '--clear', 'config.entrypoint'];
    for (const e of env) cfg.push('--config.env', e);
    for (const c of opts.cmd ?? ['sh']) cfg.push('--config.cmd', c);
    for (const c of opts.entrypoint ?? []) cfg.push('--config.entrypoint', c);
    if (opts.workingDir !== undefined) cfg.push('--config.workingdir', opts.workingDir);
    if (opts.user !== undefined) cfg.push('--config.user', opts.user);
    for (const [k, v] of Object.entries(opts.labels ?? {})) cfg.push('--config.label', `${k}=${v}`);
    await umoci(cfg);

    const reference = `${opts.registry}/${opts.repository}:${opts.tag}`;
    const digestFile = join(work, `digest-${randomBytes(4).toString('hex')}`);
    await runOrThrow('skopeo', ['--command-timeout', '60s', 'copy', '--quiet', '--insecure-policy', '--dest-tls-verify=false',
      '--digestfile', digestFile, `oci:${image}`, `docker://${reference}`], { timeoutMs: TOOL_TIMEOUT_MS });
    const digest = (await readFile(digestFile, 'utf8')).trim();
    return { reference, digest };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
