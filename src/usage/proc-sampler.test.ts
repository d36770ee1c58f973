/** sampleProcess on real processes: a busy child gains CPU time; a dead pid gives undefined. */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parseProc, sampleProcess } from './proc-sampler.js';

describe('sampleProcess', () => {
  it('reads CPU time and RSS of a busy child, with a stable source', async () => {
    // Busy for 400 ms, then idle until killed.
    const child = spawn(process.execPath, ['-e', 'const end = Date.now() + 400; while (Date.now() < end); setInterval(() => {}, 1000);'], { stdio: 'ignore' });
    try {
      const pid = child.pid;
      if (pid === undefined) throw new Error('child did not start');
      const first = await sampleProcess(pid);
      await new Promise((r) => setTimeout(r, 600));
      const second = await sampleProcess(pid);
      expect(first).toBeDefined();
      expect(second!.cpuSecondsTotal - first!.cpuSecondsTotal).toBeGreaterThan(0.1);
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
