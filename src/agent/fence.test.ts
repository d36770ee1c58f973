/**
 * The agent's fence decisions: a renewal counts from when it was sent (the control plane may
 * see it before its answer arrives), late answers never move the clock back, and a stale
 * lease stops exactly the running `fencing: stop` containers and starts none of them.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LeaseClock, mayStart, toFence } from './fence.js';

describe('lease clock', () => {
  it('counts a successful renewal from its send time, and the latest one sent wins', () => {
    const c = new LeaseClock(0);
    expect(c.stale(2_999, 3_000)).toBe(false);
    expect(c.stale(3_000, 3_000)).toBe(true);
    c.renewed(1_000); // sent at 1 s, answered whenever
    expect(c.ageMs(3_500)).toBe(2_500);
    expect(c.stale(3_999, 3_000)).toBe(false);
    expect(c.stale(4_000, 3_000)).toBe(true);
    c.renewed(500); // an older renewal answered late (it sat behind a cut link): no younger lease
    expect(c.ageMs(4_000)).toBe(3_000);
  });

  it('is stale exactly when no renewal sent within the grace succeeded (any order of answers)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 100_000 }), { maxLength: 30 }), fc.integer({ min: 0, max: 200_000 }), fc.integer({ min: 1, max: 10_000 }), (sent, now, grace) => {
        const c = new LeaseClock(0);
        for (const s of sent) c.renewed(s);
        const latest = Math.max(0, ...sent);
        expect(c.stale(now, grace)).toBe(now - latest >= grace);
      }),
    );
  });
});

describe('fence', () => {
  it('stops the running fencing=stop containers, not keep ones, exited ones or ones already going', () => {
    expect(
      toFence([
        { key: 'acme/db-0', fencing: 'stop', exited: false, stopping: false },
        { key: 'acme/web-0', fencing: 'keep', exited: false, stopping: false },
        { key: 'acme/db-1', fencing: 'stop', exited: true, stopping: false },
        { key: 'acme/db-2', fencing: 'stop', exited: false, stopping: true },
        { key: 'acme/q-0', fencing: 'stop', exited: false, stopping: false },
      ]),
    ).toEqual(['acme/db-0', 'acme/q-0']);
  });

  it('starts no fencing=stop container while the lease is stale; keep ones and a fresh lease are not held', () => {
    expect(mayStart('stop', true)).toBe(false);
    expect(mayStart('stop', false)).toBe(true);
    expect(mayStart('keep', true)).toBe(true);
  });
});
