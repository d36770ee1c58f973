import { chmod, chown, mkdir, mkdtemp, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { initVolumeRoot } from './volume-owner.js';

// Runs as root (the test suite does: runc needs it), so chown works.
let dir: string;
let vol: string;
let rootfs: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-volowner-'));
  vol = join(dir, 'vol');
  rootfs = join(dir, 'rootfs');
  await mkdir(join(vol, 'lost+found'), { recursive: true });
  await chmod(vol, 0o755);
  await mkdir(join(rootfs, 'var/lib/redis'), { recursive: true });
  await chown(join(rootfs, 'var/lib/redis'), 999, 998);
  await chmod(join(rootfs, 'var/lib/redis'), 0o750);
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const owner = async (p: string): Promise<[number, number, string]> => {
  const s = await stat(p);
  return [s.uid, s.gid, (s.mode & 0o7777).toString(8)];
};

describe('initVolumeRoot', () => {
  it("gives a fresh volume's root the owner and mode of the image's directory", async () => {
    expect(await initVolumeRoot(vol, rootfs, '/var/lib/redis')).toEqual({ changed: true, uid: 999, gid: 998, mode: 0o750 });
    expect(await owner(vol)).toEqual([999, 998, '750']);
    // Once owned, it is the tenant's: a second start changes nothing.
    await chmod(vol, 0o700);
    expect(await initVolumeRoot(vol, rootfs, '/var/lib/redis')).toEqual({ changed: false, why: 'has an owner of its own' });
    expect(await owner(vol)).toEqual([999, 998, '700']);
  });

  it('leaves a volume that holds data, and an image without the directory', async () => {
    await writeFile(join(vol, 'dump.rdb'), 'x');
    expect(await initVolumeRoot(vol, rootfs, '/var/lib/redis')).toMatchObject({ changed: false, why: 'holds data' });
    await rm(join(vol, 'dump.rdb'));
    expect(await initVolumeRoot(vol, rootfs, '/data')).toMatchObject({ changed: false, why: 'the image has no such directory' });
    expect(await owner(vol)).toEqual([0, 0, '755']);
  });

  it('never takes the owner of a directory outside the image (symlinked path components)', async () => {
    const outside = join(dir, 'host-dir');
    await mkdir(outside);
    await chown(outside, 1234, 1234);
    await symlink(outside, join(rootfs, 'data')); // absolute: resolved on the host, outside the image
    expect(await initVolumeRoot(vol, rootfs, '/data')).toMatchObject({ changed: false, why: 'the image path leads out of the image' });
    await symlink('../../host-dir', join(rootfs, 'var/escape'));
    expect(await initVolumeRoot(vol, rootfs, '/var/escape')).toMatchObject({ changed: false, why: 'the image path leads out of the image' });
    expect(await owner(vol)).toEqual([0, 0, '755']);
  });
});
