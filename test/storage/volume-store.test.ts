/**
 * The host volume store on the real kernel: ext4 images on loop devices, mounted, filled,
 * snapshotted, handed out, and recovered after a process doing all that is killed -9 at
 * many points. Every check reads the kernel's view (losetup, mountinfo), not the store's.
 * Needs the compiled store (`npm run build`): the killed processes run dist/.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CarapaceError } from '../../src/model/errors.js';
import { runOrThrow } from '../../src/proc/run.js';
import { MIN_VOLUME_BYTES, SnapshotPauseExceeded, VolumeStore } from '../../src/storage/volume-store.js';
import { loopsUnder, mountsUnder } from './helpers.js';

const logger = pino({ level: process.env.CARAPACE_TEST_LOG ?? 'silent' });
const MiB = 1024 * 1024;
const DIST_STORE = fileURLToPath(new URL('../../dist/src/storage/volume-store.js', import.meta.url));

/** The CarapaceError code `p` rejects with. */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CarapaceError) return e.code;
    throw e;
  }
  throw new Error('expected a rejection');
}

describe('VolumeStore (real loop devices and ext4)', () => {
  let dir: string;
  let store: VolumeStore;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'carapace-volumes-'));
    store = new VolumeStore({ stateDir: dir, logger });
    await store.recover();
  });

  afterAll(async () => {
    if (!store) return;
    await store.gc(new Set());
    // Nothing of ours is left in the kernel.
    expect(await loopsUnder(dir)).toEqual([]);
    expect(await mountsUnder(dir)).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  });

  /** The kernel's view of one volume: its mounts and loop devices. */
  async function kernel(id: string): Promise<{ mounts: number; loops: number }> {
    return { mounts: (await mountsUnder(store.mountDir(id))).length, loops: (await loopsUnder(store.imageFile(id))).length };
  }

  it('refuses bad ids and sizes with the field path', async () => {
    await expect(store.ensure({ id: '../etc', tenant: 't', name: 'n', sizeBytes: MIN_VOLUME_BYTES })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION', details: [{ path: 'id' }] });
    await expect(store.ensure({ id: 'ok', tenant: 't', name: 'n', sizeBytes: MiB })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION', details: [{ path: 'sizeBytes' }] });
    await expect(store.mount('Bad/Id')).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION' });
    expect(await codeOf(store.mount('nosuch'))).toBe('CARAPACE_E_NOT_FOUND');
  });

  it('gc keeps a volume made after the list it was given was read (a volume created or restored meanwhile)', async () => {
    const listedAt = new Date(Date.now() - 1); // the caller began reading its list of volumes...
    await store.ensure({ id: 'newer', tenant: 'acme', name: 'fresh', sizeBytes: MIN_VOLUME_BYTES }); // ...and this one was made since
    const others = new Set((await store.list()).map((v) => v.id).filter((id) => id !== 'newer')); // other tests' volumes stay
    expect((await store.gc(others, listedAt)).removed).not.toContain('newer');
    expect((await store.list()).map((v) => v.id)).toContain('newer');
    // A list read after its making, without it: the volume's object is gone; its storage goes.
    expect((await store.gc(others, new Date())).removed).toEqual(['newer']);
    expect((await store.list()).map((v) => v.id)).not.toContain('newer');
  });

  it('ensure, mount, write, unmount, mount again: the data is kept; every step is idempotent', async () => {
    const v = await store.ensure({ id: 'keep', tenant: 'acme', name: 'db', sizeBytes: 32 * MiB });
    expect(v).toMatchObject({ id: 'keep', attachment: 'none', sizeBytes: 32 * MiB });
    // Sparse: the image takes far less than its size.
    expect((await stat(v.image)).blocks * 512).toBeLessThan(16 * MiB);
    expect(await store.ensure({ id: 'keep', tenant: 'acme', name: 'db', sizeBytes: 32 * MiB })).toEqual(v);
    expect(await codeOf(store.ensure({ id: 'keep', tenant: 'other', name: 'db', sizeBytes: 32 * MiB }))).toBe('CARAPACE_E_ALREADY_EXISTS');

    const mnt = await store.mount('keep');
    expect(await store.mount('keep')).toBe(mnt);
    expect(await kernel('keep')).toEqual({ mounts: 1, loops: 1 });
    const opts = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === mnt) ?? '';
    expect(opts).toMatch(/nosuid/);
    expect(opts).toMatch(/nodev/);
    expect(opts).toMatch(/ ext4 /);
    await writeFile(join(mnt, 'row'), 'one');
    const used = await store.usage('keep');
    // statfs leaves out ext4's own metadata (journal, inode tables).
    expect(used.totalBytes).toBeGreaterThan(24 * MiB);
    expect(used.totalBytes).toBeLessThanOrEqual(32 * MiB);

    await store.unmount('keep');
    await store.unmount('keep');
    expect(await kernel('keep')).toEqual({ mounts: 0, loops: 0 });
    const offline = await store.usage('keep');
    expect(offline.usedBytes).toBeGreaterThan(0);

    const again = await store.mount('keep');
    expect(await readFile(join(again, 'row'), 'utf8')).toBe('one');
    await store.unmount('keep');
  });

  it('a file larger than the volume fails with ENOSPC; the host and the volume are unharmed', async () => {
    await store.ensure({ id: 'small', tenant: 'acme', name: 'small', sizeBytes: MIN_VOLUME_BYTES });
    const mnt = await store.mount('small');
    const hostBefore = await runOrThrow('df', ['--output=used', '-B1', dir]);
    const big = Buffer.alloc(32 * MiB, 7);
    await expect(writeFile(join(mnt, 'big'), big)).rejects.toMatchObject({ code: 'ENOSPC' });
    // The image grew no further than its size; the host filesystem took no more than that.
    expect((await stat(store.imageFile('small'))).size).toBe(MIN_VOLUME_BYTES);
    expect((await stat(store.imageFile('small'))).blocks * 512).toBeLessThanOrEqual(MIN_VOLUME_BYTES);
    const hostAfter = await runOrThrow('df', ['--output=used', '-B1', dir]);
    expect(Number(hostAfter.stdout.split('\n')[1]) - Number(hostBefore.stdout.split('\n')[1])).toBeLessThanOrEqual(MIN_VOLUME_BYTES + MiB);
    // Freed space is usable again.
    await rm(join(mnt, 'big'));
    await writeFile(join(mnt, 'after'), 'fine');
    expect(await readFile(join(mnt, 'after'), 'utf8')).toBe('fine');
    await store.unmount('small');
    await store.remove('small');
    expect(await readdir(join(dir, 'volumes', 'images'))).not.toContain('small.img');
  });

  it('grows a volume (online when the kernel lets this process), keeping its data; refuses to shrink', async () => {
    await store.ensure({ id: 'grow', tenant: 'acme', name: 'grow', sizeBytes: 32 * MiB });
    const mnt = await store.mount('grow');
    await writeFile(join(mnt, 'x'), 'kept');
    // ext4's online resize needs CAP_SYS_RESOURCE (bit 24 of CapEff); some sandboxes drop it.
    const capEff = BigInt(`0x${/^CapEff:\s+([0-9a-f]+)$/m.exec(await readFile('/proc/self/status', 'utf8'))?.[1] ?? '0'}`);
    if ((capEff >> 24n) & 1n) {
      await store.ensure({ id: 'grow', tenant: 'acme', name: 'grow', sizeBytes: 64 * MiB });
    } else {
      expect(await codeOf(store.ensure({ id: 'grow', tenant: 'acme', name: 'grow', sizeBytes: 64 * MiB }))).toBe('CARAPACE_E_VOLUME_BUSY');
      expect(await readFile(join(mnt, 'x'), 'utf8')).toBe('kept');
      await store.unmount('grow');
      await store.ensure({ id: 'grow', tenant: 'acme', name: 'grow', sizeBytes: 64 * MiB });
      await store.mount('grow');
    }
    expect((await store.usage('grow')).totalBytes).toBeGreaterThan(56 * MiB);
    expect((await store.list()).find((v) => v.id === 'grow')?.sizeBytes).toBe(64 * MiB);
    expect(await readFile(join(mnt, 'x'), 'utf8')).toBe('kept');
    expect(await codeOf(store.ensure({ id: 'grow', tenant: 'acme', name: 'grow', sizeBytes: 32 * MiB }))).toBe('CARAPACE_E_VALIDATION');
    await store.unmount('grow');
    await store.remove('grow');
  });

  it('snapshot (frozen while mounted), change, restore: the old content is back', async () => {
    await store.ensure({ id: 'snap', tenant: 'acme', name: 'snap', sizeBytes: 32 * MiB });
    const mnt = await store.mount('snap');
    await writeFile(join(mnt, 'f'), 'before');
    const s = await store.snapshot('snap', 's1');
    expect(s.name).toBe('s1');
    expect(await store.snapshot('snap', 's1')).toEqual(s);
    // Not left frozen: writes go through at once.
    await writeFile(join(mnt, 'f'), 'after');
    await writeFile(join(mnt, 'new'), 'x');
    expect(await codeOf(store.restore('snap', 's1'))).toBe('CARAPACE_E_VOLUME_BUSY');
    await store.unmount('snap');
    expect(await codeOf(store.restore('snap', 'nosuch'))).toBe('CARAPACE_E_NOT_FOUND');
    await store.restore('snap', 's1');
    const back = await store.mount('snap');
    expect(await readFile(join(back, 'f'), 'utf8')).toBe('before');
    expect(await readdir(back)).not.toContain('new');
    expect((await store.listSnapshots('snap')).map((x) => x.name)).toEqual(['s1']);
    await store.deleteSnapshot('snap', 's1');
    await store.deleteSnapshot('snap', 's1');
    expect(await store.listSnapshots('snap')).toEqual([]);
    await store.unmount('snap');
    await store.remove('snap');
  });

  it('makes a new volume as a copy of a snapshot (grown when larger), never from a missing one, never rewriting an existing one', async () => {
    await store.ensure({ id: 'orig', tenant: 'acme', name: 'orig', sizeBytes: 32 * MiB });
    const mnt = await store.mount('orig');
    await writeFile(join(mnt, 'f'), 'before');
    await store.snapshot('orig', 's1');
    await writeFile(join(mnt, 'f'), 'after');
    await store.unmount('orig');
    expect((await store.allSnapshots()).map((x) => [x.volume, x.name, x.sizeBytes])).toEqual([['orig', 's1', 32 * MiB]]);

    const same = await store.ensure({ id: 'copy', tenant: 'acme', name: 'copy', sizeBytes: 32 * MiB, source: { volume: 'orig', snapshot: 's1' } });
    expect(same).toMatchObject({ id: 'copy', sizeBytes: 32 * MiB, attachment: 'none' });
    const copyMnt = await store.mount('copy');
    expect(await readFile(join(copyMnt, 'f'), 'utf8')).toBe('before');
    await writeFile(join(copyMnt, 'mine'), 'x');
    await store.unmount('copy');
    // Ensured again (the agent does on every start): the volume exists, the source is not used again.
    await store.ensure({ id: 'copy', tenant: 'acme', name: 'copy', sizeBytes: 32 * MiB, source: { volume: 'orig', snapshot: 's1' } });
    expect(await readFile(join(await store.mount('copy'), 'mine'), 'utf8')).toBe('x');
    await store.unmount('copy');

    await store.ensure({ id: 'bigger', tenant: 'acme', name: 'bigger', sizeBytes: 64 * MiB, source: { volume: 'orig', snapshot: 's1' } });
    const bigMnt = await store.mount('bigger');
    expect(await readFile(join(bigMnt, 'f'), 'utf8')).toBe('before');
    expect((await store.usage('bigger')).totalBytes).toBeGreaterThan(56 * MiB);
    await store.unmount('bigger');

    // Too small for the snapshot, or the snapshot gone: refused, and nothing is left of it.
    expect(await codeOf(store.ensure({ id: 'tiny', tenant: 'acme', name: 'tiny', sizeBytes: 16 * MiB, source: { volume: 'orig', snapshot: 's1' } }))).toBe('CARAPACE_E_VALIDATION');
    expect(await codeOf(store.ensure({ id: 'lost', tenant: 'acme', name: 'lost', sizeBytes: 32 * MiB, source: { volume: 'orig', snapshot: 'nosuch' } }))).toBe('CARAPACE_E_NOT_FOUND');
    expect((await store.list()).map((v) => v.id)).not.toContain('tiny');
    expect((await store.list()).map((v) => v.id)).not.toContain('lost');
    expect((await readdir(join(dir, 'volumes', 'images'))).filter((f) => f.startsWith('tiny') || f.startsWith('lost'))).toEqual([]);
    for (const id of ['copy', 'bigger', 'orig']) await store.remove(id);
    expect(await store.allSnapshots()).toEqual([]);
  });

  it('copies a volume handed to a VM only while its writer is paused, for at most the pause allowed', async () => {
    await store.ensure({ id: 'invm', tenant: 'acme', name: 'invm', sizeBytes: 64 * MiB });
    const mnt = await store.mount('invm');
    // Data that takes a while to copy on a filesystem without reflink (this host's ext4).
    await writeFile(join(mnt, 'data'), Buffer.alloc(40 * MiB, 1));
    await store.unmount('invm');
    await store.imagePath('invm');
    expect(await codeOf(store.snapshot('invm', 's'))).toBe('CARAPACE_E_VOLUME_BUSY');
    const events: string[] = [];
    const pause = (budget: number | undefined, failResume = false) => ({
      pause: async () => (events.push('pause'), budget),
      resume: async () => {
        events.push('resume');
        if (failResume) throw new Error('a VM opened it meanwhile');
      },
    });
    // A budget far below what copying 40 MiB takes: abandoned, the writer resumed, nothing kept.
    await expect(store.snapshot('invm', 'slow', { whileAttached: pause(1) })).rejects.toBeInstanceOf(SnapshotPauseExceeded);
    expect(events).toEqual(['pause', 'resume']);
    // A resume that fails (the copy may be torn): not kept either.
    events.length = 0;
    await expect(store.snapshot('invm', 'torn', { whileAttached: pause(undefined, true) })).rejects.toThrow(/opened it meanwhile/);
    expect(events).toEqual(['pause', 'resume']);
    expect(await readdir(join(dir, 'volumes', 'snapshots', 'invm'))).toEqual([]);
    // Enough time: taken between the pause and the resume.
    events.length = 0;
    const ok = await store.snapshot('invm', 'ok', { whileAttached: pause(60_000) });
    expect(events).toEqual(['pause', 'resume']);
    expect(ok).toMatchObject({ name: 'ok', sizeBytes: 64 * MiB });
    expect((await store.allSnapshots()).map((x) => x.name)).toEqual(['ok']);
    // Idempotent: taken already, the writer is not paused again.
    events.length = 0;
    expect(await store.snapshot('invm', 'ok', { whileAttached: pause(60_000) })).toEqual(ok);
    expect(events).toEqual([]);
    await store.releaseImage('invm');
    await store.remove('invm');
  });

  it('a volume is mounted on the host or handed out as a block device, never both', async () => {
    await store.ensure({ id: 'blk', tenant: 'acme', name: 'blk', sizeBytes: 32 * MiB });
    const mnt = await store.mount('blk');
    await writeFile(join(mnt, 'f'), 'host');
    expect(await codeOf(store.imagePath('blk'))).toBe('CARAPACE_E_VOLUME_BUSY');
    await store.unmount('blk');
    const img = await store.imagePath('blk');
    expect(img).toBe(store.imageFile('blk'));
    expect(await store.imagePath('blk')).toBe(img);
    expect(await codeOf(store.mount('blk'))).toBe('CARAPACE_E_VOLUME_BUSY');
    expect(await codeOf(store.remove('blk'))).toBe('CARAPACE_E_VOLUME_BUSY');
    expect(await codeOf(store.snapshot('blk', 's'))).toBe('CARAPACE_E_VOLUME_BUSY');
    expect(await kernel('blk')).toEqual({ mounts: 0, loops: 0 });
    // What a VM would write, through another loop device (the guest's view of the disk).
    const dev = (await runOrThrow('losetup', ['--find', '--show', img])).stdout.trim();
    const guest = join(dir, 'guest');
    await runOrThrow('mkdir', ['-p', guest]);
    await runOrThrow('mount', [dev, guest]);
    await writeFile(join(guest, 'g'), 'guest');
    await runOrThrow('umount', [guest]);
    await runOrThrow('losetup', ['--detach', dev]);
    await store.releaseImage('blk');
    // Back on the host (after an e2fsck of what the guest wrote).
    const again = await store.mount('blk');
    expect(await readFile(join(again, 'g'), 'utf8')).toBe('guest');
    expect(await readFile(join(again, 'f'), 'utf8')).toBe('host');
    await store.unmount('blk');
    await store.remove('blk');
  });

  it('recover thaws a filesystem left frozen by a snapshot that was killed', async () => {
    await store.ensure({ id: 'frozen', tenant: 'acme', name: 'frozen', sizeBytes: 32 * MiB });
    const mnt = await store.mount('frozen');
    await runOrThrow('fsfreeze', ['--freeze', mnt]);
    const report = await store.recover();
    expect(report.repaired.some((r) => r.includes('thawed frozen'))).toBe(true);
    // A write would block forever on a frozen filesystem; a deadline says it does not.
    await runOrThrow('sh', ['-c', `echo ok > ${mnt}/w`], { timeoutMs: 10_000 });
    await store.unmount('frozen');
    await store.remove('frozen');
  });

  it('a process killed -9 at any point of ensure, mount, write, snapshot, unmount, ensure from the snapshot: recover leaves one consistent state, and the work can be redone', async () => {
    // The child does a whole volume life; it says `ready` once loaded so kill times count from the work itself.
    const script = `
      import pino from 'pino';
      const { VolumeStore } = await import(${JSON.stringify(DIST_STORE)});
      const s = new VolumeStore({ stateDir: process.argv[1], logger: pino({ level: 'silent' }) });
      const id = process.argv[2];
      process.stdout.write('ready\\n');
      await s.ensure({ id, tenant: 'acme', name: id, sizeBytes: 48 * 1024 * 1024 });
      const mnt = await s.mount(id);
      (await import('node:fs')).writeFileSync(mnt + '/data', 'x');
      await s.snapshot(id, 'snap');
      await s.unmount(id);
      await s.mount(id);
      // A larger volume made from the snapshot (copy, grow, rename).
      await s.ensure({ id: id + '-r', tenant: 'acme', name: id + '-r', sizeBytes: 64 * 1024 * 1024, source: { volume: id, snapshot: 'snap' } });
      process.stdout.write('done\\n');
    `;
    /** Runs the child for `id` in its own process group; kills the group -9 `killAfterMs` after `ready` (never, when undefined). */
    function child(id: string, killAfterMs: number | undefined): Promise<{ ms: number; finished: boolean }> {
      return new Promise((resolve, reject) => {
        const p = spawn(process.execPath, ['--input-type=module', '-e', script, dir, id], { detached: true, stdio: ['ignore', 'pipe', 'inherit'], cwd: fileURLToPath(new URL('../..', import.meta.url)) });
        let t0 = 0;
        let out = '';
        p.stdout.on('data', (b: Buffer) => {
          out += b.toString();
          if (t0 === 0 && out.includes('ready')) {
            t0 = Date.now();
            const pid = p.pid;
            if (killAfterMs !== undefined && pid !== undefined) {
              setTimeout(() => {
                try {
                  process.kill(-pid, 'SIGKILL');
                } catch {
                  // The child finished before its kill point: nothing to kill.
                }
              }, killAfterMs);
            }
          }
        });
        p.on('error', reject);
        p.on('close', () => resolve({ ms: Date.now() - t0, finished: out.includes('done') }));
      });
    }

    /** The invariant after recover: the state and the kernel agree, once. */
    async function consistent(id: string): Promise<void> {
      const vols = await store.list();
      const v = vols.find((x) => x.id === id);
      const k = await kernel(id);
      if (v === undefined) {
        expect(k).toEqual({ mounts: 0, loops: 0 });
        expect(await readdir(join(dir, 'volumes', 'images'))).not.toContain(`${id}.img`);
      } else if (v.attachment === 'host') {
        expect(k).toEqual({ mounts: 1, loops: 1 });
      } else {
        expect(k).toEqual({ mounts: 0, loops: 0 });
      }
      const tmp = (await readdir(join(dir, 'volumes', 'images'))).filter((f) => f.endsWith('.tmp'));
      expect(tmp).toEqual([]);
    }

    const base = await child('crash-base', undefined);
    expect(base.finished).toBe(true);
    await store.unmount('crash-base');
    await store.remove('crash-base');
    await store.remove('crash-base-r');
    // Kill points spread over the whole run (and past its start), several per step.
    const points = Array.from({ length: 12 }, (_, i) => Math.round((base.ms * i) / 11));
    let killed = 0;
    let repairs = 0;
    for (const [i, at] of points.entries()) {
      const id = `crash-${i}`;
      if (!(await child(id, at)).finished) killed += 1;
      // Before recover, whatever was cut short, the store still lists what it has made (a
      // creation cut short is not listed): the agent's sweep and usage reports run meanwhile.
      for (const v of await store.list()) expect(existsSync(v.image), v.id).toBe(true);
      repairs += (await store.recover()).repaired.length;
      await consistent(id);
      await consistent(`${id}-r`);
      // Recover twice changes nothing more.
      expect((await store.recover()).repaired).toEqual([]);
      // The same work again completes.
      await store.ensure({ id, tenant: 'acme', name: id, sizeBytes: 48 * MiB });
      const mnt = await store.mount(id);
      await writeFile(join(mnt, 'data'), 'y');
      await store.unmount(id);
      // The restored volume, when its creation finished, holds the snapshot's data.
      if ((await store.list()).some((v) => v.id === `${id}-r`)) {
        expect(await readFile(join(await store.mount(`${id}-r`), 'data'), 'utf8')).toBe('x');
        await store.unmount(`${id}-r`);
        await store.remove(`${id}-r`);
      }
      await store.remove(id);
      expect(await kernel(id)).toEqual({ mounts: 0, loops: 0 });
    }
    // Not vacuous: most runs were cut short, and some left work for recover.
    expect(killed).toBeGreaterThanOrEqual(8);
    expect(repairs).toBeGreaterThan(0);
  }, 300_000);
});
