import { describe, expect, it } from 'vitest';
import { blockdevAddCommands, blockdevDelCommands, bootDiskArgs, deviceAddCommand, diskNodes, diskSerial, MAX_SERIAL_CHARS, portOccupancy, rootPortArgs } from './disks.js';
import { kernelCmdline } from './qemu.js';

describe('disk names and QMP commands', () => {
  it('derives a stable 20-char serial from the disk id', () => {
    const s = diskSerial('acme.data-0');
    expect(s).toMatch(/^cv[0-9a-f]{18}$/);
    expect(s.length).toBe(MAX_SERIAL_CHARS);
    expect(diskSerial('acme.data-0')).toBe(s);
    expect(diskSerial('acme.data-1')).not.toBe(s);
    expect(() => diskSerial('../x')).toThrow(/invalid disk id/);
    expect(() => diskSerial('a,b')).toThrow(/invalid disk id/);
  });

  it('builds blockdev-add, device_add and blockdev-del', () => {
    const s = diskSerial('v');
    expect(blockdevAddCommands(s, '/vol/v.img', true)).toEqual([
      { command: 'blockdev-add', args: { 'node-name': `f-${s}`, driver: 'file', filename: '/vol/v.img', 'read-only': true, aio: 'threads', locking: 'on' } },
      { command: 'blockdev-add', args: { 'node-name': `b-${s}`, driver: 'raw', file: `f-${s}`, 'read-only': true } },
    ]);
    expect(deviceAddCommand(s, 'rp3')).toEqual({ command: 'device_add', args: { driver: 'virtio-blk-pci', id: `d-${s}`, drive: `b-${s}`, bus: 'rp3', serial: s } });
    expect(blockdevDelCommands(s).map((c) => c.args['node-name'])).toEqual([`b-${s}`, `f-${s}`]);
    // QMP node names are at most 31 chars.
    expect(`f-${s}`.length).toBeLessThanOrEqual(31);
  });

  it('builds boot-time disks and root ports, escaping commas in paths', () => {
    const s = diskSerial('v');
    expect(bootDiskArgs(s, '/a,b.img', false)).toEqual([
      '-blockdev', `driver=file,node-name=f-${s},filename=/a,,b.img,read-only=off,aio=threads,locking=on`,
      '-blockdev', `driver=raw,node-name=b-${s},file=f-${s},read-only=off`,
      '-device', `virtio-blk-device,id=d-${s},drive=b-${s},serial=${s}`,
    ]);
    expect(rootPortArgs(2)).toEqual(['-device', 'pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0', '-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=1']);
    expect(kernelCmdline({ shares: [], channel: true, hotplugSlots: 2 }, 'kvm')).toContain('pcie_ports=native');
    expect(kernelCmdline({ shares: [], channel: true }, 'kvm')).not.toContain('pcie_ports');
  });

  it('reads port occupancy and our block nodes from QEMU answers', () => {
    const s = diskSerial('v');
    // Shapes as QEMU 7.2 answers query-pci / query-named-block-nodes (trimmed).
    const pci = [{ bus: 0, devices: [
      { qdev_id: '', class_info: { desc: 'Host bridge' } },
      { qdev_id: 'rp0', pci_bridge: { bus: { number: 1 }, devices: [{ qdev_id: `d-${s}` }] } },
      { qdev_id: 'rp1', pci_bridge: { bus: { number: 2 }, devices: [] } },
    ] }];
    expect([...portOccupancy(pci)]).toEqual([['rp0', `d-${s}`], ['rp1', undefined]]);
    expect(portOccupancy('nonsense').size).toBe(0);
    const nodes = [{ 'node-name': `b-${s}`, file: 'json:{...}', ro: false }, { 'node-name': `f-${s}`, file: '/vol/v.img', ro: true }, { 'node-name': 'other', file: '/x' }];
    expect([...diskNodes(nodes)]).toEqual([[s, { path: '/vol/v.img', readOnly: true }]]);
  });
});
