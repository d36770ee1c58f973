/**
 * Runs the liveness and readiness probes of the containers this agent runs. The host agent
 * calls `watch` when a container starts (or is adopted after an agent restart) and `stop`
 * when it exits or is torn down; everything else happens here:
 *
 *   watch(target) -> one loop per probe: wait initialDelay, then every period (a readiness
 *                    probe not passed yet: 100 ms, doubling up to the period; probes.ts)
 *     driver.check(containerId, action, timeout)     (runc/runsc: exec or host -> container IP;
 *                                                     cells: the guest agent, inside the VM)
 *     observe(state, ok) (probes.ts, pure)
 *     readiness passed/failed -> write status.ready (+ reason/message), only on change
 *                                (readinessToWrite: flipped, or the failing check says something new)
 *     liveness failed         -> remember why, stop all loops, driver.stop(container)
 *                                -> the agent's exit path restarts it under its restart
 *                                   policy with backoff (reason `Unhealthy`, see takeUnhealthy)
 *
 * Checks of one probe never overlap, and every check is bounded by its timeout, so a loop
 * cannot pile up work. Loops hold no state that matters across agent restarts: readiness is
 * carried over from the instance's status when a container is adopted.
 */
import type { Logger } from 'pino';
import type { Resources } from '../core/resources.js';
import { metrics } from '../metrics/metrics.js';
import type { Instance, InstanceStatus } from '../model/objects.js';
import type { Probe } from '../model/schemas.js';
import type { CheckResult, RuntimeDriver } from '../runtime/driver.js';
import { sleep } from '../proc/sleep.js';
import { stopGraceMsOf } from './restart-policy.js';
import {
  checkActionOf,
  firstCheckDelay,
  handlerOf,
  initialProbeState,
  nextCheckDelay,
  observe,
  probeFailureMessage,
  probeTiming,
  readinessToWrite,
  startCheckDelay,
  type ProbeKind,
  type ReadinessRecord,
} from './probes.js';

export interface ProberOptions {
  resources: Resources;
  logger: Logger;
  /** Grace between SIGTERM and SIGKILL for a container whose liveness probe failed and whose instance sets no `stopGracePeriodSeconds`. */
  stopGraceMs: number;
  /** Multiplies initialDelaySeconds and periodSeconds (tests: CARAPACE_PROBE_TIME_SCALE). Default 1. */
  timeScale?: number;
}

/** A running container to probe. */
export interface ProbeTarget {
  /** The instance key, `tenant/name`. */
  key: string;
  /** The instance as the container was started (or adopted) from: its probes, uid and readiness. */
  inst: Instance;
  containerId: string;
  driver: RuntimeDriver;
  /** The container's address on its bridge (host-run containers); cells use the VM's loopback. */
  address?: string;
  startedAtMs: number;
  /** Readiness to start from: false for a new container, the recorded one for an adopted container. */
  initialReady: boolean;
}

interface Watched {
  containerId: string;
  ac: AbortController;
}

/** The readiness written to an instance when a probe event changes it. */
export function readinessPatch(ready: boolean, message: string | undefined): Partial<InstanceStatus> {
  return ready ? { ready: true, reason: 'Ready' } : { ready: false, reason: 'NotReady', ...(message !== undefined ? { message } : {}) };
}

/** Runs the probes of every watched container; one per agent. */
export class Prober {
  private readonly log: Logger;
  private readonly watched = new Map<string, Watched>();
  /** Containers stopped because their liveness probe failed, with the message (keyed by container id). */
  private readonly unhealthy = new Map<string, { key: string; message: string }>();
  private readonly timeScale: number;

  constructor(private readonly o: ProberOptions) {
    this.log = o.logger.child({ component: 'prober' });
    this.timeScale = o.timeScale ?? 1;
  }

  /**
   * Starts probing a running container (no-op when it has no probes, or is already watched).
   * Probes of an earlier container of the same instance stop.
   */
  watch(t: ProbeTarget): void {
    const { livenessProbe, readinessProbe } = t.inst.spec.container;
    const cur = this.watched.get(t.key);
    if (cur?.containerId === t.containerId) return;
    this.stop(t.key);
    if (!livenessProbe && !readinessProbe) return;
    const ac = new AbortController();
    this.watched.set(t.key, { containerId: t.containerId, ac });
    const crashed = (err: unknown): void => this.log.error({ err, instance: t.key, container: t.containerId }, 'probe loop failed');
    if (livenessProbe) this.loop(t, 'liveness', livenessProbe, ac.signal).catch(crashed);
    if (readinessProbe) this.loop(t, 'readiness', readinessProbe, ac.signal).catch(crashed);
  }

  /** Stops the probes of an instance's container (it exited or is being removed). */
  stop(key: string): void {
    const cur = this.watched.get(key);
    if (!cur) return;
    cur.ac.abort();
    this.watched.delete(key);
  }

  /** Stops probing and forgets everything about an instance (it is torn down). */
  forget(key: string): void {
    this.stop(key);
    for (const [id, u] of this.unhealthy) if (u.key === key) this.unhealthy.delete(id);
  }

