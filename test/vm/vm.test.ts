// Integration tests of the VM layer with real QEMU (microvm, TCG) and the Debian kernel.
// Boots are expensive here (~5 s each), so one cell boot covers the channel, QMP, ports,
// recovery by a second manager and graceful stop; one more boot covers disk machines, and the
// accel probe boots twice.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { buildInitramfs } from '../../src/vm/initramfs.js';
import { createVmManager, type VmManager } from '../../src/vm/qemu.js';
import { pidAlive } from '../../src/proc/pids.js';

const logger = pino({ level: 'silent' });
const root = mkdtempSync('/tmp/cvm-');
const managers: VmManager[] = [];

afterAll(async () => {
  for (const m of managers) {
    for (const vm of m.recover()) await m.destroy(vm.id, 1_000).catch(() => undefined);
  }
  rmSync(root, { recursive: true, force: true });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** A line reader over the channel socket. */
class Channel {
  private buf = '';
  private waiters: ((l: string) => void)[] = [];
  private lines: string[] = [];
  private constructor(readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const l = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const w = this.waiters.shift();
        if (w) w(l);
        else this.lines.push(l);
      }
    });
  }
  static open(path: string): Promise<Channel> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => resolve(new Channel(s)));
      s.once('error', reject);
    });
  }
  next(timeoutMs: number): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no line from guest in time')), timeoutMs);
      this.waiters.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  }
  close(): void {
    this.sock.destroy();
  }
}

async function httpGet(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(10_000) });
  return res.text();
}

describe('initramfs', () => {
  it('is reproducible and cached by content hash', async () => {
    const a = await buildInitramfs({ out: join(root, 'cache-a') });
    const b = await buildInitramfs({ out: join(root, 'cache-b') });
    expect(a.sha256).toBe(b.sha256);
    expect(readFileSync(a.path).equals(readFileSync(b.path))).toBe(true);
    expect(createHash('sha256').update(readFileSync(a.path)).digest('hex')).toBe(a.sha256);
    expect(a.path).toContain(a.sha256.slice(0, 16));
    expect(a.modules.some((m) => m.endsWith('virtio_console.ko'))).toBe(true);
    expect(a.modules.findIndex((m) => m.endsWith('/virtio_ring.ko'))).toBeLessThan(a.modules.findIndex((m) => m.endsWith('/virtio_mmio.ko')));
    expect(a.missing).toEqual([]);
  });
});

describe('cell VM', () => {
  it('boots, talks over the channel, publishes ports, survives a manager restart, stops gracefully', async () => {
    const stateDir = join(root, 'state');
    const share = join(root, 'share');
    mkdirSync(share);
    writeFileSync(
      join(share, 'cell.sh'),
      `#!/bin/sh
trap 'echo "cell: got TERM"; exit 7' TERM
mkdir -p /tmp/www && echo hello-from-guest > /tmp/www/index.html
httpd -p 8080 -h /tmp/www
exec 3<>"$CARAPACE_PORT"
echo '{"type":"ready","port":"'"$CARAPACE_PORT"'"}' >&3
while true; do
  while read -r line <&3; do echo "echo:$line" >&3; done
  sleep 0.2
done
`,
    );
    chmodSync(join(share, 'cell.sh'), 0o755);
    const [p1, p2] = [await freePort(), await freePort()];

    const m1 = createVmManager({ stateDir, logger, accel: 'tcg' });
    managers.push(m1);
    const t0 = Date.now();
    const vm = await m1.launch({
      id: 'cell-1', cpus: 1, memoryMiB: 256, channel: true, labels: { tenant: 't1' },
      shares: [{ tag: 'work', path: share, readonly: true, mountPoint: '/work' }],
      ports: [{ hostPort: p1, guestPort: 8080, protocol: 'tcp' }],
      exec: '/work/cell.sh',
    });
    expect(vm.state).toBe('running');
    expect(pidAlive(vm.pid)).toBe(true);

    const ch = await Channel.open(vm.channelSocket!);
    const ready = JSON.parse(await ch.next(45_000));
    const bootMs = Date.now() - t0;
    expect(ready).toEqual({ type: 'ready', port: expect.stringMatching(/^\/dev\/vport\d+p\d+$/) });
    ch.sock.write('ping\n');
    expect(await ch.next(10_000)).toBe('echo:ping');
    expect(readFileSync(vm.consoleLog, 'utf8')).toContain('carapace-init: userspace up');
    expect(await m1.withQmp('cell-1', (q) => q.execute('query-status'))).toMatchObject({ status: 'running', running: true });

    // Ports: one published at launch, one added and removed at run time.
    expect((await httpGet(p1)).trim()).toBe('hello-from-guest');
    await m1.hostfwdAdd('cell-1', { hostPort: p2, guestPort: 8080, protocol: 'tcp' });
    expect((await httpGet(p2)).trim()).toBe('hello-from-guest');
    expect(m1.inspect('cell-1').ports.map((p) => p.hostPort)).toEqual([p1, p2]);
    await m1.hostfwdRemove('cell-1', { hostPort: p2, guestPort: 8080, protocol: 'tcp' });
    await expect(httpGet(p2)).rejects.toThrow();
    ch.close();

    // Agent restart: a fresh manager over the same state dir finds the VM and still controls it.
    const m2 = createVmManager({ stateDir, logger, accel: 'tcg' });
    managers.push(m2);
    const found = m2.recover();
    expect(found.map((v) => [v.id, v.pid, v.state, v.labels])).toEqual([['cell-1', vm.pid, 'running', { tenant: 't1' }]]);
    expect(await m2.withQmp('cell-1', (q) => q.execute('query-status'))).toMatchObject({ status: 'running' });
    const ch2 = await Channel.open(found[0]!.channelSocket!);
    ch2.sock.write('again\n');
    expect(await ch2.next(10_000)).toBe('echo:again');
    ch2.close();

    // Graceful stop: the power button reaches the workload (TERM -> exit 7) and init powers off.
    const waited = m2.wait('cell-1');
    await m2.stop('cell-1', 20_000);
    expect(await waited).toEqual({ id: 'cell-1', guestExitCode: 7 });
    expect(readFileSync(vm.consoleLog, 'utf8')).toContain('cell: got TERM');
    expect(m2.inspect('cell-1').state).toBe('exited');
    expect(pidAlive(vm.pid)).toBe(false);
    await m2.destroy('cell-1');
    expect(existsSync(vm.dir)).toBe(false);
    expect(m2.recover()).toEqual([]);
    console.log(`cell boot to ready: ${bootMs} ms`);
  }, 120_000);
});

