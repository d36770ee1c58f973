/**
 * Where measured samples live in the store: one batch per host per sampling pass, at
 * `usage/samples/<YYYY-MM-DD>/<epoch ms>-<host>`, so a report lists only the days of its
 * window and keys sort by time within a day. Pure key arithmetic.
 */
import type { UsageSample } from './types.js';

/** Where sample batches live. */
export const SAMPLES_PREFIX = 'usage/samples/';

/** One stored batch: everything one host measured at one time. */
export interface SampleBatch {
  host: string;
  time: number;
  samples: UsageSample[];
}

const DAY_MS = 86_400_000;

/** The key of a batch. Epoch ms padded to 13 digits so keys sort by time within a day. */
export function sampleBatchKey(time: number, host: string): string {
  return `${SAMPLES_PREFIX}${new Date(time).toISOString().slice(0, 10)}/${String(time).padStart(13, '0')}-${host}`;
}

/** The day prefixes (`usage/samples/YYYY-MM-DD/`) that can hold samples taken in [from, to]. */
export function sampleDayPrefixes(from: number, to: number): string[] {
  const out: string[] = [];
  for (let t = Math.floor(from / DAY_MS) * DAY_MS; t <= to; t += DAY_MS) out.push(`${SAMPLES_PREFIX}${new Date(t).toISOString().slice(0, 10)}/`);
  return out;
}
