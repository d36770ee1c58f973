/**
 * The nftables scripts of the tenant data plane, as text for `nft -f -` (one atomic transaction
 * each). Pure: the effects (running nft, listing chains) live in tenant-networking.ts, and the
 * rules can be read here in one place.
 *
 * Two tables per agent, `inet <p>carapace` and `bridge <p>carapace`. Base chains are fixed and
 * regenerated (flush + add) whenever the tables are ensured; per-endpoint state is only map and
 * set elements (added, or added-then-deleted, so either works whether or not they exist);
 * per-tenant and per-service state is regenerated chains named by the tenant's hash
 * (names.ts chainNames). `fullSync` rewrites every set and map from the records in one
 * transaction: the level-based repair used after a crash and when segments come and go.
 */
import { chainNames } from './names.js';
import { parseCidr, subnetText, within } from './ipam.js';
import type { EgressPolicy, PublishedPort } from './types.js';

/** The VXLAN port (IANA). */
export const VXLAN_PORT = 4789;

/** Link-local addresses (cloud metadata services, among others) are infrastructure on every host. */
export const ALWAYS_INFRASTRUCTURE = ['169.254.0.0/16'];

/** One segment as the firewall sees it. */
export interface FwSegment {
  /** The tenant's hash (names.ts tenantHash). */
  th: string;
  bridge: string;
  gateway: string;
  /** The tenant network (e.g. `10.128.0.0/18`): workloads' source addresses. */
  cidr: string;
  egress: EgressPolicy;
}

/** One service as the firewall sees it. */
export interface FwService {
  name: string;
  vip: string;
  ports: { port: number; protocol: 'tcp' | 'udp' }[];
  endpoints: string[];
}

/** One endpoint as the firewall sees it. */
export interface FwEndpoint {
  /** The host end: veth or tap, a port of the segment's bridge. */
  ifname: string;
  mac: string;
  ip: string;
  /** May send DHCP from 0.0.0.0 (and ARP probes) before it has its address. */
  dhcp: boolean;
  ports: PublishedPort[];
}

const q = (s: string): string => JSON.stringify(s);

/**
 * Creates the tables, their sets and maps (kept if they exist: `table … { set … }` adds only
 * what is missing) and the base chains, then rewrites the base chains' rules. Per-tenant chains
 * are reached through the `segment_*` verdict maps (workloads) and the `host_*` dispatch chains
 * (the host itself; see dispatchScript).
 */
export function baseScript(t: string): string {
  return `
table inet ${t} {
  set segments { type ifname; }
  set workload_nets { type ipv4_addr; flags interval; }
  set infra { type ipv4_addr; flags interval; }
  set dns { type ifname . ipv4_addr . inet_proto . inet_service; }
  map segment_fwd { type ifname : verdict; }
  map segment_nat { type ifname : verdict; }
  map published { type inet_proto . inet_service : ipv4_addr . inet_service; }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; }
  chain output_nat { type nat hook output priority -100; policy accept; }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
  chain input { type filter hook input priority filter; policy accept; }
  chain forward { type filter hook forward priority filter; policy accept; }
  chain output { type filter hook output priority filter; policy accept; }
  chain publish { }
  chain segment_input { }
  chain host_services { }
  chain host_reject { }
}
flush chain inet ${t} prerouting
flush chain inet ${t} output_nat
flush chain inet ${t} postrouting
flush chain inet ${t} input
flush chain inet ${t} forward
flush chain inet ${t} output
flush chain inet ${t} publish
flush chain inet ${t} segment_input
# Services: a workload's tenant is its bridge, so it only ever sees its own tenant's addresses.
add rule inet ${t} prerouting iifname vmap @segment_nat
# Published ports, on every host address: from outside and from workloads.
add rule inet ${t} prerouting fib daddr type local jump publish
# The host itself: every tenant's services, and published ports (127.0.0.1 too).
add rule inet ${t} output_nat jump host_services
add rule inet ${t} output_nat fib daddr type local jump publish
add rule inet ${t} publish dnat ip to meta l4proto . th dport map @published
# Replies to translated traffic must come back through the host that translated it: the host's
# own connections and workloads' (hairpin, services, also across hosts) leave a segment with the
# gateway's address. Connections from outside keep their client address.
add rule inet ${t} postrouting oifname @segments ct status dnat fib saddr type local masquerade
add rule inet ${t} postrouting oifname @segments ct status dnat ip saddr @workload_nets masquerade
# Egress: workloads leave the host with its address.
add rule inet ${t} postrouting oifname != @segments ip saddr @workload_nets masquerade
# Nothing of the host is reachable from a segment but its own gateway's DNS and DHCP.
add rule inet ${t} input iifname @segments jump segment_input
add rule inet ${t} segment_input ct state established,related accept
add rule inet ${t} segment_input iifname . ip daddr . meta l4proto . th dport @dns accept
add rule inet ${t} segment_input udp sport 68 udp dport 67 accept
add rule inet ${t} segment_input counter drop
add rule inet ${t} forward ct state established,related accept
add rule inet ${t} forward iifname vmap @segment_fwd
# Into a segment from elsewhere (the uplink, another agent's bridge): only published ports.
add rule inet ${t} forward oifname @segments ct status dnat accept
add rule inet ${t} forward oifname @segments counter drop
add rule inet ${t} output jump host_reject
table bridge ${t} {
  set ports { type ifname; }
  set ep_src { type ifname . ether_addr . ipv4_addr; }
  set dhcp_src { type ifname . ether_addr; }
  chain prerouting { type filter hook prerouting priority -300; policy accept; }
}
flush chain bridge ${t} prerouting
# Anti-spoofing at the ingress of every endpoint port, before br_netfilter and routing see the
# frame: its Ethernet and IPv4 source (or ARP sender) must be the endpoint's; nothing else passes.
add rule bridge ${t} prerouting iifname != @ports accept
add rule bridge ${t} prerouting ether type ip iifname . ether saddr . ip saddr @ep_src accept
add rule bridge ${t} prerouting ether type arp iifname . ether saddr . arp saddr ip @ep_src iifname . arp saddr ether . arp saddr ip @ep_src accept
add rule bridge ${t} prerouting ether type ip iifname . ether saddr @dhcp_src ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept
add rule bridge ${t} prerouting ether type arp iifname . ether saddr @dhcp_src iifname . arp saddr ether @dhcp_src arp saddr ip 0.0.0.0 accept
add rule bridge ${t} prerouting counter drop
`;
}

