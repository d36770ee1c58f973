/**
 * This host's side of the tenant networks: from what the store says (the tenants' network
 * records, their services, instances, cells, machines, and the hosts) it makes the host's data
 * plane (network/, `TenantNetworking`) match, one tenant per pass:
 * - a segment (bridge, gateway, VXLAN, DNS server, firewall) for every tenant with work on this
 *   host and a block here; removed when the tenant's last workload left the host;
 * - the tenant's services (VIP → ready endpoints anywhere in the cluster) and names (services,
 *   machines, instances), so balancing is done by the client's host, in its kernel;
 * - the tenant's VXLAN peers: the other hosts with a block of it;
 * - once for all tenants: the infrastructure no workload may reach (every host's address, the
 *   control plane's and the store's).
 * A replica that fails its readiness probe or dies is written by its agent; the watch brings
 * that write here and the service's balancing is regenerated at once (the 2 s bound of the
 * issue is this path: a store write, a watch event, one `nft -f`).
 */
import type { Logger } from 'pino';
import type { Resources } from '../core/resources.js';
import { kindPrefix, tenantNetworkKey, TENANT_NETWORK_PREFIX } from '../model/keys.js';
import { instanceReady, type Cell, type Host, type Instance, type Machine, type Service } from '../model/objects.js';
import { egressOf } from '../model/schemas.js';
import { blockGateway, DEFAULT_NETWORK_POOLS, type TenantNetwork } from '../model/tenant-network.js';
import type { DnsName, EgressPolicy, SegmentSpec, ServiceEntry, TenantNetworking } from '../network/types.js';
import { Reconciler, watchOf } from '../reconcile/reconciler.js';
import { metrics } from '../metrics/metrics.js';
import type { ReconcileResult } from '../reconcile/workqueue.js';

export interface NetworkControllerOptions {
  hostName: string;
  resources: Resources;
  logger: Logger;
  net: TenantNetworking;
  /** Addresses of the control plane and the store (the API server's, etcd's) that no workload may reach. */
  controlPlane: string[];
  /** `redis.<tenant>.<domain>`; default the cluster's (model/tenant-network.ts). */
  clusterDomain?: string;
}

/**
 * The host's tenant networks, as the agent's loops use them: the data plane (network/) and
 * this host's controller of it. Containers of `namespace` drivers get an endpoint (a
 * namespace) on their tenant's segment; cells, dedicated VMs and machines a tap.
 */
export interface HostNetworking {
  net: TenantNetworking;
  controller: NetworkController;
}

/** The endpoint id of a cell's VM (its tap). */
export function cellEndpointId(cell: string): string {
  return `cell.${cell}`;
}

/** The key of the pass that programs the infrastructure set (all hosts' addresses). */
const INFRA_KEY = '#infrastructure';

/** What a workload on this host needs to join its tenant's network. */
export interface TenantSegment {
  gateway: string;
  /** The resolver's search domain: `<tenant>.<cluster domain>`. */
  search: string;
}

export class NetworkController {
  private readonly log: Logger;
  private readonly queue: Reconciler;
  private readonly domain: string;
  /** The hosts and addresses the infrastructure set and the peers were last made from. */
  private lastHosts = '';

