/**
 * The pure part of liveness and readiness probes: what a run of check results means, when
 * the next check is due, and the words users see. No I/O and no clock: the prober
 * (prober.ts) runs the checks and passes outcomes and times in, so these rules are unit-tested
 * apart from processes. Semantics follow Kubernetes' kubelet prober:
 * - liveness starts passing, readiness starts failing (an instance is not ready until its
 *   readiness probe passed once);
 * - a probe's verdict flips to failing after `failureThreshold` failures in a row, and back to
 *   passing after `successThreshold` successes in a row; shorter runs change nothing;
 * - checks of one probe never overlap: the next starts `periodSeconds` after the previous
 *   one started, or as soon as it ends if it took longer.
 */
import type { Probe } from '../model/schemas.js';
import type { CheckAction } from '../runtime/driver.js';

/** Which probe: liveness failures restart the container, readiness decides `status.ready`. */
export type ProbeKind = 'liveness' | 'readiness';

/** Where one probe of one container stands. */
export interface ProbeState {
  /** The probe's verdict. */
  passing: boolean;
  /** The outcome of the latest check (undefined before the first) and how many in a row had it. */
  lastOk: boolean | undefined;
  run: number;
}

/**
 * What one outcome changed. `failed`: a failure run just reached `failureThreshold` (once per
 * run, even when the verdict was already failing, so the reason gets reported); `passed`: a
 * success run just reached `successThreshold` and the verdict was failing.
 */
export type ProbeEvent = 'none' | 'passed' | 'failed';

/**
 * The state of a probe on a container that was just started (or adopted after an agent
 * restart: `ready` then carries the recorded readiness over, so a restart does not flap it).
 */
export function initialProbeState(kind: ProbeKind, ready?: boolean): ProbeState {
  return { passing: kind === 'liveness' ? true : (ready ?? false), lastOk: undefined, run: 0 };
}

/** Folds one check outcome into a probe's state. */
export function observe(state: ProbeState, ok: boolean, probe: Pick<Probe, 'failureThreshold' | 'successThreshold'>): { state: ProbeState; event: ProbeEvent } {
  const run = state.lastOk === ok ? state.run + 1 : 1;
  const next: ProbeState = { passing: state.passing, lastOk: ok, run };
  if (ok) {
    if (!state.passing && run >= probe.successThreshold) return { state: { ...next, passing: true }, event: 'passed' };
    return { state: next, event: 'none' };
  }
  if (run === probe.failureThreshold) return { state: { ...next, passing: false }, event: 'failed' };
  return { state: next, event: 'none' };
}

/** What the instance's status says about readiness: `detail` is the failing check's own message. */
export interface ReadinessRecord {
  ready: boolean;
  detail?: string;
}

/**
 * What readiness to write after a check, or undefined when the status already says it (writes
 * happen only on change). Ready once the probe passes; not ready, with the check's message,
 * once a failure run reached `failureThreshold` — written again only when that message
 * changes (e.g. `connection refused` became `404 Not Found`), not on every failed check.
 * Runs shorter than their threshold change nothing.
 */
export function readinessToWrite(reported: ReadinessRecord, state: ProbeState, probe: Pick<Probe, 'failureThreshold'>, detail: string): ReadinessRecord | undefined {
  let want: ReadinessRecord | undefined;
  if (state.passing) want = { ready: true };
  else if (state.lastOk === false && state.run >= probe.failureThreshold) want = { ready: false, detail };
  if (!want || (want.ready === reported.ready && want.detail === reported.detail)) return undefined;
  return want;
}

/** A probe's timings in milliseconds. */
export interface ProbeTiming {
  initialDelayMs: number;
  periodMs: number;
  timeoutMs: number;
}

/**
 * Turns a probe's seconds into milliseconds. `timeScale` (tests: CARAPACE_PROBE_TIME_SCALE,
 * e.g. 0.1) multiplies the initial delay and the period; the timeout is kept real, since it
 * bounds work that takes as long as it takes (a `runc exec` takes tens of milliseconds).
 */
export function probeTiming(probe: Pick<Probe, 'initialDelaySeconds' | 'periodSeconds' | 'timeoutSeconds'>, timeScale = 1): ProbeTiming {
  return {
    initialDelayMs: Math.round(probe.initialDelaySeconds * 1000 * timeScale),
    periodMs: Math.max(1, Math.round(probe.periodSeconds * 1000 * timeScale)),
    timeoutMs: probe.timeoutSeconds * 1000,
  };
}

/** Milliseconds from `nowMs` until the first check of a container that started at `startedAtMs`. */
export function firstCheckDelay(timing: ProbeTiming, startedAtMs: number, nowMs: number): number {
  return Math.max(0, startedAtMs + timing.initialDelayMs - nowMs);
}

/** Milliseconds from `nowMs` until the check after one that started at `lastStartMs`. */
export function nextCheckDelay(timing: ProbeTiming, lastStartMs: number, nowMs: number): number {
  return Math.max(0, lastStartMs + timing.periodMs - nowMs);
}

/** The first interval of a readiness probe's start phase (see `startCheckDelay`). */
export const START_CHECK_MS = 100;

/**
 * Milliseconds until the next readiness check of a container whose probe has not passed yet
 * (`failed` checks so far): 100 ms, doubling, up to the period. A server that listens a moment
 * after its container started is then found ready within about a tenth of a second instead of
 * a whole period later, which every start, rolling update and failover waits for (Docker's
 * `start_interval` for health checks is the same idea). Readiness only: a liveness probe
 * checked faster would restart a slow starter sooner. After the first pass the period
 * rules, so `successThreshold` keeps counting checks one period apart.
 */
export function startCheckDelay(timing: ProbeTiming, failed: number, lastStartMs: number, nowMs: number): number {
  const interval = Math.min(timing.periodMs, START_CHECK_MS * 2 ** Math.min(failed, 20));
  return Math.max(0, lastStartMs + interval - nowMs);
}

/**
 * The check to run for a probe. `address` is the container's own address (host-run
 * containers on a bridge); cells ignore it and use the VM's loopback.
 */
export function checkActionOf(probe: Pick<Probe, 'exec' | 'httpGet' | 'tcpSocket'>, address: string | undefined): CheckAction {
  const host = address !== undefined ? { host: address } : {};
  if (probe.exec) return { exec: { command: probe.exec.command } };
  if (probe.httpGet) return { httpGet: { path: probe.httpGet.path, port: probe.httpGet.port, ...host } };
  if (probe.tcpSocket) return { tcpSocket: { port: probe.tcpSocket.port, ...host } };
  // The schema requires exactly one handler: only a corrupt stored spec gets here.
  throw new Error('probe has no handler (exec, httpGet or tcpSocket)');
}

/** The handler a probe uses, for logs and metrics. */
export function handlerOf(probe: Pick<Probe, 'exec' | 'httpGet' | 'tcpSocket'>): 'exec' | 'httpGet' | 'tcpSocket' {
  return probe.exec ? 'exec' : probe.httpGet ? 'httpGet' : 'tcpSocket';
}

/** `liveness probe failed 3 times: HTTP GET http://10.88.0.5:8080/healthz: connection refused` */
export function probeFailureMessage(kind: ProbeKind, failures: number, detail: string): string {
  return `${kind} probe failed ${failures} time${failures === 1 ? '' : 's'}: ${detail}`;
}