/**
 * The host's dispatch to every tenant's services (nat output) and service rejections (filter
 * output); regenerated whenever the set of segments changes. The host has no ingress interface
 * to key a verdict map on, and tenants per host are few.
 */
export function dispatchScript(t: string, ths: readonly string[]): string {
  const lines = [`flush chain inet ${t} host_services`, `flush chain inet ${t} host_reject`];
  for (const th of [...ths].sort()) {
    lines.push(`add rule inet ${t} host_services jump ${chainNames.services(th)}`);
    lines.push(`add rule inet ${t} host_reject jump ${chainNames.noEndpoints(th)}`);
  }
  return lines.join('\n') + '\n';
}

/** The rules of one egress allow-list entry (after the infrastructure and other tenants are dropped). */
function egressRule(cidr: string, protocol: 'tcp' | 'udp' | undefined, ports: readonly number[] | undefined): string {
  const dst = `ip daddr ${subnetText(parseCidr(cidr))}`;
  if (protocol === undefined) return `${dst} accept`;
  if (ports === undefined || ports.length === 0) return `${dst} meta l4proto ${protocol} accept`;
  return `${dst} ${protocol} dport { ${[...new Set(ports)].sort((a, b) => a - b).join(', ')} } accept`;
}

/**
 * Creates a tenant's chains and counter (empty service chains if new) and rewrites its segment
 * chain: what its workloads may reach through this host.
 */
export function segmentChainsScript(t: string, s: FwSegment): string {
  const seg = chainNames.segment(s.th);
  const counter = q(chainNames.denied(s.th));
  const lines = [
    `add chain inet ${t} ${seg}`,
    `add chain inet ${t} ${chainNames.services(s.th)}`,
    `add chain inet ${t} ${chainNames.noEndpoints(s.th)}`,
    `add counter inet ${t} ${chainNames.denied(s.th)}`,
    `flush chain inet ${t} ${seg}`,
    // The tenant's own network: this host's endpoints, and the other hosts' over VXLAN.
    `add rule inet ${t} ${seg} oifname ${q(s.bridge)} accept`,
    // Translated by us: published ports (public) and the tenant's own services.
    `add rule inet ${t} ${seg} ct status dnat accept`,
    `add rule inet ${t} ${seg} jump ${chainNames.noEndpoints(s.th)}`,
    `add rule inet ${t} ${seg} oifname @segments counter name ${counter} drop`,
    `add rule inet ${t} ${seg} ip daddr @infra counter name ${counter} drop`,
  ];
  if (s.egress.default === 'allow') {
    lines.push(`add rule inet ${t} ${seg} accept`);
  } else {
    for (const r of s.egress.allow) lines.push(`add rule inet ${t} ${seg} ${egressRule(r.cidr, r.protocol, r.ports)}`);
    lines.push(`add rule inet ${t} ${seg} counter name ${counter} drop`);
  }
  return lines.join('\n') + '\n';
}

