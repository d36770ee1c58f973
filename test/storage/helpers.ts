/**
 * What the storage tests look at from the host: loop devices and mounts under a test's
 * directory (the kernel's view, not the store's), and whether a directory is a tmpfs.
 */
import { readFile } from 'node:fs/promises';
import { runOrThrow } from '../../src/proc/run.js';

/** Loop devices whose backing file is under `dir`, as `NAME FILE`. */
export async function loopsUnder(dir: string): Promise<string[]> {
  const out = (await runOrThrow('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'])).stdout;
  if (out.trim() === '') return [];
  const devs = (JSON.parse(out) as { loopdevices: { name: string; 'back-file': string | null }[] }).loopdevices; // `as`: losetup's JSON shape
  return devs.filter((d) => (d['back-file'] ?? '').includes(dir)).map((d) => `${d.name} ${d['back-file']}`);
}

/** Mount points under `dir` in this mount namespace (with repeats: a stacked mount shows twice). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
}
