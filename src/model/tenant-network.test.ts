import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cidrContains, cidrsOverlap, formatCidr, formatIpv4, parseCidr, parseIpv4, type Cidr } from './netaddr.js';
import {
  blockGateway, DEFAULT_NETWORK_POOLS as P, freeServiceAddress, freeTenantNetworkIndex, hostBlockCount, NETWORK_DEFAULTS, networkPools, newTenantNetwork, serviceAddressCount,
  tenantNetworkCount, tenantNetworkIndex, withHostBlock, type TenantNetwork,
} from './tenant-network.js';

function cidr(s: string): Cidr {
  const r = parseCidr(s);
  if (!r.ok) throw new Error(`${s}: ${r.message}`);
  return r.cidr;
}

describe('netaddr', () => {
  it('parses exactly four decimal octets and formats them back', () => {
    expect(parseIpv4('10.128.3.1')).toBe(0x0a800301);
    expect(parseIpv4('255.255.255.255')).toBe(0xffffffff);
    for (const bad of ['10.128.3', '10.128.3.256', '010.1.1.1', '1.2.3.4.5', ' 1.2.3.4', '1.2.3.-1', '', 'a.b.c.d']) expect(parseIpv4(bad), bad).toBeUndefined();
    fc.assert(fc.property(fc.integer({ min: 0, max: 0xffffffff }), (n) => parseIpv4(formatIpv4(n)) === n));
  });

  it('parses CIDRs strictly, naming the block meant when host bits are set', () => {
    expect(parseCidr('192.0.2.0/24')).toEqual({ ok: true, cidr: { network: 0xc0000200, prefix: 24 } });
    expect(parseCidr('0.0.0.0/0')).toEqual({ ok: true, cidr: { network: 0, prefix: 0 } });
    expect(parseCidr('192.0.2.7/32')).toEqual({ ok: true, cidr: { network: 0xc0000207, prefix: 32 } });
    expect(parseCidr('192.0.2.1/24')).toEqual({ ok: false, message: 'has host bits set; did you mean 192.0.2.0/24?' });
    for (const bad of ['192.0.2.0', '192.0.2.0/33', '192.0.2.0/', '192.0.2.0/024', '300.0.0.0/8', 'x/8']) expect(parseCidr(bad).ok, bad).toBe(false);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 32 }), (ip, prefix) => {
        const network = prefix === 0 ? 0 : (ip - (ip % 2 ** (32 - prefix))) >>> 0;
        const text = formatCidr({ network, prefix });
        const back = parseCidr(text);
        return back.ok && back.cidr.network === network && back.cidr.prefix === prefix && cidrContains(back.cidr, ip);
      }),
    );
  });
});

