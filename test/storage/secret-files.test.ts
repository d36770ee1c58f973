/**
 * Secret and config files on a real tmpfs: the run directory becomes one when it is not,
 * files and modes are as documented, an update is atomic for a reader that never stops
 * reading, and recover cleans what an interrupted write left.
 */
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, statfs, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SecretFiles, TMPFS_MAGIC } from '../../src/storage/secret-files.js';
import { mountsUnder } from './helpers.js';

const logger = pino({ level: process.env.CARAPACE_TEST_LOG ?? 'silent' });

describe('SecretFiles (real tmpfs)', () => {
  let dir: string;
  let files: SecretFiles;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'carapace-files-'));
    // /tmp here is on the disk: the store must mount its own tmpfs.
    expect((await statfs(dir)).type).not.toBe(TMPFS_MAGIC);
    files = new SecretFiles({ runDir: join(dir, 'run'), logger });
    expect(await files.init()).toBe(true);
    expect(await files.init()).toBe(false);
  });

  afterAll(async () => {
    await files?.teardown();
    expect(await mountsUnder(dir)).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps the files on a tmpfs closed to other host users; 0444 files in 0755 directories', async () => {
    expect((await statfs(files.runDir)).type).toBe(TMPFS_MAGIC);
    expect((await stat(files.runDir)).mode & 0o777).toBe(0o700);
    const opts = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === files.runDir) ?? '';
    expect(opts).toMatch(/nosuid/);
    expect(opts).toMatch(/nodev/);
    expect(opts).toMatch(/noexec/);
    const d = await files.write('web-0', 'db', { password: 's3cret', 'user.name': 'app' });
    expect(d).toBe(join(files.runDir, 'web-0', 'db'));
    expect(await readFile(join(d, 'password'), 'utf8')).toBe('s3cret');
    expect((await stat(d)).mode & 0o777).toBe(0o755);
    expect((await stat(join(d, 'password'))).mode & 0o777).toBe(0o444);
    expect((await stat(join(d, '..data'))).mode & 0o777).toBe(0o755);
    expect((await readdir(d)).filter((f) => !f.startsWith('..')).sort()).toEqual(['password', 'user.name']);
  });

  it('refuses keys and names a path cannot safely be made from', async () => {
    await expect(files.write('web-0', 'db', { '..data': 'x' })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION' });
    await expect(files.write('web-0', 'db', { '..': 'x' })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION' });
    await expect(files.write('web-0', 'db', { 'a/b': 'x' })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION' });
    await expect(files.write('../x', 'db', { a: 'x' })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION', details: [{ path: 'instance' }] });
    await expect(files.write('web-0', 'big', { a: 'x'.repeat(2 * 1024 * 1024) })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION' });
  });

  it('replaces the whole set atomically: a reader never sees a mix, removed keys go', async () => {
    const d = await files.write('api-0', 'cfg', { a: 'v0', b: 'v0' });
    let stop = false;
    const seen = new Set<string>();
    const reader = (async () => {
      while (!stop) {
        // Both keys through one resolution of ..data, as a reader would open them.
        const data = await readlink(join(d, '..data'));
        const [a, b] = await Promise.all([readFile(join(d, data, 'a'), 'utf8'), readFile(join(d, data, 'b'), 'utf8').catch(() => 'gone')]);
        seen.add(`${a}/${b}`);
        const viaLink = await readFile(join(d, 'a'), 'utf8');
        expect(viaLink).toMatch(/^v\d+$/);
      }
    })();
    for (let i = 1; i <= 30; i += 1) await files.write('api-0', 'cfg', { a: `v${i}`, b: `v${i}` });
    stop = true;
    await reader;
    for (const s of seen) {
      const [a, b] = s.split('/');
      expect(a).toBe(b);
    }
    await files.write('api-0', 'cfg', { a: 'last' });
    expect((await readdir(d)).sort()).toEqual(['..data', (await readlink(join(d, '..data'))), 'a'].sort());
    expect(await readFile(join(d, 'a'), 'utf8')).toBe('last');
  });

  it('recover drops interrupted writes and stale data, and instances not kept; remove is idempotent', async () => {
    const d = await files.write('job-0', 'cfg', { k: 'v' });
    // What a write killed halfway leaves: a data directory and a link never switched, a set whose first write never finished.
    await mkdir(join(d, '..2026-01-01.dead'));
    await symlink('..2026-01-01.dead', join(d, '..data_tmp'));
    await mkdir(join(files.runDir, 'job-0', 'half', '..2026-01-01.x'), { recursive: true });
    await files.write('gone-0', 'cfg', { k: 'v' });
    const r = await files.recover(new Set(['job-0', 'web-0', 'api-0']));
    expect(r.removed).toEqual(['gone-0']);
    expect(r.repaired.length).toBe(3);
    expect(await readdir(join(files.runDir, 'job-0'))).toEqual(['cfg']);
    expect((await readdir(d)).filter((f) => f.startsWith('..')).length).toBe(2);
    expect((await lstat(join(d, 'k'))).isSymbolicLink()).toBe(true);
    expect((await files.recover()).repaired).toEqual([]);
    await files.remove('job-0');
    await files.remove('job-0');
    expect(await files.instances()).toEqual(['api-0', 'web-0']);
  });
});
