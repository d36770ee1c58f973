/**
 * Pure helpers for the container network: IPv4 arithmetic, address allocation in a subnet,
 * isolation-mark allocation and the validation of names and port lists. No I/O, so the
 * rules can be tested exhaustively (see ipam.test.ts); the effects live in network-manager.ts.
 */
import { createHash } from 'node:crypto';

/** An IPv4 subnet in numeric form. */
export interface Subnet {
  /** The network address as an unsigned 32-bit number. */
  network: number;
  prefixLength: number;
}

/** Parses `a.b.c.d` into an unsigned 32-bit number; throws on anything else. */
export function ipToInt(ip: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m) throw new Error(`not an IPv4 address: ${JSON.stringify(ip)}`);
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i]);
    if (octet > 255) throw new Error(`not an IPv4 address: ${JSON.stringify(ip)}`);
    n = n * 256 + octet;
  }
  return n;
}

/** Formats an unsigned 32-bit number as `a.b.c.d`. */
export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/**
 * Parses `a.b.c.d/len` (the host bits must be zero). Prefixes longer than /30 leave no
 * room for a gateway and a container, so they are refused.
 */
export function parseSubnet(cidr: string): Subnet {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(cidr);
  // m[1] and m[2] exist whenever the regex matched: both groups are mandatory.
  const prefixLength = m ? Number(m[2]) : NaN;
  if (!m || !(prefixLength >= 8 && prefixLength <= 30)) {
    throw new Error(`subnet must be an IPv4 CIDR with a prefix between /8 and /30: ${JSON.stringify(cidr)}`);
  }
  const network = ipToInt(m[1] as string); // safe: group 1 is mandatory in the regex
  if ((network & hostMask(prefixLength)) !== 0) {
    throw new Error(`subnet ${cidr} has host bits set; did you mean ${intToIp((network & ~hostMask(prefixLength)) >>> 0)}/${prefixLength}?`);
  }
  return { network, prefixLength };
}

/**
 * Parses an IPv4 address or CIDR with any prefix (0-32), as firewall rules take them (egress
 * allow lists, infrastructure addresses): a bare address is a /32, host bits must be zero.
 */
export function parseCidr(text: string): Subnet {
  const m = /^([0-9.]+)(?:\/(\d{1,2}))?$/.exec(text);
  const prefixLength = m?.[2] === undefined ? 32 : Number(m[2]);
  if (!m || !(prefixLength >= 0 && prefixLength <= 32)) throw new Error(`not an IPv4 address or CIDR: ${JSON.stringify(text)}`);
  const network = ipToInt(m[1] as string); // safe: group 1 is mandatory in the regex
  if ((network & hostMask(prefixLength)) !== 0) {
    throw new Error(`${text} has host bits set; did you mean ${intToIp((network & ~hostMask(prefixLength)) >>> 0)}/${prefixLength}?`);
  }
  return { network, prefixLength };
}

/** Whether `text` is a dotted IPv4 address. */
export function isIpv4(text: string): boolean {
  try {
    ipToInt(text);
    return true;
  } catch {
    return false;
  }
}

/** `a.b.c.d/len` of a parsed subnet, as nft and ip take it. */
export function subnetText(s: Subnet): string {
  return `${intToIp(s.network)}/${s.prefixLength}`;
}

/** Whether subnet `inner` lies entirely inside `outer`. */
export function within(inner: Subnet, outer: Subnet): boolean {
  return inner.prefixLength >= outer.prefixLength && contains(outer, inner.network);
}

/**
 * Whether an interface address (`address`/`prefixLength`, host bits kept) has a route to
 * `block` at least as specific as the block's own: the same or a longer prefix inside it.
 */
export function shadows(iface: { address: number; prefixLength: number }, block: Subnet): boolean {
  return iface.prefixLength >= block.prefixLength && contains(block, iface.address);
}

/** The dotted netmask of a prefix length (`18` → `255.255.192.0`), as DHCP ranges take it. */
export function netmaskOf(prefixLength: number): string {
  return intToIp((0xffffffff - hostMask(prefixLength)) >>> 0);
}

