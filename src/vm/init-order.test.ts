import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { buildInitramfs } from './initramfs.js';
import { kernelCmdline } from './qemu.js';

const base = (f: string): string => f.slice(f.lastIndexOf('/') + 1).replace(/\.ko.*$/, '');

describe('an early workload (the guest agent) starts before the rest of the VM is set up', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('the kernel command line asks init for it only with exec and earlyExec', () => {
    const spec = { shares: [], channel: true, exec: 'agent' };
    expect(kernelCmdline({ ...spec, earlyExec: true }, 'tcg').split(' ')).toContain('carapace.early=1');
    expect(kernelCmdline(spec, 'tcg').split(' ')).not.toContain('carapace.early=1');
    expect(kernelCmdline({ shares: [], channel: false, earlyExec: true }, 'tcg').split(' ')).not.toContain('carapace.early=1');
  });

  it('passes the fallback command (run when the workload exits 14) base64-encoded, only with exec', () => {
    const fallback = '/usr/bin/node /opt/carapace/dist/guest/agent.cjs --images /carapace/images';
    const line = kernelCmdline({ shares: [], channel: true, exec: 'agent', fallbackExec: fallback }, 'tcg').split(' ');
    expect(line).toContain(`carapace.fallback64=${Buffer.from(fallback).toString('base64')}`);
    expect(kernelCmdline({ shares: [], channel: true, fallbackExec: fallback }, 'tcg')).not.toContain('carapace.fallback64=');
  });

  it('the initramfs loads the share and port modules first, the network, disk and overlay ones after', async () => {
    const out = await mkdtemp(join(tmpdir(), 'carapace-initramfs-'));
    dirs.push(out);
    const r = await buildInitramfs({ out });
    const early = r.modules.slice(0, r.earlyModules).map(base);
    const late = r.modules.slice(r.earlyModules).map(base);
    for (const m of ['virtio_mmio', 'virtio_console', '9pnet_virtio', '9p']) expect(early).toContain(m);
    for (const m of ['virtio_net', 'virtio_blk', 'ext4', 'overlay', 'virtio_pci', 'evdev']) {
      expect(late).toContain(m);
      expect(early).not.toContain(m);
    }
    // Every dependency of an early module is early (modules.dep order within the list).
    expect(early.indexOf('virtio')).toBeLessThan(early.indexOf('virtio_mmio'));
    expect(early.indexOf('9pnet')).toBeLessThan(early.indexOf('9p'));
  }, 60_000);
});
