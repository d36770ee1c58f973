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
import { DEAD_CELL_PHASES, instanceReady, TERMINAL_PHASES, type Cell, type Host, type Instance, type Job, type Machine, type Service, type Tenant } from '../model/objects.js';
import { kindPrefix } from '../model/keys.js';
import { DEFAULT_NETWORK_POOLS, type NetworkPools } from '../model/tenant-network.js';
import type { Volume } from '../model/volumes.js';
import { claimServiceAddress } from '../core/network-records.js';
import { restartVersions } from '../core/secrets.js';
import { referencesOf } from '../model/secrets.js';
import { instanceFencing } from '../model/fencing.js';
import type { ModelView } from '../scheduler/model-adapter.js';
import { planJob, planService, type Change } from './workload-plan.js';
import { Placement } from './placement.js';
import { systemEntry } from './plan-applier.js';
import { Reconciler, watchChangesOf, watchOf } from '../reconcile/reconciler.js';
import type { ReconcileResult } from '../reconcile/workqueue.js';

export interface ControllerOptions {
  resources: Resources;
  env: Env;
  logger: Logger;
  /** Full resync period: every owner is reconciled at least this often. */
  resyncMs?: number;
  /** How long an assigned cell may stay empty before it is retired (default 60 s). */
  cellGraceMs?: number;
  /** The cluster's network pools (tenant networks, service addresses); default DEFAULT_NETWORK_POOLS. */
  pools?: NetworkPools;
}

/** The key of the pass that retires cells left empty past their grace period. */
const CELLS_KEY = 'Cells';
/** The key of the pass that moves instances off draining hosts. */
const DRAIN_KEY = 'Drain';
/** The key of the pass that places whatever waits for a host (instances, machines). */
const PLACEMENT_KEY = 'Placement';
/** The key of the pass that keeps every volume's `status.attachedTo`. */
const VOLUMES_KEY = 'Volumes';

/**
 * What of an instance its owner's pass (and the cells, volumes and placement passes) depend
 * on: all but the fields a spec update by the owner's pass itself changes.
 */
function instanceAsReconciled(i: Instance): string {
  const { container: _c, ownerGeneration: _g, restartOn: _r, ...spec } = i.spec;
  return JSON.stringify([i.metadata.uid, i.metadata.deletionRequestedAt, spec, i.status]);
}

/** What of a service its pass depends on: all but the status fields the pass itself writes. */
function serviceAsReconciled(s: Service): string {
  return JSON.stringify([s.metadata.uid, s.metadata.generation, s.metadata.deletionRequestedAt, s.spec, s.status.address]);
}

type OwnerKey = `Service/${string}/${string}` | `Job/${string}/${string}`;

function parseKey(key: string): { kind: 'Service' | 'Job'; tenant: string; name: string } {
  const [kind, tenant, name] = key.split('/');
  return { kind: kind === 'Job' ? 'Job' : 'Service', tenant: tenant ?? '', name: name ?? '' };
}

export class WorkloadController {
  private readonly loop: Reconciler;
  private readonly log: Logger;
  /**
   * Instances evicted from a lost cell or host, by `tenant/name`, until their replacement is
   * created: the replacement carries `status.failover` so its recovery time can be audited.
   * In memory only: after a controller restart a replacement simply goes unmeasured.
   */
  private readonly evicted = new Map<string, { from: string; reason: string; lostAt: string }>();
  /** The one placement pipeline (keeps the scheduler's state between passes). */
  private readonly placement: Placement;