/**
 * Rewrites a tenant's services: its NAT chain maps `vip . proto . port` to one balancing chain
 * per service (`dnat` to a random ready endpoint, same port); services without a ready endpoint
 * are rejected in the filter chain instead (TCP reset, ICMP otherwise), so clients fail at once.
 * Balancing chains in `existing` that no service needs any more are deleted.
 */
export function servicesScript(t: string, th: string, services: readonly FwService[], existing: readonly string[]): string {
  const nat = chainNames.services(th);
  const noep = chainNames.noEndpoints(th);
  const lines = [`add chain inet ${t} ${nat}`, `flush chain inet ${t} ${nat}`, `add chain inet ${t} ${noep}`, `flush chain inet ${t} ${noep}`];
  const vmap: string[] = [];
  const rejected: string[] = [];
  const wanted = new Set<string>();
  for (const s of [...services].sort((a, b) => a.name.localeCompare(b.name))) {
    const keys = s.ports.map((p) => `${s.vip} . ${p.protocol} . ${p.port}`);
    const endpoints = [...new Set(s.endpoints)].sort();
    if (keys.length === 0) continue;
    if (endpoints.length === 0) {
      rejected.push(...keys);
      continue;
    }
    const chain = chainNames.service(th, s.name);
    wanted.add(chain);
    const target = endpoints.length === 1 ? endpoints[0] : `numgen random mod ${endpoints.length} map { ${endpoints.map((e, i) => `${i} : ${e}`).join(', ')} }`;
    lines.push(`add chain inet ${t} ${chain}`, `flush chain inet ${t} ${chain}`, `add rule inet ${t} ${chain} dnat ip to ${target}`);
    vmap.push(...keys.map((k) => `${k} : goto ${chain}`));
  }
  if (vmap.length > 0) lines.push(`add rule inet ${t} ${nat} ip daddr . meta l4proto . th dport vmap { ${vmap.join(', ')} }`);
  if (rejected.length > 0) {
    const set = `{ ${rejected.join(', ')} }`;
    lines.push(`add rule inet ${t} ${noep} ip daddr . meta l4proto . th dport ${set} meta l4proto tcp reject with tcp reset`);
    lines.push(`add rule inet ${t} ${noep} ip daddr . meta l4proto . th dport ${set} reject`);
  }
  for (const c of existing) {
    if (c.startsWith(`svc-${th}-`) && !wanted.has(c)) lines.push(`flush chain inet ${t} ${c}`, `delete chain inet ${t} ${c}`);
  }
  return lines.join('\n') + '\n';
}

/** The element statements of one segment (`add`, or `delete` by key). */
export function segmentElements(verb: 'add' | 'delete', t: string, s: FwSegment): string[] {
  const br = q(s.bridge);
  const withValue = (v: string): string => (verb === 'add' ? ` : ${v}` : '');
  return [
    `${verb} element inet ${t} segments { ${br} }`,
    `${verb} element inet ${t} segment_fwd { ${br}${withValue(`jump ${chainNames.segment(s.th)}`)} }`,
    `${verb} element inet ${t} segment_nat { ${br}${withValue(`jump ${chainNames.services(s.th)}`)} }`,
    `${verb} element inet ${t} dns { ${br} . ${s.gateway} . udp . 53, ${br} . ${s.gateway} . tcp . 53 }`,
    `${verb} element inet ${t} workload_nets { ${subnetText(parseCidr(s.cidr))} }`,
  ];
}

/** The element statements of one endpoint (`add`, or `delete` by key). */
export function endpointElements(verb: 'add' | 'delete', t: string, e: FwEndpoint): string[] {
  const ifq = q(e.ifname);
  const lines = [
    `${verb} element bridge ${t} ports { ${ifq} }`,
    `${verb} element bridge ${t} ep_src { ${ifq} . ${e.mac} . ${e.ip} }`,
  ];
  if (e.dhcp) lines.push(`${verb} element bridge ${t} dhcp_src { ${ifq} . ${e.mac} }`);
  for (const p of e.ports) {
    lines.push(`${verb} element inet ${t} published { ${p.protocol} . ${p.hostPort}${verb === 'add' ? ` : ${e.ip} . ${p.containerPort}` : ''} }`);
  }
  return lines;
}

/**
 * Removes an endpoint's elements whether or not each exists: nftables 1.0.6 has no "delete if
 * present", but an add of the same element followed by its delete succeeds either way.
 */
