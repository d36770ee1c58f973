/**
 * Tenant networks, as data: the cluster's address pools and cluster domain (one place, so
 * they can become server options), the `TenantNetwork` record the plan applier writes and
 * the agents read, and the pure rules that hand out tenant networks (one /18 and one VXLAN
 * network identifier per tenant), host blocks (one /24 of the tenant's network per host it
 * runs work on) and service addresses (VIPs, from a pool outside every tenant network, so a
 * client sends them to its gateway). Who writes what, and in which transaction, is
 * control/'s and core/'s; this module only answers "which one is free".
 */
import { blockSize, cidrsOverlap, formatCidr, formatIpv4, lastAddress, parseCidr, subnetAt, subnetCount, subnetIndex, type Cidr } from './netaddr.js';

/** The defaults of the cluster's network settings. */
export const NETWORK_DEFAULTS = {
  /** Every tenant network is a block of this pool. */
  tenantPool: '10.128.0.0/9',
  /** The size of one tenant network (a /18: 64 host blocks of /24). */
  tenantPrefix: 18,
  /** The size of one host's block of a tenant network. */
  blockPrefix: 24,
  /** Service addresses (VIPs) come from here; it must not overlap the tenant pool. */
  servicePool: '10.112.0.0/12',
  /** A tenant network's VXLAN network identifier is this plus its index in the tenant pool. */
  vniBase: 1000,
  /** `redis.<tenant>.<clusterDomain>` names a service. */
  clusterDomain: 'carapace.internal',
} as const;

/** The network settings of a cluster, parsed (see NETWORK_DEFAULTS). */
export interface NetworkPools {
  tenantPool: Cidr;
  tenantPrefix: number;
  blockPrefix: number;
  servicePool: Cidr;
  vniBase: number;
  clusterDomain: string;
}

/** The settings as text, as an operator would write them. */
export interface NetworkSettings {
  tenantPool: string;
  tenantPrefix: number;
  blockPrefix: number;
  servicePool: string;
  vniBase: number;
  clusterDomain: string;
}

function mustParse(what: string, text: string): Cidr {
  const r = parseCidr(text);
  if (!r.ok) throw new Error(`${what} ${text} ${r.message}`);
  return r.cidr;
}

/**
 * Parses and checks network settings; throws (a configuration error, found at start) when
 * the pools overlap or the prefixes do not nest (pool ⊇ tenant network ⊇ host block).
 */
export function networkPools(s: NetworkSettings = NETWORK_DEFAULTS): NetworkPools {
  const tenantPool = mustParse('the tenant pool', s.tenantPool);
  const servicePool = mustParse('the service pool', s.servicePool);
  if (cidrsOverlap(tenantPool, servicePool)) throw new Error(`the service pool ${s.servicePool} overlaps the tenant pool ${s.tenantPool}`);
  if (!(s.tenantPrefix >= tenantPool.prefix && s.blockPrefix >= s.tenantPrefix && s.blockPrefix <= 30)) {
    throw new Error(`prefixes must nest: tenant pool /${tenantPool.prefix} <= tenant network /${s.tenantPrefix} <= host block /${s.blockPrefix} <= /30`);
  }
  if (!Number.isInteger(s.vniBase) || s.vniBase < 1 || s.vniBase + subnetCount(tenantPool, s.tenantPrefix) > 2 ** 24) throw new Error(`VNIs from ${s.vniBase} do not fit in 24 bits`);
  return { tenantPool, tenantPrefix: s.tenantPrefix, blockPrefix: s.blockPrefix, servicePool, vniBase: s.vniBase, clusterDomain: s.clusterDomain };
}

/** The cluster's network settings (the defaults; they become server options later). */
export const DEFAULT_NETWORK_POOLS: NetworkPools = networkPools();

/**
 * One tenant's network, stored at `tenantNetworkKey(tenant)`. Created by the plan applier
 * with the first placement of the tenant's work; `cidr` and `vni` never change; a host's
 * block is added with the first placement of the tenant on that host and kept while the
 * host exists. Deleted with the tenant.
 */
export interface TenantNetwork {
  tenant: string;
  /** The tenant network, e.g. `10.128.64.0/18`. */
  cidr: string;
  /** Its VXLAN network identifier (vniBase + its index in the tenant pool). */
  vni: number;
  /** Host name → that host's block of the network, e.g. `{h1: '10.128.64.0/24'}`. */
  blocks: Record<string, string>;
  createdAt: string;
}

/** What a cluster-wide CIDR claim (`cidrClaimKey(index)`) holds: which tenant owns that index. */
export interface CidrClaim {
  tenant: string;
}

