import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { MAX_CHECK_TIMEOUT_MS } from '../guest/protocol.js';
import { until } from '../proc/until.js';
import { cellCheckTimeoutMs, EMULATED_BOOT_NICE, EMULATED_CHECK_TIMEOUT_SCALE, setProcessNice } from './cells.js';

/** The nice value of each thread of `pid` (field 19 of /proc/PID/task/TID/stat; the name in field 2 has no spaces here). */
async function niceOfThreads(pid: number): Promise<number[]> {
  const tids = await readdir(`/proc/${pid}/task`);
  return Promise.all(tids.map(async (t) => Number((await readFile(`/proc/${pid}/task/${t}/stat`, 'utf8')).split(' ')[18])));
}

describe('cellCheckTimeoutMs', () => {
  it('gives a probe check in a KVM cell exactly its timeout, and under software emulation the stretched one', () => {
    expect(cellCheckTimeoutMs(1000, 'kvm')).toBe(1000);
    expect(cellCheckTimeoutMs(1000, 'tcg')).toBe(1000 * EMULATED_CHECK_TIMEOUT_SCALE);
    expect(EMULATED_CHECK_TIMEOUT_SCALE).toBe(5);
    // Never past the longest check the guest accepts (a longer timeout is passed as it is).
    expect(cellCheckTimeoutMs(300_000, 'tcg')).toBe(MAX_CHECK_TIMEOUT_MS);
    expect(cellCheckTimeoutMs(900_000, 'tcg')).toBe(900_000);
  });
});

describe('setProcessNice', () => {
  it('sets every thread of a process (a node child has several) and restores them; a process that is gone is no error', async () => {
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
    const pid = child.pid ?? 0;
    try {
      await until('the child has its threads', async () => ((await niceOfThreads(pid)).length > 1 ? true : undefined), 10_000, 20);
      await setProcessNice(pid, EMULATED_BOOT_NICE);
      expect(new Set(await niceOfThreads(pid))).toEqual(new Set([EMULATED_BOOT_NICE]));
      await setProcessNice(pid, 0);
      expect(new Set(await niceOfThreads(pid))).toEqual(new Set([0]));
    } finally {
      child.kill('SIGKILL');
    }
    await new Promise((r) => child.once('exit', r));
    await expect(setProcessNice(pid, 0)).resolves.toBeUndefined();
  });
});
