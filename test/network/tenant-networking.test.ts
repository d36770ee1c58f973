/**
 * Integration tests of the tenant data plane (src/network/tenant-networking.ts) on the real
 * kernel. The "hosts" are network namespaces on a test LAN (a bridge in its own namespace) with
 * an "outside" machine; each host has its own TenantNetworking, as each agent would. Workloads
 * are busybox httpd inside the endpoints' namespaces; probes are node and busybox run inside
 * namespaces. Everything is made per run (unique names) and removed at the end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTenantNetworking, type Endpoint, type SegmentSpec, type TenantNetworking } from '../../src/network/tenant-networking.js';
import { NetworkError } from '../../src/network/errors.js';
import { tenantHash } from '../../src/network/names.js';
import { pidAlive } from '../../src/proc/pids.js';
import { run } from '../../src/proc/run.js';
import { killChild, testLogger, uniqueTag } from './helpers.js';
import { clientLoop, getEventually, getFrom, httpdIn, inNs, ipIn, makeLan, removeLan, resolveFrom, until, type LanNode } from './tenant-helpers.js';

const tag = uniqueTag();
const lan = `ctn${tag}l`;
const h1: LanNode = { ns: `ctn${tag}h1`, ip: '192.168.77.11' };
const h2: LanNode = { ns: `ctn${tag}h2`, ip: '192.168.77.12' };
const out: LanNode = { ns: `ctn${tag}o`, ip: '192.168.77.100' };
const A = `a${tag}`;
const B = `b${tag}`;
const DOMAIN = 'carapace.internal';
const VIP = '10.112.0.10';

const specA = (block: string, underlay: string): SegmentSpec => ({ tenant: A, cidr: '10.128.0.0/18', block, vni: 1000, domain: DOMAIN, egress: { default: 'allow' }, underlay });
const specB = (block: string, underlay: string): SegmentSpec => ({
  tenant: B,
  cidr: '10.128.64.0/18',
  block,
  vni: 1001,
  domain: DOMAIN,
  egress: { default: 'deny', allow: [{ cidr: `${out.ip}/32`, protocol: 'tcp', ports: [8081] }] },
  underlay,
});

/** The compiled library (npm run build), for a child process that is killed mid-attach. */
const ROOT = path.join(import.meta.dirname, '..', '..');
const DIST_MODULE = path.join(ROOT, 'dist', 'src', 'network', 'tenant-networking.js');
if (!existsSync(DIST_MODULE)) throw new Error(`${DIST_MODULE} is missing: run npm run build first`);
const CRASH_CHILD = `
const [mod, stateDir, runDir, netns, id, tenant, hostPort] = process.argv.slice(1);
const { createTenantNetworking } = await import(mod);
const { pino } = await import('pino');
const net = createTenantNetworking({ stateDir, runDir, netns, logger: pino({ level: 'silent' }) });
await net.attach({ id, tenant, kind: 'netns', ports: [{ containerPort: 80, hostPort: Number(hostPort), protocol: 'tcp' }] });
`;

let root: string;
const dirs = { state1: '', state2: '', run1: '', run2: '', www: '' };
let m1: TenantNetworking;
let m2: TenantNetworking;
const children: ChildProcess[] = [];
const eps: Record<string, Endpoint> = {};
const id = (name: string): string => `t${tag}-${name}`;
const ns = (name: string): string => `carapace-${id(name)}`;

/** A web root answering `body`; busybox httpd serves index.html. */
async function wwwDir(body: string): Promise<string> {
  const dir = path.join(dirs.www, body);
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'index.html'), `${body}\n`);
  return dir;
}

/** Starts httpd answering `body` on `port` in namespace `netns`; returns the child. */
async function serve(netns: string, body: string, port = 8080): Promise<ChildProcess> {
  const c = httpdIn(netns, await wwwDir(body), port);
  children.push(c);
  return c;
}

async function attachServed(m: TenantNetworking, name: string, tenant: string): Promise<Endpoint> {
  const ep = await m.attach({ id: id(name), tenant, kind: 'netns', ports: [] });
  eps[name] = ep;
  await serve(ns(name), name);
  // Ready when it answers itself.
  expect((await getEventually(ns(name), `http://${ep.ip}:8080/`))?.trim()).toBe(name);
  return ep;
}

