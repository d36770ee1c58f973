/**
 * A tiny "legacy app" machine image for the bundled example and the tests: a gzip'd initrd
 * with busybox and the host kernel's virtio network modules, whose /init asks the tenant
 * network for an address by DHCP (as any OS on a VM would), serves a page on port 80, and
 * prints a greeting and then a heartbeat line on the serial console every few seconds, like
 * a long-running appliance. Boot it with the host's kernel (`kernel: host`, `initrd:
 * hello-machine.cpio.gz`).
 *
 *   node dist/src/vm/testing/hello-machine.js DIR   # writes DIR/hello-machine.cpio.gz
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';
import { writeCpio, type CpioEntry } from '../cpio.js';
import { findKernel, resolveModules } from '../initramfs.js';

export const HELLO_MACHINE_FILE = 'hello-machine.cpio.gz';

/** The network card of a microvm: virtio over MMIO, and its net driver (modules of the host's kernel). */
const NET_MODULES = ['virtio_ring', 'virtio', 'virtio_mmio', 'failover', 'net_failover', 'virtio_net'];

const INIT = `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /etc/modules); do insmod "/lib/modules/$m" 2>/dev/null; done
echo "hello from a Carapace machine: $(uname -sr), $(grep -c ^processor /proc/cpuinfo) cpu, $(grep MemTotal /proc/meminfo | tr -s ' ')"
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  printf '#!/bin/sh\\ncase "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"; [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"; for r in $router; do ip route add default via "$r"; break; done; : > /etc/resolv.conf; for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done; [ -n "$hostname" ] && hostname "$hostname";; esac\\n' > /etc/udhcpc.script
  chmod 755 /etc/udhcpc.script
  udhcpc -i eth0 -s /etc/udhcpc.script -q -b -t 5 -T 2 -O mtu -O hostname >/dev/null 2>&1
  echo "machine network: $(ip -4 -o addr show dev eth0 | tr -s ' ' | cut -d' ' -f4)"
  mkdir -p /www && echo "hello from machine $(hostname)" > /www/index.html
  httpd -p 80 -h /www
fi
n=0
while true; do
  n=$((n+1))
  echo "machine heartbeat $n uptime $(cut -d' ' -f1 /proc/uptime)s"
  sleep 5
done
`;

/** Writes the image into `dir` (atomically) and returns its path. */
export async function buildHelloMachine(dir: string, busybox = '/bin/busybox'): Promise<string> {
  const entries: CpioEntry[] = [
    { kind: 'dir', path: 'bin' },
    { kind: 'dir', path: 'proc' },
    { kind: 'dir', path: 'sys' },
    { kind: 'dir', path: 'dev' },
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { kind: 'file', path: 'bin/busybox', data: readFileSync(busybox), mode: 0o755 },
    { kind: 'file', path: 'init', data: Buffer.from(INIT), mode: 0o755 },
    { kind: 'dir', path: 'etc' },
    { kind: 'dir', path: 'lib' },
    { kind: 'dir', path: 'lib/modules' },
    ...['sh', 'mount', 'echo', 'cat', 'cut', 'grep', 'tr', 'uname', 'sleep', 'insmod', 'ip', 'udhcpc', 'chmod', 'printf', 'mkdir', 'httpd', 'hostname', 'wget', 'nslookup'].map((a) => ({ kind: 'symlink' as const, path: `bin/${a}`, target: 'busybox' })),
  ];
  // The host kernel's virtio network modules, in load order (busybox insmod wants plain ELF; Debian 12 ships plain .ko).
  const version = findKernel().version;
  const root = join('/lib/modules', version);
  const read = (f: string): string => (existsSync(join(root, f)) ? readFileSync(join(root, f), 'utf8') : '');
  const { files } = resolveModules(NET_MODULES, read('modules.dep'), read('modules.builtin'));
  const names: string[] = [];
  for (const f of files.filter((x) => x.endsWith('.ko'))) {
    const name = f.slice(f.lastIndexOf('/') + 1);
    entries.push({ kind: 'file', path: `lib/modules/${name}`, data: readFileSync(join(root, f)), mode: 0o644 });
    names.push(name);
  }
  entries.push({ kind: 'file', path: 'etc/modules', data: Buffer.from(names.join('\n') + '\n'), mode: 0o644 });
  await mkdir(dir, { recursive: true });
  const out = join(dir, HELLO_MACHINE_FILE);
  await writeFile(`${out}.tmp`, gzipSync(writeCpio(entries), { level: 9 }));
  await rename(`${out}.tmp`, out);
  return out;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const dir = process.argv[2];
  if (!dir) {
    process.stderr.write('usage: hello-machine DIR\n');
    process.exitCode = 2;
  } else {
    buildHelloMachine(dir)
      .then((p) => process.stdout.write(`${p}\n`))
      .catch((e: unknown) => {
        process.stderr.write(`hello-machine: ${e instanceof Error ? e.message : String(e)}\n`);
        process.exitCode = 1;
      });
  }
}
