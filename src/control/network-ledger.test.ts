import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cidrContains, cidrsOverlap, parseCidr, type Cidr } from '../model/netaddr.js';
import { DEFAULT_NETWORK_POOLS as P, NETWORK_DEFAULTS, networkPools, newTenantNetwork, type TenantNetwork } from '../model/tenant-network.js';
import { NetworkLedger } from './network-ledger.js';

function cidr(s: string): Cidr {
  const r = parseCidr(s);
  if (!r.ok) throw new Error(`${s}: ${r.message}`);
  return r.cidr;
}

describe('NetworkLedger', () => {
  it('creates a network with its first placement, adds a block per new host, and nothing for a known pair', () => {
    const l = new NetworkLedger(P, new Map(), [], 'now');
    const first = l.ensure('acme', 'h1');
    expect(first).toEqual({ ok: true, change: { tenant: 'acme', network: { tenant: 'acme', cidr: '10.128.0.0/18', vni: 1000, blocks: { h1: '10.128.0.0/24' }, createdAt: 'now' }, createdIndex: 0, addedBlock: { host: 'h1', block: '10.128.0.0/24' } } });
    expect(l.ensure('acme', 'h1')).toEqual({ ok: true });
    const second = l.ensure('acme', 'h2');
    expect(second.ok && second.change).toMatchObject({ addedBlock: { host: 'h2', block: '10.128.1.0/24' }, network: { blocks: { h1: '10.128.0.0/24', h2: '10.128.1.0/24' } } });
    expect(second.ok && second.change?.createdIndex).toBeUndefined();
  });

  it('skips indexes held by stored networks and by claims without a record', () => {
    const stored = new Map<string, TenantNetwork>([['acme', newTenantNetwork(P, 'acme', 0, 't')]]);
    const l = new NetworkLedger(P, stored, [1], 'now');
    const r = l.ensure('globex', 'h1');
    expect(r.ok && r.change).toMatchObject({ createdIndex: 2, network: { cidr: '10.128.128.0/18', vni: 1002 } });
  });

  it('refuses when no tenant network or no host block is left, and remembers nothing then', () => {
    const one = networkPools({ ...NETWORK_DEFAULTS, tenantPool: '10.128.0.0/18' });
    const l = new NetworkLedger(one, new Map(), [], 'now');
    expect(l.ensure('acme', 'h1').ok).toBe(true);
    expect(l.ensure('globex', 'h1')).toEqual({ ok: false, message: 'no tenant network is left for tenant globex: every /18 of the tenant pool is taken; delete unused tenants' });
    for (let h = 2; h <= 64; h++) expect(l.ensure('acme', `h${h}`).ok).toBe(true);
    expect(l.ensure('acme', 'h65')).toEqual({ ok: false, message: "tenant acme's network 10.128.0.0/18 has no host block left for host h65: every /24 is taken" });
    expect(l.ensure('acme', 'h64')).toEqual({ ok: true });
  });

  it('over any sequence of placements: tenants never share a CIDR or VNI, blocks lie in their network and never overlap', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom('a', 'b', 'c', 'd'), fc.constantFrom('h1', 'h2', 'h3')), { maxLength: 40 }), (placements) => {
        const l = new NetworkLedger(P, new Map(), [], 'now');
        const nets = new Map<string, TenantNetwork>();
        for (const [t, h] of placements) {
          const r = l.ensure(t, h);
          expect(r.ok).toBe(true);
          if (r.ok && r.change) nets.set(t, r.change.network);
          expect(nets.get(t)?.blocks[h]).toBeDefined();
        }
        const all = [...nets.values()];
        for (const [i, a] of all.entries()) {
          const blocks = Object.values(a.blocks).map(cidr);
          for (const b of blocks) expect(cidrContains(cidr(a.cidr), b.network)).toBe(true);
          for (const [j, b] of blocks.entries()) for (const c of blocks.slice(j + 1)) expect(cidrsOverlap(b, c)).toBe(false);
          for (const b of all.slice(i + 1)) {
            expect(cidrsOverlap(cidr(a.cidr), cidr(b.cidr))).toBe(false);
            expect(a.vni).not.toBe(b.vni);
          }
        }
      }),
    );
  });
});
