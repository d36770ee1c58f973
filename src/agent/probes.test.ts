import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkActionOf, firstCheckDelay, initialProbeState, nextCheckDelay, observe, probeFailureMessage, probeTiming, readinessToWrite, startCheckDelay, type ProbeEvent, type ProbeKind, type ProbeState, type ReadinessRecord } from './probes.js';

const T = (failureThreshold: number, successThreshold = 1) => ({ failureThreshold, successThreshold });

function feed(kind: ProbeKind, outcomes: boolean[], thresholds: { failureThreshold: number; successThreshold: number }, ready?: boolean): { state: ProbeState; events: ProbeEvent[] } {
  let state = initialProbeState(kind, ready);
  const events: ProbeEvent[] = [];
  for (const ok of outcomes) {
    const r = observe(state, ok, thresholds);
    state = r.state;
    events.push(r.event);
  }
  return { state, events };
}

describe('probe thresholds', () => {
  it('liveness starts passing and fails only after failureThreshold failures in a row', () => {
    const r = feed('liveness', [false, false, true, false, false, false, false], T(3));
    expect(r.events).toEqual(['none', 'none', 'none', 'none', 'none', 'failed', 'none']);
    expect(r.state.passing).toBe(false);
    expect(r.state.run).toBe(4);
  });

  it('readiness starts failing: not ready until successThreshold successes in a row', () => {
    expect(feed('readiness', [true], T(3)).events).toEqual(['passed']);
    const slow = feed('readiness', [true, false, true, true], T(3, 2));
    expect(slow.events).toEqual(['none', 'none', 'none', 'passed']);
    expect(slow.state.passing).toBe(true);
  });

  it('readiness that never passes reports its failure once, when the run reaches the threshold', () => {
    const r = feed('readiness', [false, false, false, false, false], T(3));
    expect(r.events).toEqual(['none', 'none', 'failed', 'none', 'none']);
    expect(r.state.passing).toBe(false);
  });

  it('readiness flips back and forth on runs, not on single results', () => {
    const r = feed('readiness', [true, false, false, true, false, false, false, true], T(3));
    expect(r.events).toEqual(['passed', 'none', 'none', 'none', 'none', 'none', 'failed', 'passed']);
  });

  it('an adopted container keeps its recorded readiness', () => {
    expect(initialProbeState('readiness', true).passing).toBe(true);
    expect(feed('readiness', [true, true], T(3), true).events).toEqual(['none', 'none']);
    expect(initialProbeState('liveness', false).passing).toBe(true);
  });

  it('matches the Kubernetes rule for any outcomes: the verdict is set by the latest run that reached its threshold (property)', () => {
    fc.assert(
      fc.property(fc.constantFrom<ProbeKind>('liveness', 'readiness'), fc.array(fc.boolean(), { maxLength: 60 }), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 5 }), (kind, outcomes, ft, st) => {
        const r = feed(kind, outcomes, T(ft, st));
        // Independent model: walk runs; a run of failures >= ft makes it fail, of successes >= st makes it pass.
        let verdict = kind === 'liveness';
        let i = 0;
        const failedAt: number[] = [];
        while (i < outcomes.length) {
          let j = i;
          while (j < outcomes.length && outcomes[j] === outcomes[i]) j++;
          const len = j - i;
          if (outcomes[i] === false && len >= ft) {
            verdict = false;
            failedAt.push(i + ft - 1);
          }
          if (outcomes[i] === true && len >= st) verdict = true;
          i = j;
        }
        expect(r.state.passing).toBe(verdict);
        // `failed` fires exactly once per failure run that reaches the threshold, at the threshold.
        expect(r.events.flatMap((e, k) => (e === 'failed' ? [k] : []))).toEqual(failedAt);
        // `passed` fires only on a change from failing to passing.
        let passing = kind === 'liveness';
        for (let k = 0; k < outcomes.length; k++) {
          if (r.events[k] === 'passed') {
            expect(passing).toBe(false);
            passing = true;
          }
          if (r.events[k] === 'failed') passing = false;
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('readiness writes', () => {
  /** Feeds (ok, detail) checks to a readiness probe and returns what would be written, applying each write. */
  function writes(checks: [boolean, string][], thresholds: { failureThreshold: number; successThreshold: number }, initialReady = false): (ReadinessRecord | undefined)[] {
    let state = initialProbeState('readiness', initialReady);
    let reported: ReadinessRecord = { ready: initialReady };
    return checks.map(([ok, detail]) => {
      state = observe(state, ok, thresholds).state;
      const w = readinessToWrite(reported, state, thresholds, detail);
      if (w) reported = w;
      return w;
    });
  }

  it('writes only on change: ready, then the failure once the run reaches the threshold, then its new detail', () => {
    expect(
      writes(
        [
          [false, 'connection refused'],
          [true, 'ok'],
          [true, 'ok'],
          [false, '503'],
          [false, '503'],
          [false, '503'],
          [false, '503'],
          [false, '404'],
          [false, '404'],
          [true, 'ok'],
        ],
        T(3),
      ),
    ).toEqual([undefined, { ready: true }, undefined, undefined, undefined, { ready: false, detail: '503' }, undefined, { ready: false, detail: '404' }, undefined, { ready: true }]);
  });

  it('a new container that never passes gets its reason written once the threshold is reached', () => {
    expect(writes([[false, 'refused'], [false, 'refused'], [false, 'refused']], T(2))).toEqual([undefined, { ready: false, detail: 'refused' }, undefined]);
  });

  it('an adopted ready container writes nothing while it stays ready', () => {
    expect(writes([[true, 'ok'], [false, 'x'], [true, 'ok']], T(3), true)).toEqual([undefined, undefined, undefined]);
  });

  it('recovering below successThreshold keeps the failure recorded', () => {
    expect(writes([[false, 'a'], [true, 'ok'], [false, 'a'], [true, 'ok'], [true, 'ok']], T(1, 2))).toEqual([{ ready: false, detail: 'a' }, undefined, undefined, undefined, { ready: true }]);
  });
});

describe('probe timing', () => {
  const probe = { initialDelaySeconds: 5, periodSeconds: 10, timeoutSeconds: 2 };

  it('converts seconds, scaling delay and period but not the timeout', () => {
    expect(probeTiming(probe)).toEqual({ initialDelayMs: 5_000, periodMs: 10_000, timeoutMs: 2_000 });
    expect(probeTiming(probe, 0.1)).toEqual({ initialDelayMs: 500, periodMs: 1_000, timeoutMs: 2_000 });
    expect(probeTiming({ initialDelaySeconds: 0, periodSeconds: 1, timeoutSeconds: 1 }, 0.0001).periodMs).toBe(1);
  });

  it('first check after the initial delay from the container start; then one period after the previous start', () => {
    const t = probeTiming(probe);
    expect(firstCheckDelay(t, 1_000, 1_000)).toBe(5_000);
    expect(firstCheckDelay(t, 1_000, 4_000)).toBe(2_000);
    expect(firstCheckDelay(t, 1_000, 60_000)).toBe(0); // adopted long after it started
    expect(nextCheckDelay(t, 10_000, 10_050)).toBe(9_950);
    expect(nextCheckDelay(t, 10_000, 25_000)).toBe(0); // a check longer than the period: the next starts at once
    // Readiness not passed yet: 100 ms after the first check, doubling, never beyond the period.
    expect([0, 1, 2, 3, 6, 7, 50].map((n) => startCheckDelay(t, n, 10_000, 10_000))).toEqual([100, 200, 400, 800, 6_400, 10_000, 10_000]);
    expect(startCheckDelay(t, 0, 10_000, 10_030)).toBe(70);
    expect(startCheckDelay(probeTiming({ initialDelaySeconds: 0, periodSeconds: 0.05, timeoutSeconds: 1 }), 3, 0, 0)).toBe(50);
  });
});

describe('probe words', () => {
  it('turns a probe into the check to run, with the container address for http and tcp', () => {
    const base = { initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 1, failureThreshold: 3, successThreshold: 1 };
    expect(checkActionOf({ ...base, httpGet: { path: '/healthz', port: 8080 } }, '10.88.0.5')).toEqual({ httpGet: { path: '/healthz', port: 8080, host: '10.88.0.5' } });
    expect(checkActionOf({ ...base, tcpSocket: { port: 5432 } }, undefined)).toEqual({ tcpSocket: { port: 5432 } });
    expect(checkActionOf({ ...base, exec: { command: ['cat', '/ok'] } }, '10.88.0.5')).toEqual({ exec: { command: ['cat', '/ok'] } });
    expect(() => checkActionOf({}, undefined)).toThrow(/no handler/);
  });

  it('says how often a probe failed and why', () => {
    expect(probeFailureMessage('liveness', 3, 'HTTP GET http://10.88.0.5:8080/healthz: connection refused')).toBe(
      'liveness probe failed 3 times: HTTP GET http://10.88.0.5:8080/healthz: connection refused',
    );
    expect(probeFailureMessage('readiness', 1, 'x')).toBe('readiness probe failed 1 time: x');
  });
});
