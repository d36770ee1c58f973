/**
 * Unit tests of the tenant data plane's pure parts: object names, nft scripts, dnsmasq's
 * inputs and request validation. The kernel side is tested in test/network/tenant-networking.test.ts.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { dhcpHostsText, dnsmasqArgs, hostsFileText, upstreamsFromResolvConf } from './dns-config.js';
import { macFor, parseCidr, within } from './ipam.js';
import { chainNames, namesFor, tenantHash } from './names.js';
import { outermostCidrs, publishedChangeScript, segmentChainsScript, servicesScript } from './nft-rules.js';
import { validateEgress, validateEndpoint, validateSegment, validateServices } from './validate.js';

describe('names', () => {
  it('fit the kernel\'s 15-byte interface names and are recognised as ours, per prefix', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[a-z][a-z0-9]{0,3}$/), fc.string({ minLength: 1, maxLength: 40 }), (prefix, name) => {
        const n = namesFor(prefix);
        const links = [n.bridge(name), n.vxlan(name), n.endpointIf(name, 'netns'), n.endpointIf(name, 'tap')];
        return links.every((l) => l.length <= 15 && n.isOurLink(l)) && !namesFor(`${prefix === 'z' ? 'y' : 'z'}`).isOurLink(n.bridge(name));
      }),
    );
  });

  it('tie every per-tenant chain and counter back to its tenant', () => {
    const th = tenantHash('acme');
    for (const c of [chainNames.segment(th), chainNames.services(th), chainNames.noEndpoints(th), chainNames.service(th, 'web'), chainNames.denied(th)]) {
      expect(chainNames.tenantOf(c)).toBe(th);
    }
    expect(chainNames.tenantOf('prerouting')).toBeUndefined();
  });

  it('derive a fixed, locally administered MAC from the address', () => {
    expect(macFor('10.128.1.2')).toBe('02:ca:0a:80:01:02');
  });
});

describe('nft scripts', () => {
  it('keep only the outermost of overlapping CIDRs (interval sets without auto-merge refuse overlaps)', () => {
    expect(outermostCidrs(['10.1.2.3', '10.0.0.0/8', '192.168.77.11', '192.168.77.12/32', '192.168.77.11'])).toEqual(['10.0.0.0/8', '192.168.77.11/32', '192.168.77.12/32']);
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 8, max: 32 })), { maxLength: 8 }), (raw) => {
        const list = raw.map(([n, len]) => {
          const net = len === 32 ? n : n - (n % 2 ** (32 - len));
          return `${[net >>> 24, (net >>> 16) & 255, (net >>> 8) & 255, net & 255].join('.')}/${len}`;
        });
        const out = outermostCidrs(list).map(parseCidr);
        const disjoint = out.every((a, i) => out.every((b, j) => i === j || (!within(a, b) && !within(b, a))));
        const covered = list.map(parseCidr).every((c) => out.some((o) => within(c, o)));
        return disjoint && covered;
      }),
    );
  });

  it('balance a service over its endpoints, reject one without any, and delete chains no service needs', () => {
    const th = tenantHash('acme');
    const script = servicesScript('ccarapace', th, [
      { name: 'web', vip: '10.112.0.10', ports: [{ port: 80, protocol: 'tcp' }], endpoints: ['10.128.1.3', '10.128.1.2'] },
      { name: 'idle', vip: '10.112.0.11', ports: [{ port: 53, protocol: 'udp' }], endpoints: [] },
    ], [chainNames.service(th, 'gone'), chainNames.service(tenantHash('other'), 'x')]);
    expect(script).toContain(`dnat ip to numgen random mod 2 map { 0 : 10.128.1.2, 1 : 10.128.1.3 }`);
    expect(script).toContain(`10.112.0.10 . tcp . 80 : goto ${chainNames.service(th, 'web')}`);
    expect(script).toContain(`{ 10.112.0.11 . udp . 53 } meta l4proto tcp reject with tcp reset`);
    expect(script).toContain(`delete chain inet ccarapace ${chainNames.service(th, 'gone')}`);
    expect(script).not.toContain(`delete chain inet ccarapace ${chainNames.service(tenantHash('other'), 'x')}`);
  });

  it('write egress deny as the allow list then a counted drop, after infrastructure and other segments', () => {
    const s = segmentChainsScript('ccarapace', {
      th: 'abcdef01', bridge: 'cbabcdef01', gateway: '10.128.1.1', cidr: '10.128.0.0/18',
      egress: { default: 'deny', allow: [{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443, 80, 443] }, { cidr: '198.51.100.7' }] },
    });
    const rules = s.split('\n').filter((l) => l.startsWith('add rule'));
    expect(rules.map((r) => r.replace('add rule inet ccarapace seg-abcdef01 ', ''))).toEqual([
      'oifname "cbabcdef01" accept',
      'ct status dnat accept',
      'jump noep-abcdef01',
      'oifname @segments counter name "denied-abcdef01" drop',
      'ip daddr @infra counter name "denied-abcdef01" drop',
      'ip daddr 192.0.2.0/24 tcp dport { 80, 443 } accept',
      'ip daddr 198.51.100.7/32 accept',
      'counter name "denied-abcdef01" drop',
    ]);
  });

  it('move published ports in one transaction, old mappings removed whether or not they exist', () => {
    const ep = { ifname: 'ce0123456789', mac: '02:ca:0a:80:01:02', ip: '10.128.1.2', dhcp: false };
    expect(publishedChangeScript('ccarapace', { ...ep, ports: [{ containerPort: 80, hostPort: 8080, protocol: 'tcp' }] }, { ...ep, ports: [{ containerPort: 80, hostPort: 9090, protocol: 'tcp' }] })).toBe(
      'add element inet ccarapace published { tcp . 8080 : 10.128.1.2 . 80 }\n' +
        'delete element inet ccarapace published { tcp . 8080 }\n' +
        'add element inet ccarapace published { tcp . 9090 : 10.128.1.2 . 80 }\n',
    );
  });
});

describe('dnsmasq inputs', () => {
  it('serve each name bare and under <tenant>.<domain>, sorted so unchanged sets write the same bytes', () => {
    const text = hostsFileText('acme.carapace.internal', [{ name: 'web', vip: '10.112.0.10', ports: [], endpoints: [] }], [{ name: 'db', ip: '10.128.1.5' }]);
    expect(text).toBe('10.112.0.10 web web.acme.carapace.internal\n10.128.1.5 db db.acme.carapace.internal\n');
    expect(dhcpHostsText([{ mac: '02:ca:0a:80:01:03', ip: '10.128.1.3' }, { mac: '02:ca:0a:80:01:02', ip: '10.128.1.2' }])).toBe('02:ca:0a:80:01:02,10.128.1.2\n02:ca:0a:80:01:03,10.128.1.3\n');
  });

  it('take the host\'s IPv4 resolvers, never a loopback stub', () => {
    expect(upstreamsFromResolvConf('# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nnameserver 192.0.2.53\nsearch x\n')).toEqual(['192.0.2.53']);
  });

  it('bind only the gateway of the segment, keep the cluster domain local and lease statically', () => {
    const args = dnsmasqArgs({
      bridge: 'cbabcdef01', gateway: '10.128.1.1', cidr: '10.128.0.0/18', tenantDomain: 'acme.carapace.internal', domain: 'carapace.internal', upstreams: [],
      files: { pidFile: '/r/p', hostsFile: '/r/h', dhcpHostsFile: '/r/d', logFile: '/r/l' },
    });
    expect(args).toEqual(expect.arrayContaining(['--bind-interfaces', '--interface=cbabcdef01', '--listen-address=10.128.1.1', '--no-resolv', '--local=/carapace.internal/', '--dhcp-range=10.128.0.0,static,255.255.192.0,12h', '--pid-file=/r/p']));
    expect(args.some((a) => a.startsWith('--server='))).toBe(false);
  });
});

describe('validation', () => {
  it('names the field of every problem', () => {
    expect(validateEgress('spec.network.egress', { default: 'deny', allow: [{ cidr: '192.0.2.1/24', ports: [0, 443] }] }).map((i) => i.path)).toEqual([
      'spec.network.egress.allow[0].cidr',
      'spec.network.egress.allow[0].ports[0]',
      'spec.network.egress.allow[0].protocol',
    ]);
    expect(validateSegment({ tenant: 'Acme', cidr: '10.128.0.0/18', block: '10.129.0.0/24', vni: 0, domain: 'carapace.internal', egress: { default: 'allow' }, underlay: 'x' }).map((i) => i.path)).toEqual(['tenant', 'block', 'vni', 'underlay']);
    expect(validateEndpoint({ id: 'ok', tenant: 'acme', kind: 'vm' as 'tap', ports: [] }).map((i) => i.path)).toEqual(['kind']); // safe: a bad kind on purpose
    expect(validateServices([
      { name: 'web', vip: '10.112.0.10', ports: [{ port: 80, protocol: 'tcp' }, { port: 80, protocol: 'tcp' }], endpoints: ['nope'] },
      { name: 'web', vip: '10.112.0.10', ports: [], endpoints: [] },
    ]).map((i) => i.path)).toEqual(['services[0].ports[1]', 'services[0].endpoints[0]', 'services[1].name', 'services[1].vip']);
  });
});