describe('machine VM with a disk', () => {
  it('sees /dev/vda through a copy-on-write overlay and leaves the base image unchanged', async () => {
    const stateDir = join(root, 'state-disk');
    const content = join(root, 'diskroot');
    mkdirSync(content);
    writeFileSync(join(content, 'marker'), 'base-marker\n');
    const base = join(root, 'base.img');
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', content, base, '16M']);
    const before = createHash('sha256').update(readFileSync(base)).digest('hex');

    const m = createVmManager({ stateDir, logger, accel: 'tcg' });
    managers.push(m);
    const vm = await m.launch({
      id: 'machine-1', cpus: 1, memoryMiB: 256, channel: false, labels: {}, shares: [], ports: [],
      disk: { base, format: 'raw' },
      exec: 'mkdir -p /mnt/d && mount -t ext4 /dev/vda /mnt/d && cat /mnt/d/marker && echo guest-wrote > /mnt/d/new && sync && umount /mnt/d && echo "vda sectors $(cat /sys/block/vda/size)"',
    });
    const exit = await m.wait('machine-1', AbortSignal.timeout(60_000));
    expect(exit.guestExitCode).toBe(0);
    const console_ = readFileSync(vm.consoleLog, 'utf8');
    expect(console_).toContain('base-marker');
    expect(console_).toContain(`vda sectors ${16 * 2048}`);
    expect(createHash('sha256').update(readFileSync(base)).digest('hex')).toBe(before);
    // The guest's write landed in the overlay, which names the base as its backing file.
    const overlay = join(vm.dir, 'disk.qcow2');
    expect(statSync(overlay).size).toBeGreaterThan(0);
    const infoJson = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', overlay], { encoding: 'utf8' }));
    expect(infoJson['backing-filename']).toBe(base);
    const flat = join(root, 'flat.img');
    execFileSync('qemu-img', ['convert', '-O', 'raw', overlay, flat]);
    expect(execFileSync('debugfs', ['-R', 'cat /new', flat], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toBe('guest-wrote\n');
    await m.destroy('machine-1');
    expect(existsSync(vm.dir)).toBe(false);
  }, 90_000);
});

describe('acceleration probe', () => {
  it('decides by timed boots and caches the decision', async () => {
    const stateDir = join(root, 'state-probe');
    const m = createVmManager({ stateDir, logger, accel: 'auto' });
    managers.push(m);
    const acc = await m.accel();
    const decision = JSON.parse(readFileSync(join(stateDir, 'accel.json'), 'utf8'));
    expect(decision.accel).toBe(acc);
    expect(decision.tcgMs).toBeGreaterThan(0);
    // On this machine nested KVM is far slower than TCG (ARCHITECTURE.md), so TCG must win.
    expect(acc).toBe('tcg');
    const t = Date.now();
    const again = await createVmManager({ stateDir, logger, accel: 'auto' }).accel();
    expect(again).toBe(acc);
    expect(Date.now() - t).toBeLessThan(2_000);
  }, 120_000);
});
