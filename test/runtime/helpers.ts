/**
 * Shared fixtures for the runtime integration tests: a tiny busybox root filesystem built
 * from the host's busybox-static, container specs, and checks that a destroyed container
 * left nothing behind.
 */
import { copyFile, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import type { ContainerSpec } from '../../src/model/schemas.js';
import type { ImageConfig, LogLine, RuntimeDriver } from '../../src/runtime/driver.js';

/** Applets linked in the test rootfs. */
const APPLETS = ['sh', 'echo', 'sleep', 'cat', 'id', 'ls', 'touch', 'grep', 'head', 'dmesg', 'wc', 'mkdir', 'seq', 'true', 'false', 'dd', 'rm', 'kill', 'hostname', 'httpd', 'wget', 'printf'];

/** Builds a busybox root filesystem at `rootfs` (users root, app (1000, also in group extra 2000), nobody). */
export async function buildRootfs(rootfs: string): Promise<void> {
  for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'data', 'www']) await mkdir(join(rootfs, d), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  for (const a of APPLETS) await symlink('busybox', join(rootfs, 'bin', a));
  await writeFile(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  await writeFile(join(rootfs, 'etc/group'), 'root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n');
}

/** The image config of the busybox rootfs. */
export const IMAGE: ImageConfig = { entrypoint: [], cmd: ['sh'], env: ['PATH=/bin'], workingDir: '/', user: '' };

/** A container spec running `sh -c script`, with overrides. */
export function shSpec(script: string, over: Partial<ContainerSpec> = {}): ContainerSpec {
  return {
    image: 'test/busybox:1',
    command: ['sh', '-c', script],
    env: {},
    cpu: 0.5,
    memory: 64,
    pids: 128,
    readOnlyRootfs: false,
    isolation: 'host',
    group: 'default',
    ports: [],
    ...over,
  };
}

/** A silent logger for drivers under test. */
export const logger = pino({ level: 'silent' });

/** Collects all (non-following) log lines of a container. */
export async function allLogs(driver: RuntimeDriver, id: string): Promise<LogLine[]> {
  const out: LogLine[] = [];
  for await (const l of driver.logs(id, { follow: false })) out.push(l);
  return out;
}

/** Stdout text of a container, one string. */
export async function stdoutOf(driver: RuntimeDriver, id: string): Promise<string> {
  return (await allLogs(driver, id))
    .filter((l) => l.stream === 'stdout')
    .map((l) => l.text)
    .join('\n');
}

/** Mount points whose path contains `fragment`. */
export async function mountsContaining(fragment: string): Promise<string[]> {
  const text = await readFile('/proc/self/mounts', 'utf8');
  return text
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((p) => p.includes(fragment));
}

/** Unique ids per test run. */
let counter = 0;
export function newId(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}