const reach = async (from: string, ip: string, port = 8080): Promise<string | undefined> => (await getFrom(from, `http://${ip}:${port}/`))?.trim();

async function ourLinks(hostNs: string): Promise<string[]> {
  const links = JSON.parse(await ipIn(hostNs, '-j', 'link', 'show')) as { ifname: string }[]; // safe: `ip -j link` prints an array of links
  return links.map((l) => l.ifname).filter((n) => /^c[bxet][0-9a-f]{8,10}$/.test(n));
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'carapace-tn-'));
  await fs.chmod(root, 0o755); // dnsmasq runs as nobody and reads its files below the run dirs
  for (const k of Object.keys(dirs) as (keyof typeof dirs)[]) { // safe: the keys of dirs
    dirs[k] = path.join(root, k);
    await fs.mkdir(dirs[k], { mode: 0o755 });
  }
  await makeLan(lan, [h1, h2, out]);
  for (const h of [h1, h2]) await ipIn(h.ns, 'route', 'add', 'default', 'via', out.ip);
  m1 = createTenantNetworking({ stateDir: dirs.state1, runDir: dirs.run1, netns: h1.ns, logger: testLogger });
  m2 = createTenantNetworking({ stateDir: dirs.state2, runDir: dirs.run2, netns: h2.ns, logger: testLogger });
  await m1.ensureSegment(specA('10.128.1.0/24', h1.ip));
  await m1.ensureSegment(specB('10.128.65.0/24', h1.ip));
});

afterAll(async () => {
  await Promise.all(children.splice(0).map((c) => killChild(c)));
  for (const m of [m1, m2]) {
    if (!m) continue;
    await m.gc(new Set()).catch(() => undefined);
    for (const t of await m.segments().catch(() => [])) await m.removeSegment(t).catch(() => undefined);
  }
  await removeLan(lan, [h1, h2, out]);
  for (const name of ['a1', 'a2', 'a3', 'a4', 'b1', 'a5', 'b5', 'd1', 'ghost', 'crash0', 'crash1', 'crash2', 'crash3', 'warm', 'warm2']) await run('ip', ['netns', 'del', ns(name)]);
  if (root) await fs.rm(root, { recursive: true, force: true });
});