  /** Stops every probe (agent shutdown); the containers keep running. */
  stopAll(): void {
    for (const key of [...this.watched.keys()]) this.stop(key);
  }

  /** The container ids being probed now, by instance key (for tests and debugging). */
  watching(): Map<string, string> {
    return new Map([...this.watched].map(([k, w]) => [k, w.containerId]));
  }

  /**
   * Why the prober stopped this container, if it did (its liveness probe failed): the
   * message for the exit's status. Returned once; the entry is dropped.
   */
  takeUnhealthy(containerId: string): string | undefined {
    const u = this.unhealthy.get(containerId);
    this.unhealthy.delete(containerId);
    return u?.message;
  }

  private async loop(t: ProbeTarget, kind: ProbeKind, probe: Probe, signal: AbortSignal): Promise<void> {
    const timing = probeTiming(probe, this.timeScale);
    const handler = handlerOf(probe);
    const log = this.log.child({ instance: t.key, container: t.containerId, probe: kind, handler });
    let state = initialProbeState(kind, kind === 'readiness' ? t.initialReady : undefined);
    // What the status says now; a write that failed leaves it as is, so the next check retries.
    let reported: ReadinessRecord = { ready: t.initialReady };
    // Readiness of a container not ready yet: checked in a start phase until it first passes.
    let starting = kind === 'readiness' && !t.initialReady;
    let failedStarting = 0;
    await sleep(firstCheckDelay(timing, t.startedAtMs, Date.now()), signal);
    while (!signal.aborted) {
      const started = Date.now();
      let r: CheckResult;
      try {
        r = await t.driver.check(t.containerId, checkActionOf(probe, t.address), timing.timeoutMs);
      } catch (e) {
        r = { ok: false, message: (e as Error).message }; // `as`: drivers reject with Errors
      }
      if (signal.aborted) return;
      metrics.probeSeconds.observe({ probe: kind, handler, isolation: t.inst.spec.container.isolation, result: r.ok ? 'success' : 'failure' }, (Date.now() - started) / 1000);
      const seen = observe(state, r.ok, probe);
      state = seen.state;
      if (!r.ok) log.debug({ failures: state.run, message: r.message }, 'probe check failed');
      const message = r.ok ? undefined : probeFailureMessage(kind, state.run, r.message);
      if (kind === 'liveness' && seen.event === 'failed' && message !== undefined) {
        await this.restartUnhealthy(t, message, log);
        return;
      }
      const write = kind === 'readiness' ? readinessToWrite(reported, state, probe, r.message) : undefined;
      if (write) {
        log.info({ ready: write.ready, message }, 'readiness changed');
        if (await this.writeReadiness(t, write.ready, write.ready ? undefined : message, log)) reported = write;
      }
      if (starting && r.ok) starting = false;
      await sleep(starting ? startCheckDelay(timing, failedStarting++, started, Date.now()) : nextCheckDelay(timing, started, Date.now()), signal);
    }
  }

  /** Writes readiness if the instance still runs this container; true when written or not needed. */
  private async writeReadiness(t: ProbeTarget, ready: boolean, message: string | undefined, log: Logger): Promise<boolean> {
    try {
      await this.o.resources.mutate('Instance', t.inst.metadata.name, t.inst.metadata.tenant, (i) => {
        if (i.metadata.uid !== t.inst.metadata.uid || i.status.containerId !== t.containerId || i.status.phase !== 'Running') return undefined;
        if (i.status.ready === ready && (ready || i.status.message === message)) return undefined;
        const next = { ...i.status, ...readinessPatch(ready, message) };
        if (ready) delete next.message;
        i.status = next;
        return i;
      });
      return true;
    } catch (err) {
      log.warn({ err }, 'cannot record readiness; retrying after the next check');
      return false;
    }
  }

  /** Stops a container whose liveness probe failed; the agent's exit path restarts it. */
  private async restartUnhealthy(t: ProbeTarget, message: string, log: Logger): Promise<void> {
    if (this.watched.get(t.key)?.containerId === t.containerId) this.stop(t.key);
    // A container that exited by itself failed its checks because it was gone: its own exit
    // (code, reason) is what the agent must report, not a liveness failure.
    const info = await t.driver.inspect(t.containerId).catch(() => undefined);
    if (info?.state.status !== 'running') return;
    log.warn({ message }, 'liveness probe failed; restarting container');
    this.unhealthy.set(t.containerId, { key: t.key, message });
    try {
      await t.driver.stop(t.containerId, stopGraceMsOf(t.inst.spec, this.o.stopGraceMs));
    } catch (err) {
      // Still running (e.g. a cell's channel is down): probe again from scratch, try again later.
      log.warn({ err }, 'cannot stop unhealthy container; probing it again');
      this.unhealthy.delete(t.containerId);
      if (!this.watched.has(t.key)) this.watch({ ...t, startedAtMs: Date.now() });
    }
  }
}
