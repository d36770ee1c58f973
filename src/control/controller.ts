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
import { kindPrefix, type Host, type Instance, type Job, type Service } from '../model/objects.js';
import { planJob, planService, type Change, type PlanContext } from './workload-plan.js';
import { WorkQueue } from './workqueue.js';
import { watchForever } from './watch.js';

export interface ControllerOptions {
  resources: Resources;
  env: Env;
  logger: Logger;
  /** Full resync period: every owner is reconciled at least this often. */
  resyncMs?: number;
}

type OwnerKey = `Service/${string}/${string}` | `Job/${string}/${string}`;

function parseKey(key: string): { kind: 'Service' | 'Job'; tenant: string; name: string } {
  const [kind, tenant, name] = key.split('/');
  return { kind: kind === 'Job' ? 'Job' : 'Service', tenant: tenant ?? '', name: name ?? '' };
}

export class WorkloadController {
  private readonly queue: WorkQueue;
  private readonly log: Logger;

  constructor(private readonly o: ControllerOptions) {
    this.log = o.logger.child({ component: 'controller' });
    this.queue = new WorkQueue((key) => this.reconcile(key), {
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
      for (const i of insts.items) this.queue.add(this.ownerKey(i));
    };
    const timer = setInterval(() => {
      resync().catch((err: unknown) => this.log.warn({ err }, 'resync failed'));
    }, this.o.resyncMs ?? 30_000);
    timer.unref();
    signal.addEventListener('abort', () => clearInterval(timer), { once: true });
    await resync();
    await Promise.all([
      this.queue.start(signal),
      watchForever<Service>(this.o.resources.store, kindPrefix('Service'), signal, this.log, (e) => {
        this.queue.add(`Service/${e.value.metadata.tenant}/${e.value.metadata.name}`);
      }),
      watchForever<Job>(this.o.resources.store, kindPrefix('Job'), signal, this.log, (e) => {
        this.queue.add(`Job/${e.value.metadata.tenant}/${e.value.metadata.name}`);
      }),
      watchForever<Instance>(this.o.resources.store, kindPrefix('Instance'), signal, this.log, (e) => {
        this.queue.add(this.ownerKey(e.value));
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
    const [owner, tenantInstances, hosts, allInstances] = await Promise.all([
      kind === 'Service' ? r.get('Service', name, tenant) : r.get('Job', name, tenant),
      r.list('Instance', tenant),
      r.list('Host'),
      r.list('Instance'),
    ]);
    const ctx: PlanContext = { now: this.o.env.now(), newId: () => this.o.env.newId(), hosts: hosts.items, allInstances: allInstances.items };
    const changes =
      kind === 'Service'
        ? planService(name, owner as Service | undefined, tenantInstances.items, ctx) // fetched by kind above
        : planJob(name, owner as Job | undefined, tenantInstances.items, ctx); // fetched by kind above
    if (changes.length > 0) this.log.debug({ key, changes: changes.map((c) => c.op) }, 'applying changes');
    for (const c of changes) await this.apply(kind, tenant, name, c);
  }

  private async apply(kind: 'Service' | 'Job', tenant: string, ownerName: string, c: Change): Promise<void> {
    const r = this.o.resources;
    const now = this.o.env.now();
    switch (c.op) {
      case 'create':
        try {
          await r.write(c.instance, 0);
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
        await r.mutate('Instance', c.name, tenant, (i) => {
          if (i.spec.host !== '') return undefined;
          i.spec.host = c.host;
          i.status = { ...i.status, phase: 'Pending', reason: 'Scheduled', message: `placed on host ${c.host}` };
          return i;
        });
        return;
      case 'unschedulable':
        await r.mutate('Instance', c.name, tenant, (i) => {
          if (i.spec.host !== '') return undefined;
          i.status = { ...i.status, phase: 'Pending', reason: 'Unschedulable', message: c.message };
          return i;
        });
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