  constructor(private readonly o: ControllerOptions) {
    this.log = o.logger.child({ component: 'controller' });
    this.placement = new Placement({ resources: o.resources, env: o.env, logger: o.logger, ...(o.pools ? { pools: o.pools } : {}) });
    const r = o.resources;
    this.loop = new Reconciler({
      name: 'controller',
      store: r.store,
      logger: this.log,
      // One worker: placement reads the whole cluster and writes cells and instances; two
      // reconciles at once could each fill the same cell from the same stale snapshot.
      concurrency: 1,
      reconcile: (key) =>
        key === CELLS_KEY
          ? this.reconcileCells()
          : key === DRAIN_KEY
            ? this.reconcileDrain()
            : key === PLACEMENT_KEY
              ? this.reconcilePlacement()
              : key === VOLUMES_KEY
                ? this.reconcileVolumes()
                : this.reconcile(key),
      loopOf: (key) =>
        key === CELLS_KEY ? 'cells' : key === DRAIN_KEY ? 'drain' : key === PLACEMENT_KEY ? 'placement' : key === VOLUMES_KEY ? 'volumes' : key.startsWith('Job/') ? 'job' : 'service',
      resync: {
        everyMs: o.resyncMs ?? 30_000,
        keys: async () => {
          const [svcs, jobs, insts] = await Promise.all([r.list('Service'), r.list('Job'), r.list('Instance')]);
          return [
            ...svcs.items.map((s) => `Service/${s.metadata.tenant}/${s.metadata.name}`),
            ...jobs.items.map((j) => `Job/${j.metadata.tenant}/${j.metadata.name}`),
            ...insts.items.map((i) => this.ownerKey(i)),
            CELLS_KEY,
            DRAIN_KEY,
            PLACEMENT_KEY,
            VOLUMES_KEY,
          ];
        },
      },
      watches: [
        // A cell retired or claimed changes what fits.
        watchOf<Cell>(kindPrefix('Cell'), () => [CELLS_KEY, PLACEMENT_KEY]),
        // A machine applied, or one that went away and left room.
        watchOf<Machine>(kindPrefix('Machine'), () => [PLACEMENT_KEY]),
        // A quota raised may let waiting work in.
        watchOf<Tenant>(kindPrefix('Tenant'), () => [PLACEMENT_KEY]),
        // A volume applied or bound changes where its users may go.
        watchOf<Volume>(kindPrefix('Volume'), () => [PLACEMENT_KEY, VOLUMES_KEY]),
        // Its status written by its own pass (ready, observedGeneration) queues nothing more.
        watchChangesOf<Service>(kindPrefix('Service'), serviceAsReconciled, (e) => [`Service/${e.value.metadata.tenant}/${e.value.metadata.name}`]),
        watchOf<Job>(kindPrefix('Job'), (e) => [`Job/${e.value.metadata.tenant}/${e.value.metadata.name}`]),
        // A Secret or Config changed: the services that use it look again (onChange: restart).
        watchOf<unknown>(kindPrefix('Secret'), (e) => this.usersOf('secret', e.key)),
        watchOf<unknown>(kindPrefix('Config'), (e) => this.usersOf('config', e.key)),
        // An instance's spec rewritten by this loop (a new generation of its owner) queues
        // nothing by itself: the pass that wrote it already planned with it, and the agent's
        // status writes that follow do queue. (A pass per own write doubled the passes.)
        watchChangesOf<Instance>(kindPrefix('Instance'), instanceAsReconciled, (e) => [
          this.ownerKey(e.value),
          ...(e.value.spec.cell ? [CELLS_KEY] : []),
          // Its volumes' attachedTo follows it: when it is placed, finishes or goes (status
          // writes in between change nothing there; the resync catches anything else). A
          // volume it held frees waiting instances through the Placement key above.
          ...((e.value.spec.mounts ?? []).length > 0 && (e.type === 'delete' || TERMINAL_PHASES.includes(e.value.status.phase) || (e.value.spec.host !== '' && e.value.status.phase === 'Pending')) ? [VOLUMES_KEY] : []),
          // Capacity freed (an instance gone or finished): waiting work may fit now.
          ...(e.type === 'delete' || TERMINAL_PHASES.includes(e.value.status.phase) ? [PLACEMENT_KEY] : []),
        ]),
        // Capacity or readiness changed: every owner looks again (failover of a lost host's
        // instances happens in its owner's pass), and waiting work may fit now.
        watchOf<Host>(kindPrefix('Host'), () => {
          this.loop.resync().catch((err: unknown) => this.log.warn({ err }, 'resync failed'));
          return [];
        }),
      ],
    });
  }

  /** Runs until `signal` aborts: watches desired and actual state and reconciles owners. */
  async start(signal: AbortSignal): Promise<void> {
    await this.loop.start(signal);
  }

