/**
 * What a segment's dnsmasq is told: its command line, its names file (`--addn-hosts`) and its
 * static DHCP leases (`--dhcp-hostsfile`). Pure; dnsmasq.ts runs the process. dnsmasq does the
 * DNS and DHCP protocol work: nothing here reads or writes a packet.
 */
import { isIpv4, netmaskOf, parseSubnet, intToIp } from './ipam.js';
import type { DnsName, ServiceEntry } from './types.js';

/** Where a segment's dnsmasq keeps its files; one directory per segment. */
export interface DnsFiles {
  pidFile: string;
  hostsFile: string;
  dhcpHostsFile: string;
  logFile: string;
}

/** Everything that, when it changes, needs a new dnsmasq (the files are reloaded by SIGHUP instead). */
export interface DnsmasqConfig {
  bridge: string;
  gateway: string;
  /** The tenant network: DHCP hands out static leases on it, with its netmask. */
  cidr: string;
  /** `<tenant>.<domain>`: the DHCP search domain. */
  tenantDomain: string;
  /** The cluster domain: names under it are only ever answered from the names file. */
  domain: string;
  /** Upstream resolvers; empty: only the tenant's own names resolve. */
  upstreams: string[];
  files: DnsFiles;
}

/** How long a DHCP lease lasts; the address never changes, so renewals are a formality. */
const LEASE_TIME = '12h';

/** The command-line arguments of a segment's dnsmasq (after the program's path). */
export function dnsmasqArgs(c: DnsmasqConfig): string[] {
  const net = parseSubnet(c.cidr);
  return [
    '--conf-file=/dev/null', // nothing from /etc/dnsmasq.conf or /etc/dnsmasq.d
    `--pid-file=${c.files.pidFile}`,
    // Only the gateway address of this bridge: other segments' dnsmasqs bind theirs, and DHCP
    // sockets are bound to the bridge alone ("sockets bound exclusively to interface").
    '--bind-interfaces',
    `--interface=${c.bridge}`,
    '--except-interface=lo',
    `--listen-address=${c.gateway}`,
    '--no-hosts', // not the host's /etc/hosts
    `--addn-hosts=${c.files.hostsFile}`,
    '--no-resolv', // upstreams come from the arguments only
    ...c.upstreams.map((u) => `--server=${u}`),
    '--domain-needed', // bare names never leave: unknown ones are NXDOMAIN here
    '--bogus-priv', // no reverse lookups of private addresses upstream
    `--local=/${c.domain}/`, // the cluster's names (any tenant's) never go upstream
    `--domain=${c.tenantDomain}`,
    `--dhcp-range=${intToIp(net.network)},static,${netmaskOf(net.prefixLength)},${LEASE_TIME}`,
    `--dhcp-hostsfile=${c.files.dhcpHostsFile}`,
    '--leasefile-ro',
    `--log-facility=${c.files.logFile}`,
  ];
}

/**
 * The names file: each service's VIP then each other name, as `<name>` and
 * `<name>.<tenant>.<domain>`. Sorted, so an unchanged set writes the same bytes.
 */
export function hostsFileText(tenantDomain: string, services: readonly ServiceEntry[], names: readonly DnsName[]): string {
  const lines = [
    ...[...services].sort((a, b) => a.name.localeCompare(b.name)).map((s) => `${s.vip} ${s.name} ${s.name}.${tenantDomain}`),
    ...[...names].sort((a, b) => a.name.localeCompare(b.name) || a.ip.localeCompare(b.ip)).map((n) => `${n.ip} ${n.name} ${n.name}.${tenantDomain}`),
  ];
  return lines.map((l) => l + '\n').join('');
}

/** The static DHCP leases: `<mac>,<ip>` per endpoint that asks for its address by DHCP. */
export function dhcpHostsText(leases: readonly { mac: string; ip: string }[]): string {
  return [...leases].sort((a, b) => a.mac.localeCompare(b.mac)).map((l) => `${l.mac},${l.ip}\n`).join('');
}

/**
 * The host's resolvers from the text of /etc/resolv.conf, loopback ones dropped (a local stub
 * such as systemd-resolved's 127.0.0.53 is the host's, unreachable from dnsmasq's view of a
 * workload's question and not to be exposed). IPv4 only, like the tenant networks.
 */
export function upstreamsFromResolvConf(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    const addr = m?.[1];
    if (addr !== undefined && isIpv4(addr) && !addr.startsWith('127.') && !out.includes(addr)) out.push(addr);
  }
  return out;
}
