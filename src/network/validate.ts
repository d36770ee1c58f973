/**
 * Validation of what the agent hands the tenant data plane, with field paths (the shape of
 * model/errors.ts's FieldIssue). Pure: every problem is returned, nothing is thrown, so the
 * caller raises one CarapaceError (CARAPACE_E_VALIDATION) listing all of them.
 */
import { NameSchema } from '../model/schemas.js';
import { isIpv4, parseCidr, parseSubnet, validateSetup, within, type Issue } from './ipam.js';
import type { DnsName, EgressPolicy, EndpointRequest, SegmentSpec, ServiceEntry } from './types.js';

const MAX_VNI = 2 ** 24 - 1;

function isPort(n: unknown): boolean {
  return Number.isInteger(n) && (n as number) >= 1 && (n as number) <= 65535; // safe: checked integer first
}

/** A DNS label (the model's NameSchema): tenants, services and names become `<name>.<tenant>.<domain>`. */
function labelIssue(path: string, value: unknown): Issue[] {
  const r = NameSchema.safeParse(value);
  return r.success ? [] : [{ path, message: r.error.issues[0]?.message ?? 'must be a DNS label' }];
}

/** Issues of a tenant's egress policy, under `path` (e.g. `egress`). */
export function validateEgress(path: string, e: EgressPolicy): Issue[] {
  if (e === null || typeof e !== 'object' || (e.default !== 'allow' && e.default !== 'deny')) {
    return [{ path: `${path}.default`, message: 'must be allow or deny' }];
  }
  if (e.default === 'allow') return [];
  if (!Array.isArray(e.allow)) return [{ path: `${path}.allow`, message: 'must be a list' }];
  const issues: Issue[] = [];
  e.allow.forEach((r, i) => {
    const at = `${path}.allow[${i}]`;
    try {
      parseCidr(r.cidr);
    } catch (err) {
      issues.push({ path: `${at}.cidr`, message: err instanceof Error ? err.message : 'must be an IPv4 CIDR' });
    }
    if (r.protocol !== undefined && r.protocol !== 'tcp' && r.protocol !== 'udp') issues.push({ path: `${at}.protocol`, message: 'must be tcp or udp' });
    if (r.ports !== undefined) {
      if (!Array.isArray(r.ports)) issues.push({ path: `${at}.ports`, message: 'must be a list of ports' });
      else r.ports.forEach((p, j) => { if (!isPort(p)) issues.push({ path: `${at}.ports[${j}]`, message: 'must be an integer 1..65535' }); });
      if (r.protocol === undefined) issues.push({ path: `${at}.protocol`, message: 'is required when ports are given (tcp or udp)' });
    }
  });
  return issues;
}

/** Issues of a segment spec. */
export function validateSegment(s: SegmentSpec): Issue[] {
  const issues: Issue[] = [...labelIssue('tenant', s.tenant)];
  let cidrOk = false;
  try {
    parseSubnet(s.cidr);
    cidrOk = true;
  } catch (e) {
    issues.push({ path: 'cidr', message: e instanceof Error ? e.message : 'must be an IPv4 CIDR' });
  }
  try {
    const block = parseSubnet(s.block);
    if (cidrOk && !within(block, parseSubnet(s.cidr))) issues.push({ path: 'block', message: `must lie inside cidr ${s.cidr}` });
  } catch (e) {
    issues.push({ path: 'block', message: e instanceof Error ? e.message : 'must be an IPv4 CIDR' });
  }
  if (!Number.isInteger(s.vni) || s.vni < 1 || s.vni > MAX_VNI) issues.push({ path: 'vni', message: `must be an integer 1..${MAX_VNI}` });
  if (typeof s.domain !== 'string' || s.domain.length > 200 || !s.domain.split('.').every((l) => NameSchema.safeParse(l).success)) {
    issues.push({ path: 'domain', message: 'must be DNS labels joined by dots' });
  }
  issues.push(...validateEgress('egress', s.egress));
  if (s.underlay !== undefined && !isIpv4(s.underlay)) issues.push({ path: 'underlay', message: 'must be an IPv4 address' });
  return issues;
}

/** Issues of an endpoint request (the id and ports as the container network checks them). */
export function validateEndpoint(r: EndpointRequest): Issue[] {
  const issues = validateSetup(r.id, r.ports);
  issues.push(...labelIssue('tenant', r.tenant));
  if (r.kind !== 'netns' && r.kind !== 'tap') issues.push({ path: 'kind', message: 'must be netns or tap' });
  if (r.dhcp !== undefined && typeof r.dhcp !== 'boolean') issues.push({ path: 'dhcp', message: 'must be a boolean' });
  return issues;
}

/** Issues of a tenant's whole service list. */
export function validateServices(services: readonly ServiceEntry[]): Issue[] {
  const issues: Issue[] = [];
  const names = new Map<string, number>();
  const vips = new Map<string, number>();
  services.forEach((s, i) => {
    const at = `services[${i}]`;
    issues.push(...labelIssue(`${at}.name`, s.name));
    const prevName = names.get(s.name);
    if (prevName !== undefined) issues.push({ path: `${at}.name`, message: `duplicates services[${prevName}]` });
    else names.set(s.name, i);
    if (!isIpv4(s.vip)) issues.push({ path: `${at}.vip`, message: 'must be an IPv4 address' });
    const prevVip = vips.get(s.vip);
    if (prevVip !== undefined) issues.push({ path: `${at}.vip`, message: `duplicates services[${prevVip}]` });
    else vips.set(s.vip, i);
    const seen = new Set<string>();
    s.ports.forEach((p, j) => {
      if (!isPort(p.port)) issues.push({ path: `${at}.ports[${j}].port`, message: 'must be an integer 1..65535' });
      if (p.protocol !== 'tcp' && p.protocol !== 'udp') issues.push({ path: `${at}.ports[${j}].protocol`, message: 'must be tcp or udp' });
      const key = `${p.protocol}/${p.port}`;
      if (seen.has(key)) issues.push({ path: `${at}.ports[${j}]`, message: `${key} is listed twice` });
      seen.add(key);
    });
    s.endpoints.forEach((e, j) => { if (!isIpv4(e)) issues.push({ path: `${at}.endpoints[${j}]`, message: 'must be an IPv4 address' }); });
  });
  return issues;
}

/** Issues of a tenant's other DNS names. */
export function validateNames(names: readonly DnsName[]): Issue[] {
  const issues: Issue[] = [];
  names.forEach((n, i) => {
    issues.push(...labelIssue(`names[${i}].name`, n.name));
    if (!isIpv4(n.ip)) issues.push({ path: `names[${i}].ip`, message: 'must be an IPv4 address' });
  });
  return issues;
}

/** Issues of a list of addresses or CIDRs (`what[i]`: peers, infrastructure). */
export function validateAddresses(what: string, list: readonly string[], cidrs: boolean): Issue[] {
  const issues: Issue[] = [];
  list.forEach((a, i) => {
    if (cidrs) {
      try {
        parseCidr(a);
      } catch (e) {
        issues.push({ path: `${what}[${i}]`, message: e instanceof Error ? e.message : 'must be an IPv4 address or CIDR' });
      }
    } else if (!isIpv4(a)) {
      issues.push({ path: `${what}[${i}]`, message: 'must be an IPv4 address' });
    }
  });
  return issues;
}