  /**
   * Queues the services of a changed Secret's or Config's tenant that use it (found by a
   * list, so the watch callback itself returns nothing). Jobs are not restarted: a run
   * keeps the data it started with.
   */
  private usersOf(what: 'secret' | 'config', key: string): string[] {
    const [, tenant = '', name = ''] = key.split('/');
    void this.o.resources
      .list('Service', tenant)
      .then((svcs) => {
        for (const s of svcs.items) {
          const refs = referencesOf(s.spec);
          if ((what === 'secret' ? refs.secrets : refs.configs).includes(name)) this.loop.add(`Service/${tenant}/${s.metadata.name}`);
        }
      })
      .catch((err: unknown) => this.log.warn({ err, key }, 'could not find the users of a changed secret or config; the resync will'));
    return [];
  }

  private ownerKey(i: Instance): OwnerKey {
    return `${i.spec.owner.kind}/${i.metadata.tenant ?? ''}/${i.spec.owner.name}`;
  }

  /**
   * One reconcile pass for one owner: fail over its lost instances, plan what it needs
   * (pure), write the removals and spec updates, hand the instances it creates to the
   * placement pipeline (which writes each with its host or its reason), then its status.
   */
  async reconcile(key: string): Promise<ReconcileResult> {
    const { kind, tenant, name } = parseKey(key);
    const r = this.o.resources;
    const [owner, view] = await Promise.all([kind === 'Service' ? r.get('Service', name, tenant) : r.get('Job', name, tenant), this.placement.view()]);
    if (owner?.kind === 'Service' && owner.status.address === undefined) await this.addressService(owner);
    const owned = (i: Instance): boolean => i.metadata.tenant === tenant && i.spec.owner.kind === kind && i.spec.owner.name === name;
    const evicted = await this.evictLost(tenant, view.instances.filter(owned), view.hosts, view.cells);
    if (evicted.size > 0) view.instances = view.instances.filter((i) => !(i.metadata.tenant === tenant && evicted.has(i.metadata.name)));
    const tenantInstances = view.instances.filter((i) => i.metadata.tenant === tenant);
    await this.auditRecoveries(tenant, tenantInstances);
    const ctx = { now: this.o.env.now(), newId: () => this.o.env.newId() };
    // onChange: restart Secrets and Configs: their versions go into the instances' specs.
    const restartOn = owner?.kind === 'Service' ? await restartVersions(r, tenant, owner.spec) : {};
    const changes =
      kind === 'Service'
        ? planService(name, owner as Service | undefined, tenantInstances, ctx, restartOn) // fetched by kind above
        : planJob(name, owner as Job | undefined, tenantInstances, ctx); // fetched by kind above
    if (changes.length > 0) this.log.debug({ key, changes: changes.map((c) => c.op) }, 'applying changes');
    const created: Instance[] = [];
    for (const c of changes) {
      if (c.op === 'create') created.push(c.instance);
      else if (c.op !== 'serviceStatus' && c.op !== 'jobStatus' && c.op !== 'rollback' && c.op !== 'requeue') await this.apply(kind, tenant, name, c, view);
    }
    for (const i of created) {
      const lost = this.evicted.get(`${tenant}/${i.metadata.name}`);
      if (lost) i.status.failover = lost;
    }
    const waits = view.instances.some((i) => owned(i) && i.spec.host === '' && !i.metadata.deletionRequestedAt && !TERMINAL_PHASES.includes(i.status.phase));
    if (created.length > 0 || waits) {
      await this.placement.place(view, created, tenant);
      for (const i of created) this.evicted.delete(`${tenant}/${i.metadata.name}`);
    }
    for (const c of changes) if (c.op === 'serviceStatus' || c.op === 'jobStatus' || c.op === 'rollback') await this.apply(kind, tenant, name, c, view);
    const requeue = changes.flatMap((c) => (c.op === 'requeue' ? [c.afterMs] : []));
    return requeue.length > 0 ? { requeueAfterMs: Math.min(...requeue) } : undefined;
  }

