/**
 * Every fuzzed part at once, for the test (CI sizes) and the soak: manifests and API bodies
 * through the API and the parser (fuzz.ts), the cell protocol (fuzz-guest.ts) and the agent
 * join path (fuzz-join.ts). Counts cases and failures per part.
 */
import { fuzzApi, fuzzParser, type PartResult } from './fuzz.js';
import { fuzzGuestAgent, fuzzHostChannel, fuzzProtocolParsers } from './fuzz-guest.js';
import { fuzzJoinPath, type JoinFuzzSizes } from './fuzz-join.js';
import { quiet, type Log } from './harness.js';

export interface FuzzSizes {
  api: number;
  parser: number;
  protocol: number;
  channel: number;
  guestAgent: number;
  join: JoinFuzzSizes;
}

export interface FuzzResult {
  cases: number;
  failures: number;
  parts: Record<string, PartResult & { accepted: number; ms: number }>;
}

export async function runFuzz(s: FuzzSizes, seed: number, log: Log = quiet): Promise<FuzzResult> {
  const parts: FuzzResult['parts'] = {};
  const run = async (name: string, f: () => Promise<{ cases: number; failures: number; examples: string[]; accepted: number }> | { cases: number; failures: number; examples: string[]; accepted: number }): Promise<void> => {
    const t0 = performance.now();
    const r = await f();
    parts[name] = { cases: r.cases, failures: r.failures, examples: r.examples, accepted: r.accepted, ms: Math.round(performance.now() - t0) };
    log(`fuzz: ${name}: ${r.cases} cases, ${r.accepted} accepted, ${r.failures} failures (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  };
  await run('api', () => fuzzApi(s.api, seed, log));
  await run('parser', () => fuzzParser(s.parser, seed + 1));
  await run('protocol', () => fuzzProtocolParsers(s.protocol, seed + 2));
  await run('hostChannel', () => fuzzHostChannel(s.channel, seed + 3, log));
  await run('guestAgent', () => fuzzGuestAgent(s.guestAgent, seed + 4, log));
  await run('join', () => fuzzJoinPath(s.join, seed + 5, log));
  const all = Object.values(parts);
  return { cases: all.reduce((a, p) => a + p.cases, 0), failures: all.reduce((a, p) => a + p.failures, 0), parts };
}
