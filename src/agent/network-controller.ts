/**
 * This host's side of the tenant networks: from what the store says (the tenants' network
 * records and views, this host's own instances, cells and machines, and the hosts) it makes
 * the host's data plane (network/, `TenantNetworking`) match, one tenant per pass:
 * - a segment (bridge, gateway, VXLAN, DNS server, firewall) for every tenant with work on this
 *   host and a block here; removed when the tenant's last workload left the host;
 * - the tenant's services (VIP → ready endpoints anywhere in the cluster) and names (services,
 *   machines, instances), so balancing is done by the client's host, in its kernel;
 * - the tenant's VXLAN peers: the other hosts with a block of it;
 * - once for all tenants: the infrastructure no workload may reach (every host's address, the
 *   control plane's and the store's).
 * A replica that fails its readiness probe or dies is written by its agent; the control plane
 * rewrites its tenant's view (control/network-view.ts), whose watch brings it here, and the
 * service's balancing is regenerated at once: two store writes, two watch events, one `nft -f`
 * (the issue's 2 s bound).
 */
import { KeyedMutex } from '../proc/keyed-mutex.js';
import type { Logger } from 'pino';
import type { Resources } from '../core/resources.js';
import { kindPrefix, tenantNetworkKey, tenantNetworkViewKey, TENANT_NETWORK_PREFIX, TENANT_NETWORK_VIEW_PREFIX } from '../model/keys.js';
import type { Cell, Host, Instance, Machine } from '../model/objects.js';
import { blockGateway, DEFAULT_NETWORK_POOLS, type NetworkPools, type TenantNetwork, type TenantNetworkView } from '../model/tenant-network.js';
import { formatCidr } from '../model/netaddr.js';
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
  /** The cluster's pools (model/tenant-network.ts); the defaults until they become server options. */
  private readonly pools: NetworkPools;
  /** The hosts and addresses the infrastructure set and the peers were last made from. */
  private lastHosts = '';
  /** Per tenant: a segment's removal and a workload's attachment to it never interleave. */
  private readonly segmentLocks = new KeyedMutex();

  constructor(private readonly o: NetworkControllerOptions) {
    this.log = o.logger.child({ component: 'network', host: o.hostName });
    this.domain = o.clusterDomain ?? DEFAULT_NETWORK_POOLS.clusterDomain;
    this.pools = DEFAULT_NETWORK_POOLS;
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
        watchOf<TenantNetworkView>(TENANT_NETWORK_VIEW_PREFIX, (e) => [e.value.tenant]),
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
   * Makes sure `tenant`'s segment exists on this host now and runs `attach` (which puts a
   * workload's endpoint on it) while no pass of this controller can remove the segment: a pass
   * that read the tenant's work just before the workload was placed here would otherwise take
   * the segment away between its making and the attachment (seen as a container whose restart
   * failed with "no segment on this host"). Throws when the tenant has no block here: the
   * placement that brought the workload here allocated one in its own transaction.
   */
  async attachToTenant<T>(tenant: string, attach: (segment: TenantSegment) => Promise<T>): Promise<T> {
    return this.segmentLocks.run(tenant, async () => {
      const spec = await this.segmentSpec(tenant);
      if (!spec) throw new Error(`tenant ${tenant} has no network block on host ${this.o.hostName} yet`);
      await this.o.net.ensureSegment(spec);
      return attach({ gateway: blockGateway(spec.block) ?? '', search: `${tenant}.${this.domain}` });
    });
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
    const [entry, view, host, hosts] = await Promise.all([
      this.o.resources.store.get<TenantNetwork>(tenantNetworkKey(tenant)),
      this.o.resources.store.get<TenantNetworkView>(tenantNetworkViewKey(tenant)),
      this.o.resources.get('Host', this.o.hostName),
      this.o.resources.list('Host'),
    ]);
    const block = entry?.value.blocks[this.o.hostName];
    if (!entry || !block) return undefined;
    // Two hosts claiming one address share a network namespace (several agents on one test
    // machine): one VXLAN device per network identifier fits there, so neither gets an overlay.
    const address = host?.status.address;
    const shared = address !== undefined && hosts.items.some((h) => h.metadata.name !== this.o.hostName && h.status.address === address);
    // Until the control plane has written the tenant's view, nothing leaves: safe for a tenant
    // whose policy is deny, and a view follows the tenant's creation within moments.
    const egress = view?.value.egress ?? { default: 'deny' as const, allow: [] };
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
    // Also the tenant and service pools: what a segment sends there that its own routes and
    // service addresses do not take (another tenant's address on another host, another tenant's
    // service address) must be dropped here, not routed out to the world.
    const pools = [formatCidr(this.pools.tenantPool), formatCidr(this.pools.servicePool)];
    const addresses = [...new Set([...hosts.flatMap((h) => (h.status.address ? [h.status.address] : [])), ...this.o.controlPlane, ...pools])].sort();
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
    // Read and acted on under the tenant's lock: an attachment that started after this read
    // would see its segment removed (attachToTenant).
    return this.segmentLocks.run(tenant, () => this.reconcileSegment(tenant));
  }

  private async reconcileSegment(tenant: string): Promise<ReconcileResult> {
    const r = this.o.resources;
    const here = this.o.hostName;
    // What this host runs of the tenant (the agent API shows an agent its own objects only).
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
    // Services and names come from the tenant's view (control/network-view.ts): this agent
    // reads no other host's objects of the tenant.
    const view = (await r.store.get<TenantNetworkView>(tenantNetworkViewKey(tenant)))?.value;
    const entries: ServiceEntry[] = (view?.services ?? []).map((v) => ({ name: v.name, vip: v.vip, ports: v.ports, endpoints: v.endpoints }));
    await this.o.net.setServices(tenant, entries);
    const names: DnsName[] = (view?.names ?? []).map((n) => ({ name: n.name, ip: n.ip }));
    await this.o.net.setNames(tenant, names);

    // Peers: the other hosts running the tenant's work now (a host it left drops out).
    const hosts = (await r.list('Host')).items;
    const running = new Set(view?.hosts ?? []);
    const peers = hosts.flatMap((h) => (h.metadata.name !== here && running.has(h.metadata.name) && h.status.address && h.status.address !== spec.underlay ? [h.status.address] : []));
    await this.o.net.setPeers(tenant, [...new Set(peers)].sort());
    return;
  }
}