  /**
   * Gives a service stored before service addresses existed its address (an upgraded store;
   * new services get theirs at creation), with its claim in the same transaction, audited
   * `service.addressed`. A lost race (the service changed, or the address was just taken)
   * fails this pass; the next one retries.
   */
  private async addressService(s: Service): Promise<void> {
    let claim: Awaited<ReturnType<typeof claimServiceAddress>>;
    try {
      claim = await claimServiceAddress(this.o.resources.store, this.o.pools ?? DEFAULT_NETWORK_POOLS, s);
    } catch (e) {
      // No address left: the service still gets its instances; the next pass tries again.
      if (!isCarapaceError(e, 'CARAPACE_E_NETWORK_POOL_EXHAUSTED')) throw e;
      this.log.warn({ tenant: s.metadata.tenant, service: s.metadata.name, err: e.message }, 'service has no address');
      return;
    }
    const addressed: Service = { ...s, status: { ...s.status, address: claim.address } };
    const entry = systemEntry(this.o.env.now(), 'service.addressed', 'Service', s.metadata.name, s.metadata.tenant ?? '', { address: claim.address });
    await this.o.resources.writeAll([{ obj: addressed, expectVersion: s.metadata.resourceVersion }], [entry], [claim.op]);
    this.log.info({ tenant: s.metadata.tenant, service: s.metadata.name, address: claim.address }, 'service address assigned');
  }

  /**
   * Keeps each volume's `status.attachedTo`: the live instances (placed, not finished) that
   * mount it, by name, sorted. Level-based: recomputed from every instance on each pass,
   * written only when it changed (merged: the agent owns usedBytes and message, the
   * placement phase and host).
   */
  async reconcileVolumes(): Promise<void> {
    const r = this.o.resources;
    const [volumes, instances] = await Promise.all([r.list('Volume'), r.list('Instance')]);
    const users = new Map<string, string[]>();
    for (const i of instances.items) {
      if (i.spec.host === '' || TERMINAL_PHASES.includes(i.status.phase)) continue;
      for (const m of i.spec.mounts ?? []) {
        const key = `${i.metadata.tenant ?? ''}/${m.volume}`;
        users.set(key, [...(users.get(key) ?? []), i.metadata.name]);
      }
    }
    for (const v of volumes.items) {
      const tenant = v.metadata.tenant ?? '';
      const want = [...new Set(users.get(`${tenant}/${v.metadata.name}`) ?? [])].sort();
      if (want.join(',') === (v.status.attachedTo ?? []).join(',')) continue;
      await r.mutate('Volume', v.metadata.name, tenant, (x) => {
        if (x.metadata.uid !== v.metadata.uid) return undefined;
        x.status = { ...x.status, attachedTo: want };
        return x;
      });
    }
  }

  /** Places whatever waits for a host (instances of every owner, machines). */
  async reconcilePlacement(): Promise<void> {
    await this.placement.place(await this.placement.view());
  }

