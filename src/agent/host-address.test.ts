import { describe, expect, it } from 'vitest';
import { parseIpv4 } from '../model/netaddr.js';
import { defaultRouteAddress, hostAddressSource, routeSourceAddress } from './host-address.js';

describe('host underlay address', () => {
  it("reads the source address of ip's JSON route answer", () => {
    expect(routeSourceAddress('[{"dst":"1.1.1.1","gateway":"192.0.2.1","dev":"eth0","prefsrc":"192.0.2.2","flags":[],"uid":0,"cache":[]}]')).toBe('192.0.2.2');
    for (const bad of ['', '[]', '{}', '[{"dst":"1.1.1.1"}]', '[{"prefsrc":"fe80::1"}]', 'not json']) expect(routeSourceAddress(bad), bad).toBeUndefined();
  });

  it('the advertised address wins; else the kernel answers for this machine (real ip route)', async () => {
    expect(await hostAddressSource('198.51.100.4')()).toBe('198.51.100.4');
    const found = await defaultRouteAddress();
    // This machine has a default route (the test machine reaches registries): an IPv4 address comes back.
    expect(found !== undefined && parseIpv4(found) !== undefined).toBe(true);
    expect(await hostAddressSource(undefined)()).toBe(found);
  });
});
