import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { GuestAgent } from './agent.js';
import { MemoryLink } from './testing/memory-link.js';
import { until } from '../proc/until.js';

describe('the guest agent before /init is done', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('answers hello and pings at once, holds a network request until initDone resolves', async () => {
    const state = await mkdtemp(join(tmpdir(), 'guest-initdone-'));
    dirs.push(state);
    let done!: () => void; // `!`: assigned synchronously by the Promise executor
    const initDone = new Promise<void>((r) => (done = r));
    const configured: string[] = [];
    const link = new MemoryLink();
    const agent = new GuestAgent({
      link,
      logger: pino({ level: 'silent' }),
      stateDir: state,
      imagesRoot: join(state, 'images'),
      runcPath: '/nonexistent/runc',
      cgroupParent: '/carapace-test',
      seccompProfilePath: false,
      noPivot: false,
      logTailLines: 10,
      configureNetwork: (cfg) => {
        configured.push(cfg.address);
        return Promise.resolve();
      },
      initDone: () => initDone,
    });
    const ac = new AbortController();
    const serving = agent.start(ac.signal);
    await until('the link started', () => Promise.resolve(link.handlers), 5_000, 10);
    link.send({ type: 'hello', version: 1, cellId: 'c' });
    link.send({ type: 'network', requestId: 'n1', address: '10.0.0.2/24', gateway: '10.0.0.1', dns: ['10.0.0.1'] });
    link.send({ type: 'ping', seq: 1 });
    await until('pong', () => Promise.resolve(link.has((m) => m.type === 'pong' && m.seq === 1) || undefined), 5_000, 10);
    expect(link.has((m) => m.type === 'ready')).toBe(true);
    expect(configured).toEqual([]);
    expect(link.has((m) => m.requestId === 'n1')).toBe(false);
    done();
    await until('the network ack', () => Promise.resolve(link.has((m) => m.type === 'ack' && m.requestId === 'n1') || undefined), 5_000, 10);
    expect(configured).toEqual(['10.0.0.2/24']);
    ac.abort();
    await serving;
  });
});
