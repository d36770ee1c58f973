/**
 * The shapes of the tenant data plane (TenantNetworking, tenant-networking.ts): what the agent
 * asks for (segments, endpoints, services, names, peers, infrastructure) and what it gets back.
 * Types only. EgressPolicy mirrors `Tenant.spec.network.egress` of the model; it is defined here
 * so this layer does not wait for the model's, and the lead unifies the two.
 */
import type { PortRequest } from './ipam.js';

export type { PortRequest } from './ipam.js';

/** One destination a tenant with `default: deny` may reach. */
export interface EgressRule {
  /** IPv4 address or CIDR (`192.0.2.0/24`, `198.51.100.7`). */
  cidr: string;
  /** Required when `ports` is given; absent: every protocol. */
  protocol?: 'tcp' | 'udp';
  /** Destination ports (1-65535); absent: every port. */
  ports?: number[];
}

/** Where a tenant's workloads may connect outside the tenant network (infrastructure is never reachable). */
export type EgressPolicy = { default: 'allow' } | { default: 'deny'; allow: EgressRule[] };

/** A tenant network on this host: what `ensureSegment` makes (bridge, gateway, VXLAN, dnsmasq, firewall). */
export interface SegmentSpec {
  /** The tenant's name, a DNS label: part of `<name>.<tenant>.<domain>`. */
  tenant: string;
  /** The tenant network (e.g. `10.128.0.0/18`); the gateway gets its prefix length. */
  cidr: string;
  /** This host's block of it (e.g. `10.128.3.0/24`): gateway = its first host address, endpoints the rest. */
  block: string;
  /** VXLAN network identifier of the tenant (1-16777215). */
  vni: number;
  /** Cluster domain, e.g. `carapace.internal`. */
  domain: string;
  egress: EgressPolicy;
  /** This host's underlay address, where the other hosts' VXLAN reaches it; absent: no VXLAN device. */
  underlay?: string;
}

/** What a workload asks of the network when it is attached. */
export interface EndpointRequest {
  /** Unique on the host (and, for namespaces, on the machine): names the netns `carapace-<id>`. */
  id: string;
  tenant: string;
  /** `netns`: a network namespace with a veth (containers); `tap`: a persistent tap for QEMU (VMs). */
  kind: 'netns' | 'tap';
  ports: PortRequest[];
  /**
   * The workload asks for its address by DHCP (machines): dnsmasq gets a static lease for the
   * endpoint's MAC, the namespace's eth0 gets no address, and DHCP from 0.0.0.0 passes the
   * anti-spoofing filter. Absent: the address is set statically (netns) or by the guest (tap).
   */
  dhcp?: boolean;
}

/** A port reachable on every host address (loopback included) and forwarded to the endpoint. */
export interface PublishedPort {
  containerPort: number;
  hostPort: number;
  protocol: 'tcp' | 'udp';
}

/** An attached endpoint: what the runtime needs to join it and what status reports. */
export interface Endpoint {
  id: string;
  tenant: string;
  kind: 'netns' | 'tap';
  ip: string;
  /** The tenant network's prefix length (the whole network is on-link, across hosts). */
  prefixLength: number;
  gateway: string;
  /** The DNS server: the segment's dnsmasq, on the gateway address. */
  dns: string;
  /** The segment's MTU (the underlay's less VXLAN's headers): a VM must set it on its NIC. */
  mtu: number;
  /** Fixed per endpoint (02:ca:<address>): anti-spoofing and DHCP expect exactly this one. */
  mac: string;
  /** `netns`: /var/run/netns/carapace-<id>, for the runtime (StartRequest.netnsPath). */
  netnsPath?: string;
  /** `tap`: the tap device QEMU opens (`-netdev tap,ifname=<tap>,script=no,downscript=no`). */
  tap?: string;
  hostPorts: PublishedPort[];
}

/** A service as the data plane programs it: its address, ports and ready endpoints. */
export interface ServiceEntry {
  /** A DNS label: resolvable as `<name>` and `<name>.<tenant>.<domain>`. */
  name: string;
  /** The service address (VIP), off every tenant network. */
  vip: string;
  /** Connections to `vip:port` are balanced over `endpoints:port` (the same port). */
  ports: { port: number; protocol: 'tcp' | 'udp' }[];
  /** Ready endpoint addresses, anywhere in the cluster; empty: connections are refused at once. */
  endpoints: string[];
}

/** A DNS name of the tenant other than a service's (a machine, an instance). */
export interface DnsName {
  name: string;
  ip: string;
}

/**
 * The host data plane of tenant networks, driven by the agent. Every method is idempotent and
 * level-based (the set* methods take the whole desired set), serialised with other instances on
 * the same state directory, and safe against a kill -9 at any point: state is recorded before the
 * kernel is touched and `recover`/`gc` finish or undo what a killed instance left.
 */
export interface TenantNetworking {
  /** Makes or repairs the tenant's segment; changes of egress and underlay are applied. */
  ensureSegment(s: SegmentSpec): Promise<void>;
  /** Removes the tenant's segment; refused (CARAPACE_E_NETWORK_CONFLICT) while it has endpoints. Unknown tenants: no-op. */
  removeSegment(tenant: string): Promise<void>;
  /** Tenants with a segment on this host, sorted. */
  segments(): Promise<string[]>;
  /** Attaches a workload to its tenant's segment (which must exist). Idempotent for an identical request. */
  attach(req: EndpointRequest): Promise<Endpoint>;
  /** Removes everything `attach` made. Idempotent; unknown ids are a no-op. */
  detach(id: string): Promise<void>;
  /** The endpoint as recorded, or undefined. */
  inspect(id: string): Promise<Endpoint | undefined>;
  /**
   * After an agent (re)start: re-ensures every recorded segment (bridge, VXLAN, dnsmasq adopted
   * or restarted, rules) and every endpoint's firewall elements, removes kernel objects no record
   * explains, and returns the recorded endpoint ids. An endpoint whose link or namespace is gone
   * (its workload went with it, e.g. a reboot) is logged as incomplete and stays recorded:
   * `attach` rebuilds it, `gc` removes it.
   */
  recover(): Promise<string[]>;
  /** Detaches every endpoint and reserved tap not in `keep` and removes stray kernel objects; returns the ids detached. */
  gc(keep: ReadonlySet<string>): Promise<string[]>;
  /** The tenant's services, all of them: VIP balancing chains and DNS names. */
  setServices(tenant: string, services: ServiceEntry[]): Promise<void>;
  /** The tenant's other DNS names, all of them. */
  setNames(tenant: string, names: DnsName[]): Promise<void>;
  /** Underlay addresses of the other hosts with a block of this tenant (VXLAN flood list). */
  setPeers(tenant: string, peers: string[]): Promise<void>;
  /** Addresses and CIDRs no workload may reach (hosts, control plane, store); link-local is always in. */
  setInfrastructure(addresses: string[]): Promise<void>;
  /** Packets of new connections refused by the firewall, per tenant with a segment here (for metrics). */
  egressDenied(): Promise<Record<string, number>>;
  /**
   * A tap for a VM whose tenant is not known yet (a warm cell): on no bridge, nothing passes.
   * `attach` of the same id later puts it on the tenant's segment, keeping this MAC; `detach`
   * removes it. Idempotent.
   */
  reserveTap(id: string): Promise<{ tap: string; mac: string }>;
  /** Detaches every endpoint, removes every segment and this prefix's tables (uninstall, tests). */
  removeAll(): Promise<void>;
}
