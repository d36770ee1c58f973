/**
 * A tiny "legacy app" machine image for the bundled example and the tests: a gzip'd initrd
 * with busybox whose /init prints a greeting and then a heartbeat line on the serial console
 * every few seconds, like a long-running appliance. Boot it with the host's kernel
 * (`kernel: host`, `initrd: hello-machine.cpio.gz`).
 *
 *   node dist/src/vm/testing/hello-machine.js DIR   # writes DIR/hello-machine.cpio.gz
 */
import { readFileSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';
import { writeCpio, type CpioEntry } from '../cpio.js';

export const HELLO_MACHINE_FILE = 'hello-machine.cpio.gz';

const INIT = `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "hello from a Carapace machine: $(uname -sr), $(grep -c ^processor /proc/cpuinfo) cpu, $(grep MemTotal /proc/meminfo | tr -s ' ')"
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
    ...['sh', 'mount', 'echo', 'cat', 'cut', 'grep', 'tr', 'uname', 'sleep'].map((a) => ({ kind: 'symlink' as const, path: `bin/${a}`, target: 'busybox' })),
  ];
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
