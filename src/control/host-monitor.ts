/**
 * Host failure detection. Every agent renews a lease (`leases/hosts/<host>`) about once a
 * second; this monitor, run by the control plane, declares a host NotReady when its lease has
 * not changed for `ttlMs`, and Ready again when it moves. "Changed" is judged by the lease's
 * store version as observed on this process's own clock, never by the time the agent wrote
 * into it: clocks of different machines may disagree (Kubernetes' node lease works the same).
 * A freshly started monitor gives every host a full TTL before judging it, and so does a
 * monitor that could not read the store for a while: a lease that did not move while the
 * monitor was blind (etcd restarting, say) proves nothing, and the agents' renewals, cut off
 * by the same outage, come back a moment after the monitor's reads do. Judging at once turned
 * every store outage longer than the TTL into a failover of every host.
 *
 * Declaring a host NotReady is what triggers failover: the controller evicts and replaces its
 * instances and cells. The decision is audited (`host.lost`, `host.recovered`). A replacement
 * that mounts a volume bound to the lost host is not moved elsewhere: it waits (Pending,
 * `VolumeHostNotReady`) until this monitor declares the host Ready again (its data is there).
 *
 * Fencing (model/fencing.ts). A host that is cut off but alive stops its `fencing: stop`
 * instances itself once it could not renew its lease for the grace G; the controller replaces
 * those only once this monitor says the lease has been silent for the fence wait W > G + the
 * agent's stop budget (`status.fencedAt`, audited `host.fenced`), measured from the moment
 * this monitor observed the lease's last move, which comes after the agent sent that renewal:
 * the bound is argued in model/fencing.ts. Silence is measured on the monotonic clock
 * (`performance.now()`), so a wall clock step never shortens it; a monitor that just started
 * or was blind counts from then, which only makes the wait longer. The TTL and timings are
 * published at `HOST_LEASE_SETTINGS_KEY` for the agents.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Env } from '../core/actions.js';
import type { Resources } from '../core/resources.js';
import type { AuditEntry } from '../audit/record.js';
import { HOST_LEASE_PREFIX, HOST_LEASE_SETTINGS_KEY } from '../model/keys.js';
import type { HostLease } from '../model/objects.js';
import { DEFAULT_HOST_LEASE_TTL_MS, fenceTimings, type HostLeaseSettings } from '../model/fencing.js';

export interface HostMonitorOptions {
  resources: Resources;
  env: Env;
  logger: Logger;
  /** A lease unchanged for this long means the host is lost (default 3 s). */
  ttlMs?: number;
  /** The fence wait W: a lease unchanged for this long lets `fencing: stop` instances be replaced (default `fenceTimings(ttlMs).waitMs`, 3 x TTL). */
  fenceWaitMs?: number;
  /** How often leases are checked (default 250 ms). */
  checkMs?: number;
}

function entry(time: string, action: string, host: string, detail: Record<string, unknown>): AuditEntry {
  return { time, actor: { kind: 'system', id: 'host-monitor' }, action, target: { kind: 'Host', name: host }, outcome: 'success', detail };
}

export class HostMonitor {
  private readonly log: Logger;
  /** Per host: the lease version last seen and when (this process's clock, ms). */
  private readonly seen = new Map<string, { version: number; at: number }>();
  private readonly startedAt = performance.now();
  /** The lease settings were published (once per monitor: each leader term writes its own). */
  private published = false;
  /** Hosts this monitor declared lost, until it sees them back (for the host.recovered record). */
  private readonly lost = new Set<string>();
  /** The last pass could not read the leases: the next one restarts every host's clock. */
  private blind = false;

  constructor(private readonly o: HostMonitorOptions) {
    this.log = o.logger.child({ component: 'host-monitor' });
  }

  /** Checks leases until `signal` aborts. */
  async start(signal: AbortSignal): Promise<void> {
    const every = this.o.checkMs ?? 250;
    while (!signal.aborted) {
      await this.check().catch((err: unknown) => this.log.warn({ err }, 'host lease check failed'));
      await delay(every, undefined, { signal }).catch(() => undefined); // aborted: the loop ends
    }
  }