describe('tenant data plane, one host', () => {
  it('makes a bridge per tenant; same-tenant endpoints reach each other, another tenant\'s do not', async () => {
    const a1 = await attachServed(m1, 'a1', A);
    await attachServed(m1, 'a2', A);
    const b1 = await attachServed(m1, 'b1', B);
    expect(a1).toMatchObject({ tenant: A, kind: 'netns', prefixLength: 18, gateway: '10.128.1.1', dns: '10.128.1.1', netnsPath: `/var/run/netns/${ns('a1')}` });
    expect(a1.ip).toMatch(/^10\.128\.1\.\d+$/);
    expect(a1.mac).toMatch(/^02:ca:0a:80:01:[0-9a-f]{2}$/);
    expect(b1.gateway).toBe('10.128.65.1');
    expect(await m1.segments()).toEqual([A, B].sort());
    expect(await m1.inspect(id('a1'))).toEqual(a1);
    expect(await m1.attach({ id: id('a1'), tenant: A, kind: 'netns', ports: [] })).toEqual(a1); // idempotent

    expect(await getEventually(ns('a2'), `http://${a1.ip}:8080/`)).toBe('a1\n');
    expect(await reach(ns('b1'), a1.ip)).toBeUndefined();
    expect(await reach(ns('a1'), b1.ip)).toBeUndefined();
    // A segment with endpoints is not removed.
    await expect(m1.removeSegment(A)).rejects.toMatchObject({ code: 'CARAPACE_E_NETWORK_CONFLICT' });
  });

  it('refuses a segment whose block another interface already holds (a leftover of another agent), naming it, and records nothing', async () => {
    await ipIn(h1.ns, 'link', 'add', `lo${tag}`, 'type', 'bridge');
    try {
      await ipIn(h1.ns, 'addr', 'add', '10.128.2.1/24', 'dev', `lo${tag}`);
      const C = `c${tag}`;
      await expect(m1.ensureSegment({ ...specA('10.128.2.0/24', h1.ip), tenant: C, vni: 1002 })).rejects.toMatchObject({ code: 'CARAPACE_E_NETWORK_CONFLICT', message: expect.stringContaining(`interface lo${tag} (10.128.2.1/24)`) });
      expect(await m1.segments()).toEqual([A, B].sort());
      expect(await ourLinks(h1.ns)).not.toContain(`cb${tenantHash(C)}`);
    } finally {
      await ipIn(h1.ns, 'link', 'del', `lo${tag}`);
    }
  });

  it('drops frames with a spoofed source address or MAC', async () => {
    const a1 = eps.a1 as Endpoint; // safe: attached by the first test
    const a2 = eps.a2 as Endpoint; // safe: attached by the first test
    await ipIn(ns('a2'), 'addr', 'add', '10.128.1.200/18', 'dev', 'eth0');
    expect(await getFrom(ns('a2'), `http://${a1.ip}:8080/`, { localAddress: '10.128.1.200' })).toBeUndefined();
    await ipIn(ns('a2'), 'addr', 'del', '10.128.1.200/18', 'dev', 'eth0');
    await ipIn(ns('a2'), 'neigh', 'flush', 'dev', 'eth0');
    await ipIn(ns('a2'), 'link', 'set', 'eth0', 'address', '02:ca:00:00:00:99');
    expect(await reach(ns('a2'), a1.ip)).toBeUndefined();
    await ipIn(ns('a2'), 'link', 'set', 'eth0', 'address', a2.mac);
    expect((await getEventually(ns('a2'), `http://${a1.ip}:8080/`))?.trim()).toBe('a1');
  });

  it('refuses input to host addresses from every endpoint; published ports work from outside, the host and workloads', async () => {
    const a1 = eps.a1 as Endpoint; // safe: attached by the first test
    await serve(h1.ns, 'host', 9000);
    expect((await getEventually(out.ns, `http://${h1.ip}:9000/`))?.trim()).toBe('host');
    for (const from of ['a1', 'b1']) {
      for (const addr of ['10.128.1.1', '10.128.65.1', h1.ip]) expect(await reach(ns(from), addr, 9000), `${from} → ${addr}:9000`).toBeUndefined();
    }

    const linkOf = async (ifname: string): Promise<{ ifindex: number; address: string }> =>
      (JSON.parse(await ipIn(h1.ns, '-j', 'link', 'show', 'dev', ifname)) as { ifindex: number; address: string }[])[0] as { ifindex: number; address: string }; // safe: one link asked for
    const mine = (await ourLinks(h1.ns)).filter((l) => l.startsWith('ce'));
    const idx = Object.fromEntries(await Promise.all(mine.map(async (l) => [l, (await linkOf(l)).ifindex] as const)));

    // Changing the published ports of an attached endpoint keeps its link, address and MAC.
    const port = 18080;
    const withPort = await m1.attach({ id: id('a1'), tenant: A, kind: 'netns', ports: [{ containerPort: 8080, hostPort: port, protocol: 'tcp' }] });
    expect(withPort).toMatchObject({ ip: a1.ip, mac: a1.mac, hostPorts: [{ containerPort: 8080, hostPort: port, protocol: 'tcp' }] });
    for (const l of mine) expect((await linkOf(l)).ifindex).toBe(idx[l]);

    expect((await getEventually(out.ns, `http://${h1.ip}:${port}/`))?.trim()).toBe('a1');
    expect((await getFrom(h1.ns, `http://127.0.0.1:${port}/`))?.trim()).toBe('a1');
    expect((await getFrom(h1.ns, `http://${h1.ip}:${port}/`))?.trim()).toBe('a1');
    expect(await reach(ns('b1'), h1.ip, port)).toBe('a1');
    expect(await reach(ns('b1'), '10.128.65.1', port)).toBe('a1');
    expect(await reach(ns('a2'), '10.128.1.1', port)).toBe('a1');

    // A host port another endpoint publishes, or a host process listens on, is refused.
    const taken = await m1.attach({ id: id('a2'), tenant: A, kind: 'netns', ports: [{ containerPort: 8080, hostPort: port, protocol: 'tcp' }] }).catch((e: unknown) => e);
    expect(taken).toBeInstanceOf(NetworkError);
    expect(taken).toMatchObject({ code: 'CARAPACE_E_PORT_IN_USE', port: { hostPort: port, protocol: 'tcp' } });
    await expect(m1.attach({ id: id('a2'), tenant: A, kind: 'netns', ports: [{ containerPort: 8080, hostPort: 9000, protocol: 'tcp' }] })).rejects.toMatchObject({ code: 'CARAPACE_E_PORT_IN_USE' });
    const a2 = eps.a2 as Endpoint; // safe: attached by the first test
    expect(await reach(ns('a1'), a2.ip)).toBe('a2'); // the refused change left a2 as it was

    await m1.attach({ id: id('a1'), tenant: A, kind: 'netns', ports: [] });
    expect(await reach(out.ns, h1.ip, port)).toBeUndefined();
  });

  it('balances a service address over its ready endpoints and drops a removed one within 2 s', async () => {
    const a3 = await attachServed(m1, 'a3', A);
    const a4 = await attachServed(m1, 'a4', A);
    const a1 = eps.a1 as Endpoint; // safe: attached by the first test
    await m1.setServices(A, [{ name: 'web', vip: VIP, ports: [{ port: 8080, protocol: 'tcp' }], endpoints: [a1.ip, a3.ip, a4.ip] }]);
    const loop = clientLoop(ns('a2'), `http://${VIP}:8080/`);
    children.push(loop.child);
    const seen = (): Set<string | undefined> => new Set(loop.samples.filter((s) => s.ok).map((s) => s.body));
    expect(await until(() => ['a1', 'a3', 'a4'].every((b) => seen().has(b)), 30_000), JSON.stringify([...seen()])).toBe(true);
    expect(loop.samples.every((s) => s.ok)).toBe(true);
    // The host reaches every tenant's services too.
    expect(await reach(h1.ns, VIP)).toMatch(/^a[134]$/);

    // a4 dies: its share of the requests fails until it leaves the service.
    const a4httpd = children.find((c) => c.spawnargs.includes(ns('a4')));
    await killChild(a4httpd);
    const killedAt = loop.samples.length;
    expect(await until(() => loop.samples.slice(killedAt).some((s) => !s.ok), 20_000)).toBe(true);
    await m1.setServices(A, [{ name: 'web', vip: VIP, ports: [{ port: 8080, protocol: 'tcp' }], endpoints: [a1.ip, a3.ip] }]);
    const setAt = Date.now();
    expect(await until(() => loop.samples.filter((s) => s.t > setAt + 2000).length >= 30, 30_000)).toBe(true);
    const late = loop.samples.filter((s) => s.t > setAt + 2000);
    expect(late.filter((s) => !s.ok)).toEqual([]);
    expect(new Set(late.map((s) => s.body))).toEqual(new Set(['a1', 'a3']));
    await killChild(loop.child);

    // The other tenant's workloads do not get this tenant's service.
    expect(await reach(ns('b1'), VIP)).toBeUndefined();
  });

  it('answers the tenant\'s names on its gateway, and not to another tenant', async () => {
    const a1 = eps.a1 as Endpoint; // safe: attached by the first test
    await m1.setNames(A, [{ name: 'db', ip: a1.ip }]);
    expect(await resolveFrom(ns('a2'), '10.128.1.1', 'web')).toBe(VIP);
    expect(await resolveFrom(ns('a2'), '10.128.1.1', `web.${A}.${DOMAIN}`)).toBe(VIP);
    expect(await resolveFrom(ns('a2'), '10.128.1.1', 'db')).toBe(a1.ip);
    expect(await resolveFrom(ns('a2'), '10.128.1.1', `db.${A}.${DOMAIN}`)).toBe(a1.ip);
    // B's own DNS does not know A's names; A's DNS does not answer B's workloads.
    expect(await resolveFrom(ns('b1'), '10.128.65.1', 'web')).toMatch(/^ERR /);
    expect(await resolveFrom(ns('b1'), '10.128.65.1', `web.${A}.${DOMAIN}`)).toMatch(/^ERR /);
    expect(await resolveFrom(ns('b1'), '10.128.1.1', 'web')).toMatch(/^ERR /);
    // Names go when the desired set no longer has them (SIGHUP reload).
    await m1.setNames(A, []);
    expect(await until(async () => (await resolveFrom(ns('a2'), '10.128.1.1', 'db')).startsWith('ERR '), 10_000)).toBe(true);
  });

  it('applies egress policies: deny with an allow list, infrastructure never, and counts what it denied', async () => {
    await serve(out.ns, 'out1', 8081);
    await serve(out.ns, 'out2', 8082);
    await serve(h2.ns, 'h2', 9000);
    expect((await getEventually(h1.ns, `http://${out.ip}:8082/`))?.trim()).toBe('out2');
    expect((await getEventually(h1.ns, `http://${h2.ip}:9000/`))?.trim()).toBe('h2');
    const before = (await m1.egressDenied())[B] ?? 0;

    expect(await reach(ns('a1'), out.ip, 8081)).toBe('out1');
    expect(await reach(ns('a1'), out.ip, 8082)).toBe('out2');
    expect(await reach(ns('b1'), out.ip, 8081)).toBe('out1');
    expect(await reach(ns('b1'), out.ip, 8082)).toBeUndefined();
    expect((await m1.egressDenied())[B]).toBeGreaterThan(before);

    // A changed policy applies to the running segment, and back.
    await m1.ensureSegment({ ...specB('10.128.65.0/24', h1.ip), egress: { default: 'allow' } });
    expect(await reach(ns('b1'), out.ip, 8082)).toBe('out2');
    await m1.ensureSegment(specB('10.128.65.0/24', h1.ip));
    expect(await reach(ns('b1'), out.ip, 8082)).toBeUndefined();

    expect(await reach(ns('a1'), h2.ip, 9000)).toBe('h2');
    await m1.setInfrastructure([h2.ip]);
    expect(await reach(ns('a1'), h2.ip, 9000)).toBeUndefined();
    expect(await reach(ns('a1'), out.ip, 8081)).toBe('out1');
  });

  it('makes persistent taps with anti-spoofing, DHCP leases and published ports', async () => {
    const tap = await m1.attach({ id: id('tap1'), tenant: A, kind: 'tap', ports: [], dhcp: true });
    expect(tap.tap).toMatch(/^ct[0-9a-f]{10}$/);
    const tapName = tap.tap as string; // safe: a tap endpoint has its tap
    type TapJson = { ifindex: number; flags: string[]; master?: string; address: string; linkinfo?: { info_kind?: string; info_data?: { type?: string; multi_queue?: boolean } } };
    const show = async (): Promise<TapJson> => (JSON.parse(await ipIn(h1.ns, '-j', '-d', 'link', 'show', 'dev', tapName)) as TapJson[])[0] as TapJson; // safe: one link asked for
    const link = await show();
    expect(link.linkinfo?.info_kind).toBe('tun');
    expect(link.linkinfo?.info_data?.type).toBe('tap');
    expect(link.linkinfo?.info_data?.multi_queue ?? false).toBe(false);
    expect(link.master).toBe(`cb${tenantHash(A)}`);
    expect(link.flags).toContain('UP');
    const bridgeSets = await inNs(h1.ns, 'nft', ['list', 'table', 'bridge', 'ccarapace']);
    expect(bridgeSets).toContain(`"${tapName}" . ${tap.mac} . ${tap.ip}`);
    expect(bridgeSets).toContain(`"${tapName}" . ${tap.mac}`);
    const hostsFile = await fs.readFile(path.join(dirs.run1, tenantHash(A), 'dhcp-hosts'), 'utf8');
    expect(hostsFile).toContain(`${tap.mac},${tap.ip}\n`);

    const withPort = await m1.attach({ id: id('tap1'), tenant: A, kind: 'tap', ports: [{ containerPort: 80, hostPort: 18081, protocol: 'tcp' }], dhcp: true });
    expect(withPort).toMatchObject({ ip: tap.ip, mac: tap.mac, tap: tapName });
    expect((await show()).ifindex).toBe(link.ifindex);
    expect(await inNs(h1.ns, 'nft', ['list', 'map', 'inet', 'ccarapace', 'published'])).toContain(`tcp . 18081 : ${tap.ip} . 80`);

    await m1.detach(id('tap1'));
    expect(await run('ip', ['-n', h1.ns, 'link', 'show', 'dev', tapName]).then((r) => r.code)).not.toBe(0);
    expect(await fs.readFile(path.join(dirs.run1, tenantHash(A), 'dhcp-hosts'), 'utf8')).not.toContain(tap.mac);
  });

  it('gives a DHCP endpoint its fixed address from the segment\'s dnsmasq', async () => {
    const d1 = await m1.attach({ id: id('d1'), tenant: A, kind: 'netns', ports: [], dhcp: true });
    const r = await run('ip', ['netns', 'exec', ns('d1'), 'busybox', 'udhcpc', '-i', 'eth0', '-n', '-q', '-f', '-t', '5', '-T', '2', '-s', '/bin/true'], { timeoutMs: 30_000, mergeStderr: true });
    expect(r.stdout).toContain(`lease of ${d1.ip} obtained`);
    await m1.detach(id('d1'));
    expect(existsSync(`/var/run/netns/${ns('d1')}`)).toBe(false);
  });
});