  constructor(private readonly o: NetworkControllerOptions) {
    this.log = o.logger.child({ component: 'network', host: o.hostName });
    this.domain = o.clusterDomain ?? DEFAULT_NETWORK_POOLS.clusterDomain;
    const tenantOf = (v: { metadata: { tenant?: string } }): string[] => (v.metadata.tenant ? [v.metadata.tenant] : []);
    this.queue = new Reconciler({
      name: 'agent-network',
      store: o.resources.store,
      logger: this.log,
      reconcile: (key) => (key === INFRA_KEY ? this.reconcileInfrastructure() : this.reconcile(key)),
      concurrency: 2,
      resync: {
        everyMs: 15_000,
        keys: async () => [INFRA_KEY, ...(await this.o.net.segments()), ...(await this.tenantsWithNetworks())],
      },
      watches: [
        watchOf<TenantNetwork>(TENANT_NETWORK_PREFIX, (e) => [e.value.tenant]),
        watchOf<{ metadata: { name: string } }>(kindPrefix('Tenant'), (e) => [e.value.metadata.name]),
        watchOf<Service>(kindPrefix('Service'), (e) => tenantOf(e.value)),
        watchOf<Instance>(kindPrefix('Instance'), (e) => tenantOf(e.value)),
        watchOf<Machine>(kindPrefix('Machine'), (e) => tenantOf(e.value)),
        watchOf<Cell>(kindPrefix('Cell'), (e) => (e.value.spec.tenant ? [e.value.spec.tenant] : [])),
        // A host's address changes the peers of every tenant and the infrastructure set.
        watchOf<Host>(kindPrefix('Host'), () => [INFRA_KEY]),
      ],
    });
  }

  /** Runs until `signal` aborts; the segments stay in the kernel after it. */
  start(signal: AbortSignal): Promise<void> {
    return this.queue.start(signal);
  }

  /**
   * Makes sure `tenant`'s segment exists on this host now (before a workload is attached to
   * it) and returns what the workload needs. Throws when the tenant has no block here: the
   * placement that brought the workload here allocated one in its own transaction.
   */
  async ensureTenant(tenant: string): Promise<TenantSegment> {
    const spec = await this.segmentSpec(tenant);
    if (!spec) throw new Error(`tenant ${tenant} has no network block on host ${this.o.hostName} yet`);
    await this.o.net.ensureSegment(spec);
    return { gateway: blockGateway(spec.block) ?? '', search: `${tenant}.${this.domain}` };
  }

  /** Queues a pass over `tenant` (e.g. after one of its endpoints was detached). */
  touch(tenant: string): void {
    this.queue.add(tenant);
  }

  private async tenantsWithNetworks(): Promise<string[]> {
    const r = await this.o.resources.store.list<TenantNetwork>(TENANT_NETWORK_PREFIX);
    return r.items.filter((e) => e.value.blocks[this.o.hostName] !== undefined).map((e) => e.value.tenant);
  }

  private async segmentSpec(tenant: string): Promise<SegmentSpec | undefined> {
    const [entry, t, host] = await Promise.all([
      this.o.resources.store.get<TenantNetwork>(tenantNetworkKey(tenant)),
      this.o.resources.get('Tenant', tenant),
      this.o.resources.get('Host', this.o.hostName),
    ]);
    const block = entry?.value.blocks[this.o.hostName];
    if (!entry || !block) return undefined;
    // Two hosts claiming one address share a network namespace (several agents on one test
    // machine): one VXLAN device per network identifier fits there, so neither gets an overlay.
    const address = host?.status.address;
    const shared = address !== undefined && (await this.o.resources.list('Host')).items.some((h) => h.metadata.name !== this.o.hostName && h.status.address === address);
    const egress = t ? egressOf(t.spec) : { default: 'allow' as const, allow: [] };
    const policy: EgressPolicy = egress.default === 'allow' ? { default: 'allow' } : { default: 'deny', allow: egress.allow };
    return {
      tenant,
      cidr: entry.value.cidr,
      block,
      vni: entry.value.vni,
      domain: this.domain,
      egress: policy,
      ...(address !== undefined && !shared ? { underlay: address } : {}),
    };
  }

  private async reconcileInfrastructure(): Promise<ReconcileResult> {
    const hosts = (await this.o.resources.list('Host')).items;
    const addresses = [...new Set([...hosts.flatMap((h) => (h.status.address ? [h.status.address] : [])), ...this.o.controlPlane])].sort();
    const hostsKey = JSON.stringify(hosts.map((h) => [h.metadata.name, h.status.address ?? '']).sort());
    if (hostsKey !== this.lastHosts) {
      await this.o.net.setInfrastructure(addresses);
      for (const t of await this.o.net.segments()) this.queue.add(t); // peers follow the hosts' addresses
      this.lastHosts = hostsKey;
    }
    for (const [tenant, packets] of Object.entries(await this.o.net.egressDenied())) metrics.egressDenied.set({ tenant, host: this.o.hostName }, packets);
    return { requeueAfterMs: 5_000 }; // the denied-packet counters, read every 5 s
  }

