/**
 * IPv4 addresses and CIDR blocks as numbers: strict parsing (what a manifest may say),
 * formatting, containment and slicing a pool into equal sub-blocks (tenant networks, host
 * blocks, service addresses). Pure arithmetic on unsigned 32-bit numbers, so the pools'
 * rules can be property-tested. Hand-written rather than a library's: slicing needs the
 * numeric form anyway, and the parser is one strict regular expression (four decimal octets,
 * no leading zeros, which some parsers read as octal).
 */

/** An IPv4 CIDR block: its network address as an unsigned 32-bit number and its prefix length. */
export interface Cidr {
  network: number;
  prefix: number;
}

const OCTET = '(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

/** `a.b.c.d` as an unsigned 32-bit number, or undefined when it is not exactly that (no leading zeros, no shorthand). */
export function parseIpv4(s: string): number | undefined {
  const m = IPV4.exec(s);
  if (!m) return undefined;
  // Groups 1-4 exist whenever the regex matched: all four are mandatory.
  return ((Number(m[1]) << 24) >>> 0) + (Number(m[2]) << 16) + (Number(m[3]) << 8) + Number(m[4]);
}

/** An unsigned 32-bit number as `a.b.c.d`. */
export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** How many addresses a block of `prefix` holds. */
export function blockSize(prefix: number): number {
  return 2 ** (32 - prefix);
}

/**
 * Parses `a.b.c.d/len`: the block, or a sentence saying what is wrong (for validation
 * messages). Host bits must be zero: `10.0.0.1/24` is refused with the block it probably means.
 */
export function parseCidr(s: string): { ok: true; cidr: Cidr } | { ok: false; message: string } {
  const slash = s.indexOf('/');
  const ip = slash < 0 ? undefined : parseIpv4(s.slice(0, slash));
  const lenText = slash < 0 ? '' : s.slice(slash + 1);
  if (ip === undefined || !/^(3[0-2]|[12]?\d)$/.test(lenText)) return { ok: false, message: 'must be an IPv4 CIDR such as 192.0.2.0/24' };
  const prefix = Number(lenText);
  const network = prefix === 0 ? 0 : (ip - (ip % blockSize(prefix))) >>> 0;
  if (network !== ip) return { ok: false, message: `has host bits set; did you mean ${formatCidr({ network, prefix })}?` };
  return { ok: true, cidr: { network, prefix } };
}

/** `a.b.c.d/len`. */
export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefix}`;
}

/** The last address of the block. */
export function lastAddress(c: Cidr): number {
  return c.network + blockSize(c.prefix) - 1;
}

/** True when the address lies inside the block. */
export function cidrContains(c: Cidr, ip: number): boolean {
  return ip >= c.network && ip <= lastAddress(c);
}

/** True when the two blocks share an address (one then contains the other). */
export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  return a.network <= lastAddress(b) && b.network <= lastAddress(a);
}

/** How many blocks of `prefix` the pool holds (0 when `prefix` is shorter than the pool's). */
export function subnetCount(pool: Cidr, prefix: number): number {
  return prefix < pool.prefix ? 0 : 2 ** (prefix - pool.prefix);
}

/** The `index`-th block of `prefix` inside `pool` (0-based); the caller keeps `index` below subnetCount. */
export function subnetAt(pool: Cidr, prefix: number, index: number): Cidr {
  return { network: pool.network + index * blockSize(prefix), prefix };
}

/** Which block of `prefix` inside `pool` `c` is, or undefined when it is not exactly one of them. */
export function subnetIndex(pool: Cidr, c: Cidr, prefix: number): number | undefined {
  if (c.prefix !== prefix || !cidrContains(pool, c.network) || prefix < pool.prefix) return undefined;
  const offset = c.network - pool.network;
  return offset % blockSize(prefix) === 0 ? offset / blockSize(prefix) : undefined;
}

/** True for 127.0.0.0/8, ::1 and `localhost`: addresses whose traffic never leaves the machine. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}
