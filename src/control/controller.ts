/**
 * The workload controller: keeps every service's and job's instances at their desired
 * state. Level-based: a change to a service, job, instance or host queues the owner's key;
 * reconciling a key reads everything fresh, plans (pure, workload-plan.ts) and writes the
 * changes with compare-and-set. Safe to crash at any point: the next pass redoes what is
 * missing and nothing twice (deterministic instance names, create-only writes).
 */
import type { Logger } from 'pino';
import type { Env } from '../core/actions.js';
import type { Resources } from '../core/resources.js';
import { isCarapaceError } from '../model/errors.js';
import { DEAD_CELL_PHASES, instanceReady, kindPrefix, TERMINAL_PHASES, type Cell, type Host, type Instance, type Job, type Machine, type Service } from '../model/objects.js';
import { placeMachine } from './machine-placement.js';
import { tenantQuotaFromModel } from '../scheduler/model-adapter.js';
import { metrics, timed } from '../metrics/metrics.js';
import type { PlannedCell } from '../scheduler/types.js';
import type { AuditEntry } from '../audit/record.js';
import { planJob, planService, type Change, type PlanContext } from './workload-plan.js';
import { WorkQueue, type ReconcileResult } from './workqueue.js';
import { watchForever } from './watch.js';

export interface ControllerOptions {
  resources: Resources;
  env: Env;
  logger: Logger;
  /** Full resync period: every owner is reconciled at least this often. */
  resyncMs?: number;
  /** How long an assigned cell may stay empty before it is retired (default 60 s). */
  cellGraceMs?: number;
}

/** An audit entry for an action the control plane takes on its own. */
function systemEntry(time: string, action: string, kind: string, name: string, tenant: string, detail: Record<string, unknown>): AuditEntry {
  return { time, actor: { kind: 'system', id: 'controller' }, action, target: { kind, name, ...(tenant ? { tenant } : {}) }, outcome: 'success', detail };
}

/** The audit record of the scheduler refusing to place an instance past its tenant's quota. */
function quotaRefusal(time: string, name: string, tenant: string, message: string): AuditEntry {
  return { ...systemEntry(time, 'quota.refused', 'Instance', name, tenant, { code: 'QuotaExceeded', message: message.slice(0, 500) }), outcome: 'failure' };
}

/** The key of the pass that retires cells left empty past their grace period. */
const CELLS_KEY = 'Cells';
/** The key of the pass that moves instances off draining hosts. */
const DRAIN_KEY = 'Drain';

type OwnerKey = `Service/${string}/${string}` | `Job/${string}/${string}`;

function parseKey(key: string): { kind: 'Service' | 'Job'; tenant: string; name: string } {
  const [kind, tenant, name] = key.split('/');
  return { kind: kind === 'Job' ? 'Job' : 'Service', tenant: tenant ?? '', name: name ?? '' };
}

export class WorkloadController {
  private readonly queue: WorkQueue;
  private readonly log: Logger;
  /**
   * Instances evicted from a lost cell or host, by `tenant/name`, until their replacement is
   * created: the replacement carries `status.failover` so its recovery time can be audited.
   * In memory only: after a controller restart a replacement simply goes unmeasured.
   */
  private readonly evicted = new Map<string, { from: string; reason: string; lostAt: string }>();

  constructor(private readonly o: ControllerOptions) {
    this.log = o.logger.child({ component: 'controller' });
    // One worker: placement reads the whole cluster and writes cells and instances; two
    // reconciles at once could each fill the same cell from the same stale snapshot.
    this.queue = new WorkQueue(
      (key) =>
        key === CELLS_KEY
          ? timed(metrics.reconcileSeconds, 'cells', () => this.reconcileCells())
          : key === DRAIN_KEY
            ? timed(metrics.reconcileSeconds, 'drain', () => this.reconcileDrain())
          : key.startsWith('Machine/')
            ? timed(metrics.reconcileSeconds, 'machine-placement', () => this.reconcileMachine(key))
            : timed(metrics.reconcileSeconds, key.startsWith('Job/') ? 'job' : 'service', () => this.reconcile(key)),
      {
      onError: (key, error, attempt) => this.log.warn({ key, attempt, err: error }, 'reconcile failed; retrying'),
    });
  }

