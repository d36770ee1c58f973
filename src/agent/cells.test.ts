import { describe, expect, it } from 'vitest';
import { MAX_CHECK_TIMEOUT_MS } from '../guest/protocol.js';
import { cellCheckTimeoutMs, EMULATED_CHECK_TIMEOUT_SCALE } from './cells.js';

describe('cellCheckTimeoutMs', () => {
  it('gives a probe check in a KVM cell exactly its timeout, and under software emulation the stretched one', () => {
    expect(cellCheckTimeoutMs(1000, 'kvm')).toBe(1000);
    expect(cellCheckTimeoutMs(1000, 'tcg')).toBe(1000 * EMULATED_CHECK_TIMEOUT_SCALE);
    expect(EMULATED_CHECK_TIMEOUT_SCALE).toBe(5);
    // Never past the longest check the guest accepts (a longer timeout is passed as it is).
    expect(cellCheckTimeoutMs(300_000, 'tcg')).toBe(MAX_CHECK_TIMEOUT_MS);
    expect(cellCheckTimeoutMs(900_000, 'tcg')).toBe(900_000);
  });
});
