/**
 * A snapshot of a volume that a running VM writes: real QEMU (microvm, TCG), the volume's
 * ext4 image as the VM's disk, a guest writing to it all the time. The host agent's snapshot
 * loop pauses the VM through QMP for the copy and resumes it; the copy, restored into a new
 * volume (checked with e2fsck, its journal replayed, before the host mounts it), holds what the
 * guest had written. A pause that would last longer than allowed is abandoned with the VM
 * resumed and nothing kept; a VM left paused by a killed agent is resumed at the loop's start.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VolumeSnapshotter } from '../../src/agent/volume-snapshots.js';
import { Resources } from '../../src/core/resources.js';
import { openSqliteStore, type SqliteStore } from '../../src/store/sqlite.js';
import { SnapshotPauseExceeded, VolumeStore } from '../../src/storage/volume-store.js';
import { createVmManager, type VmManager } from '../../src/vm/qemu.js';
import { loopsUnder, mountsUnder } from '../storage/helpers.js';
import { until } from '../../src/proc/until.js';

const logger = pino({ level: process.env.CARAPACE_TEST_LOG ?? 'silent' });
const MiB = 1024 * 1024;
const VM = 'snapvm';
let dir: string;
let store: SqliteStore;
let volumes: VolumeStore;
let vms: VmManager;
let image: string;

/** QEMU's run state of the VM (`running`, `paused`). */
async function vmStatus(): Promise<string> {
  return ((await vms.withQmp(VM, (q) => q.execute('query-status'))) as { status: string }).status; // QMP's StatusInfo
}

/** Lines the guest's loop printed on its console so far. */
async function ticks(): Promise<number> {
  return (await readFile(vms.inspect(VM).consoleLog, 'utf8')).split('\n').filter((l) => l.startsWith('tick')).length;
}

function snapshotter(maxPauseMs?: number): VolumeSnapshotter {
  return new VolumeSnapshotter({ hostName: 'h1', resources: new Resources(store), logger, volumes, vms, stateDir: dir, ...(maxPauseMs !== undefined ? { maxPauseMs } : {}) });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-snapvm-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  volumes = new VolumeStore({ stateDir: dir, logger });
  vms = createVmManager({ stateDir: join(dir, 'vms'), logger, accel: 'tcg' });
  await volumes.ensure({ id: 'vol1', tenant: 'acme', name: 'data', sizeBytes: 64 * MiB });
  const mnt = await volumes.mount('vol1');
  await writeFile(join(mnt, 'host'), 'from the host\n');
  // Enough data that copying it cannot finish within a 1 ms pause on this host's ext4.
  await writeFile(join(mnt, 'bulk'), Buffer.alloc(24 * MiB, 3));
  await volumes.unmount('vol1');
  image = await volumes.imagePath('vol1');
  await vms.launch({
    id: VM,
    cpus: 1,
    memoryMiB: 256,
    channel: false,
    labels: {},
    shares: [],
    ports: [],
    disks: [{ id: 'acme.data', path: image, readOnly: false }],
    exec: 'mkdir -p /m && mount -t ext4 /dev/vda /m && echo guest-v1 > /m/g && sync && echo READY && i=0; while true; do i=$((i+1)); echo "$i" >> /m/log; echo tick; sleep 0.2; done',
  });
  // A line of its own (init logs the whole command, which contains the word, before running it).
  await until('the guest to mount its disk and write', async () => ((await readFile(vms.inspect(VM).consoleLog, 'utf8')).split('\n').some((l) => l.trim() === 'READY') ? true : undefined), 180_000);
}, 240_000);

afterAll(async () => {
  await vms?.destroy(VM, 1_000).catch(() => undefined);
  if (volumes) {
    await volumes.releaseImage('vol1').catch(() => undefined);
    for (const v of await volumes.list().catch(() => [])) {
      await volumes.unmount(v.id).catch(() => undefined);
      await volumes.remove(v.id).catch(() => undefined);
    }
  }
  await store?.close();
  if (dir) {
    expect(await loopsUnder(dir)).toEqual([]);
    expect(await mountsUnder(dir)).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  }
}, 60_000);

describe('a snapshot of a volume a running VM writes', () => {
  it('pauses the VM for the copy and resumes it; the copy restores into a volume holding what the guest wrote', async () => {
    const s = snapshotter(60_000);
    const info = await s.take('vol1', 'snap1');
    expect(info.sizeBytes).toBe(64 * MiB);
    expect(await vmStatus()).toBe('running');
    expect(await readdir(join(dir, 'snapshot-pauses')).catch(() => [])).toEqual([]);
    // The guest goes on writing.
    const n = await ticks();
    await until('the guest to go on', async () => ((await ticks()) > n + 3 ? true : undefined), 60_000);
    // Restored on the host: e2fsck replays the guest's journal before the first mount.
    await volumes.ensure({ id: 'back', tenant: 'acme', name: 'back', sizeBytes: 64 * MiB, source: { volume: 'vol1', snapshot: 'snap1' } });
    const mnt = await volumes.mount('back');
    expect(await readFile(join(mnt, 'g'), 'utf8')).toBe('guest-v1\n');
    expect(await readFile(join(mnt, 'host'), 'utf8')).toBe('from the host\n');
    // What the guest had appended when it was paused, as a power cut would leave it: a prefix of
    // its count (its last lines may still have been in its own cache), never a torn mix.
    const lines = (await readFile(join(mnt, 'log'), 'utf8').catch(() => '')).split('\n').filter((l) => l !== '');
    expect(lines.map(Number)).toEqual(lines.map((_, i) => i + 1));
    await volumes.unmount('back');
    await volumes.remove('back');
  }, 180_000);

  it('abandons a copy that would keep the VM paused too long: the VM resumed, nothing kept', async () => {
    await expect(snapshotter(1).take('vol1', 'slow')).rejects.toBeInstanceOf(SnapshotPauseExceeded);
    expect(await vmStatus()).toBe('running');
    expect((await volumes.allSnapshots()).map((x) => x.name)).toEqual(['snap1']);
    expect(existsSync(join(dir, 'volumes', 'snapshots', 'vol1', 'slow.img.tmp'))).toBe(false);
    expect(await readdir(join(dir, 'snapshot-pauses')).catch(() => [])).toEqual([]);
  }, 60_000);

  it('resumes a VM an agent killed mid-copy left paused', async () => {
    // What a kill between the pause and the resume leaves: the marker and a paused VM.
    await mkdir(join(dir, 'snapshot-pauses'), { recursive: true });
    await writeFile(join(dir, 'snapshot-pauses', VM), 'vol1\n');
    await vms.withQmp(VM, (q) => q.execute('stop'));
    expect(await vmStatus()).toBe('paused');
    await snapshotter().recover();
    expect(await vmStatus()).toBe('running');
    expect(await readdir(join(dir, 'snapshot-pauses'))).toEqual([]);
  }, 60_000);
});
