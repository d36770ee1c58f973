/**
 * What a stored batch of measured samples holds: one batch per host per sampling pass, at
 * `sampleBatchKey(time, host)` (the layout is in model/keys.ts).
 */
import type { UsageSample } from './types.js';

/** One stored batch: everything one host measured at one time. */
export interface SampleBatch {
  host: string;
  time: number;
  samples: UsageSample[];
}