  /** Runs until `signal` aborts: watches desired and actual state and reconciles owners. */
  async start(signal: AbortSignal): Promise<void> {
    const resync = async (): Promise<void> => {
      const [svcs, jobs, insts] = await Promise.all([
        this.o.resources.list('Service'),
        this.o.resources.list('Job'),
        this.o.resources.list('Instance'),
      ]);
      for (const s of svcs.items) this.queue.add(`Service/${s.metadata.tenant}/${s.metadata.name}`);
      for (const j of jobs.items) this.queue.add(`Job/${j.metadata.tenant}/${j.metadata.name}`);
      for (const m of (await this.o.resources.list('Machine')).items) if (m.status.host === '') this.queue.add(`Machine/${m.metadata.tenant}/${m.metadata.name}`);
      for (const i of insts.items) this.queue.add(this.ownerKey(i));
      this.queue.add(CELLS_KEY);
      this.queue.add(DRAIN_KEY);
    };
    const timer = setInterval(() => {
      resync().catch((err: unknown) => this.log.warn({ err }, 'resync failed'));
    }, this.o.resyncMs ?? 30_000);
    timer.unref();
    signal.addEventListener('abort', () => clearInterval(timer), { once: true });
    await resync();
    await Promise.all([
      this.queue.start(signal, 1),
      watchForever<Cell>(this.o.resources.store, kindPrefix('Cell'), signal, this.log, () => this.queue.add(CELLS_KEY)),
      watchForever<Machine>(this.o.resources.store, kindPrefix('Machine'), signal, this.log, (e) => {
        this.queue.add(`Machine/${e.value.metadata.tenant}/${e.value.metadata.name}`);
      }),
      watchForever<Service>(this.o.resources.store, kindPrefix('Service'), signal, this.log, (e) => {
        this.queue.add(`Service/${e.value.metadata.tenant}/${e.value.metadata.name}`);
      }),
      watchForever<Job>(this.o.resources.store, kindPrefix('Job'), signal, this.log, (e) => {
        this.queue.add(`Job/${e.value.metadata.tenant}/${e.value.metadata.name}`);
      }),
      watchForever<Instance>(this.o.resources.store, kindPrefix('Instance'), signal, this.log, (e) => {
        this.queue.add(this.ownerKey(e.value));
        if (e.value.spec.cell) this.queue.add(CELLS_KEY);
      }),
      watchForever<Host>(this.o.resources.store, kindPrefix('Host'), signal, this.log, () => {
        // Capacity or readiness changed: unplaced instances may fit now.
        resync().catch((err: unknown) => this.log.warn({ err }, 'resync failed'));
      }),
    ]);
  }

  private ownerKey(i: Instance): OwnerKey {
    return `${i.spec.owner.kind}/${i.metadata.tenant ?? ''}/${i.spec.owner.name}`;
  }

