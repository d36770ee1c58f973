/**
 * A minimal writer for the `newc` cpio format (the one the Linux kernel unpacks as an
 * initramfs). Written here rather than shelling out to `cpio` so the archive is byte-for-byte
 * reproducible: entries are sorted, inode numbers are assigned in order, owners are root and
 * every mtime is a fixed value, whatever the host files looked like.
 */

/** One archive member. Paths are relative (no leading `/`), e.g. `bin/busybox`. */
export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

/** The fixed mtime written on every entry (2020-01-01T00:00:00Z); any constant would do. */
export const CPIO_FIXED_MTIME = 1577836800;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  const r = len % 4;
  return Buffer.alloc(r === 0 ? 0 : 4 - r);
}

function header(fields: {
  ino: number; mode: number; nlink: number; size: number; rdevMajor: number; rdevMinor: number; nameSize: number;
}): string {
  return (
    '070701' +
    hex8(fields.ino) +
    hex8(fields.mode) +
    hex8(0) + // uid
    hex8(0) + // gid
    hex8(fields.nlink) +
    hex8(CPIO_FIXED_MTIME) +
    hex8(fields.size) +
    hex8(0) + // devmajor
    hex8(0) + // devminor
    hex8(fields.rdevMajor) +
    hex8(fields.rdevMinor) +
    hex8(fields.nameSize) +
    hex8(0) // check
  );
}

function member(out: Buffer[], ino: number, name: string, mode: number, nlink: number, data: Buffer, rdev: [number, number]): void {
  const nameBuf = Buffer.from(name + '\0', 'utf8');
  const head = Buffer.from(header({ ino, mode, nlink, size: data.length, rdevMajor: rdev[0], rdevMinor: rdev[1], nameSize: nameBuf.length }), 'ascii');
  out.push(head, nameBuf, pad4(head.length + nameBuf.length));
  if (data.length > 0) out.push(data, pad4(data.length));
}

/**
 * Serialises `entries` into one uncompressed newc archive. Entries are sorted by path (which
 * also puts every directory before its children) and duplicate paths are rejected, so the same
 * set of entries always gives the same bytes. May be called at any time; pure.
 */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const out: Buffer[] = [];
  let ino = 1;
  let prev = '';
  for (const e of sorted) {
    if (e.path === '' || e.path.startsWith('/')) throw new Error(`cpio: path must be relative: ${JSON.stringify(e.path)}`);
    if (e.path === prev) throw new Error(`cpio: duplicate entry ${e.path}`);
    prev = e.path;
    switch (e.kind) {
      case 'dir':
        member(out, ino++, e.path, S_IFDIR | (e.mode ?? 0o755), 2, Buffer.alloc(0), [0, 0]);
        break;
      case 'file':
        member(out, ino++, e.path, S_IFREG | (e.mode ?? 0o644), 1, e.data, [0, 0]);
        break;
      case 'symlink':
        member(out, ino++, e.path, S_IFLNK | 0o777, 1, Buffer.from(e.target, 'utf8'), [0, 0]);
        break;
      case 'chardev':
        member(out, ino++, e.path, S_IFCHR | (e.mode ?? 0o600), 1, Buffer.alloc(0), [e.major, e.minor]);
        break;
    }
  }
  member(out, 0, 'TRAILER!!!', 0, 1, Buffer.alloc(0), [0, 0]);
  return Buffer.concat(out);
}
