/**
 * Names of the kernel objects of the tenant data plane: links, nftables tables, chains and
 * counters. Every name carries the agent's prefix, so two agents in one network namespace never
 * collide and each can list (and clean) exactly its own objects. Pure.
 */
import { createHash } from 'node:crypto';

/** Agent prefixes: short, so `<prefix><kind><hash>` fits the kernel's 15-byte interface names. */
export const PREFIX_PATTERN = /^[a-z][a-z0-9]{0,3}$/;

/** Hex digits of sha256 naming a tenant (32 bits; a collision is detected against the records). */
const TENANT_HASH_LEN = 8;
/** Hex digits of sha256 naming an endpoint (40 bits; a collision is detected against the records). */
const ENDPOINT_HASH_LEN = 10;

function hex(text: string, len: number): string {
  return createHash('sha256').update(text).digest('hex').slice(0, len);
}

/** The short hash of a tenant that names its bridge, VXLAN device, chains and counter. */
export function tenantHash(tenant: string): string {
  return hex(tenant, TENANT_HASH_LEN);
}

/** The names one agent (one prefix) gives its objects. */
export interface Names {
  prefix: string;
  /** The nftables table, in both the `inet` and the `bridge` family. */
  table: string;
  /** The tenant's bridge: `<p>b<hash>`. */
  bridge(tenant: string): string;
  /** The tenant's VXLAN device: `<p>x<hash>`. */
  vxlan(tenant: string): string;
  /** The host end of an endpoint: veth `<p>e<hash>` or tap `<p>t<hash>`. */
  endpointIf(id: string, kind: 'netns' | 'tap'): string;
  /** Whether a link name is of one of our kinds (bridge, vxlan, veth, tap) for this prefix. */
  isOurLink(name: string): boolean;
}

/** The names for agent prefix `prefix` (validated by the caller against PREFIX_PATTERN). */
export function namesFor(prefix: string): Names {
  const link = new RegExp(`^${prefix}([bx][0-9a-f]{${TENANT_HASH_LEN}}|[et][0-9a-f]{${ENDPOINT_HASH_LEN}})$`);
  return {
    prefix,
    table: `${prefix}carapace`,
    bridge: (tenant) => `${prefix}b${tenantHash(tenant)}`,
    vxlan: (tenant) => `${prefix}x${tenantHash(tenant)}`,
    endpointIf: (id, kind) => `${prefix}${kind === 'tap' ? 't' : 'e'}${hex(id, ENDPOINT_HASH_LEN)}`,
    isOurLink: (name) => link.test(name),
  };
}

/**
 * Chains and counters of one tenant, named by its hash (`th`): the chain names are the only
 * link from the kernel back to a tenant, which is how stray ones are found after a crash.
 */
export const chainNames = {
  /** Filter: what the tenant's segment may reach (forwarded traffic). */
  segment: (th: string): string => `seg-${th}`,
  /** NAT: the tenant's service addresses → their balancing chains. */
  services: (th: string): string => `services-${th}`,
  /** Filter: the tenant's service addresses that have no ready endpoint (rejected at once). */
  noEndpoints: (th: string): string => `noep-${th}`,
  /** NAT: one service's balancing over its endpoints. */
  service: (th: string, name: string): string => `svc-${th}-${hex(name, TENANT_HASH_LEN)}`,
  /** Named counter of the packets the firewall refused from the tenant's segment. */
  denied: (th: string): string => `denied-${th}`,
  /** The tenant hash a per-tenant chain or counter name carries, or undefined for other names. */
  tenantOf: (name: string): string | undefined => /^(?:seg|services|noep|svc|denied)-([0-9a-f]{8})(?:-[0-9a-f]{8})?$/.exec(name)?.[1],
};