  /** One reconcile pass for one owner. */
  async reconcile(key: string): Promise<void> {
    const { kind, tenant, name } = parseKey(key);
    const r = this.o.resources;
    const [owner, hosts, allInstances, cells, tenantObj] = await Promise.all([
      kind === 'Service' ? r.get('Service', name, tenant) : r.get('Job', name, tenant),
      r.list('Host'),
      r.list('Instance'),
      r.list('Cell'),
      r.get('Tenant', tenant),
    ]);
    const evicted = await this.evictLost(tenant, allInstances.items.filter((i) => i.metadata.tenant === tenant && i.spec.owner.kind === kind && i.spec.owner.name === name), hosts.items, cells.items);
    const liveInstances = evicted.size > 0 ? allInstances.items.filter((i) => !(i.metadata.tenant === tenant && evicted.has(i.metadata.name))) : allInstances.items;
    const tenantInstances = liveInstances.filter((i) => i.metadata.tenant === tenant);
    await this.auditRecoveries(tenant, tenantInstances);
    const quota = tenantObj ? tenantQuotaFromModel(tenantObj) : undefined;
    const ctx: PlanContext = {
      now: this.o.env.now(),
      newId: () => this.o.env.newId(),
      hosts: hosts.items,
      allInstances: liveInstances,
      cells: cells.items,
      newCellId: () => `cell-${this.o.env.newId().replace(/[^a-z0-9]/g, '').slice(0, 12)}`,
      ...(quota ? { quotas: [quota] } : {}),
    };
    const endPlan = metrics.scheduleSeconds.startTimer({ tenant });
    const changes =
      kind === 'Service'
        ? planService(name, owner as Service | undefined, tenantInstances, ctx) // fetched by kind above
        : planJob(name, owner as Job | undefined, tenantInstances, ctx); // fetched by kind above
    endPlan();
    const unplaced = changes.filter((c) => (c.op === 'create' && c.instance.spec.host === '') || c.op === 'unschedulable').length;
    if (unplaced > 0) metrics.unplaced.inc({ tenant }, unplaced);
    if (changes.length > 0) this.log.debug({ key, changes: changes.map((c) => c.op) }, 'applying changes');
    const alias = new Map<string, string>();
    for (const c of changes) await this.apply(kind, tenant, name, c, alias, cells.items);
  }

  /**
   * Failover: removes the records of `owned` instances whose cell is dead (Failed, Lost) or
   * whose host is NotReady or gone. Nothing runs them any more (a dead cell's VM is killed by
   * its agent; a lost host's agent destroys, when it returns, every container no instance
   * wants), so the plan that follows creates replacements at once, under the same names.
   * Each eviction is audited. Returns the names evicted.
   */
  private async evictLost(tenant: string, owned: Instance[], hosts: Host[], cells: Cell[]): Promise<Set<string>> {
    const out = new Set<string>();
    const hostBy = new Map(hosts.map((h) => [h.metadata.name, h]));
    const cellBy = new Map(cells.map((c) => [c.metadata.name, c]));
    for (const i of owned) {
      if (i.spec.host === '' || TERMINAL_PHASES.includes(i.status.phase)) continue;
      const host = hostBy.get(i.spec.host);
      const cell = i.spec.cell ? cellBy.get(i.spec.cell) : undefined;
      let why: { from: string; reason: string; lostAt: string } | undefined;
      if (!host || host.status.state !== 'Ready') {
        why = { from: `host ${i.spec.host}`, reason: host ? `host ${i.spec.host} is NotReady${host.status.message ? `: ${host.status.message}` : ''}` : `host ${i.spec.host} is gone`, lostAt: host?.status.lostAt ?? this.o.env.now() };
      } else if (i.spec.cell && (!cell || DEAD_CELL_PHASES.includes(cell.status.phase))) {
        why = { from: `cell ${i.spec.cell}`, reason: cell ? `cell ${i.spec.cell} is ${cell.status.phase}${cell.status.message ? `: ${cell.status.message}` : ''}` : `cell ${i.spec.cell} is gone`, lostAt: cell?.status.lostAt ?? this.o.env.now() };
      }
      if (!why) continue;
      const now = this.o.env.now();
      const removed = await this.o.resources.remove('Instance', i.metadata.name, tenant, i.metadata.resourceVersion, {
        ...systemEntry(now, 'instance.failover', 'Instance', i.metadata.name, tenant, { from: why.from, reason: why.reason, lostAt: why.lostAt, evictedAt: now, detectMs: Math.max(0, Date.parse(now) - Date.parse(why.lostAt)) }),
      }).catch((e: unknown) => {
        if (isCarapaceError(e, 'CARAPACE_E_CONFLICT')) return false; // changed under us: the next pass looks again
        throw e;
      });
      if (!removed) continue;
      out.add(i.metadata.name);
      this.evicted.set(`${tenant}/${i.metadata.name}`, why);
      this.log.warn({ tenant, instance: i.metadata.name, from: why.from, reason: why.reason }, 'instance lost; replacing it');
    }
    return out;
  }

