import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { allocateIp, allocateMark, containerRange, contains, gatewayOf, hostIfName, intToIp, ipToInt, parseSubnet, shadows, validateSetup } from './ipam.js';

describe('ipam', () => {
  it('round-trips addresses', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), (n) => ipToInt(intToIp(n)) === n));
    expect(() => ipToInt('10.0.0.256')).toThrow();
    expect(() => ipToInt('10.0.0')).toThrow();
  });

  it('parses subnets and refuses host bits or tiny prefixes', () => {
    const s = parseSubnet('10.88.0.0/16');
    expect(intToIp(gatewayOf(s))).toBe('10.88.0.1');
    expect(containerRange(s)).toEqual({ first: ipToInt('10.88.0.2'), last: ipToInt('10.88.255.254') });
    expect(() => parseSubnet('10.88.0.1/16')).toThrow(/host bits/);
    expect(() => parseSubnet('10.88.0.0/31')).toThrow();
    expect(() => parseSubnet('10.88.0.0')).toThrow();
  });

  it('never hands out a used, gateway, network or broadcast address, and exhausts cleanly', () => {
    const s = parseSubnet('10.1.2.0/28'); // 13 container addresses: .2 .. .14
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 2, max: 14 }), { maxLength: 13 }), fc.option(fc.integer({ min: 0, max: 20 })), (usedOffsets, cursorOffset) => {
        const used = new Set(usedOffsets.map((o) => s.network + o));
        const ip = allocateIp(s, used, cursorOffset === null ? undefined : s.network + cursorOffset);
        if (used.size === 13) return ip === undefined;
        return ip !== undefined && !used.has(ip) && contains(s, ip) && ip !== s.network && ip !== gatewayOf(s) && ip !== s.network + 15;
      }),
    );
  });

  it('continues after the cursor instead of reusing the lowest free address', () => {
    const s = parseSubnet('10.1.2.0/24');
    const used = new Set([ipToInt('10.1.2.3')]);
    expect(intToIp(allocateIp(s, used, ipToInt('10.1.2.5')) as number)).toBe('10.1.2.6'); // safe: pool not exhausted
    expect(intToIp(allocateIp(s, new Set(), ipToInt('10.1.2.254')) as number)).toBe('10.1.2.2'); // safe: wraps
  });

  it('allocates the smallest free mark', () => {
    expect(allocateMark(new Set())).toBe(1);
    expect(allocateMark(new Set([1, 2, 4]))).toBe(3);
  });

  it('derives short, stable interface names', () => {
    fc.assert(fc.property(fc.stringMatching(/^[a-z0-9][a-z0-9_.-]{0,40}$/), (id) => {
      const n = hostIfName(id);
      return n.length <= 15 && /^cv[0-9a-f]{12}$/.test(n) && n === hostIfName(id);
    }));
  });

  it('validates ids and ports with field paths', () => {
    expect(validateSetup('web-1', [{ containerPort: 80, hostPort: 8080, protocol: 'tcp' }, { containerPort: 53, hostPort: 8080, protocol: 'udp' }])).toEqual([]);
    expect(validateSetup('-bad', [])).toEqual([{ path: 'id', message: expect.any(String) as string }]);
    expect(validateSetup('a'.repeat(42), []).map((i) => i.path)).toEqual(['id']);
    expect(validateSetup('ok', [
      { containerPort: 80, hostPort: 8080, protocol: 'tcp' },
      { containerPort: 81, hostPort: 8080, protocol: 'tcp' },
      { containerPort: 1.5, protocol: 'tcp' },
      { containerPort: 1, protocol: 'sctp' as 'tcp' }, // deliberately invalid input from an untyped caller
    ]).map((i) => i.path)).toEqual(['ports[1].hostPort', 'ports[2].containerPort', 'ports[3].protocol']);
  });

  it('an interface address shadows a block when its route is inside the block and at least as specific', () => {
    const block = parseSubnet('10.128.0.0/24');
    // A leftover bridge with the block's gateway: the same /24 route, which may win the tie.
    expect(shadows({ address: ipToInt('10.128.0.1'), prefixLength: 24 }, block)).toBe(true);
    expect(shadows({ address: ipToInt('10.128.0.77'), prefixLength: 28 }, block)).toBe(true);
    // An uplink on a /8 loses to the block's /24; other blocks are not concerned.
    expect(shadows({ address: ipToInt('10.0.0.5'), prefixLength: 8 }, block)).toBe(false);
    expect(shadows({ address: ipToInt('10.128.1.1'), prefixLength: 24 }, block)).toBe(false);
    expect(shadows({ address: ipToInt('192.0.2.2'), prefixLength: 24 }, block)).toBe(false);
  });
});
