import { describe, expect, it } from 'vitest';
import { KeyedMutex } from './keyed-mutex.js';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('KeyedMutex', () => {
  it('runs the sections of one key one at a time, in order; other keys alongside', async () => {
    const m = new KeyedMutex();
    const log: string[] = [];
    const section = (key: string, name: string, steps: number) =>
      m.run(key, async () => {
        log.push(`${name}+`);
        for (let i = 0; i < steps; i++) await tick();
        log.push(`${name}-`);
        return name;
      });
    const results = await Promise.all([section('a', 'a1', 3), section('a', 'a2', 1), section('b', 'b1', 1)]);
    expect(results).toEqual(['a1', 'a2', 'b1']);
    // b1 ran inside a1; a2 only after a1 ended.
    expect(log.indexOf('b1+')).toBeLessThan(log.indexOf('a1-'));
    expect(log.indexOf('a2+')).toBeGreaterThan(log.indexOf('a1-'));
    expect(m.busyKeys).toBe(0);
  });

  it('a failing section passes its error on and does not block the next', async () => {
    const m = new KeyedMutex();
    await expect(m.run('a', () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(m.run('a', () => Promise.resolve(7))).resolves.toBe(7);
    expect(m.busyKeys).toBe(0);
  });
});
