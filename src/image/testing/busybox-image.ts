/**
 * Test and benchmark fixture: builds a tiny OCI image from the host's static busybox
 * (Debian busybox-static) with umoci and pushes it to a registry with skopeo. No network and
 * no Docker needed; about 0.5 s per image.
 *
 * Layer 1 (busybox, applet symlinks, /etc/passwd, /etc/group, /tmp, /root) is byte-for-byte
 * identical for every image built on the same host (fixed mtimes, fixed history dates), so
 * images built with it share that layer in a registry and in an image cache. `files` go in
 * a second layer. Building the same options twice gives the same digest. The umoci/skopeo part
 * is oci-build.ts, shared with the Debian images (debian-image.ts), which start from this base.
 */
import { chmod, copyFile, lstat, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { runOrThrow } from '../../proc/run.js';
import { buildImage, writeImageFile, type BuiltImage, type ImageFile, type LayerBuild } from './oci-build.js';

export type { BuiltImage, ImageFile } from './oci-build.js';

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

/** Applets always present (symlinks), whatever `busybox --list-full` says. */
const CORE_APPLETS = [
  'bin/sh', 'bin/echo', 'bin/cat', 'bin/sleep', 'bin/ls', 'bin/mkdir', 'bin/rm', 'bin/touch',
  'bin/date', 'bin/hostname', 'bin/ps', 'bin/grep', 'bin/kill', 'bin/true', 'bin/false',
  'usr/bin/id', 'usr/bin/wget', 'usr/bin/nc', 'usr/bin/env', 'usr/sbin/httpd', 'sbin/ip',
];
const TOOL_TIMEOUT_MS = 60_000;

async function applets(busybox: string): Promise<string[]> {
  const out = (await runOrThrow(busybox, ['--list-full'], { timeoutMs: TOOL_TIMEOUT_MS })).stdout;
  const listed = out.split('\n').map((l) => l.trim()).filter((l) => /^[a-z0-9_/.[\]-]+$/.test(l) && !l.startsWith('/'));
  return [...new Set([...CORE_APPLETS, ...listed])].filter((p) => p !== 'bin/busybox').sort();
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
}

/**
 * The busybox base layer: busybox, its applet symlinks, /etc/passwd, /etc/group, /etc/hosts,
 * /tmp, /root. Byte-for-byte the same for every image built on the same host, so every image
 * here (busybox and Debian ones) shares it in a registry and in an image cache.
 */
export function busyboxBaseLayer(busybox = '/bin/busybox'): LayerBuild {
  return { createdBy: 'carapace busybox base', populate: (rootfs) => populateBase(rootfs, busybox) };
}

/**
 * Builds the image and pushes it to `registry/repository:tag` (plain HTTP: the registry must be
 * loopback or insecure). Safe to call concurrently for different tags.
 */
export async function buildBusyboxImage(opts: BusyboxImageOptions): Promise<BuiltImage> {
  const layers = [busyboxBaseLayer(opts.busybox)];
  const files = Object.entries(opts.files ?? {});
  if (files.length > 0) {
    layers.push({
      createdBy: 'carapace files',
      populate: async (rootfs) => {
        for (const [path, file] of files) await writeImageFile(rootfs, path, file);
      },
    });
  }
  return buildImage({
    registry: opts.registry, repository: opts.repository, tag: opts.tag, layers,
    cmd: opts.cmd ?? ['sh'],
    ...(opts.entrypoint !== undefined ? { entrypoint: opts.entrypoint } : {}),
    ...(opts.env !== undefined ? { env: opts.env } : {}),
    ...(opts.workingDir !== undefined ? { workingDir: opts.workingDir } : {}),
    ...(opts.user !== undefined ? { user: opts.user } : {}),
    ...(opts.labels !== undefined ? { labels: opts.labels } : {}),
  });
}
