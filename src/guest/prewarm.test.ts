import { describe, expect, it } from 'vitest';
import { startAgentOnMemoryLink, type AgentOnMemoryLink } from './testing/agent-on-memory-link.js';
import { until } from '../proc/until.js';

/** An agent whose prewarm (with a runtime that does not exist) can only log that it ran and failed. */
const agentWithPrewarm = (): Promise<AgentOnMemoryLink> => startAgentOnMemoryLink({ configureNetwork: () => Promise.resolve() });

describe('the prewarm a warm cell is asked for', () => {
  const acked = (a: AgentOnMemoryLink, id: string): Promise<true> => until(`the ack of ${id}`, () => Promise.resolve(a.link.has((m) => m.type === 'ack' && m.requestId === id) || undefined), 10_000, 10);
  const count = (logs: string[], msg: string): number => logs.filter((l) => l.includes(`"msg":"${msg}"`)).length;

  it('runs when the host asks, once per agent, and is acked after it ran', async () => {
    const a = await agentWithPrewarm();
    a.link.send({ type: 'hello', version: 1, cellId: 'c' });
    a.link.send({ type: 'prewarm', requestId: 'p1' });
    await acked(a, 'p1');
    expect(count(a.logs, 'prewarm done')).toBe(1); // logged before the ack
    a.link.send({ type: 'prewarm', requestId: 'p2' });
    await acked(a, 'p2');
    expect(count(a.logs, 'prewarm done')).toBe(1);
    await a.stop();
  });

  it('never runs unasked (a cell created for a tenant warms up with its own first container)', async () => {
    const a = await agentWithPrewarm();
    a.link.send({ type: 'hello', version: 1, cellId: 'c' });
    a.link.send({ type: 'list', requestId: 'l1' });
    await until('the list', () => Promise.resolve(a.link.has((m) => m.type === 'containers' && m.requestId === 'l1') || undefined), 5_000, 10);
    expect(a.logs.some((l) => l.includes('prewarm'))).toBe(false);
    await a.stop();
  });

  it('is skipped in a warm cell claimed meanwhile (its network request came first)', async () => {
    const a = await agentWithPrewarm();
    a.link.send({ type: 'hello', version: 1, cellId: 'c' });
    a.link.send({ type: 'network', requestId: 'n1', address: '10.0.0.2/24', gateway: '10.0.0.1', dns: ['10.0.0.1'] });
    await acked(a, 'n1');
    a.link.send({ type: 'prewarm', requestId: 'p1' });
    await acked(a, 'p1');
    expect(count(a.logs, 'prewarm skipped: the cell has work')).toBe(1);
    expect(count(a.logs, 'prewarm done')).toBe(0);
    await a.stop();
  });
});