describe('tenant data plane, reserved taps', () => {
  it('reserves a tap before its tenant is known, on no bridge, and attaches it keeping its MAC; gc removes a stale reservation', async () => {
    type LinkJson = { ifindex: number; master?: string; linkinfo?: { info_kind?: string; info_data?: { type?: string } } };
    const show = async (dev: string): Promise<LinkJson | undefined> => {
      const r = await run('ip', ['-n', h1.ns, '-j', '-d', 'link', 'show', 'dev', dev]);
      return r.code === 0 ? (JSON.parse(r.stdout) as LinkJson[])[0] : undefined; // safe: `ip -j link` prints an array of links
    };
    const r = await m1.reserveTap(id('warm'));
    expect(r.tap).toMatch(/^ct[0-9a-f]{10}$/);
    expect(r.mac).toMatch(/^02:cb:/);
    expect(await m1.reserveTap(id('warm'))).toEqual(r);
    const reserved = await show(r.tap);
    expect(reserved?.linkinfo?.info_data?.type).toBe('tap');
    expect(reserved?.master).toBeUndefined();
    expect(await m1.inspect(id('warm'))).toBeUndefined();

    const ep = await m1.attach({ id: id('warm'), tenant: A, kind: 'tap', ports: [] });
    expect(ep).toMatchObject({ tap: r.tap, mac: r.mac });
    const attached = await show(r.tap);
    expect(attached?.ifindex).toBe(reserved?.ifindex);
    expect(attached?.master).toBe(`cb${tenantHash(A)}`);
    expect(await inNs(h1.ns, 'nft', ['list', 'set', 'bridge', 'ccarapace', 'ep_src'])).toContain(`"${r.tap}" . ${r.mac} . ${ep.ip}`);
    await m1.detach(id('warm'));
    expect(await show(r.tap)).toBeUndefined();

    const stale = await m1.reserveTap(id('warm2'));
    expect(await m1.gc(new Set(['a1', 'a2', 'a3', 'a4', 'b1'].map(id)))).toEqual([id('warm2')]);
    expect(await show(stale.tap)).toBeUndefined();
    expect(await reach(ns('a2'), (await m1.inspect(id('a1')))?.ip ?? '')).toBe('a1');
  });
});