/** What a service address claim (`vipClaimKey(ip)`) holds: the service that owns the address. */
export interface VipClaim {
  tenant: string;
  service: string;
  /** The service's uid: a re-created service of the same name does not own its predecessor's claim. */
  uid: string;
}

/** How many tenant networks the pool holds. */
export function tenantNetworkCount(p: NetworkPools): number {
  return subnetCount(p.tenantPool, p.tenantPrefix);
}

/** The CIDR and VNI of the tenant network at `index` of the pool. */
export function tenantNetworkAt(p: NetworkPools, index: number): { cidr: string; vni: number } {
  return { cidr: formatCidr(subnetAt(p.tenantPool, p.tenantPrefix, index)), vni: p.vniBase + index };
}

/** The pool index of a stored network's CIDR, or undefined when it is not one of the pool's blocks. */
export function tenantNetworkIndex(p: NetworkPools, cidr: string): number | undefined {
  const c = parseCidr(cidr);
  return c.ok ? subnetIndex(p.tenantPool, c.cidr, p.tenantPrefix) : undefined;
}

/** The lowest index no tenant network uses, or undefined when the pool is exhausted. */
export function freeTenantNetworkIndex(p: NetworkPools, used: ReadonlySet<number>): number | undefined {
  const n = tenantNetworkCount(p);
  for (let i = 0; i < n; i++) if (!used.has(i)) return i;
  return undefined;
}

/** A new tenant network record at pool index `index`, with no host block yet. */
export function newTenantNetwork(p: NetworkPools, tenant: string, index: number, now: string): TenantNetwork {
  return { tenant, ...tenantNetworkAt(p, index), blocks: {}, createdAt: now };
}

/**
 * The network with a block for `host`: unchanged (`added` undefined) when the host has one,
 * else with the lowest free block added. Undefined when every block is taken.
 */
export function withHostBlock(p: NetworkPools, net: TenantNetwork, host: string): { network: TenantNetwork; added?: string } | undefined {
  if (net.blocks[host] !== undefined) return { network: net };
  const parsed = parseCidr(net.cidr);
  if (!parsed.ok) return undefined;
  const taken = new Set(Object.values(net.blocks));
  const n = subnetCount(parsed.cidr, p.blockPrefix);
  for (let i = 0; i < n; i++) {
    const block = formatCidr(subnetAt(parsed.cidr, p.blockPrefix, i));
    if (!taken.has(block)) return { network: { ...net, blocks: { ...net.blocks, [host]: block } }, added: block };
  }
  return undefined;
}

/** How many host blocks one tenant network holds. */
export function hostBlockCount(p: NetworkPools): number {
  return 2 ** (p.blockPrefix - p.tenantPrefix);
}

/** The host's gateway address on a block: its first address after the network address. */
export function blockGateway(block: string): string | undefined {
  const c = parseCidr(block);
  return c.ok ? formatIpv4(c.cidr.network + 1) : undefined;
}

/**
 * The lowest free service address of the pool (its first and last addresses are never
 * handed out), or undefined when every one is taken. `used` holds addresses as numbers.
 */
export function freeServiceAddress(p: NetworkPools, used: ReadonlySet<number>): string | undefined {
  const last = lastAddress(p.servicePool);
  for (let ip = p.servicePool.network + 1; ip < last; ip++) if (!used.has(ip)) return formatIpv4(ip);
  return undefined;
}

/** How many service addresses the pool hands out. */
export function serviceAddressCount(p: NetworkPools): number {
  return blockSize(p.servicePool.prefix) - 2;
}

/** One service as every host with a segment of its tenant balances it. */
export interface ServiceView {
  name: string;
  /** The service address (VIP). */
  vip: string;
  /** Ports balanced from the VIP to the same port of each endpoint. */
  ports: { port: number; protocol: 'tcp' | 'udp' }[];
  /** Addresses of the ready replicas, anywhere in the cluster (sorted). */
  endpoints: string[];
}

/**
 * What the hosts of a tenant program for it, stored at `tenantNetworkViewKey(tenant)`: derived
 * by the control plane from the tenant's services, instances, cells, machines and spec, and
 * rewritten when any of it changes. Agents read this instead of the objects themselves, so an
 * agent reads no other tenant's specs (a service's ready addresses, not its replicas).
 */
export interface TenantNetworkView {
  tenant: string;
  egress: { default: 'allow' | 'deny'; allow: { cidr: string; protocol?: 'tcp' | 'udp'; ports?: number[] }[] };
  services: ServiceView[];
  /** Other names: machines and instances by their own names (sorted by name). */
  names: { name: string; ip: string }[];
}
