/**
 * The store operations of network records that ride on a mutation of an object: a service's
 * address (VIP) claimed with its creation and released with its deletion, a tenant's network
 * and CIDR claims deleted with the tenant. Each function returns operations for the caller's
 * own transaction (with the object's write and its audit record), never writes by itself.
 * Which addresses exist is model/tenant-network.ts's; the network record itself is written by
 * the plan applier (control/).
 */
import { CarapaceError } from '../model/errors.js';
import { CIDR_CLAIM_PREFIX, tenantNetworkKey, VIP_CLAIM_PREFIX, vipClaimKey } from '../model/keys.js';
import { parseIpv4 } from '../model/netaddr.js';
import type { Service } from '../model/objects.js';
import { freeServiceAddress, type CidrClaim, type NetworkPools, type VipClaim } from '../model/tenant-network.js';
import type { Store, TxnOp } from '../store/store.js';

/**
 * A free service address for `svc` and the claim to create with it (`expect absent`: a
 * service created at the same moment that picked the same address makes one of the two
 * transactions fail, and its caller re-reads). CARAPACE_E_NETWORK_POOL_EXHAUSTED when the
 * service pool is used up.
 */
export async function claimServiceAddress(store: Store, pools: NetworkPools, svc: Service): Promise<{ address: string; op: TxnOp }> {
  const claims = await store.list<VipClaim>(VIP_CLAIM_PREFIX);
  const used = new Set<number>();
  for (const e of claims.items) {
    const ip = parseIpv4(e.key.slice(VIP_CLAIM_PREFIX.length));
    if (ip !== undefined) used.add(ip);
  }
  const address = freeServiceAddress(pools, used);
  const tenant = svc.metadata.tenant ?? '';
  if (address === undefined) {
    throw new CarapaceError('CARAPACE_E_NETWORK_POOL_EXHAUSTED', `service "${svc.metadata.name}" in tenant "${tenant}": no service address is left (every address of the service pool is taken); delete unused services`);
  }
  const claim: VipClaim = { tenant, service: svc.metadata.name, uid: svc.metadata.uid };
  return { address, op: { op: 'put', key: vipClaimKey(address), value: claim, expect: { absent: true } } };
}

/**
 * The operation releasing `svc`'s address, for the transaction that deletes it: none when it
 * has no address or the claim is not its own (a claim belongs to the service's uid).
 */
export async function releaseServiceAddressOps(store: Store, svc: Service): Promise<TxnOp[]> {
  const address = svc.status.address;
  if (address === undefined) return [];
  const e = await store.get<VipClaim>(vipClaimKey(address));
  if (!e || e.value.uid !== svc.metadata.uid) return [];
  return [{ op: 'delete', key: e.key, expect: { version: e.version } }];
}

/** The operations deleting `tenant`'s network record and its CIDR claims, for the transaction that deletes the tenant. */
export async function tenantNetworkRemovalOps(store: Store, tenant: string): Promise<TxnOp[]> {
  const [net, claims] = await Promise.all([store.get(tenantNetworkKey(tenant)), store.list<CidrClaim>(CIDR_CLAIM_PREFIX)]);
  const ops: TxnOp[] = [];
  if (net) ops.push({ op: 'delete', key: net.key, expect: { version: net.version } });
  for (const c of claims.items) if (c.value.tenant === tenant) ops.push({ op: 'delete', key: c.key, expect: { version: c.version } });
  return ops;
}
