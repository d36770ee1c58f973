/**
 * Measured usage on one host: every `intervalMs` the sampler reads what each subject on this
 * host actually consumed and writes all of it as one batch record to the store:
 * - host containers (runc, runsc): the driver's cgroup counters;
 * - containers in cells: the guest agent's latest per-container cgroup counters;
 * - cells and machines: the QEMU process (/proc utime+stime and RSS), which is what the host
 *   really paid, emulation included; the guest's own view of itself is not used.
 *
 * Records live at `usage/samples/<YYYY-MM-DD>/<epoch ms>-<host>` (a day per prefix, so a
 * report lists only the days of its window) and carry full subjects, so reports never join
 * against live objects and deleted work is still billed. Samples older than `retentionDays`
 * are deleted by the host that wrote them. Counters are cumulative, so a lost batch (agent
 * down, store unreachable) loses no CPU, it only blurs when it was used (see usage/measured.ts).
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Resources } from '../core/resources.js';
import type { Env } from '../core/actions.js';
import { sampleProcess } from '../usage/proc-sampler.js';
import { subjectOf } from '../usage/intervals.js';
import type { UsageSample } from '../usage/types.js';
import type { SampleBatch } from '../usage/samples.js';
import { isSampleBatchOf, sampleBatchKey, sampleDayPrefixes } from '../model/keys.js';
import type { RuntimeDriver } from '../runtime/driver.js';

/** What the sampler needs from the agent: the containers it runs now. */
export interface LocalContainers {
  localContainers(): { tenant: string; name: string; id: string; driver: RuntimeDriver }[];
}

export interface UsageSamplerOptions {
  hostName: string;
  resources: Resources;
  env: Env;
  logger: Logger;
  agent: LocalContainers;
  /** Default 10 s. */
  intervalMs?: number;
  /** Default 30 days. */
  retentionDays?: number;
}

export class UsageSampler {
  private readonly log: Logger;
  private lastPrunedDay = '';

  constructor(private readonly o: UsageSamplerOptions) {
    this.log = o.logger.child({ component: 'usage-sampler', host: o.hostName });
  }

  /** Samples until `signal` aborts (one pass at start, so counters get their baseline). */
  async start(signal: AbortSignal): Promise<void> {
    const every = this.o.intervalMs ?? 10_000;
    while (!signal.aborted) {
      await this.sampleOnce().catch((err: unknown) => this.log.warn({ err }, 'usage sampling failed'));
      await delay(every, undefined, { signal }).catch(() => undefined); // aborted: the loop ends
    }
  }

  /** Takes one batch of samples and stores it; returns it (empty batches are not stored). */
  async sampleOnce(): Promise<SampleBatch> {
    const r = this.o.resources;
    const me = this.o.hostName;
    const time = Date.parse(this.o.env.now());
    const [instances, cells, machines] = await Promise.all([r.list('Instance'), r.list('Cell'), r.list('Machine')]);
    const byKey = new Map(instances.items.map((i) => [`${i.metadata.tenant ?? ''}/${i.metadata.name}`, i]));
    const samples: UsageSample[] = [];
    for (const c of this.o.agent.localContainers()) {
      const inst = byKey.get(`${c.tenant}/${c.name}`);
      if (!inst) continue;
      const u = await c.driver.usage(c.id).catch(() => undefined);
      if (u) samples.push({ subject: subjectOf(inst), time, cpuSecondsTotal: u.cpuSeconds, memoryBytes: u.memoryBytes, source: c.id });
    }
    const vms = [
      ...cells.items.filter((c) => c.spec.host === me).map((c) => ({ obj: c, pid: c.status.pid })),
      ...machines.items.filter((m) => m.status.host === me).map((m) => ({ obj: m, pid: m.status.pid })),
    ];
    for (const v of vms) {
      if (v.pid === undefined || v.pid <= 0) continue;
      const p = await sampleProcess(v.pid).catch(() => undefined);
      if (p) samples.push({ subject: subjectOf(v.obj), time, cpuSecondsTotal: p.cpuSecondsTotal, memoryBytes: p.rssBytes, source: p.source });
    }
    const batch: SampleBatch = { host: me, time, samples };
    if (samples.length > 0) await r.store.put(sampleBatchKey(time, me), batch);
    await this.prune(time);
    return batch;
  }

  /** Once a day, deletes this host's batches of the day that left the retention window. */
  private async prune(now: number): Promise<void> {
    const days = this.o.retentionDays ?? 30;
    const [prefix] = sampleDayPrefixes(now - (days + 1) * 86_400_000, now - (days + 1) * 86_400_000);
    if (prefix === undefined || prefix === this.lastPrunedDay) return;
    this.lastPrunedDay = prefix;
    const old = await this.o.resources.store.list(prefix);
    for (const e of old.items) if (isSampleBatchOf(e.key, this.o.hostName)) await this.o.resources.store.delete(e.key);
  }
}
