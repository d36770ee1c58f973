/** sampleProcess on real processes: a busy child gains CPU time; a dead pid gives undefined. */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parseProc, sampleProcess } from './proc-sampler.js';

describe('sampleProcess', () => {
  it('reads CPU time and RSS of a busy child, with a stable source', async () => {
    // Busy until it has used 400 ms of CPU (however long a loaded machine takes to give it that), then idle until killed.
    const child = spawn(process.execPath, ['-e', 'while (process.cpuUsage().user < 400_000); setInterval(() => {}, 1000);'], { stdio: 'ignore' });
    try {
      const pid = child.pid;
      if (pid === undefined) throw new Error('child did not start');
      const first = await sampleProcess(pid);
      expect(first).toBeDefined();
      // The busy child gains CPU time: wait for it (with a deadline) rather than for a fixed time.
      let second = first;
      await expect
        .poll(async () => {
          second = await sampleProcess(pid);
          return second!.cpuSecondsTotal - first!.cpuSecondsTotal;
        }, { timeout: 30_000, interval: 50 })
        .toBeGreaterThan(0.1);
      expect(second!.rssBytes).toBeGreaterThan(10 * 1024 * 1024);
      expect(second!.source).toBe(first!.source);
      expect(second!.source).toMatch(new RegExp(`^${pid}:\\d+$`));
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    // Reaped: the pid is gone.
    expect(await sampleProcess(child.pid!)).toBeUndefined();
  });

  it('parses a comm with spaces and parentheses', () => {
    const stat = '42 (we ird) (x)) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 123456 1000 10 0';
    expect(parseProc(42, stat, 'Name:\tx\nVmRSS:\t    2048 kB\n')).toEqual({ cpuSecondsTotal: 3, rssBytes: 2048 * 1024, source: '42:123456' });
    expect(parseProc(42, stat.replace(') S ', ') Z '), 'Name:\tx\n')).toBeUndefined();
    expect(() => parseProc(42, 'garbage', '')).toThrow();
  });
});
