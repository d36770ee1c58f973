import { describe, expect, it } from 'vitest';
import { backoffDelay, decideAfterExit, lastStateOf, MAX_BACKOFF_MS, stopGraceMsOf, terminationReason } from './restart-policy.js';

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
  it('an OOM-killed container is a failure (reason OOMKilled), even when its main process exited 0', () => {
    expect(decideAfterExit({ restartPolicy: 'Always', maxRestarts: -1 }, 137, 0, 10, false, true)).toEqual({ action: 'restart', delayMs: 1000, reason: 'OOMKilled' });
    expect(decideAfterExit({ restartPolicy: 'OnFailure', maxRestarts: -1 }, 0, 0, 10, false, true)).toMatchObject({ action: 'restart', reason: 'OOMKilled' });
    expect(decideAfterExit({ restartPolicy: 'Never', maxRestarts: -1 }, 137, 0, 10, false, true)).toEqual({ action: 'stop', phase: 'Failed', reason: 'OOMKilled' });
  });
  it('names why a container ended: the agent\'s causes first, then the OOM killer, then the exit code', () => {
    expect(terminationReason(0)).toBe('Completed');
    expect(terminationReason(3)).toBe('Error');
    expect(terminationReason(137, { oomKilled: true })).toBe('OOMKilled');
    expect(terminationReason(137, { unhealthy: true, oomKilled: true })).toBe('Unhealthy');
    expect(terminationReason(128, { startFailed: true, oomKilled: true })).toBe('StartFailed');
  });
  it('builds lastState with its times; a failed start has no start time', () => {
    const t0 = '2026-01-01T00:00:00.000Z';
    const t1 = '2026-01-01T00:00:05.000Z';
    expect(lastStateOf({ exitCode: 3, startedAt: t0, finishedAt: t1, containerId: 'c1', message: 'exited with code 3' })).toEqual({ exitCode: 3, reason: 'Error', message: 'exited with code 3', containerId: 'c1', startedAt: t0, finishedAt: t1 });
    expect(lastStateOf({ exitCode: 128, startedAt: t0, finishedAt: t1, message: 'no such file', cause: { startFailed: true } })).toEqual({ exitCode: 128, reason: 'StartFailed', message: 'no such file', finishedAt: t1 });
  });
  it("stops with the instance's grace when it has one (0 included), else the agent's default", () => {
    expect(stopGraceMsOf({ stopGracePeriodSeconds: 1 }, 10_000)).toBe(1_000);
    expect(stopGraceMsOf({ stopGracePeriodSeconds: 0 }, 10_000)).toBe(0);
    expect(stopGraceMsOf({}, 10_000)).toBe(10_000);
  });
  it('backs off exponentially, capped, and resets after a long run', () => {
    expect(backoffDelay(0, 0)).toBe(1000);
    expect(backoffDelay(1, 0)).toBe(2000);
    expect(backoffDelay(3, 0)).toBe(8000);
    expect(backoffDelay(30, 0)).toBe(MAX_BACKOFF_MS);
    expect(backoffDelay(30, 120_000)).toBe(1000);
  });
});