  /** One level-based pass over one tenant's segment on this host. */
  private async reconcile(tenant: string): Promise<ReconcileResult> {
    const r = this.o.resources;
    const here = this.o.hostName;
    const [instances, cells, machines] = await Promise.all([r.list('Instance', tenant), r.list('Cell'), r.list('Machine', tenant)]);
    const work =
      instances.items.some((i) => i.spec.host === here) ||
      cells.items.some((c) => c.spec.tenant === tenant && c.spec.host === here) ||
      machines.items.some((m) => m.status.host === here);
    const spec = work ? await this.segmentSpec(tenant) : undefined;
    if (!spec) {
      if ((await this.o.net.segments()).includes(tenant)) {
        try {
          await this.o.net.removeSegment(tenant);
          this.log.info({ tenant }, 'tenant segment removed: no work of the tenant left on this host');
        } catch (err) {
          // Its last endpoints are still being detached (a VM shutting down): look again soon.
          this.log.debug({ tenant, err }, 'tenant segment still has endpoints');
          return { requeueAfterMs: 2_000 };
        }
      }
      return;
    }
    await this.o.net.ensureSegment(spec);

    const cellAddress = new Map(cells.items.flatMap((c) => (c.spec.tenant === tenant && c.status.address ? [[c.metadata.name, c.status.address] as const] : [])));
    const addressOf = (i: Instance): string | undefined => i.status.address ?? (i.spec.cell ? cellAddress.get(i.spec.cell) : undefined);
    const services = (await r.list('Service', tenant)).items;
    const entries: ServiceEntry[] = services.flatMap((s) => {
      const vip = s.status?.address;
      if (!vip || s.metadata.deletionRequestedAt) return [];
      const ready = instances.items.filter((i) => i.spec.owner.kind === 'Service' && i.spec.owner.uid === s.metadata.uid && instanceReady(i));
      const endpoints = [...new Set(ready.flatMap((i) => addressOf(i) ?? []))].sort();
      const ports = uniquePorts(s.spec.ports.map((p) => ({ port: p.containerPort, protocol: p.protocol })));
      return [{ name: s.metadata.name, vip, ports, endpoints }];
    });
    await this.o.net.setServices(tenant, entries);

    const serviceNames = new Set(entries.map((e) => e.name));
    const names: DnsName[] = [
      ...machines.items.flatMap((m) => (m.status.address && !serviceNames.has(m.metadata.name) ? [{ name: m.metadata.name, ip: m.status.address }] : [])),
      // Each instance by its own name too (`web-0`), for peers that must reach one replica.
      ...instances.items.flatMap((i) => {
        const a = addressOf(i);
        return a && !serviceNames.has(i.metadata.name) && i.status.phase === 'Running' ? [{ name: i.metadata.name, ip: a }] : [];
      }),
    ];
    await this.o.net.setNames(tenant, names);

    const entry = await r.store.get<TenantNetwork>(tenantNetworkKey(tenant));
    const hosts = (await r.list('Host')).items;
    const peers = hosts.flatMap((h) => (h.metadata.name !== here && h.status.address && entry?.value.blocks[h.metadata.name] !== undefined && h.status.address !== spec.underlay ? [h.status.address] : []));
    await this.o.net.setPeers(tenant, [...new Set(peers)].sort());
    return;
  }
}

function uniquePorts(ports: { port: number; protocol: 'tcp' | 'udp' }[]): { port: number; protocol: 'tcp' | 'udp' }[] {
  const seen = new Set<string>();
  return ports.filter((p) => {
    const k = `${p.protocol}/${p.port}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}