/**
 * The fixed MAC of the endpoint with address `ip`: locally administered `02:ca:` then the four
 * address bytes. Addresses are unique across tenants and hosts, so MACs are too, and an address
 * handed out again gets the MAC peers' ARP caches already hold for it.
 */
export function macFor(ip: string): string {
  const n = ipToInt(ip);
  return ['02', 'ca', ...[n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

function hostMask(prefixLength: number): number {
  return 2 ** (32 - prefixLength) - 1;
}

/** The gateway (the bridge's own address): the first host address of the subnet. */
export function gatewayOf(s: Subnet): number {
  return s.network + 1;
}

/** The first and last address a container may get: after the gateway, before broadcast. */
export function containerRange(s: Subnet): { first: number; last: number } {
  return { first: s.network + 2, last: s.network + hostMask(s.prefixLength) - 1 };
}

/** Whether `ip` (numeric) lies inside the subnet. */
export function contains(s: Subnet, ip: number): boolean {
  return ip >= s.network && ip <= s.network + hostMask(s.prefixLength);
}

/**
 * Picks the next free container address after `cursor` (the last address handed out),
 * wrapping around. Handing out addresses round-robin rather than lowest-free keeps a
 * just-released address (still in peers' ARP caches and in conntrack) unused as long as
 * possible, as Podman's IPAM does. Returns undefined when the pool is exhausted.
 */
export function allocateIp(s: Subnet, used: ReadonlySet<number>, cursor?: number): number | undefined {
  const { first, last } = containerRange(s);
  const size = last - first + 1;
  const start = cursor !== undefined && cursor >= first && cursor <= last ? cursor + 1 : first;
  for (let i = 0; i < size; i++) {
    const candidate = first + ((start - first + i) % size);
    if (!used.has(candidate)) return candidate;
  }
  return undefined;
}

/** The smallest positive integer not in `used`: isolation marks stay small and reusable. */
export function allocateMark(used: ReadonlySet<number>): number {
  let m = 1;
  while (used.has(m)) m++;
  return m;
}

/** Container ids the network accepts: they become part of a netns name and a file key. */
export const ID_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,40}$/;

/** The named network namespace of a container: `ip netns` keeps it at /var/run/netns/NAME. */
export function netnsName(id: string): string {
  return `carapace-${id}`;
}

/**
 * The host end of the container's veth pair. Interface names are at most 15 bytes, so the
 * id is shortened to a hash: `cv` + 12 hex digits (48 bits; a collision is still detected
 * against the allocation table before any link is made).
 */
export function hostIfName(id: string): string {
  return `cv${createHash('sha256').update(id).digest('hex').slice(0, 12)}`;
}

/** One port of a container, as the caller asks for it. */
export interface PortRequest {
  containerPort: number;
  /** Publish on this host port (all host addresses, loopback included); omit to only expose on the bridge. */
  hostPort?: number;
  protocol: 'tcp' | 'udp';
}

/** One field problem, shaped like model/errors.ts's FieldIssue so callers can forward it. */
export interface Issue {
  path: string;
  message: string;
}

/** Validates a container id and its ports; returns every problem found (empty when valid). */
export function validateSetup(id: string, ports: readonly PortRequest[]): Issue[] {
  const issues: Issue[] = [];
  if (!ID_PATTERN.test(id)) issues.push({ path: 'id', message: `must match ${ID_PATTERN.source}` });
  const seen = new Map<string, number>();
  ports.forEach((p, i) => {
    const isPort = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 1 && (n as number) <= 65535; // safe: checked integer first
    if (!isPort(p.containerPort)) issues.push({ path: `ports[${i}].containerPort`, message: 'must be an integer 1..65535' });
    if (p.hostPort !== undefined && !isPort(p.hostPort)) issues.push({ path: `ports[${i}].hostPort`, message: 'must be an integer 1..65535' });
    if (p.protocol !== 'tcp' && p.protocol !== 'udp') issues.push({ path: `ports[${i}].protocol`, message: 'must be tcp or udp' });
    if (p.hostPort !== undefined) {
      const key = `${p.protocol}/${p.hostPort}`;
      const prev = seen.get(key);
      if (prev !== undefined) issues.push({ path: `ports[${i}].hostPort`, message: `${key} is already published by ports[${prev}]` });
      else seen.set(key, i);
    }
  });
  return issues;
}
