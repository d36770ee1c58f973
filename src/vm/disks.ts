/**
 * Block devices of VMs: the names and QMP commands for disks given at boot (virtio-mmio) and
 * for disks hot-plugged into a running VM (virtio-blk-pci on a PCIe root port made at boot).
 * Pure: names are derived from the caller's disk id, and what is attached is read back from
 * QEMU itself (`query-pci`, `query-named-block-nodes`), so nothing here needs state of its
 * own and an agent killed mid-attach finds the truth again in QEMU.
 */
import { createHash } from 'node:crypto';

/** A disk to attach: a raw image file on the host. */
export interface DiskAttachment {
  /** The caller's id of the disk (e.g. a volume's id); the guest finds it by `diskSerial(id)`. */
  id: string;
  /** Raw image file (not mounted on the host while the VM uses it). */
  path: string;
  readOnly: boolean;
}

/** A disk as the guest sees it. */
export interface AttachedDisk {
  /** virtio-blk serial: /sys/block/vdX/serial in the guest. */
  serial: string;
  /** Image file QEMU has open. */
  path: string;
  readOnly: boolean;
  /** Root port (`rpN`) it is plugged into; absent for a disk given at boot. */
  port?: string;
}

/** virtio-blk's serial is at most 20 bytes (VIRTIO_BLK_ID_BYTES). */
export const MAX_SERIAL_CHARS = 20;

/** Disk ids the VM layer accepts (volume ids, `tenant.name` and the like). */
export const DISK_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * The guest-visible serial of a disk id: `cv` + 18 hex digits of its sha256, 20 chars. Derived,
 * never stored: the same id always gives the same serial, so attach and detach are idempotent
 * across agent restarts. 72 bits make a collision between a VM's few disks unthinkable.
 */
export function diskSerial(id: string): string {
  if (!DISK_ID_RE.test(id)) throw new Error(`invalid disk id ${JSON.stringify(id)}`);
  return `cv${createHash('sha256').update(id).digest('hex').slice(0, MAX_SERIAL_CHARS - 2)}`;
}

/** QEMU names of one disk: block nodes (file protocol, raw format) and the device. */
export function diskNames(serial: string): { fileNode: string; node: string; device: string } {
  return { fileNode: `f-${serial}`, node: `b-${serial}`, device: `d-${serial}` };
}

/** Root port ids made at boot for `slots` hot-pluggable disks. */
export function rootPortIds(slots: number): string[] {
  return Array.from({ length: slots }, (_, i) => `rp${i}`);
}

/** Command line arguments of the hotplug root ports (`microvm,pcie=on` only). */
export function rootPortArgs(slots: number): string[] {
  return rootPortIds(slots).flatMap((id, i) => ['-device', `pcie-root-port,id=${id},bus=pcie.0,chassis=${i + 1},slot=${i}`]);
}

/** One QMP command: name and arguments. */
export interface QmpCommand {
  command: string;
  args: Record<string, unknown>;
}

/** The `blockdev-add` pair (file protocol node, raw format node on it) of a disk. */
export function blockdevAddCommands(serial: string, path: string, readOnly: boolean): QmpCommand[] {
  const n = diskNames(serial);
  return [
    // locking on: QEMU takes OFD locks on the image, so a second VM (or a host mount through
    // qemu-nbd) cannot open the same volume for writing by mistake.
    { command: 'blockdev-add', args: { 'node-name': n.fileNode, driver: 'file', filename: path, 'read-only': readOnly, aio: 'threads', locking: 'on' } },
    { command: 'blockdev-add', args: { 'node-name': n.node, driver: 'raw', file: n.fileNode, 'read-only': readOnly } },
  ];
}

/** The `device_add` of a hot-plugged disk on root port `port`. */
export function deviceAddCommand(serial: string, port: string): QmpCommand {
  const n = diskNames(serial);
  // A read-only backend makes the device announce VIRTIO_BLK_F_RO: the guest cannot write.
  return { command: 'device_add', args: { driver: 'virtio-blk-pci', id: n.device, drive: n.node, bus: port, serial } };
}

/** The `blockdev-del`s that release a disk's image (format node first). */
export function blockdevDelCommands(serial: string): QmpCommand[] {
  const n = diskNames(serial);
  return [
    { command: 'blockdev-del', args: { 'node-name': n.node } },
    { command: 'blockdev-del', args: { 'node-name': n.fileNode } },
  ];
}

/** Boot-time arguments of a disk (virtio-mmio; microvm's mmio bus does not hot-plug). */
export function bootDiskArgs(serial: string, path: string, readOnly: boolean): string[] {
  const n = diskNames(serial);
  const ro = readOnly ? 'on' : 'off';
  return [
    '-blockdev', `driver=file,node-name=${n.fileNode},filename=${path.replace(/,/g, ',,')},read-only=${ro},aio=threads,locking=on`,
    '-blockdev', `driver=raw,node-name=${n.node},file=${n.fileNode},read-only=${ro}`,
    '-device', `virtio-blk-device,id=${n.device},drive=${n.node},serial=${serial}`,
  ];
}

interface PciDevice {
  qdev_id?: string;
  pci_bridge?: { devices?: PciDevice[] };
}

/**
 * Root port -> qdev id of the device plugged into it (undefined: empty), from `query-pci`.
 * Only our ports (`rpN`) are reported.
 */
export function portOccupancy(queryPci: unknown): Map<string, string | undefined> {
  const out = new Map<string, string | undefined>();
  const buses = Array.isArray(queryPci) ? (queryPci as { devices?: PciDevice[] }[]) : []; // query-pci returns [PciInfo]
  for (const bus of buses) {
    for (const d of bus.devices ?? []) {
      if (d.qdev_id === undefined || !/^rp\d+$/.test(d.qdev_id)) continue;
      const child = (d.pci_bridge?.devices ?? []).find((c) => typeof c.qdev_id === 'string' && c.qdev_id !== '');
      out.set(d.qdev_id, child?.qdev_id);
    }
  }
  return out;
}

interface NamedNode {
  'node-name'?: string;
  file?: string;
  ro?: boolean;
}

/** Our raw-format nodes (`b-<serial>`) from `query-named-block-nodes`: serial -> image path, ro. */
export function diskNodes(namedNodes: unknown): Map<string, { path: string; readOnly: boolean }> {
  const out = new Map<string, { path: string; readOnly: boolean }>();
  const nodes = Array.isArray(namedNodes) ? (namedNodes as NamedNode[]) : []; // query-named-block-nodes returns [BlockDeviceInfo]
  for (const n of nodes) {
    const m = /^f-(cv[0-9a-f]{18})$/.exec(n['node-name'] ?? '');
    if (m?.[1] !== undefined && typeof n.file === 'string') out.set(m[1], { path: n.file, readOnly: n.ro === true });
  }
  return out;
}
