/**
 * A fresh volume's root takes the owner and mode of the image's directory it is mounted on,
 * as Docker does for a new named volume: an image that runs as a non-root user and declares
 * its data directory (`/var/lib/redis`, owned by redis, mode 0750) can write to a volume
 * mounted there, with no init container and no chown in an entrypoint. Only a fresh root is
 * changed (root's, holding nothing but mkfs's lost+found): once the volume has data, or an
 * owner of its own, it is the tenant's and is left alone.
 */
import { lstat, readdir, realpath, chown, chmod } from 'node:fs/promises';
import { join, relative, isAbsolute } from 'node:path';

/** What was done to a volume's root (for the caller's log). */
export type VolumeRootInit = { changed: false; why: string } | { changed: true; uid: number; gid: number; mode: number };

/** Entries mkfs.ext4 leaves in a new filesystem's root. */
const FRESH_ENTRIES = new Set(['lost+found']);

/**
 * Gives `volumeRoot` (a mounted volume's root directory) the owner and permission bits of
 * `destination` inside `rootfs` when the volume is fresh and the image has that directory.
 * The image path is resolved inside `rootfs` only: a path whose components are symlinks
 * leading out of the image is ignored (never a host directory's owner).
 */
export async function initVolumeRoot(volumeRoot: string, rootfs: string, destination: string): Promise<VolumeRootInit> {
  const root = await lstat(volumeRoot);
  if (!root.isDirectory()) return { changed: false, why: 'not a directory' };
  if (root.uid !== 0 || root.gid !== 0) return { changed: false, why: 'has an owner of its own' };
  const entries = await readdir(volumeRoot);
  if (entries.some((e) => !FRESH_ENTRIES.has(e))) return { changed: false, why: 'holds data' };
  let inImage: string;
  let imageRoot: string;
  try {
    [inImage, imageRoot] = await Promise.all([realpath(join(rootfs, destination)), realpath(rootfs)]);
  } catch {
    return { changed: false, why: 'the image has no such directory' };
  }
  const rel = relative(imageRoot, inImage);
  if (rel.startsWith('..') || isAbsolute(rel)) return { changed: false, why: 'the image path leads out of the image' };
  const dir = await lstat(inImage);
  if (!dir.isDirectory()) return { changed: false, why: 'the image path is not a directory' };
  const mode = dir.mode & 0o7777;
  if (dir.uid === 0 && dir.gid === 0 && mode === (root.mode & 0o7777)) return { changed: false, why: 'same owner and mode' };
  await chown(volumeRoot, dir.uid, dir.gid);
  await chmod(volumeRoot, mode);
  return { changed: true, uid: dir.uid, gid: dir.gid, mode };
}
