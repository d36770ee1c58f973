/**
 * Tenant network views: for each tenant, what the hosts running its work program (its
 * services' addresses balanced over their ready replicas, its other names, its egress policy),
 * derived from the tenant's objects and written to `networks/views/<tenant>` when it changes
 * (model/tenant-network.ts `TenantNetworkView`). Run by the control plane's leader, like the
 * workload controller; agents read the views (the agent API lets them) and nothing of other
 * tenants' objects. A replica whose readiness changes is written by its agent; the watch
 * brings that here and the view is rewritten at once (the first half of the 2 s path
 * from a dead replica to its removal from every client's balancing).
 */
import { isDeepStrictEqual } from 'node:util';
import type { Logger } from 'pino';
import type { Resources } from '../core/resources.js';
import { kindPrefix, tenantNetworkViewKey } from '../model/keys.js';
import { instanceReady, type Cell, type Instance, type Machine, type Service, type Tenant } from '../model/objects.js';
import { egressOf } from '../model/schemas.js';
import type { ServiceView, TenantNetworkView } from '../model/tenant-network.js';
import { Reconciler, watchChangesOf, watchOf } from '../reconcile/reconciler.js';
import type { ReconcileResult } from '../reconcile/workqueue.js';

/** The view of one tenant from its objects (pure). */
export function networkViewOf(tenant: Tenant, services: readonly Service[], instances: readonly Instance[], cells: readonly Cell[], machines: readonly Machine[]): TenantNetworkView {
  const name = tenant.metadata.name;
  // A lost or failed cell's VM is gone (fenced): nothing of it is reachable or counts as here.
  const live = cells.filter((c) => c.spec.tenant === name && c.status.phase !== 'Lost' && c.status.phase !== 'Failed');
  const cellAddress = new Map(live.flatMap((c) => (c.status.address ? [[c.metadata.name, c.status.address] as const] : [])));
  // An instance in a cell has its cell's address (it shares the VM's network).
  const addressOf = (i: Instance): string | undefined => i.status.address ?? (i.spec.cell ? cellAddress.get(i.spec.cell) : undefined);
  const views: ServiceView[] = services.flatMap((s) => {
    const vip = s.status?.address;
    if (!vip || s.metadata.deletionRequestedAt) return [];
    const ready = instances.filter((i) => i.spec.owner.kind === 'Service' && i.spec.owner.uid === s.metadata.uid && instanceReady(i));
    const seen = new Set<string>();
    const ports = s.spec.ports.map((p) => ({ port: p.containerPort, protocol: p.protocol })).filter((p) => !seen.has(`${p.protocol}/${p.port}`) && seen.add(`${p.protocol}/${p.port}`));
    return [{ name: s.metadata.name, vip, ports, endpoints: [...new Set(ready.flatMap((i) => addressOf(i) ?? []))].sort() }];
  });
  views.sort((a, b) => a.name.localeCompare(b.name));
  const taken = new Set(views.map((v) => v.name));
  const names = [
    ...machines.flatMap((m) => (m.status.address && !m.metadata.deletionRequestedAt ? [{ name: m.metadata.name, ip: m.status.address }] : [])),
    // Each replica by its own name too (`web-0`), for peers that must reach one of them.
    ...instances.flatMap((i) => {
      const a = addressOf(i);
      return a && i.status.phase === 'Running' && !i.metadata.deletionRequestedAt ? [{ name: i.metadata.name, ip: a }] : [];
    }),
  ].filter((n) => !taken.has(n.name) && taken.add(n.name));
  names.sort((a, b) => a.name.localeCompare(b.name));
  const egress = egressOf(tenant.spec);
  const hosts = [
    ...instances.map((i) => i.spec.host),
    ...live.map((c) => c.spec.host),
    ...machines.map((m) => m.status.host ?? ''),
  ].filter((h) => h !== '');
  return { tenant: name, egress: { default: egress.default, allow: egress.allow }, services: views, names, hosts: [...new Set(hosts)].sort() };
}

export interface NetworkViewControllerOptions {
  resources: Resources;
  logger: Logger;
}

/** Keeps every tenant's network view equal to what its objects say. */
export class NetworkViewController {
  private readonly loop: Reconciler;
  private readonly log: Logger;

  constructor(private readonly o: NetworkViewControllerOptions) {
    this.log = o.logger.child({ component: 'network-view' });
    const tenantOf = (v: { metadata: { tenant?: string } }): string[] => (v.metadata.tenant ? [v.metadata.tenant] : []);
    this.loop = new Reconciler({
      name: 'network-view',
      store: o.resources.store,
      logger: this.log,
      reconcile: (tenant) => this.reconcile(tenant),
      concurrency: 2,
      resync: { everyMs: 30_000, keys: async () => (await o.resources.list('Tenant')).items.map((t) => t.metadata.name) },
      watches: [
        watchOf<Tenant>(kindPrefix('Tenant'), (e) => [e.value.metadata.name]),
        // Only changes of what networkViewOf reads queue the tenant: a spec rollout, a probe's
        // message or a usage sample does not (at 100 writes/s a pass per write was a third of
        // the server's CPU).
        watchChangesOf<Service>(kindPrefix('Service'), (s) => JSON.stringify([s.metadata.uid, s.status?.address, s.metadata.deletionRequestedAt, s.spec.ports]), (e) => tenantOf(e.value)),
        watchChangesOf<Instance>(
          kindPrefix('Instance'),
          (i) => JSON.stringify([i.spec.owner.kind, i.spec.owner.uid, instanceReady(i), i.status.phase, i.status.address, i.spec.cell, i.spec.host, i.metadata.deletionRequestedAt]),
          (e) => tenantOf(e.value),
        ),
        watchChangesOf<Machine>(kindPrefix('Machine'), (m) => JSON.stringify([m.status.address, m.status.host, m.metadata.deletionRequestedAt]), (e) => tenantOf(e.value)),
        watchChangesOf<Cell>(kindPrefix('Cell'), (c) => JSON.stringify([c.spec.tenant, c.spec.host, c.status.phase, c.status.address]), (e) => (e.value.spec.tenant ? [e.value.spec.tenant] : [])),
      ],
    });
  }

  /** Runs until `signal` aborts. */
  start(signal: AbortSignal): Promise<void> {
    return this.loop.start(signal);
  }

  private async reconcile(tenant: string): Promise<ReconcileResult> {
    const r = this.o.resources;
    const key = tenantNetworkViewKey(tenant);
    const t = await r.get('Tenant', tenant);
    if (!t) {
      // The tenant is gone: so is its view (its network record went with its deletion).
      if (await r.store.get(key)) await r.store.delete(key);
      return;
    }
    const [services, instances, cells, machines] = await Promise.all([r.list('Service', tenant), r.list('Instance', tenant), r.list('Cell'), r.list('Machine', tenant)]);
    const view = networkViewOf(t, services.items, instances.items, cells.items, machines.items);
    const cur = await r.store.get<TenantNetworkView>(key);
    if (cur && isDeepStrictEqual(cur.value, view)) return;
    await r.store.put(key, view);
    this.log.debug({ tenant, services: view.services.length, names: view.names.length }, 'network view written');
    return;
  }
}

