import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { GuestAgent } from './agent.js';
import { MemoryLink } from './testing/memory-link.js';
import { until } from '../proc/until.js';

/** An agent whose prewarm (with a runtime that does not exist) can only log that it ran and failed. */
async function agentWithPrewarm(dirs: string[]): Promise<{ link: MemoryLink; logs: string[]; stop: () => Promise<void> }> {
  const state = await mkdtemp(join(tmpdir(), 'guest-prewarm-'));
  dirs.push(state);
  const logs: string[] = [];
  const sink = new Writable({ write: (chunk: Buffer, _e, cb) => (logs.push(chunk.toString('utf8')), cb()) });
  const link = new MemoryLink();
  const agent = new GuestAgent({
    link,
    logger: pino({ level: 'info' }, sink),
    stateDir: state,
    imagesRoot: join(state, 'images'),
    runcPath: '/nonexistent/crun',
    cgroupParent: '/carapace-test',
    seccompProfilePath: false,
    noPivot: false,
    logTailLines: 10,
    configureNetwork: () => Promise.resolve(),
  });
  const ac = new AbortController();
  const serving = agent.start(ac.signal);
  await until('the link started', () => Promise.resolve(link.handlers), 5_000, 10);
  return { link, logs, stop: async () => (ac.abort(), await serving) };
}

describe('the prewarm a warm cell is asked for', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  const acked = (a: { link: MemoryLink }, id: string): Promise<true> => until(`the ack of ${id}`, () => Promise.resolve(a.link.has((m) => m.type === 'ack' && m.requestId === id) || undefined), 10_000, 10);
  const count = (logs: string[], msg: string): number => logs.filter((l) => l.includes(`"msg":"${msg}"`)).length;

  it('runs when the host asks, once per agent, and is acked after it ran', async () => {
    const a = await agentWithPrewarm(dirs);
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
    const a = await agentWithPrewarm(dirs);
    a.link.send({ type: 'hello', version: 1, cellId: 'c' });
    a.link.send({ type: 'list', requestId: 'l1' });
    await until('the list', () => Promise.resolve(a.link.has((m) => m.type === 'containers' && m.requestId === 'l1') || undefined), 5_000, 10);
    expect(a.logs.some((l) => l.includes('prewarm'))).toBe(false);
    await a.stop();
  });

  it('is skipped in a warm cell claimed meanwhile (its network request came first)', async () => {
    const a = await agentWithPrewarm(dirs);
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
