/**
 * Which tenant networks and host blocks a plan needs, decided before the plan is written
 * (pure: the plan applier turns each change into store operations in the transaction of the
 * placement that needs it). A tenant gets its network with the first placement of its work
 * (instance, cell or machine) anywhere; a host gets its block of that network with the first
 * placement of the tenant's work on it. The ledger remembers what it handed out, so the units
 * of one plan see each other's changes.
 */
import { freeTenantNetworkIndex, newTenantNetwork, tenantNetworkIndex, withHostBlock, type NetworkPools, type TenantNetwork } from '../model/tenant-network.js';

/** What one placement unit must write so that its tenant has a network with a block on its host. */
export interface NetworkChange {
  tenant: string;
  /** The record as the unit leaves it. */
  network: TenantNetwork;
  /** Set when the unit creates the network: the pool index it claims (its claim key is created with `expect absent`). */
  createdIndex?: number;
  /** Set when the unit adds the host's block. */
  addedBlock?: { host: string; block: string };
}

/** The answer of `ensure`: nothing to change, a change, or the pool is exhausted (with the sentence for the status). */
export type EnsureResult = { ok: true; change?: NetworkChange } | { ok: false; message: string };

export class NetworkLedger {
  private readonly networks: Map<string, TenantNetwork>;
  private readonly usedIndexes: Set<number>;

  /**
   * `networks`: the stored tenant networks by tenant; `claimedIndexes`: the pool indexes of
   * the stored CIDR claims (a claim whose record is missing still blocks its index).
   */
  constructor(
    private readonly pools: NetworkPools,
    networks: ReadonlyMap<string, TenantNetwork>,
    claimedIndexes: Iterable<number>,
    private readonly now: string,
  ) {
    this.networks = new Map(networks);
    this.usedIndexes = new Set(claimedIndexes);
    for (const n of networks.values()) {
      const i = tenantNetworkIndex(pools, n.cidr);
      if (i !== undefined) this.usedIndexes.add(i);
    }
  }

  /**
   * What a placement of `tenant`'s work on `host` must write: the network when the tenant has
   * none, the host's block when the host has none. Remembered: a second call for the same
   * pair changes nothing. Refused (nothing remembered) when the pool or the tenant's blocks
   * are used up.
   */
  ensure(tenant: string, host: string): EnsureResult {
    const current = this.networks.get(tenant);
    let network = current;
    let createdIndex: number | undefined;
    if (!network) {
      createdIndex = freeTenantNetworkIndex(this.pools, this.usedIndexes);
      if (createdIndex === undefined) {
        return { ok: false, message: `no tenant network is left for tenant ${tenant}: every /${this.pools.tenantPrefix} of the tenant pool is taken; delete unused tenants` };
      }
      network = newTenantNetwork(this.pools, tenant, createdIndex, this.now);
    }
    const withBlock = withHostBlock(this.pools, network, host);
    if (!withBlock) return { ok: false, message: `tenant ${tenant}'s network ${network.cidr} has no host block left for host ${host}: every /${this.pools.blockPrefix} is taken` };
    if (current && withBlock.added === undefined) return { ok: true };
    this.networks.set(tenant, withBlock.network);
    if (createdIndex !== undefined) this.usedIndexes.add(createdIndex);
    return {
      ok: true,
      change: {
        tenant,
        network: withBlock.network,
        ...(createdIndex !== undefined ? { createdIndex } : {}),
        ...(withBlock.added !== undefined ? { addedBlock: { host, block: withBlock.added } } : {}),
      },
    };
  }
}
