import { describe, expect, it } from 'vitest';
import { backoffDelay, decideAfterExit, MAX_BACKOFF_MS } from './restart-policy.js';

describe('decideAfterExit', () => {
  it('Always restarts on any exit, OnFailure only on errors, Never never', () => {
    expect(decideAfterExit({ restartPolicy: 'Always', maxRestarts: -1 }, 0, 0, 10).action).toBe('restart');
    expect(decideAfterExit({ restartPolicy: 'OnFailure', maxRestarts: -1 }, 0, 0, 10)).toMatchObject({ action: 'stop', phase: 'Succeeded' });
    expect(decideAfterExit({ restartPolicy: 'OnFailure', maxRestarts: -1 }, 2, 0, 10).action).toBe('restart');
    expect(decideAfterExit({ restartPolicy: 'Never', maxRestarts: -1 }, 2, 0, 10)).toMatchObject({ action: 'stop', phase: 'Failed' });
  });
  it('stops after the retry budget', () => {
    expect(decideAfterExit({ restartPolicy: 'OnFailure', maxRestarts: 2 }, 1, 1, 10).action).toBe('restart');
    expect(decideAfterExit({ restartPolicy: 'OnFailure', maxRestarts: 2 }, 1, 2, 10)).toMatchObject({ action: 'stop', phase: 'Failed', reason: 'BackoffLimitExceeded' });
  });
  it('a container stopped for a failing liveness probe is a failure (reason Unhealthy), whatever its exit code', () => {
    expect(decideAfterExit({ restartPolicy: 'Always', maxRestarts: -1 }, 143, 2, 10, true)).toEqual({ action: 'restart', delayMs: 4000, reason: 'Unhealthy' });
    // A graceful exit 0 on SIGTERM still restarts under OnFailure, as in Kubernetes.
    expect(decideAfterExit({ restartPolicy: 'OnFailure', maxRestarts: -1 }, 0, 0, 10, true)).toEqual({ action: 'restart', delayMs: 1000, reason: 'Unhealthy' });
    expect(decideAfterExit({ restartPolicy: 'Never', maxRestarts: -1 }, 0, 0, 10, true)).toEqual({ action: 'stop', phase: 'Failed', reason: 'Unhealthy' });
    expect(decideAfterExit({ restartPolicy: 'OnFailure', maxRestarts: 1 }, 137, 1, 10, true)).toEqual({ action: 'stop', phase: 'Failed', reason: 'BackoffLimitExceeded' });
  });
  it('backs off exponentially, capped, and resets after a long run', () => {
    expect(backoffDelay(0, 0)).toBe(1000);
    expect(backoffDelay(1, 0)).toBe(2000);
    expect(backoffDelay(3, 0)).toBe(8000);
    expect(backoffDelay(30, 0)).toBe(MAX_BACKOFF_MS);
    expect(backoffDelay(30, 120_000)).toBe(1000);
  });
});
