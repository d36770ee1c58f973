// What buildDebianImage reads from the host: dpkg's file lists and ldd's library closure.
// Needs the Debian packages scripts/install.sh installs (fio, util-linux); starts nothing.
import { describe, expect, it } from 'vitest';
import { packageFiles, sharedLibraryClosure } from './debian-image.js';

describe('packageFiles', () => {
  it('lists files and symlinks of a package, without directories, docs, man pages or shell completions', async () => {
    const all = await packageFiles({ name: 'fio' });
    expect(all).toContain('/usr/bin/fio');
    expect(all.some((p) => p.startsWith('/usr/share/doc/') || p.startsWith('/usr/share/man/'))).toBe(false);
    expect(all).not.toContain('/usr/bin');
    expect(all).toEqual([...all].sort());
    expect(await packageFiles({ name: 'util-linux', include: [/\/setpriv$/] })).toEqual(['/usr/bin/setpriv']);
  });

  it('fails for a package that is not installed', async () => {
    await expect(packageFiles({ name: 'carapace-no-such-package' })).rejects.toThrow(/dpkg/);
  });
});

describe('sharedLibraryClosure', () => {
  it('gives the loader and every library, transitively, as host paths; nothing for a static binary', async () => {
    const libs = await sharedLibraryClosure(['/usr/bin/setpriv', '/bin/busybox']);
    expect(libs.some((l) => /\/ld-linux[^/]*\.so\.\d$/.test(l))).toBe(true);
    expect(libs.some((l) => /\/libc\.so\.6$/.test(l))).toBe(true);
    expect(libs.some((l) => /\/libcap-ng\.so\.0$/.test(l))).toBe(true);
    expect(libs.every((l) => l.startsWith('/'))).toBe(true);
    expect(await sharedLibraryClosure(['/bin/busybox'])).toEqual([]);
  });
});