describe('tenant data plane, two hosts over VXLAN', () => {
  it('connects a tenant\'s endpoints across hosts, and not another tenant\'s', async () => {
    await m2.ensureSegment(specA('10.128.2.0/24', h2.ip));
    await m2.ensureSegment(specB('10.128.66.0/24', h2.ip));
    for (const t of [A, B]) {
      await m1.setPeers(t, [h2.ip]);
      await m2.setPeers(t, [h1.ip]);
    }
    const a5 = await attachServed(m2, 'a5', A);
    await attachServed(m2, 'b5', B);
    const a1 = eps.a1 as Endpoint; // safe: attached by the first test
    const b1 = eps.b1 as Endpoint; // safe: attached by the first test
    expect(await getEventually(ns('a5'), `http://${a1.ip}:8080/`)).toBe('a1\n');
    expect(await reach(ns('a1'), a5.ip)).toBe('a5');
    expect(await getEventually(ns('b5'), `http://${b1.ip}:8080/`)).toBe('b1\n');
    expect(await reach(ns('b5'), a1.ip)).toBeUndefined();
    expect(await reach(ns('a5'), b1.ip)).toBeUndefined();

    // A service is balanced on the client's host, to endpoints on any host.
    await m2.setServices(A, [{ name: 'web', vip: VIP, ports: [{ port: 8080, protocol: 'tcp' }], endpoints: [a1.ip] }]);
    expect(await reach(ns('a5'), VIP)).toBe('a1');
    expect(await resolveFrom(ns('a5'), '10.128.2.1', `web.${A}.${DOMAIN}`)).toBe(VIP);

    // A VNI another device of the namespace holds (another agent's) is a clear conflict.
    const C = `c${tag}`;
    await ipIn(h1.ns, 'link', 'add', 'zzvx', 'type', 'vxlan', 'id', '1234', 'local', h1.ip, 'dstport', '4789');
    // Without peers a segment needs no VXLAN device, so the local segment is made regardless;
    // the conflict shows when the overlay is needed.
    await m1.ensureSegment({ ...specA('10.128.129.0/24', h1.ip), tenant: C, cidr: '10.128.128.0/18', vni: 1234 });
    expect(await ourLinks(h1.ns)).not.toContain(`cx${tenantHash(C)}`);
    await expect(m1.setPeers(C, [h2.ip])).rejects.toMatchObject({ code: 'CARAPACE_E_NETWORK_CONFLICT', message: expect.stringContaining('VNI 1234') as unknown });
    await m1.setPeers(C, []);
    await m1.removeSegment(C);
    await ipIn(h1.ns, 'link', 'del', 'zzvx');
    expect(await m1.segments()).toEqual([A, B].sort());

    // A host's underlay address changes (a second address on its uplink): the VXLAN device is
    // remade on it, its peers are told, the endpoints on it keep their link and address.
    await ipIn(h2.ns, 'addr', 'add', '192.168.77.22/24', 'dev', 'eth0');
    await m2.ensureSegment(specA('10.128.2.0/24', '192.168.77.22'));
    await m1.setPeers(A, ['192.168.77.22']);
    const vx = JSON.parse(await ipIn(h2.ns, '-j', '-d', 'link', 'show', 'dev', `cx${tenantHash(A)}`)) as { linkinfo: { info_data: { local: string; id: number } } }[]; // safe: `ip -j -d link` of one vxlan device
    expect(vx[0]?.linkinfo.info_data).toMatchObject({ local: '192.168.77.22', id: 1000 });
    expect(await m2.inspect(id('a5'))).toEqual(a5);
    expect(await getEventually(ns('a5'), `http://${a1.ip}:8080/`)).toBe('a1\n');
  });
});

