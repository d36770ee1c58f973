/**
 * Volumes in a cell: one real cell VM (QEMU microvm with hot-plug root ports, our initramfs,
 * the guest agent running from this checkout over 9p) gets an ext4 image hot-plugged while it
 * runs, mounts it by serial, binds it into a container that writes to it, then unmounts,
 * ejects and detaches it when the container is destroyed; the host reads the data back from
 * the image without mounting it (debugfs). A second attach (read-only) sees the data, and a
 * second VmManager over the same state dir (an agent restarted after kill -9) finds the disk
 * in QEMU and detaches it idempotently. One boot in total: emulated boots are slow.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { CellRuntime } from '../../src/agent/cell-runtime.js';
import { guestAgentLaunch } from '../../src/agent/cells.js';
import { GuestError, HostChannel } from '../../src/guest/host-channel.js';
import { diskSerial } from '../../src/vm/disks.js';
import { createVmManager, type VmShare } from '../../src/vm/qemu.js';
import { buildRootfs, IMAGE, shSpec } from '../runtime/helpers.js';

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'warn' });
const root = mkdtempSync(join(tmpdir(), 'carapace-celldisk-'));
const stateDir = join(root, 'state');
const images = join(root, 'images');
const CELL = 'cell-disks';
let vmsForCleanup: ReturnType<typeof createVmManager> | undefined;
const aborts: AbortController[] = [];

afterAll(async () => {
  for (const ac of aborts) ac.abort();
  await vmsForCleanup?.destroy(CELL, 2_000).catch(() => undefined);
  rmSync(root, { recursive: true, force: true });
});

/** `debugfs -R 'cat PATH' IMAGE`: a file of an ext4 image, read without mounting it. */
function debugfsCat(image: string, path: string): string {
  return execFileSync('debugfs', ['-R', `cat ${path}`, image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

describe('volumes in a cell VM', () => {
  it('hot-plugs an ext4 image, a container writes to it, detach keeps the data, reattach and recovery work', async () => {
    const repo = process.cwd();
    const rootfs = join(images, 'busybox', 'rootfs');
    await buildRootfs(rootfs);
    const image = join(root, 'vol.img');
    execFileSync('truncate', ['-s', '64M', image]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'vol', image]);

    const shares: VmShare[] = [
      { tag: 'usr', path: '/usr', readonly: true, mountPoint: '/usr' },
      { tag: 'carapace', path: repo, readonly: true, mountPoint: '/opt/carapace' },
      { tag: 'images', path: images, readonly: true, mountPoint: '/carapace/images' },
    ];
    // A worktree's node_modules may be a symlink to another checkout's: share its target at the same path.
    const nm = realpathSync(join(repo, 'node_modules'));
    if (nm !== join(repo, 'node_modules')) shares.push({ tag: 'nodemods', path: nm, readonly: true, mountPoint: nm });
    mkdirSync(stateDir, { recursive: true });
    const vms = createVmManager({ stateDir, logger, accel: 'tcg' });
    vmsForCleanup = vms;
    const t0 = Date.now();
    const vm = await vms.launch({
      id: CELL, cpus: 1, memoryMiB: 512, channel: true, labels: {}, ports: [], shares, hotplugSlots: 2,
      // The guest agent as a cell under emulation starts it, but through init's fallback: the
      // first command exits 14, node's status for a startup snapshot it refuses (another node
      // or CPU than the build's), and init then runs the loader (VmSpec.fallbackExec).
      ...guestAgentLaunch('tcg', repo),
      exec: 'exit 14',
      fallbackExec: guestAgentLaunch('tcg', repo).fallbackExec ?? guestAgentLaunch('tcg', repo).exec,
    });
    const ac = new AbortController();
    aborts.push(ac);
    const channel = new HostChannel({ socketPath: vm.channelSocket ?? '', cellId: CELL, logger, requestTimeoutMs: 180_000 });
    void channel.start(ac.signal);
    await channel.waitReady(300_000);
    const bootMs = Date.now() - t0;
    expect(readFileSync(vm.consoleLog, 'utf8')).toContain('exit=14 (startup snapshot refused); exec');
    const runtime = new CellRuntime({ cellId: CELL, isolation: 'cell', channel, vms, hostImagesRoot: images, guestImagesRoot: '/carapace/images', logger });

    // 1. A container writes to the hot-plugged volume and reads a delivered file.
    const t1 = Date.now();
    await runtime.start(
      { id: 'writer', rootfs, image: IMAGE, container: shSpec('cat /run/secrets/cfg/greeting > /data/out.txt && echo written-in-cell >> /data/out.txt && ! touch /run/secrets/cfg/x 2>/dev/null && sync'), hostname: 'writer', labels: {} },
      { volumes: [{ id: 'acme.data', image, mountPath: '/data', readOnly: false }], files: [{ set: 'cfg', mountPath: '/run/secrets/cfg', files: [{ path: 'greeting', data: Buffer.from('hello-volume\n') }] }] },
    );
    const attachAndRunMs = Date.now() - t1;
    const exited = await runtime.wait('writer', AbortSignal.timeout(120_000));
    const logs: string[] = [];
    for await (const l of runtime.logs('writer', { follow: false })) logs.push(l.text);
    expect(exited.exitCode, logs.join('\n')).toBe(0);
    const disks = await vms.listDisks(CELL);
    expect(disks).toEqual([{ serial: diskSerial('acme.data'), path: image, readOnly: false, port: 'rp0' }]);
    // The guest refuses to unmount a volume a container (even an exited one) still uses.
    const busy = await channel.unmountVolume('acme.data', false).then(() => undefined, (e: unknown) => e);
    expect(busy).toBeInstanceOf(GuestError);
    expect((busy as GuestError).code).toBe('GUEST_E_BUSY'); // checked by toBeInstanceOf above

    // 2. Destroying the last user unmounts, ejects and detaches; the host sees the data.
    const t2 = Date.now();
    await runtime.destroy('writer');
    const detachMs = Date.now() - t2;
    expect(await vms.listDisks(CELL)).toEqual([]);
    expect(await channel.volumes()).toEqual([]);
    expect(debugfsCat(image, '/out.txt')).toBe('hello-volume\nwritten-in-cell\n');

    // 3. Reattached read-only to another container: the data is there and cannot be written.
    await runtime.start(
      { id: 'reader', rootfs, image: IMAGE, container: shSpec('cat /data/out.txt && ! touch /data/new 2>/dev/null'), hostname: 'reader', labels: {} },
      { volumes: [{ id: 'acme.data', image, mountPath: '/data', readOnly: true }] },
    );
    const exited2 = await runtime.wait('reader', AbortSignal.timeout(120_000));
    const logs2: string[] = [];
    for await (const l of runtime.logs('reader', { follow: false })) logs2.push(l.text);
    expect(exited2.exitCode, logs2.join('\n')).toBe(0);
    expect(logs2).toEqual(['hello-volume', 'written-in-cell']);
    await runtime.destroy('reader');
    expect(await vms.listDisks(CELL)).toEqual([]);

    // 4. After an agent restart (a new manager over the same state): attach is idempotent and
    // what QEMU holds is found again; detach twice is fine.
    const vms2 = createVmManager({ stateDir, logger, accel: 'tcg' });
    const a = await vms2.attachDisk(CELL, { id: 'acme.data', path: image, readOnly: false });
    const b = await vms.attachDisk(CELL, { id: 'acme.data', path: image, readOnly: false });
    expect(b).toEqual(a);
    await expect(vms2.attachDisk(CELL, { id: 'acme.data', path: image, readOnly: true })).rejects.toThrow(/another image or mode/);
    expect((await vms2.listDisks(CELL)).map((d) => d.serial)).toEqual([diskSerial('acme.data')]);
    // Without the guest's eject, QEMU's attention button (Linux acts after 5 s) takes it out.
    const t4 = Date.now();
    await vms2.detachDisk(CELL, 'acme.data', { guestGraceMs: 0 });
    const buttonDetachMs = Date.now() - t4;
    await vms2.detachDisk(CELL, 'acme.data');
    expect(await vms2.listDisks(CELL)).toEqual([]);
    logger.warn({ bootMs, attachAndRunMs, detachMs, buttonDetachMs }, 'cell disk timings');

    await vms.destroy(CELL, 5_000);
    expect(existsSync(join(stateDir, 'vms', CELL))).toBe(false);
  }, 900_000);
});
