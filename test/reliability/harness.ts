/**
 * Small shared pieces of the reliability suite: a seeded random source, an API client that
 * tells "never sent" from "outcome unknown", percentiles, and a process's resident memory.
 * Used by the vitest tests (CI sizes) and by bench/soak.ts (soak sizes).
 */
import { readFileSync } from 'node:fs';
import { rng } from '../../src/sim/sim.js';
import { apiFetch } from '../api-fetch.js';

/** Seeded randomness (mulberry32 from src/sim): the same seed gives the same run plan. */
export class Random {
  private readonly next: () => number;
  constructor(readonly seed: number) {
    this.next = rng(seed);
  }
  /** A float in [0, 1). */
  float(): number {
    return this.next();
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** An integer in [lo, hi]. */
  between(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    if (xs.length === 0) throw new Error('pick from an empty list');
    return xs[this.int(xs.length)] as T; // index in range
  }
}

/** The request never reached a server (connection refused): it certainly had no effect. */
export class Unsent extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Unsent';
  }
}

/** An answer: status and parsed JSON (or the text when it is not JSON). */
export interface Reply {
  status: number;
  json: any;
}

/**
 * One API call. Throws `Unsent` when the connection was refused; any other throw (reset,
 * timeout) means the outcome is unknown: it may or may not have taken effect.
 */
export async function call(base: string, token: string, method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<Reply> {
  let r: Response;
  try {
    r = await apiFetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : null,
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    const cause = (e as { cause?: { code?: string } }).cause; // undici's fetch wraps the socket error
    if (cause?.code === 'ECONNREFUSED') throw new Unsent(`${method} ${path}: connection refused`);
    throw e;
  }
  const text = await r.text(); // a reset here also leaves the outcome unknown
  let json: any = text;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: r.status, json };
}

/** The p-th percentile (nearest rank) of an ascending list; NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number; // index in range
}

/** Resident memory of a process in KiB (VmRSS from /proc/PID/status); 0 when it is gone. */
export function rssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Where a part's progress goes (the soak prints it to stderr; tests keep it quiet unless asked). */
export type Log = (line: string) => void;
export const quiet: Log = () => undefined;
