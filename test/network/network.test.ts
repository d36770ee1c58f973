/**
 * Integration tests of the bridge network on the real kernel: namespaces, veth pairs,
 * nftables rules, busybox httpd as the "container" process. Each run uses its own bridge,
 * subnet and ids, and removes all of them afterwards even when a test fails.
 */
import type { ChildProcess } from 'node:child_process';
import { promises as fs, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createNetworkManager, NetworkError, type NetworkManager } from '../../src/network/network-manager.js';
import { CarapaceError } from '../../src/model/errors.js';
import {
  freeHostPort,
  freeSubnet,
  httpdIn,
  httpGet,
  httpGetEventually,
  httpGetFromNetns,
  kernelState,
  killChild,
  otherHostAddress,
  testLogger,
  uniqueTag,
} from './helpers.js';
import { runOrThrow } from '../../src/proc/run.js';

const tag = uniqueTag();
const bridge = `cpt${tag}`;
const subnet = freeSubnet();
let stateDir: string;
let wwwDir: string;
let mgr: NetworkManager;
const children: ChildProcess[] = [];
const ns = (id: string): string => `carapace-${id}`;
const id = (name: string): string => `t${tag}-${name}`;
const timings: { setup: number[]; teardown: number[] } = { setup: [], teardown: [] };

async function timedSetup(m: NetworkManager, cid: string, opts: Parameters<NetworkManager['setup']>[1]): ReturnType<NetworkManager['setup']> {
  const t0 = performance.now();
  const r = await m.setup(cid, opts);
  timings.setup.push(performance.now() - t0);
  return r;
}

async function timedTeardown(m: NetworkManager, cid: string): Promise<void> {
  const t0 = performance.now();
  await m.teardown(cid);
  timings.teardown.push(performance.now() - t0);
}

function serve(cid: string, port = 8080): void {
  children.push(httpdIn(ns(cid), wwwDir, port));
}

beforeAll(async () => {
  stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'carapace-net-'));
  wwwDir = await fs.mkdtemp(path.join(os.tmpdir(), 'carapace-www-'));
  await fs.writeFile(path.join(wwwDir, 'index.html'), `hello from ${tag}\n`);
  mgr = createNetworkManager({ stateDir, logger: testLogger, bridge, subnet });
});

afterEach(async () => {
  await Promise.all(children.splice(0).map((c) => killChild(c)));
});