  /** One pass: marks hosts whose lease stood still past the TTL NotReady, and moving ones Ready. */
  async check(): Promise<void> {
    const ttl = this.o.ttlMs ?? DEFAULT_HOST_LEASE_TTL_MS;
    const waitMs = this.o.fenceWaitMs ?? fenceTimings(ttl).waitMs;
    const r = this.o.resources;
    if (!this.published) {
      const settings: HostLeaseSettings = { ttlMs: ttl, graceMs: fenceTimings(ttl).graceMs, waitMs };
      const cur = await r.store.get<HostLeaseSettings>(HOST_LEASE_SETTINGS_KEY).catch(() => undefined);
      if (JSON.stringify(cur?.value) !== JSON.stringify(settings)) await r.store.put(HOST_LEASE_SETTINGS_KEY, settings).catch((err: unknown) => this.log.warn({ err }, 'cannot publish the lease settings; retrying'));
      else this.published = true;
    }
    let hosts, leases;
    try {
      [hosts, leases] = await Promise.all([r.list('Host'), r.store.list<HostLease>(HOST_LEASE_PREFIX)]);
    } catch (e) {
      this.blind = true;
      throw e;
    }
    const leaseOf = new Map(leases.items.map((e) => [e.key.slice(HOST_LEASE_PREFIX.length), e]));
    const now = performance.now();
    if (this.blind) {
      for (const s of this.seen.values()) s.at = now;
      this.blind = false;
    }
    for (const h of hosts.items) {
      const name = h.metadata.name;
      const lease = leaseOf.get(name);
      const version = lease?.version ?? 0;
      const prev = this.seen.get(name);
      if (!prev || prev.version !== version) this.seen.set(name, { version, at: prev ? now : Math.max(now, this.startedAt) });
      const silentMs = now - (this.seen.get(name)?.at ?? now);
      const expired = silentMs > ttl || (version === 0 && now - this.startedAt > ttl);
      if (expired && h.status.state === 'Ready') {
        const at = this.o.env.now();
        // The host was last seen alive when its lease last moved, not when we noticed.
        const lostAt = new Date(Date.parse(at) - silentMs).toISOString();
        await r.mutate(
          'Host',
          name,
          undefined,
          (x) => {
            if (x.status.state !== 'Ready') return undefined;
            x.status = { ...x.status, state: 'NotReady', reason: 'LeaseExpired', lostAt, message: `no heartbeat for ${(silentMs / 1000).toFixed(1)} s (lease TTL ${(ttl / 1000).toFixed(1)} s)` };
            return x;
          },
          entry(at, 'host.lost', name, { reason: 'LeaseExpired', silentMs, ttlMs: ttl, lastRenewedAt: lease?.value.renewedAt ?? null, lostAt }),
        );
        this.lost.add(name);
        this.log.warn({ host: name, silentMs }, 'host lost: lease expired');
      } else if (!expired && h.status.state === 'Ready' && this.lost.has(name)) {
        // Its agent re-registered it: record the return once.
        this.lost.delete(name);
        await r.audit?.append(entry(this.o.env.now(), 'host.recovered', name, { by: 'agent' }));
        this.log.info({ host: name }, 'host back: its agent registered again');
      } else if (expired && silentMs > waitMs && h.status.state === 'NotReady' && h.status.reason === 'LeaseExpired' && h.status.fencedAt === undefined) {
        // Silent past W: its agent, if alive, stopped its `fencing: stop` instances by now.
        const at = this.o.env.now();
        await r.mutate(
          'Host',
          name,
          undefined,
          (x) => {
            if (x.status.state !== 'NotReady' || x.status.fencedAt !== undefined) return undefined;
            x.status = { ...x.status, fencedAt: at };
            return x;
          },
          entry(at, 'host.fenced', name, { silentMs, fenceWaitMs: waitMs, ttlMs: ttl }),
        );
        this.log.warn({ host: name, silentMs, fenceWaitMs: waitMs }, 'host fenced: lease silent past the fence wait; its fencing=stop instances may be replaced');
      } else if (!expired && h.status.state === 'NotReady' && h.status.reason === 'LeaseExpired' && lease && prev && prev.version !== version) {
        await r.mutate(
          'Host',
          name,
          undefined,
          (x) => {
            if (x.status.state === 'Ready') return undefined;
            const { reason: _r, lostAt: _l, fencedAt: _f, ...rest } = x.status;
            x.status = { ...rest, state: 'Ready', message: 'lease renewed' };
            return x;
          },
          entry(this.o.env.now(), 'host.recovered', name, { downSince: h.status.lostAt ?? null }),
        );
        this.lost.delete(name);
        this.log.info({ host: name }, 'host back: lease renewed');
      }
    }
  }
}
