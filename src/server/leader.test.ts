/**
 * Leadership's handling of its loops, over a store one process owns (SQLite: always the
 * leader): a failing loop stops the others before the next term starts, and the server
 * leads again instead of dying.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { Leadership } from './leader.js';

let dir = '';
let store: SqliteStore;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-leader-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
});
afterAll(async () => {
  await store?.close();
  await rm(dir, { recursive: true, force: true });
});

const untilAborted = (signal: AbortSignal): Promise<void> => new Promise((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));

describe('Leadership', () => {
  it('stops every loop of a term when one fails, steps down, and leads again with fresh loops', async () => {
    const log: string[] = [];
    let starts = 0;
    const leadership = new Leadership({
      store,
      serverId: 'test',
      logger: pino({ level: 'silent' }),
      loops: [
        async (signal) => {
          const n = ++starts;
          log.push(`steady ${n} start`);
          await untilAborted(signal);
          await new Promise((r) => setTimeout(r, 50)); // winding down takes a moment
          log.push(`steady ${n} stop`);
        },
        async (signal) => {
          if (starts === 1) throw new Error('first store read failed');
          await untilAborted(signal);
        },
      ],
    });
    const ac = new AbortController();
    const running = leadership.start(ac.signal);
    for (let i = 0; i < 200 && starts < 2; i++) await new Promise((r) => setTimeout(r, 25));
    expect(starts).toBe(2);
    expect(leadership.leading).toBe(true);
    expect(leadership.term).toBe(2);
    ac.abort();
    await running; // never rejects for a failed loop
    expect(log).toEqual(['steady 1 start', 'steady 1 stop', 'steady 2 start', 'steady 2 stop']);
    expect(leadership.leading).toBe(false);
  });
});