describe('network pools', () => {
  it('defaults: 512 tenant networks of /18 in 10.128.0.0/9, 64 host blocks each, VIPs in 10.112.0.0/12', () => {
    expect(tenantNetworkCount(P)).toBe(512);
    expect(hostBlockCount(P)).toBe(64);
    expect(serviceAddressCount(P)).toBe(2 ** 20 - 2);
    expect(newTenantNetwork(P, 'acme', 0, 't')).toEqual({ tenant: 'acme', cidr: '10.128.0.0/18', vni: 1000, blocks: {}, createdAt: 't' });
    expect(newTenantNetwork(P, 'acme', 511, 't')).toMatchObject({ cidr: '10.255.192.0/18', vni: 1511 });
    expect(P.clusterDomain).toBe('carapace.internal');
  });

  it('refuses settings whose pools overlap or whose prefixes do not nest', () => {
    expect(() => networkPools({ ...NETWORK_DEFAULTS, servicePool: '10.200.0.0/16' })).toThrow(/overlaps the tenant pool/);
    expect(() => networkPools({ ...NETWORK_DEFAULTS, tenantPrefix: 8 })).toThrow(/must nest/);
    expect(() => networkPools({ ...NETWORK_DEFAULTS, blockPrefix: 16 })).toThrow(/must nest/);
    expect(() => networkPools({ ...NETWORK_DEFAULTS, tenantPool: '10.128.0.1/9' })).toThrow(/host bits/);
  });

  it('no two tenants overlap, their VNIs differ, and every network lies in the pool and outside the service pool', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 511 }), { maxLength: 40 }), (taken) => {
        const used = new Set(taken);
        const nets: TenantNetwork[] = [];
        // Hand out networks one after another, as successive placements would.
        for (let k = 0; k < 8; k++) {
          const i = freeTenantNetworkIndex(P, used);
          if (i === undefined) break;
          expect(used.has(i)).toBe(false);
          used.add(i);
          nets.push(newTenantNetwork(P, `t${k}`, i, 'now'));
        }
        for (const [a, na] of nets.entries()) {
          const ca = cidr(na.cidr);
          expect(cidrsOverlap(ca, P.tenantPool) && ca.network >= P.tenantPool.network).toBe(true);
          expect(cidrsOverlap(ca, P.servicePool)).toBe(false);
          expect(tenantNetworkIndex(P, na.cidr)).toBe(na.vni - P.vniBase);
          for (const nb of nets.slice(a + 1)) {
            expect(cidrsOverlap(ca, cidr(nb.cidr))).toBe(false);
            expect(na.vni).not.toBe(nb.vni);
          }
        }
      }),
    );
  });

  it('the pool runs out after its last network', () => {
    const all = new Set(Array.from({ length: 512 }, (_, i) => i));
    expect(freeTenantNetworkIndex(P, all)).toBeUndefined();
    all.delete(300);
    expect(freeTenantNetworkIndex(P, all)).toBe(300);
  });

  it('host blocks lie inside the tenant network, never overlap, stay put, and run out after 64 hosts', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 511 }), fc.uniqueArray(fc.stringMatching(/^h[a-z0-9]{1,6}$/), { minLength: 1, maxLength: 70 }), (index, hosts) => {
        let net = newTenantNetwork(P, 'acme', index, 'now');
        const outer = cidr(net.cidr);
        for (const h of hosts) {
          const r = withHostBlock(P, net, h);
          if (Object.keys(net.blocks).length >= 64) {
            expect(r).toBeUndefined();
            continue;
          }
          expect(r?.added).toBeDefined();
          net = r!.network; // defined: checked just above
          // A second ask for the same host changes nothing.
          expect(withHostBlock(P, net, h)).toEqual({ network: net });
        }
        const blocks = Object.values(net.blocks).map(cidr);
        for (const [i, b] of blocks.entries()) {
          expect(b.prefix).toBe(24);
          expect(cidrContains(outer, b.network)).toBe(true);
          for (const c of blocks.slice(i + 1)) expect(cidrsOverlap(b, c)).toBe(false);
        }
      }),
      { numRuns: 50 },
    );
    expect(blockGateway('10.128.3.0/24')).toBe('10.128.3.1');
  });

  it('service addresses come from the service pool, never from a tenant network, and are never handed out twice', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: P.servicePool.network, max: P.servicePool.network + 300 }), { maxLength: 200 }), (taken) => {
        const used = new Set(taken);
        for (let k = 0; k < 5; k++) {
          const vip = freeServiceAddress(P, used);
          const n = parseIpv4(vip ?? '');
          expect(n).toBeDefined();
          expect(used.has(n!)).toBe(false); // defined: checked just above
          expect(cidrContains(P.servicePool, n!)).toBe(true);
          expect(cidrContains(P.tenantPool, n!)).toBe(false);
          expect(n).not.toBe(P.servicePool.network); // the pool's own network address is never a VIP
          used.add(n!);
        }
      }),
    );
    const small = networkPools({ ...NETWORK_DEFAULTS, servicePool: '10.112.0.0/30' });
    expect(freeServiceAddress(small, new Set())).toBe('10.112.0.1');
    expect(freeServiceAddress(small, new Set([parseIpv4('10.112.0.1')!, parseIpv4('10.112.0.2')!]))).toBeUndefined(); // literals parse
  });
});
