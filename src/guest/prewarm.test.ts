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
    prewarmAfterMs: 300,
  });
  const ac = new AbortController();
  const serving = agent.start(ac.signal);
  await until('the link started', () => Promise.resolve(link.handlers), 5_000, 10);
  return { link, logs, stop: async () => (ac.abort(), await serving) };
}

describe('the idle-cell prewarm', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('runs in a cell that got nothing after the hello', async () => {
    const a = await agentWithPrewarm(dirs);
    a.link.send({ type: 'hello', version: 1, cellId: 'c' });
    await until('the prewarm ran', () => Promise.resolve(a.logs.some((l) => l.includes('"prewarm done"')) || undefined), 10_000, 20);
    await a.stop();
  });

  it('does not run in a warm cell claimed meanwhile (its network request came first)', async () => {
    const a = await agentWithPrewarm(dirs);
    a.link.send({ type: 'hello', version: 1, cellId: 'c' });
    a.link.send({ type: 'network', requestId: 'n1', address: '10.0.0.2/24', gateway: '10.0.0.1', dns: ['10.0.0.1'] });
    await until('the network ack', () => Promise.resolve(a.link.has((m) => m.type === 'ack' && m.requestId === 'n1') || undefined), 5_000, 10);
    await until('the prewarm decided', () => Promise.resolve(a.logs.some((l) => l.includes('"prewarm skipped: the cell has work"')) || undefined), 10_000, 20);
    expect(a.logs.some((l) => l.includes('"prewarm done"'))).toBe(false);
    await a.stop();
  });
});