  /** Audits replacements that run again (with the time from loss to running) and clears their marker. */
  private async auditRecoveries(tenant: string, instances: Instance[]): Promise<void> {
    for (const i of instances) {
      const f = i.status.failover;
      if (!f || i.status.phase !== 'Running') continue;
      const runningAt = i.status.startedAt ?? this.o.env.now();
      await this.o.resources.mutate(
        'Instance',
        i.metadata.name,
        tenant,
        (x) => {
          if (!x.status.failover || x.metadata.uid !== i.metadata.uid) return undefined;
          delete x.status.failover;
          return x;
        },
        systemEntry(this.o.env.now(), 'instance.recovered', 'Instance', i.metadata.name, tenant, {
          from: f.from,
          reason: f.reason,
          lostAt: f.lostAt,
          runningAt,
          host: i.spec.host,
          ...(i.spec.cell ? { cell: i.spec.cell } : {}),
          recoveryMs: Math.max(0, Date.parse(runningAt) - Date.parse(f.lostAt)),
        }),
      );
    }
  }

  /**
   * Makes a planned cell real: claims a Ready warm cell of the host that is big enough (once:
   * compare-and-set from tenant '' to this tenant, never back), else creates a new Cell for the
   * host's agent to boot. `alias` maps the planned id to the cell actually used.
   */
  private async createCell(p: PlannedCell, alias: Map<string, string>, cells: Cell[]): Promise<void> {
    const r = this.o.resources;
    const now = this.o.env.now();
    const warm = cells.filter(
      (c) => c.spec.tenant === '' && c.spec.host === p.host && c.status.phase === 'Ready' && !c.metadata.deletionRequestedAt && c.spec.cpu >= p.cpu && c.spec.memoryMiB >= p.memoryMiB,
    );
    for (const w of warm.sort((a, b) => a.spec.cpu - b.spec.cpu || a.spec.memoryMiB - b.spec.memoryMiB || a.metadata.name.localeCompare(b.metadata.name))) {
      try {
        const claimed = await r.write(
          { ...w, spec: { ...w.spec, tenant: p.tenant, group: p.group, dedicated: p.dedicated }, status: { ...w.status, assignedAt: now }, metadata: { ...w.metadata, updatedAt: now } },
          w.metadata.resourceVersion,
          systemEntry(now, 'cell.assigned', 'Cell', w.metadata.name, p.tenant, { group: p.group, host: p.host, fromWarmPool: true }),
        );
        alias.set(p.id, claimed.metadata.name);
        w.spec.tenant = p.tenant; // this pass must not offer it again
        this.log.info({ cell: claimed.metadata.name, tenant: p.tenant, group: p.group, host: p.host }, 'warm cell assigned');
        return;
      } catch (e) {
        if (!isCarapaceError(e, 'CARAPACE_E_CONFLICT')) throw e; // someone else claimed it: try the next
      }
    }
    const cell: Cell = {
      kind: 'Cell',
      metadata: { name: p.id, uid: this.o.env.newId(), labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
      spec: { tenant: p.tenant, group: p.group, host: p.host, cpu: p.cpu, memoryMiB: p.memoryMiB, dedicated: p.dedicated, warm: false },
      status: { phase: 'Pending' },
    };
    await r.write(cell, 0, systemEntry(now, 'cell.created', 'Cell', p.id, p.tenant, { group: p.group, host: p.host, cpu: p.cpu, memoryMiB: p.memoryMiB, dedicated: p.dedicated }));
    alias.set(p.id, p.id);
    this.log.info({ cell: p.id, tenant: p.tenant, group: p.group, host: p.host, cpu: p.cpu, memoryMiB: p.memoryMiB }, 'cell created');
  }

  /**
   * Dead cells (Failed, Lost) and cells of hosts that are NotReady or gone: the owners of
   * their instances are reconciled (which evicts and replaces the instances), and the cell is
   * retired, never reused. A cell whose host is gone or NotReady is marked Lost and its record
   * removed here (no agent is there to do it); if that host comes back, its agent destroys
   * every VM no Cell record explains (fencing). Each loss is audited once, with its timings.
   */
  private async retireDeadCells(cells: Cell[], instances: Instance[], hosts: Host[]): Promise<void> {
    const r = this.o.resources;
    const hostBy = new Map(hosts.map((h) => [h.metadata.name, h]));
    for (const c of cells) {
      const name = c.metadata.name;
      const host = hostBy.get(c.spec.host);
      const hostLost = !host || host.status.state !== 'Ready';
      const dead = DEAD_CELL_PHASES.includes(c.status.phase);
      if (!dead && !hostLost) continue;
      for (const i of instances) if (i.spec.cell === name) this.queue.add(this.ownerKey(i));
      const nowIso = this.o.env.now();
      if (hostLost) {
        const lostAt = c.status.lostAt ?? host?.status.lostAt ?? nowIso;
        await r.remove('Cell', name, undefined, undefined, systemEntry(nowIso, 'cell.lost', 'Cell', name, c.spec.tenant, {
          host: c.spec.host,
          reason: host ? `host ${c.spec.host} is NotReady` : `host ${c.spec.host} is gone`,
          lostAt,
          detectMs: Math.max(0, Date.parse(nowIso) - Date.parse(lostAt)),
        }));
        this.log.warn({ cell: name, host: c.spec.host }, 'cell lost with its host; record removed');
        continue;
      }
      if (c.metadata.deletionRequestedAt) continue;
      const lostAt = c.status.lostAt ?? nowIso;
      await r.mutate(
        'Cell',
        name,
        undefined,
        (x) => {
          if (x.metadata.deletionRequestedAt) return undefined;
          x.metadata.deletionRequestedAt = nowIso;
          return x;
        },
        systemEntry(nowIso, c.status.phase === 'Lost' ? 'cell.lost' : 'cell.failed', 'Cell', name, c.spec.tenant, {
          host: c.spec.host,
          reason: c.status.message ?? c.status.phase,
          ...(c.status.phase === 'Lost' ? { lostAt, detectMs: Math.max(0, Date.parse(nowIso) - Date.parse(lostAt)) } : {}),
        }),
      );
      this.log.warn({ cell: name, phase: c.status.phase, message: c.status.message }, 'retiring a dead cell');
    }
  }

  /**
   * Drains: moves instances off hosts whose spec says `draining`, one graceful deletion at a
   * time per service while its unavailable replicas (not ready, or being deleted) stay
   * below its `maxUnavailable` (default 1); the owner then re-creates each elsewhere (the
   * host is cordoned). Job runs are moved without a budget. Machines stay (their disks live
   * on the host). The host's status message says what is left and what waits for a budget.
   */
  async reconcileDrain(): Promise<ReconcileResult> {
    const r = this.o.resources;
    const hosts = (await r.list('Host')).items.filter((h) => h.spec.draining);
    if (hosts.length === 0) return;
    const [instances, services, machines] = await Promise.all([r.list('Instance'), r.list('Service'), r.list('Machine')]);
    const svcOf = new Map(services.items.map((s) => [`${s.metadata.tenant ?? ''}/${s.metadata.name}`, s]));
    const unavailable = new Map<string, number>();
    for (const i of instances.items) {
      if (i.spec.owner.kind !== 'Service') continue;
      const k = `${i.metadata.tenant ?? ''}/${i.spec.owner.name}`;
      if (!instanceReady(i)) unavailable.set(k, (unavailable.get(k) ?? 0) + 1);
    }
    let left = 0;
    for (const h of hosts) {
      const name = h.metadata.name;
      const on = instances.items.filter((i) => i.spec.host === name && !TERMINAL_PHASES.includes(i.status.phase)).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
      let waiting = 0;
      for (const i of on) {
        if (i.metadata.deletionRequestedAt) continue;
        const tenant = i.metadata.tenant ?? '';
        const k = `${tenant}/${i.spec.owner.name}`;
        if (i.spec.owner.kind === 'Service') {
          const budget = svcOf.get(k)?.spec.maxUnavailable ?? 1;
          if ((unavailable.get(k) ?? 0) >= budget) {
            waiting++;
            continue;
          }
          unavailable.set(k, (unavailable.get(k) ?? 0) + 1);
        }
        const now = this.o.env.now();
        await r.mutate(
          'Instance',
          i.metadata.name,
          tenant,
          (x) => {
            if (x.metadata.deletionRequestedAt || x.metadata.uid !== i.metadata.uid) return undefined;
            x.metadata.deletionRequestedAt = now;
            x.status = { ...x.status, reason: 'Evicted', message: `evicted: host ${name} is draining` };
            return x;
          },
          systemEntry(now, 'instance.evicted', 'Instance', i.metadata.name, tenant, { host: name, reason: 'HostDraining' }),
        );
        this.log.info({ host: name, tenant, instance: i.metadata.name }, 'evicted for drain');
      }
      const stay = machines.items.filter((m) => m.status.host === name).length;
      const message = on.length === 0 ? `drained${stay ? ` (${stay} machine(s) stay: their disks live here)` : ''}` : `draining: ${on.length} instance(s) left${waiting ? `, ${waiting} waiting for their service's disruption budget` : ''}`;
      left += on.length;
      if (h.status.message !== message) {
        await r.mutate('Host', name, undefined, (x) => {
          if (!x.spec.draining || x.status.message === message) return undefined;
          x.status = { ...x.status, message };
          return x;
        });
      }
    }
    return left > 0 ? { requeueAfterMs: 1_000 } : undefined;
  }

  /** Places a machine that has no host yet (or records why it cannot be placed). */
  async reconcileMachine(key: string): Promise<void> {
    const [, tenant = '', name = ''] = key.split('/');
    const r = this.o.resources;
    const m = await r.get('Machine', name, tenant);
    if (!m || m.status.host !== '' || m.metadata.deletionRequestedAt) return;
    const [hosts, instances, cells, machines] = await Promise.all([r.list('Host'), r.list('Instance'), r.list('Cell'), r.list('Machine')]);
    const p = placeMachine(m, hosts.items, instances.items, cells.items, machines.items);
    await r.mutate('Machine', name, tenant, (x) => {
      if (x.status.host !== '') return undefined;
      if (p.ok) x.status = { ...x.status, host: p.host, reason: 'Scheduled', message: `placed on host ${p.host}` };
      else if (x.status.message === p.reason) return undefined;
      else x.status = { ...x.status, reason: 'Unschedulable', message: p.reason };
      return x;
    });
    if (p.ok) this.log.info({ tenant, machine: name, host: p.host }, 'machine placed');
  }

  /**
   * Retires assigned cells that held no live instance for the grace period: marks them for
   * deletion (their agent stops the VM and removes the object). Never hands a cell back.
   */
  async reconcileCells(): Promise<ReconcileResult> {
    const r = this.o.resources;
    const [cells, instances, hosts] = await Promise.all([r.list('Cell'), r.list('Instance'), r.list('Host')]);
    await this.retireDeadCells(cells.items, instances.items, hosts.items);
    const used = new Set(instances.items.filter((i) => i.spec.cell && !TERMINAL_PHASES.includes(i.status.phase)).map((i) => i.spec.cell));
    const grace = this.o.cellGraceMs ?? 60_000;
    const nowIso = this.o.env.now();
    const now = Date.parse(nowIso);
    let next = Infinity;
    for (const c of cells.items) {
      if (c.spec.tenant === '' || c.metadata.deletionRequestedAt || DEAD_CELL_PHASES.includes(c.status.phase)) continue;
      const name = c.metadata.name;
      if (used.has(name)) {
        if (c.status.emptySince) await r.mutate('Cell', name, undefined, (x) => (delete x.status.emptySince, x));
        continue;
      }
      if (!c.status.emptySince) {
        await r.mutate('Cell', name, undefined, (x) => ((x.status.emptySince = nowIso), x));
        next = Math.min(next, grace);
        continue;
      }
      const left = Date.parse(c.status.emptySince) + grace - now;
      if (left > 0) {
        next = Math.min(next, left);
        continue;
      }
      await r.mutate(
        'Cell',
        name,
        undefined,
        (x) => {
          x.metadata.deletionRequestedAt = nowIso;
          x.status = { ...x.status, phase: 'Retiring', message: `empty for ${Math.round(grace / 1000)}s` };
          return x;
        },
        systemEntry(nowIso, 'cell.retired', 'Cell', name, c.spec.tenant, { reason: 'Empty', graceMs: grace }),
      );
      this.log.info({ cell: name, tenant: c.spec.tenant }, 'retiring empty cell');
    }
    return Number.isFinite(next) ? { requeueAfterMs: next } : undefined;
  }

  private async apply(kind: 'Service' | 'Job', tenant: string, ownerName: string, c: Change, alias: Map<string, string>, cells: Cell[]): Promise<void> {
    const r = this.o.resources;
    const now = this.o.env.now();
    switch (c.op) {
      case 'createCell':
        await this.createCell(c.cell, alias, cells);
        return;
      case 'create':
        try {
          const planned = c.instance.spec.cell;
          if (planned) {
            const actual = alias.get(planned) ?? planned;
            c.instance.spec.cell = actual;
            c.instance.status.message = c.instance.status.message?.replace(planned, actual);
          }
          const lost = this.evicted.get(`${tenant}/${c.instance.metadata.name}`);
          if (lost) c.instance.status.failover = lost;
          const placed = c.instance.spec.host !== '';
          await r.write(
            c.instance,
            0,
            placed
              ? systemEntry(now, 'instance.placed', 'Instance', c.instance.metadata.name, tenant, { host: c.instance.spec.host, ...(c.instance.spec.cell ? { cell: c.instance.spec.cell } : {}) })
              : c.unplaced === 'QuotaExceeded'
                ? quotaRefusal(now, c.instance.metadata.name, tenant, c.instance.status.message ?? '')
                : undefined,
          );
          this.evicted.delete(`${tenant}/${c.instance.metadata.name}`);
          this.log.info({ tenant, instance: c.instance.metadata.name, host: c.instance.spec.host }, 'instance created');
        } catch (e) {
          if (!isCarapaceError(e, 'CARAPACE_E_ALREADY_EXISTS')) throw e; // someone else made it: level-based, fine
        }
        return;
      case 'updateSpec':
        await r.mutate('Instance', c.name, tenant, (i) => {
          i.spec = c.spec;
          i.metadata.generation += 1;
          i.metadata.updatedAt = now;
          return i;
        });
        return;
      case 'place':
        {
          const cell = c.cell !== undefined ? (alias.get(c.cell) ?? c.cell) : undefined;
          await r.mutate(
            'Instance',
            c.name,
            tenant,
            (i) => {
              if (i.spec.host !== '') return undefined;
              i.spec.host = c.host;
              if (cell !== undefined) i.spec.cell = cell;
              i.status = { ...i.status, phase: 'Pending', reason: 'Scheduled', message: cell ? `placed in cell ${cell} on host ${c.host}` : `placed on host ${c.host}` };
              return i;
            },
            systemEntry(now, 'instance.placed', 'Instance', c.name, tenant, { host: c.host, ...(cell ? { cell } : {}) }),
          );
        }
        return;
      case 'unschedulable':
        await r.mutate(
          'Instance',
          c.name,
          tenant,
          (i) => {
            if (i.spec.host !== '') return undefined;
            i.status = { ...i.status, phase: 'Pending', reason: 'Unschedulable', message: c.message };
            return i;
          },
          c.code === 'QuotaExceeded' ? quotaRefusal(now, c.name, tenant, c.message) : undefined,
        );
        return;
      case 'requestDeletion':
        await r.mutate('Instance', c.name, tenant, (i) => {
          if (i.metadata.deletionRequestedAt) return undefined;
          i.metadata.deletionRequestedAt = now;
          return i;
        });
        return;
      case 'forget':
        await r.remove('Instance', c.name, tenant);
        return;
      case 'serviceStatus':
        await r.mutate('Service', ownerName, tenant, (s) => {
          s.status = { ready: c.ready, observedGeneration: c.observedGeneration };
          return s;
        });
        return;
      case 'jobStatus':
        if (kind !== 'Job') return;
        await r.mutate('Job', ownerName, tenant, (j) => {
          j.status = c.status;
          return j;
        });
        return;
    }
  }
}