describe('tenant data plane, crash and recovery', () => {
  it('recovers after a manager is killed mid-attach or dropped mid-way, and leaves nothing stray', async () => {
    const ghost = await m1.attach({ id: id('ghost'), tenant: A, kind: 'netns', ports: [{ containerPort: 80, hostPort: 18082, protocol: 'tcp' }] });
    // kill -9 between the reservation and the kernel: the record exists, the link and namespace do not.
    const state = JSON.parse(await fs.readFile(path.join(dirs.state1, 'tenant-network.json'), 'utf8')) as { endpoints: Record<string, { ifname: string }> }; // safe: the state file's shape
    const ifname = state.endpoints[id('ghost')]?.ifname as string; // safe: just attached
    await ipIn(h1.ns, 'link', 'del', ifname);
    await run('ip', ['netns', 'del', ns('ghost')]);
    // Objects of ours no record explains: a link and a tenant's chain.
    await ipIn(h1.ns, 'link', 'add', 'ce0123456789', 'type', 'veth', 'peer', 'name', 'ce0123456780');
    await inNs(h1.ns, 'nft', ['add chain inet ccarapace seg-0badf00d']);
    const dnsPid = (await fs.readFile(path.join(dirs.run1, tenantHash(A), 'dnsmasq.pid'), 'utf8')).trim();

    // A real kill -9 of another process after its reservation, at several points of the
    // kernel work that follows (whatever it had done by then, the assertions below hold).
    const stateFile = path.join(dirs.state1, 'tenant-network.json');
    const crashes = [0, 10, 30, 60].map((delayMs, i) => ({ name: `crash${i}`, port: 18083 + i, delayMs }));
    for (const c of crashes) {
      const child = spawn(process.execPath, ['--input-type=module', '-e', CRASH_CHILD, DIST_MODULE, dirs.state1, dirs.run1, h1.ns, id(c.name), A, String(c.port)], { cwd: ROOT, stdio: 'ignore' });
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      expect(await until(async () => (await fs.readFile(stateFile, 'utf8')).includes(`"${id(c.name)}"`), 30_000)).toBe(true);
      if (c.delayMs > 0) await new Promise((r) => setTimeout(r, c.delayMs));
      child.kill('SIGKILL');
      await exited;
    }

    const fresh = createTenantNetworking({ stateDir: dirs.state1, runDir: dirs.run1, netns: h1.ns, logger: testLogger });
    const ids = await fresh.recover();
    for (const c of crashes) expect(ids).toContain(id(c.name));
    expect(ids).toContain(id('ghost'));
    expect(ids).toContain(id('a1'));
    expect(await ourLinks(h1.ns)).not.toContain('ce0123456789');
    expect(await ourLinks(h1.ns)).not.toContain('ce0123456780');
    expect(await inNs(h1.ns, 'nft', ['list', 'chains', 'inet'])).not.toContain('seg-0badf00d');
    expect((await fs.readFile(path.join(dirs.run1, tenantHash(A), 'dnsmasq.pid'), 'utf8')).trim()).toBe(dnsPid); // adopted, not restarted

    const keep = new Set(['a1', 'a2', 'a3', 'a4', 'b1'].map(id));
    const crashed = JSON.parse(await fs.readFile(stateFile, 'utf8')) as { endpoints: Record<string, { ip: string; ifname: string }> }; // safe: the state file's shape
    expect((await fresh.gc(keep)).sort()).toEqual([id('ghost'), ...crashes.map((c) => id(c.name))].sort());
    const ruleset = await inNs(h1.ns, 'nft', ['list', 'ruleset']);
    const published = await inNs(h1.ns, 'nft', ['list', 'map', 'inet', 'ccarapace', 'published']);
    for (const c of crashes) {
      const rec = crashed.endpoints[id(c.name)] as { ip: string; ifname: string }; // safe: recover kept its record
      expect(await ourLinks(h1.ns)).not.toContain(rec.ifname);
      expect(existsSync(`/var/run/netns/${ns(c.name)}`)).toBe(false);
      expect(ruleset).not.toMatch(new RegExp(`${rec.ip.replace(/\./g, '\\.')}(?!\\d)`));
      expect(published).not.toContain(String(c.port));
    }
    expect(await inNs(h1.ns, 'nft', ['list', 'ruleset'])).not.toMatch(new RegExp(`${ghost.ip.replace(/\./g, '\\.')}(?!\\d)`));
    expect(await inNs(h1.ns, 'nft', ['list', 'map', 'inet', 'ccarapace', 'published'])).not.toContain('18082');
    // The endpoints kept still work.
    const a1 = eps.a1 as Endpoint; // safe: attached by the first test
    expect(await reach(ns('a2'), a1.ip)).toBe('a1');
  });

  it('removes segments and endpoints, leaving no link, namespace, chain or dnsmasq behind', async () => {
    await Promise.all(children.splice(0).map((c) => killChild(c)));
    const pids: number[] = [];
    for (const [dir, th] of [[dirs.run1, tenantHash(A)], [dirs.run1, tenantHash(B)], [dirs.run2, tenantHash(A)], [dirs.run2, tenantHash(B)]] as const) {
      pids.push(Number((await fs.readFile(path.join(dir, th, 'dnsmasq.pid'), 'utf8')).trim()));
    }
    expect(pids.every((p) => pidAlive(p))).toBe(true);
    // One host the agent's way (gc, then each segment), the other at once (removeAll).
    await m1.gc(new Set());
    for (const t of await m1.segments()) await m1.removeSegment(t);
    expect(await m1.segments()).toEqual([]);
    await m2.removeAll();
    expect(await m2.segments()).toEqual([]);
    expect((await run('ip', ['netns', 'exec', h2.ns, 'nft', 'list', 'table', 'inet', 'ccarapace'])).code).not.toBe(0);
    expect((await run('ip', ['netns', 'exec', h2.ns, 'nft', 'list', 'table', 'bridge', 'ccarapace'])).code).not.toBe(0);
    expect(pids.filter((p) => pidAlive(p))).toEqual([]);
    for (const h of [h1, h2]) {
      expect(await ourLinks(h.ns)).toEqual([]);
      const chains = await inNs(h.ns, 'nft', ['list', 'chains', 'inet']);
      expect(chains).not.toMatch(/(seg|services|noep|svc)-[0-9a-f]{8}/);
    }
    const netns = (await run('ip', ['netns', 'list'])).stdout;
    expect(netns).not.toContain(`carapace-t${tag}-`);
  });
});