afterAll(async () => {
  await Promise.all(children.splice(0).map((c) => killChild(c)));
  if (mgr) {
    await mgr.gc(new Set());
    await mgr.removeBridge();
  }
  await fs.rm(stateDir, { recursive: true, force: true });
  await fs.rm(wwwDir, { recursive: true, force: true });
  const avg = (xs: number[]): string => (xs.length ? (xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(1) : 'n/a');
  console.log(`network timings: setup avg ${avg(timings.setup)} ms over ${timings.setup.length}, teardown avg ${avg(timings.teardown)} ms over ${timings.teardown.length}`);
});

describe('bridge network', () => {
  it('gives a container an address, loopback, a default route and egress to the gateway', async () => {
    const a = await timedSetup(mgr, id('basic'), { ports: [] });
    expect(a.netnsPath).toBe(`/var/run/netns/${ns(id('basic'))}`);
    expect(existsSync(a.netnsPath)).toBe(true);
    expect(a.gateway).toBe(subnet.replace(/0\/24$/, '1'));
    const addr = (await runOrThrow('ip', ['-n', ns(id('basic')), '-4', '-o', 'addr'])).stdout;
    expect(addr).toMatch(/lo\s+inet 127\.0\.0\.1/);
    expect(addr).toContain(`eth0    inet ${a.ip}/24`);
    const route = (await runOrThrow('ip', ['-n', ns(id('basic')), 'route', 'show', 'default'])).stdout;
    expect(route).toContain(`default via ${a.gateway} dev eth0`);
    // The gateway answers from inside: the bridge is up and the veth is on it.
    await runOrThrow('ip', ['netns', 'exec', ns(id('basic')), 'busybox', 'ping', '-c', '1', '-W', '2', a.gateway]);
    // The host reaches the container directly over the bridge.
    serve(id('basic'));
    expect(await httpGetEventually(a.ip, 8080)).toBe(`hello from ${tag}\n`);
    await timedTeardown(mgr, id('basic'));
  });

  it('rejects invalid ids and ports with field paths', async () => {
    const err = await mgr.setup('Bad/Id', { ports: [{ containerPort: 0, protocol: 'tcp' }, { containerPort: 80, hostPort: 70000, protocol: 'tcp' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CarapaceError);
    expect((err as CarapaceError).details.map((d) => d.path)).toEqual(['id', 'ports[0].containerPort', 'ports[1].hostPort']); // safe: asserted instance above
  });

  it('lets containers with the same isolation key talk, and drops traffic between different keys', async () => {
    const a = await timedSetup(mgr, id('a1'), { ports: [], isolationKey: 'tenant-a' });
    const a2 = await timedSetup(mgr, id('a2'), { ports: [], isolationKey: 'tenant-a' });
    const b = await timedSetup(mgr, id('b1'), { ports: [], isolationKey: 'tenant-b' });
    const n = await timedSetup(mgr, id('n1'), { ports: [] });
    for (const c of [a, a2, b, n]) serve(c.id);
    // Wait until each server listens (probed from the host, which is never isolated).
    for (const c of [a, a2, b, n]) await httpGetEventually(c.ip, 8080);

    expect(await httpGetFromNetns(ns(a2.id), `http://${a.ip}:8080/`)).toBe(`hello from ${tag}\n`);
    expect(await httpGetFromNetns(ns(a.id), `http://${a2.ip}:8080/`)).toBe(`hello from ${tag}\n`);
    expect(await httpGetFromNetns(ns(b.id), `http://${a.ip}:8080/`, 1)).toBeUndefined();
    expect(await httpGetFromNetns(ns(a.id), `http://${b.ip}:8080/`, 1)).toBeUndefined();
    // No key: isolated from everyone, keyed or not.
    expect(await httpGetFromNetns(ns(n.id), `http://${a.ip}:8080/`, 1)).toBeUndefined();
    expect(await httpGetFromNetns(ns(a.id), `http://${n.ip}:8080/`, 1)).toBeUndefined();
    // Everyone still reaches the gateway (the host).
    for (const c of [a, b, n]) {
      await runOrThrow('ip', ['netns', 'exec', ns(c.id), 'busybox', 'ping', '-c', '1', '-W', '2', c.gateway]);
    }
    for (const c of [a, a2, b, n]) await timedTeardown(mgr, c.id);
  });

  it('publishes a port on 127.0.0.1, on the other host address and on the gateway; a container of another key reaches it only that way', async () => {
    const hostPort = await freeHostPort();
    const p = await timedSetup(mgr, id('pub'), { ports: [{ containerPort: 8080, hostPort, protocol: 'tcp' }, { containerPort: 9090, protocol: 'tcp' }], isolationKey: 'tenant-a' });
    expect(p.hostPorts).toEqual([{ containerPort: 8080, hostPort, protocol: 'tcp' }]);
    serve(p.id);
    expect(await httpGetEventually('127.0.0.1', hostPort)).toBe(`hello from ${tag}\n`);
    const other = otherHostAddress([bridge, 'cv', 'lo']);
    expect(other, 'the host needs a non-loopback IPv4 address for this test').toBeDefined();
    expect(await httpGet(other as string, hostPort)).toBe(`hello from ${tag}\n`); // safe: asserted defined above
    // Hairpin: another tenant's container uses the published path through the gateway.
    const q = await timedSetup(mgr, id('peer'), { ports: [], isolationKey: 'tenant-b' });
    expect(await httpGetFromNetns(ns(q.id), `http://${p.gateway}:${hostPort}/`)).toBe(`hello from ${tag}\n`);
    expect(await httpGetFromNetns(ns(q.id), `http://${p.ip}:8080/`, 1)).toBeUndefined();
    await timedTeardown(mgr, q.id);
    await timedTeardown(mgr, p.id);
    await expect(httpGet('127.0.0.1', hostPort, 500)).rejects.toThrow();
  });

  it('refuses a host port already published by another container or bound by a host socket, naming the port', async () => {
    const hostPort = await freeHostPort();
    await timedSetup(mgr, id('own'), { ports: [{ containerPort: 8080, hostPort, protocol: 'tcp' }] });
    const e1 = await mgr.setup(id('thief'), { ports: [{ containerPort: 80, hostPort, protocol: 'tcp' }] }).catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(NetworkError);
    expect((e1 as NetworkError).code).toBe('CARAPACE_E_PORT_IN_USE'); // safe: asserted instance above
    expect((e1 as NetworkError).message).toContain(`host port ${hostPort}/tcp is already published by container ${id('own')}`); // safe: as above
    // The same number over UDP is a different port.
    const u = await mgr.setup(id('udp'), { ports: [{ containerPort: 53, hostPort, protocol: 'udp' }] });
    expect(u.hostPorts).toEqual([{ containerPort: 53, hostPort, protocol: 'udp' }]);

    const listenPort = await freeHostPort();
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(listenPort, '127.0.0.1', () => r()));
    try {
      const e2 = await mgr.setup(id('thief'), { ports: [{ containerPort: 80, hostPort: listenPort, protocol: 'tcp' }] }).catch((e: unknown) => e);
      expect(e2).toBeInstanceOf(NetworkError);
      expect((e2 as NetworkError).message).toContain(`host port ${listenPort}/tcp is in use by a process on the host`); // safe: asserted instance above
    } finally {
      await new Promise((r) => server.close(r));
    }
    // A refused setup leaves nothing: no namespace, no reservation.
    expect(existsSync(`/var/run/netns/${ns(id('thief'))}`)).toBe(false);
    expect(await mgr.inspect(id('thief'))).toBeUndefined();
    await timedTeardown(mgr, id('own'));
    await timedTeardown(mgr, id('udp'));
  });

  it('teardown leaves no namespace, link, rule or reservation, and is idempotent', async () => {
    const hostPort = await freeHostPort();
    const t = await timedSetup(mgr, id('gone'), { ports: [{ containerPort: 8080, hostPort, protocol: 'tcp' }], isolationKey: 'tenant-z' });
    serve(t.id); // a process still inside the namespace must not keep the link alive
    await httpGetEventually('127.0.0.1', hostPort);
    let k = await kernelState();
    expect(k.netns).toContain(ns(t.id));
    expect(k.links).toContain(t.hostInterface);
    expect(k.nft).toContain(`${hostPort} : ${t.ip} . 8080`);
    expect(k.nft).toContain(t.hostInterface);

    await timedTeardown(mgr, t.id);
    await mgr.teardown(t.id);
    k = await kernelState();
    expect(k.netns).not.toContain(ns(t.id));
    expect(k.links).not.toContain(t.hostInterface);
    expect(k.nft).not.toContain(t.hostInterface);
    expect(k.nft).not.toContain(`${hostPort} :`);
    expect(k.nft).not.toContain(t.ip + ' ');
    const state = await fs.readFile(path.join(stateDir, 'network.json'), 'utf8');
    expect(state).not.toContain(t.id);
    expect(JSON.stringify((JSON.parse(state) as { containers: unknown }).containers)).not.toContain(`"${t.ip}"`); // safe: the manager writes this shape
    expect(await mgr.recover()).not.toContain(t.id);
  });

  it('survives an agent restart: a second manager on the same state keeps addresses and published ports', async () => {
    const hostPort = await freeHostPort();
    const a = await timedSetup(mgr, id('keep'), { ports: [{ containerPort: 8080, hostPort, protocol: 'tcp' }], isolationKey: 'tenant-a' });
    serve(a.id);
    expect(await httpGetEventually('127.0.0.1', hostPort)).toBe(`hello from ${tag}\n`);

    // The "restarted agent": a fresh instance with nothing in memory. The old one may have been
    // killed -9 while taking the lock, leaving its file without a readable owner (the soak's
    // crash rounds): that must not stop the new one (src/proc/file-lock.test.ts kills holders).
    await fs.writeFile(path.join(stateDir, 'network.lock'), '');
    const mgr2 = createNetworkManager({ stateDir, logger: testLogger, bridge, subnet });
    expect(await mgr2.recover()).toEqual([a.id]);
    expect(await mgr2.inspect(a.id)).toEqual(a);
    expect(await httpGet('127.0.0.1', hostPort)).toBe(`hello from ${tag}\n`);
    // It never hands out the address in use, and still knows the published port and key.
    const b = await timedSetup(mgr2, id('new'), { ports: [], isolationKey: 'tenant-a' });
    expect(b.ip).not.toBe(a.ip);
    serve(b.id);
    await httpGetEventually(b.ip, 8080);
    expect(await httpGetFromNetns(ns(b.id), `http://${a.ip}:8080/`)).toBe(`hello from ${tag}\n`);
    const clash = await mgr2.setup(id('clash'), { ports: [{ containerPort: 1, hostPort, protocol: 'tcp' }] }).catch((e: unknown) => e);
    expect(clash).toBeInstanceOf(NetworkError);
    // Setup is idempotent for a complete, identical request.
    expect(await mgr2.setup(a.id, { ports: [{ containerPort: 8080, hostPort, protocol: 'tcp' }], isolationKey: 'tenant-a' })).toEqual(a);

    // gc keeps what the agent still runs and removes the rest, including strays no record explains.
    await runOrThrow('ip', ['link', 'add', 'cvstray0', 'type', 'veth', 'peer', 'name', 'cvstray1']);
    await runOrThrow('ip', ['link', 'set', 'cvstray0', 'master', bridge]);
    expect(await mgr2.gc(new Set([a.id]))).toEqual([b.id]);
    const k = await kernelState();
    expect(k.netns).not.toContain(ns(b.id));
    expect(k.links).not.toContain('cvstray');
    expect(await httpGet('127.0.0.1', hostPort)).toBe(`hello from ${tag}\n`);
    await timedTeardown(mgr2, a.id);
  });

  it('recovering on a bridge whose previous owner died with its state removes what it left, so a reused address is reached', async () => {
    const lostState = await fs.mkdtemp(path.join(os.tmpdir(), 'carapace-net-lost-'));
    const lost = createNetworkManager({ stateDir: lostState, logger: testLogger, bridge, subnet });
    const oldPort = await freeHostPort();
    const old = await timedSetup(lost, id('old'), { ports: [{ containerPort: 8080, hostPort: oldPort, protocol: 'tcp' }] });
    // The owner dies and its state is gone; its namespace (and so its veth) stays behind.
    await fs.rm(lostState, { recursive: true, force: true });
    const fresh = createNetworkManager({ stateDir: lostState, logger: testLogger, bridge, subnet });
    try {
      expect(await fresh.recover()).toEqual([]);
      const k = await kernelState();
      expect(k.links).not.toContain(old.hostInterface);
      const newPort = await freeHostPort();
      const c = await timedSetup(fresh, id('reused'), { ports: [{ containerPort: 8080, hostPort: newPort, protocol: 'tcp' }] });
      expect(c.ip).toBe(old.ip); // the fresh state hands the same first address out again
      serve(c.id);
      expect(await httpGetEventually('127.0.0.1', newPort)).toBe(`hello from ${tag}\n`);
      expect(await httpGet('127.0.0.1', oldPort).catch(() => 'refused')).toBe('refused');
      await timedTeardown(fresh, c.id);
    } finally {
      await runOrThrow('ip', ['netns', 'del', ns(old.id)]).catch(() => undefined);
      await fs.rm(lostState, { recursive: true, force: true });
    }
  });

  it('rebuilds a setup cut short by a crash', async () => {
    const c = await timedSetup(mgr, id('crash'), { ports: [] });
    // Simulate a crash between reserving and building: the link is gone, the record stays.
    await runOrThrow('ip', ['link', 'del', c.hostInterface]);
    const again = await timedSetup(mgr, id('crash'), { ports: [] });
    expect(existsSync(`/sys/class/net/${again.hostInterface}`)).toBe(true);
    serve(again.id);
    expect(await httpGetEventually(again.ip, 8080)).toBe(`hello from ${tag}\n`);
    await timedTeardown(mgr, again.id);
  });
});
