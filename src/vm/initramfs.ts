/**
 * Builds the Carapace initramfs: busybox-static with its applet links, the Debian kernel's
 * virtio (and a few filesystem) modules, and the `/init` script from init-script.ts. The
 * archive is reproducible (same inputs, same bytes) and cached by content hash, so every cell
 * on a host boots the very same file and a changed input shows as a new file name.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { writeCpio, type CpioEntry } from './cpio.js';
import { initScript, LATE_MODULE_LIST_PATH, MODULE_LIST_PATH } from './init-script.js';
import { run } from '../proc/run.js';

/**
 * Modules loaded at boot, in order (dependencies found in modules.dep are added before each).
 * The virtio set comes from ARCHITECTURE.md; button+evdev let `system_powerdown` reach acpid;
 * virtio_blk+ext4 serve machines with disks and volumes (virtio_pci: the hot-plugged ones); overlay
 * serves container root filesystems.
 */
export const DEFAULT_MODULES: readonly string[] = [
  'virtio_ring', 'virtio', 'virtio_mmio', 'virtio_pci', 'virtio_console', 'netfs', 'fscache', '9pnet', '9pnet_virtio', '9p',
  'failover', 'net_failover', 'virtio_net', 'virtio_blk', 'crc16', 'mbcache', 'jbd2', 'crc32c_generic', 'ext4',
  'overlay', 'button', 'evdev', 'virtio_balloon',
];

/**
 * The modules /init loads before the 9p shares, the channel's port and (for an early workload:
 * the guest agent) the workload; the others come after (see init-script.ts). Under emulation
 * loading all of them took ~0.6 s, which the guest agent's start no longer waits for.
 */
export const EARLY_MODULES: readonly string[] = ['virtio_ring', 'virtio', 'virtio_mmio', 'virtio_console', 'netfs', 'fscache', '9pnet', '9pnet_virtio', '9p'];

/** Options of `buildInitramfs`. */
export interface InitramfsOptions {
  /** Cache directory; the archive is written there as `initramfs-<sha256 prefix>.cpio.gz`. */
  out: string;
  /** Kernel version whose modules to ship; default: the newest `/boot/vmlinuz-*`. */
  kernelVersion?: string;
  /** Module names to load (see DEFAULT_MODULES). */
  modules?: readonly string[];
  /** Static busybox binary; default `/usr/bin/busybox` (Debian busybox-static). */
  busyboxPath?: string;
  /** Root of the module tree; default `/lib/modules`. */
  modulesRoot?: string;
}

/** A built initramfs. */
export interface InitramfsResult {
  /** Absolute path of the gzip'd cpio archive. */
  path: string;
  /** sha256 (hex) of the file's bytes. */
  sha256: string;
  kernelVersion: string;
  /** Module files shipped, in load order (the early ones first), relative to `/lib/modules/<version>/`. */
  modules: string[];
  /** How many of `modules` /init loads early (see EARLY_MODULES). */
  earlyModules: number;
  /** Requested modules that are neither a file in the tree nor listed as built in. */
  missing: string[];
}

/** A kernel found under /boot: the image path and its version string. */
export interface KernelInfo {
  path: string;
  version: string;
}

/**
 * Finds the installed Debian kernel to boot guests with: the newest `/boot/vmlinuz-*` (by
 * version sort), or the one of `version` when given. Throws when none exists. Note the host's
 * running kernel (`uname -r`) may differ from it (e.g. inside a container), so never use that.
 */
export function findKernel(version?: string, bootDir = '/boot'): KernelInfo {
  const versions = readdirSync(bootDir)
    .filter((f) => f.startsWith('vmlinuz-'))
    .map((f) => f.slice('vmlinuz-'.length))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const chosen = version ?? versions[versions.length - 1];
  if (chosen === undefined || !versions.includes(chosen)) {
    throw new Error(`no kernel ${version ?? ''} in ${bootDir} (found: ${versions.join(', ') || 'none'})`);
  }
  return { path: join(bootDir, `vmlinuz-${chosen}`), version: chosen };
}

/** Resolves module names to files in load order using the tree's modules.dep. Pure over its input. */
export function resolveModules(
  wanted: readonly string[],
  modulesDep: string,
  modulesBuiltin: string,
): { files: string[]; missing: string[] } {
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const file = line.slice(0, colon);
    deps.set(file, line.slice(colon + 1).trim().split(/\s+/).filter(Boolean));
    byName.set(moduleName(file), file);
  }
  const builtin = new Set(modulesBuiltin.split('\n').filter(Boolean).map(moduleName));
  const files: string[] = [];
  const missing: string[] = [];
  const seen = new Set<string>();
  // modules.dep lists the full transitive closure, deepest last; load those in reverse first.
  const add = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const d of [...(deps.get(file) ?? [])].reverse()) add(d);
    files.push(file);
  };
  for (const name of wanted) {
    const file = byName.get(name.replace(/-/g, '_'));
    if (file !== undefined) add(file);
    else if (!builtin.has(name.replace(/-/g, '_'))) missing.push(name);
  }
  return { files, missing };
}

function moduleName(file: string): string {
  const base = file.slice(file.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|gz|zst))?$/, '').replace(/-/g, '_');
}

/**
 * Builds (or finds in the cache) the initramfs. Synchronous work is small (a few MB read and
 * gzip'd) except decompressing `.ko.xz` modules, which shells out to `xz`. Safe to call
 * concurrently: the file is written to a temp name and renamed into place.
 */
