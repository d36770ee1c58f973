import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { GuestAgent, type GuestAgentOptions } from '../agent.js';
import { until } from '../../proc/until.js';
import { MemoryLink } from './memory-link.js';

/** A guest agent served over a MemoryLink, its log lines kept in `logs`; `stop` ends it and removes its state. */
export interface AgentOnMemoryLink {
  link: MemoryLink;
  logs: string[];
  stop: () => Promise<void>;
}

/**
 * Starts a GuestAgent on a fresh state directory with a runtime that does not exist (nothing
 * it runs can start: the tests read the protocol and the logs), plus `extra` options.
 */
export async function startAgentOnMemoryLink(extra: Partial<GuestAgentOptions> = {}): Promise<AgentOnMemoryLink> {
  const state = await mkdtemp(join(tmpdir(), 'guest-agent-'));
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
    ...extra,
  });
  const ac = new AbortController();
  const serving = agent.start(ac.signal);
  await until('the link started', () => Promise.resolve(link.handlers), 5_000, 10);
  return {
    link,
    logs,
    stop: async () => {
      ac.abort();
      await serving;
      await rm(state, { recursive: true, force: true });
    },
  };
}
