import { mkdtemp, readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeLine, MAX_FILE_SET_BYTES, MAX_GUEST_LINE_BYTES, MAX_HOST_LINE_BYTES, parseGuestLine, parseHostLine, type GuestMessage } from './protocol.js';
import { GuestVolumes } from './volumes.js';
import { SupervisorError } from './supervisor.js';

const serial = 'cv0123456789abcdef01';
const parsed = (m: unknown): ReturnType<typeof parseHostLine> => parseHostLine(JSON.stringify(m));

describe('volume and file messages', () => {
  it('accepts well-formed volume requests and answers', () => {
    expect(parsed({ type: 'mountVolume', requestId: 'r1', volumeId: 'acme.data', serial, readOnly: false }).ok).toBe(true);
    expect(parsed({ type: 'unmountVolume', requestId: 'r1', volumeId: 'acme.data', eject: true }).ok).toBe(true);
    expect(parsed({ type: 'volumes', requestId: 'r1' }).ok).toBe(true);
    const list: GuestMessage = { type: 'volumeList', requestId: 'r1', volumes: [{ volumeId: 'acme.data', serial, readOnly: true, users: ['c1'] }] };
    const r = parseGuestLine(encodeLine(list, MAX_GUEST_LINE_BYTES).toString('utf8').trim());
    expect(r.ok && r.msg).toEqual(list);
  });

  it('refuses bad ids, serials, extra fields and unnormalised mount paths', () => {
    for (const m of [
      { type: 'mountVolume', requestId: 'r1', volumeId: '../etc', serial, readOnly: false },
      { type: 'mountVolume', requestId: 'r1', volumeId: 'Acme', serial, readOnly: false },
      { type: 'mountVolume', requestId: 'r1', volumeId: 'a', serial: 'vda', readOnly: false },
      { type: 'mountVolume', requestId: 'r1', volumeId: 'a', serial, readOnly: false, extra: 1 },
      { type: 'unmountVolume', requestId: 'r1', volumeId: 'a' },
    ]) expect(parsed(m).ok, JSON.stringify(m)).toBe(false);
    const run = (mounts: unknown): boolean =>
      parsed({ type: 'run', requestId: 'r', containerId: 'c1', rootfs: '/carapace/images/x', image: { entrypoint: [], cmd: ['sh'], env: [], workingDir: '/', user: '' }, container: { image: 'x', command: ['sh'] }, hostname: 'h', labels: {}, mounts }).ok;
    expect(run([{ source: '/run/carapace/volumes/a', destination: '/data', readOnly: false }])).toBe(true);
    expect(run([{ source: '/run/carapace/volumes/../x', destination: '/data', readOnly: false }])).toBe(false);
    expect(run([{ source: '/run/carapace/volumes/a', destination: 'data', readOnly: false }])).toBe(false);
    expect(run([{ source: '/run/carapace/volumes/a', destination: '/', readOnly: false }])).toBe(false);
    expect(run([{ source: '/run/carapace/volumes/a', destination: '/data//x', readOnly: false }])).toBe(false);
  });

  it('limits a file set to 64 KiB decoded, flat keys, no duplicates', () => {
    const files = (n: number, path = 'k'): unknown[] => [{ path, data: Buffer.alloc(n).toString('base64') }];
    const ws = (f: unknown[]): boolean => parsed({ type: 'writeFiles', requestId: 'r', containerId: 'c1', set: 'db', files: f }).ok;
    expect(ws(files(MAX_FILE_SET_BYTES))).toBe(true);
    expect(ws(files(MAX_FILE_SET_BYTES + 1))).toBe(false);
    expect(ws([...files(10, 'a'), ...files(10, 'a')])).toBe(false);
    for (const bad of ['..data', '.', 'a/b', '', 'x'.repeat(254)]) expect(ws(files(1, bad)), bad).toBe(false);
    // A full set fits in one host line.
    const line = encodeLine({ type: 'writeFiles', requestId: 'r', containerId: 'c1', set: 'db', files: [{ path: 'k', data: Buffer.alloc(MAX_FILE_SET_BYTES).toString('base64') }] }, MAX_HOST_LINE_BYTES);
    expect(line.length).toBeLessThan(MAX_HOST_LINE_BYTES);
  });
});

describe('GuestVolumes file sets and mount claims', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('replaces a file set atomically through ..data and removes it with the container', async () => {
    const state = await mkdtemp(join(tmpdir(), 'guestvol-'));
    dirs.push(state);
    const v = new GuestVolumes(state);
    const dir = await v.writeFiles('c1', 'db', [{ path: 'user', data: Buffer.from('u1').toString('base64') }, { path: 'pass', data: Buffer.from('p1').toString('base64') }]);
    expect(await readFile(join(dir, 'user'), 'utf8')).toBe('u1');
    const gen1 = await readlink(join(dir, '..data'));
    await v.writeFiles('c1', 'db', [{ path: 'user', data: Buffer.from('u2').toString('base64'), mode: 0o400 }]);
    expect(await readFile(join(dir, 'user'), 'utf8')).toBe('u2');
    expect((await stat(join(dir, 'user'))).mode & 0o777).toBe(0o400);
    expect(await readdir(dir)).not.toContain('pass');
    expect(await readdir(dir)).not.toContain(gen1);
    expect((await readdir(dir)).filter((n) => n.startsWith('..')).length).toBe(2); // ..data and one generation
    await v.release('c1');
    await expect(stat(join(state, 'files', 'c1'))).rejects.toThrow();
  });

  it('accepts only mounted volumes and the container\'s own read-only file sets as sources', async () => {
    const state = await mkdtemp(join(tmpdir(), 'guestvol-'));
    dirs.push(state);
    const v = new GuestVolumes(state);
    const claim = (m: { source: string; destination: string; readOnly: boolean }): unknown => {
      try {
        v.claim('c1', [m]);
        return undefined;
      } catch (e) {
        return (e as SupervisorError).code; // claim throws SupervisorError only
      }
    };
    expect(claim({ source: join(state, 'files', 'c1', 'db'), destination: '/s', readOnly: true })).toBeUndefined();
    expect(claim({ source: join(state, 'files', 'c1', 'db'), destination: '/s', readOnly: false })).toBe('GUEST_E_BAD_REQUEST');
    expect(claim({ source: join(state, 'files', 'c2', 'db'), destination: '/s', readOnly: true })).toBe('GUEST_E_BAD_REQUEST');
    expect(claim({ source: join(state, 'volumes', 'acme.data'), destination: '/d', readOnly: false })).toBe('GUEST_E_BAD_REQUEST');
    expect(claim({ source: '/etc', destination: '/d', readOnly: true })).toBe('GUEST_E_BAD_REQUEST');
    // Unmounting what is not mounted is a no-op; the list is empty.
    await v.unmount('acme.data', true);
    expect(v.list()).toEqual([]);
  });
});