export async function buildInitramfs(opts: InitramfsOptions): Promise<InitramfsResult> {
  const kernelVersion = opts.kernelVersion ?? findKernel().version;
  const modRoot = join(opts.modulesRoot ?? '/lib/modules', kernelVersion);
  const readOr = (p: string): string => (existsSync(p) ? readFileSync(p, 'utf8') : '');
  const wanted = opts.modules ?? DEFAULT_MODULES;
  const dep = readOr(join(modRoot, 'modules.dep'));
  const builtin = readOr(join(modRoot, 'modules.builtin'));
  const { files: all, missing } = resolveModules(wanted, dep, builtin);
  // The early ones with their dependencies, then the rest in their own order.
  const early = resolveModules(wanted.filter((m) => EARLY_MODULES.includes(m)), dep, builtin).files;
  const files = [...early, ...all.filter((f) => !early.includes(f))];

  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const dir = (p: string): void => {
    const parts = p.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push({ kind: 'dir', path: d, mode: d === 'tmp' ? 0o1777 : 0o755 });
      }
    }
  };
  for (const d of ['bin', 'sbin', 'dev', 'etc/carapace', 'proc', 'sys', 'tmp', 'run', 'mnt', 'opt', 'usr/lib', 'var', 'root', 'newroot']) dir(d);
  // The kernel opens /dev/console before /init runs; it must exist before devtmpfs is mounted.
  entries.push({ kind: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 });
  entries.push({ kind: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 });
  // Host binaries shared over 9p at /usr (node, runc) are dynamically linked against a merged-/usr
  // Debian layout: give them its loader and library paths.
  entries.push({ kind: 'symlink', path: 'lib64', target: 'usr/lib64' });
  dir('lib');
  entries.push({ kind: 'symlink', path: 'lib/x86_64-linux-gnu', target: '../usr/lib/x86_64-linux-gnu' });

  const busybox = readFileSync(opts.busyboxPath ?? '/usr/bin/busybox');
  entries.push({ kind: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 });
  const applets = (await run(opts.busyboxPath ?? '/usr/bin/busybox', ['--list-full'])).stdout
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  for (const full of applets) {
    // Applets go to /bin or /sbin only: /usr may be a 9p share of the host's /usr.
    const name = full.slice(full.lastIndexOf('/') + 1);
    const target = full.includes('sbin/') ? `sbin/${name}` : `bin/${name}`;
    if (name === 'busybox' || entries.some((e) => e.path === target)) continue;
    entries.push({ kind: 'symlink', path: target, target: '/bin/busybox' });
  }

  const shipped: string[] = [];
  for (const rel of files) {
    let data: Buffer = readFileSync(join(modRoot, rel));
    let name = rel;
    // busybox insmod reads raw ELF only: decompress .ko.xz/.ko.gz (Debian 12 ships plain .ko).
    if (rel.endsWith('.xz')) {
      data = await decompress('xz', join(modRoot, rel));
      name = rel.slice(0, -3);
    } else if (rel.endsWith('.gz')) {
      data = await decompress('gzip', join(modRoot, rel));
      name = rel.slice(0, -3);
    }
    const path = `lib/modules/${kernelVersion}/${name}`;
    dir(path.slice(0, path.lastIndexOf('/')));
    entries.push({ kind: 'file', path, data, mode: 0o644 });
    shipped.push(name);
  }
  const list = (names: string[]): Buffer => Buffer.from(names.map((n) => `${n}\n`).join(''));
  entries.push({ kind: 'file', path: MODULE_LIST_PATH, data: list(shipped.slice(0, early.length)), mode: 0o644 });
  entries.push({ kind: 'file', path: LATE_MODULE_LIST_PATH, data: list(shipped.slice(early.length)), mode: 0o644 });
  entries.push({ kind: 'file', path: 'init', data: Buffer.from(initScript(kernelVersion)), mode: 0o755 });
  entries.push({ kind: 'file', path: 'etc/passwd', data: Buffer.from('root:x:0:0:root:/root:/bin/sh\n'), mode: 0o644 });
  entries.push({ kind: 'file', path: 'etc/group', data: Buffer.from('root:x:0:\n'), mode: 0o644 });

  // Node's gzip header carries no mtime or file name, so the output depends on the bytes only.
  const gz = gzipSync(writeCpio(entries), { level: 6 });
  const sha256 = createHash('sha256').update(gz).digest('hex');
  mkdirSync(opts.out, { recursive: true });
  const path = join(opts.out, `initramfs-${sha256.slice(0, 16)}.cpio.gz`);
  if (!existsSync(path)) {
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, gz);
    renameSync(tmp, path);
  }
  return { path, sha256, kernelVersion, modules: shipped, earlyModules: early.length, missing };
}

async function decompress(tool: 'xz' | 'gzip', file: string): Promise<Buffer> {
  // Kernel modules are a few MiB at most: a module that does not fit is a broken input, not one to cut.
  const r = await run(tool, ['-dc', file], { maxOutputBytes: 256 * 1024 * 1024 });
  if (r.code !== 0) throw new Error(`${tool} -dc ${file}: ${r.stderr.trim()}`);
  if (r.truncated) throw new Error(`${tool} -dc ${file}: more than 256 MiB`);
  return r.stdoutBytes;
}
