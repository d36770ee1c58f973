import { describe, expect, it } from 'vitest';
import { startAgentOnMemoryLink } from './testing/agent-on-memory-link.js';
import { until } from '../proc/until.js';

describe('usage reports', () => {
  it('ride on a host ping once half a period has passed, so an idle cell wakes once per ping', async () => {
    // A period far longer than the test: every report seen here came with a ping.
    const { link, stop } = await startAgentOnMemoryLink({ usageIntervalMs: 600_000 });
    const usages = (): number => link.lines.filter((l) => (JSON.parse(l) as { type: string }).type === 'usage').length; // `as`: the agent writes JSON objects with a type
    link.send({ type: 'hello', version: 1, cellId: 'c' });
    link.send({ type: 'ping', seq: 1 });
    await until('a report with the first ping', () => Promise.resolve(usages() === 1 || undefined), 5_000, 10);
    expect(link.has((m) => m.type === 'pong' && m.seq === 1)).toBe(true);
    // A ping within half a period of the last report is answered alone.
    link.send({ type: 'ping', seq: 2 });
    await until('the second pong', () => Promise.resolve(link.has((m) => m.type === 'pong' && m.seq === 2) || undefined), 5_000, 10);
    // An absence can only be watched for a while: a report (a few file reads) would be written
    // within milliseconds of the pong; a second is ample, and a correct agent never writes one.
    await expect(until('no second report', () => Promise.resolve(usages() > 1 || undefined), 1_000, 10)).rejects.toThrow(/no second report/);
    expect(usages()).toBe(1);
    await stop();
  });
});