export function endpointRemovalScript(t: string, e: FwEndpoint): string {
  return [...endpointElements('add', t, e), ...endpointElements('delete', t, e)].join('\n') + '\n';
}

/**
 * Moves an endpoint's published ports from `before` to `after` in one transaction: the old
 * mappings are removed whether or not they exist (add then delete), then the new ones added.
 */
export function publishedChangeScript(t: string, before: FwEndpoint, after: FwEndpoint): string {
  const lines: string[] = [];
  for (const p of before.ports) {
    const el = `{ ${p.protocol} . ${p.hostPort} : ${before.ip} . ${p.containerPort} }`;
    lines.push(`add element inet ${t} published ${el}`, `delete element inet ${t} published { ${p.protocol} . ${p.hostPort} }`);
  }
  for (const p of after.ports) lines.push(`add element inet ${t} published { ${p.protocol} . ${p.hostPort} : ${after.ip} . ${p.containerPort} }`);
  return lines.join('\n') + '\n';
}

/**
 * The CIDRs of `list` that no other one of the list contains, deduplicated and sorted: what an
 * interval set takes without `auto-merge`. (auto-merge is not used: it joins adjacent intervals,
 * e.g. two neighbouring hosts' addresses, and a later flush-and-add of one of them in the same
 * transaction then fails in nft 1.0.6.)
 */
export function outermostCidrs(list: readonly string[]): string[] {
  const parsed = [...new Set(list.map((a) => subnetText(parseCidr(a))))].map(parseCidr);
  return parsed
    .filter((c, i) => !parsed.some((o, j) => j !== i && o.prefixLength < c.prefixLength && within(c, o)))
    .map(subnetText)
    .sort();
}

/** Replaces the infrastructure set (link-local always included) in one transaction. */
export function infrastructureScript(t: string, addresses: readonly string[]): string {
  const all = outermostCidrs([...ALWAYS_INFRASTRUCTURE, ...addresses]);
  return `flush set inet ${t} infra\nadd element inet ${t} infra { ${all.join(', ')} }\n`;
}

/** Everything the records say the tables should hold, for fullSync. */
export interface FwState {
  segments: (FwSegment & { services: FwService[] })[];
  endpoints: FwEndpoint[];
  infrastructure: string[];
}

/** What the kernel holds now, as far as fullSync needs to know: chain and counter names of the inet table. */
export interface FwPresent {
  chains: readonly string[];
  counters: readonly string[];
}

/**
 * Makes both tables exactly what the records say, in one transaction: base chains rewritten,
 * every recorded tenant's chains rewritten, every set and map flushed and refilled, and the
 * per-tenant chains and counters of tenants no record explains flushed and deleted (after the
 * maps and dispatch chains that referenced them were rewritten).
 */
export function fullSyncScript(t: string, want: FwState, present: FwPresent): string {
  const parts = [baseScript(t)];
  for (const s of want.segments) parts.push(segmentChainsScript(t, s), servicesScript(t, s.th, s.services, present.chains));
  const elements: string[] = [];
  for (const s of want.segments) elements.push(...segmentElements('add', t, s));
  for (const e of want.endpoints) elements.push(...endpointElements('add', t, e));
  parts.push(
    ['segments', 'workload_nets', 'dns'].map((n) => `flush set inet ${t} ${n}`).join('\n') + '\n',
    ['segment_fwd', 'segment_nat', 'published'].map((n) => `flush map inet ${t} ${n}`).join('\n') + '\n',
    ['ports', 'ep_src', 'dhcp_src'].map((n) => `flush set bridge ${t} ${n}`).join('\n') + '\n',
    elements.join('\n') + '\n',
    infrastructureScript(t, want.infrastructure),
    dispatchScript(t, want.segments.map((s) => s.th)),
  );
  const keep = new Set(want.segments.map((s) => s.th));
  const stray = present.chains.filter((c) => {
    const th = chainNames.tenantOf(c);
    return th !== undefined && !keep.has(th);
  });
  // Flush all first: a stray segment chain jumps to its noep chain, a services chain to svc chains.
  parts.push(stray.map((c) => `flush chain inet ${t} ${c}`).join('\n') + '\n');
  parts.push(stray.map((c) => `delete chain inet ${t} ${c}`).join('\n') + '\n');
  const strayCounters = present.counters.filter((c) => {
    const th = chainNames.tenantOf(c);
    return th !== undefined && !keep.has(th);
  });
  parts.push(strayCounters.map((c) => `delete counter inet ${t} ${c}`).join('\n') + '\n');
  return parts.join('');
}