  /**
   * Failover: removes the records of `owned` instances whose cell is dead (Failed, Lost) or
   * whose host is NotReady or gone. Nothing runs them any more (a dead cell's VM is killed by
   * its agent; a lost host's agent destroys, when it returns, every container no instance
   * wants), so the plan that follows creates replacements at once, under the same names.
   * Each eviction is audited. Returns the names evicted.
   *
   * Except an instance with `fencing: stop` on a host that is NotReady but not yet fenced
   * (`status.fencedAt`, the host monitor's fence wait W): its agent may be alive behind a
   * partition and still run it until its own grace G and stop budget have passed (bound in
   * model/fencing.ts). It stays, and so does its cell's record (`retireDeadCells`), until W:
   * a host back sooner simply runs it again; a host record deleted by an operator is not waited for.
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
      if (host && host.status.state !== 'Ready' && host.status.fencedAt === undefined && instanceFencing(i.spec) === 'stop') continue; // not before W
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
      for (const i of instances) if (i.spec.cell === name) this.loop.add(this.ownerKey(i));
      const nowIso = this.o.env.now();
      // A cut-off host's cell still holding `fencing: stop` instances stays until the host is
      // fenced (W): those instances are not replaced before, and a host back sooner runs them on in it.
      if (hostLost && host && host.status.fencedAt === undefined && instances.some((i) => i.spec.cell === name && !TERMINAL_PHASES.includes(i.status.phase) && instanceFencing(i.spec) === 'stop')) continue;
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
   * on the host), and so do instances that mount a volume bound to it (their data lives there:
   * moved, they could only wait for the host). The host's status message says what is left
   * and what waits for a budget.
   */
  async reconcileDrain(): Promise<ReconcileResult> {
    const r = this.o.resources;
    const hosts = (await r.list('Host')).items.filter((h) => h.spec.draining);
    if (hosts.length === 0) return;
    const [instances, services, machines, volumes] = await Promise.all([r.list('Instance'), r.list('Service'), r.list('Machine'), r.list('Volume')]);
    const boundTo = new Map(volumes.items.filter((v) => v.status.phase === 'Bound').map((v) => [`${v.metadata.tenant ?? ''}/${v.metadata.name}`, v.status.host ?? '']));
    const pinned = (i: Instance, host: string): boolean => (i.spec.mounts ?? []).some((m) => boundTo.get(`${i.metadata.tenant ?? ''}/${m.volume}`) === host);
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
      const here = instances.items.filter((i) => i.spec.host === name && !TERMINAL_PHASES.includes(i.status.phase));
      const withData = here.filter((i) => pinned(i, name)).length;
      const on = here.filter((i) => !pinned(i, name)).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
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
      const stays = [stay ? `${stay} machine(s) stay: their disks live here` : '', withData ? `${withData} instance(s) stay: their volumes live here` : ''].filter((x) => x !== '').join('; ');
      const message = on.length === 0 ? `drained${stays ? ` (${stays})` : ''}` : `draining: ${on.length} instance(s) left${waiting ? `, ${waiting} waiting for their service's disruption budget` : ''}`;
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

  /**
   * Writes one change of an owner's plan (creations go to the placement pipeline instead).
   * `view` is kept in step with what is written, so the placement pass that follows sees the
   * instances as they now are.
   */
  private async apply(kind: 'Service' | 'Job', tenant: string, ownerName: string, c: Exclude<Change, { op: 'create' }>, view: ModelView): Promise<void> {
    const r = this.o.resources;
    const now = this.o.env.now();
    const track = (name: string, updated: Instance | undefined): void => {
      view.instances = view.instances.flatMap((i) => (i.metadata.tenant === tenant && i.metadata.name === name ? (updated ? [updated] : []) : [i]));
    };
    switch (c.op) {
      case 'updateSpec':
        track(
          c.name,
          await r.mutate('Instance', c.name, tenant, (i) => {
            i.spec = c.spec;
            // The agent replaces a container whose instance's generation moved: only when what it runs changed.
            if (c.replace) i.metadata.generation += 1;
            i.metadata.updatedAt = now;
            return i;
          }),
        );
        return;
      case 'requestDeletion':
        track(
          c.name,
          await r.mutate('Instance', c.name, tenant, (i) => {
            if (i.metadata.deletionRequestedAt) return undefined;
            i.metadata.deletionRequestedAt = now;
            return i;
          }),
        );
        return;
      case 'forget':
        await r.remove('Instance', c.name, tenant);
        track(c.name, undefined);
        return;
      case 'serviceStatus':
        await r.mutate('Service', ownerName, tenant, (s) => {
          // Merged, not replaced: the service's address is the control plane's, not the controller's.
          s.status = { ...s.status, ...c.status };
          return s;
        });
        return;
      case 'rollback': {
        const entry = systemEntry(now, 'service.rolledBack', 'Service', ownerName, tenant, { from: c.from, to: c.to, revision: c.status.revision, generation: c.generation + 1, message: c.message });
        const done = await r.mutate(
          'Service',
          ownerName,
          tenant,
          (s) => {
            // Planned from this generation: a change made since wins (the next pass plans again).
            if (s.metadata.generation !== c.generation) return undefined;
            s.spec = c.spec;
            s.metadata.generation += 1;
            s.metadata.updatedAt = now;
            s.status = { ...s.status, ...c.status };
            return s;
          },
          entry,
        );
        this.log.warn({ service: ownerName, tenant, from: c.from, to: c.to, written: done?.metadata.generation === c.generation + 1 }, 'rollout rolled back');
        return;
      }
      case 'requeue':
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
