/**
 * The real guest agent (in-process) with real runc on this host, reached through a real
 * HostChannel over a unix socket: the agent listens in place of QEMU's chardev server. The
 * protocol's own behaviour; what a cell's containers do as a RuntimeDriver (logs, exits,
 * stop, destroy, checks…) is the driver contract's (test/runtime/cell.test.ts). The
 * host is cgroup v1, so the cgroup parent is a per-run one; the "cell" network namespace is
 * the host's, so the httpd test uses a free port.
 */
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ContainerSpec } from '../../src/model/schemas.js';
import type { ImageConfig } from '../../src/runtime/driver.js';
import { GuestAgent } from '../../src/guest/agent.js';
import { HostChannel, type LogEvent, type StateEvent } from '../../src/guest/host-channel.js';
import { SocketListenLink } from '../../src/guest/link.js';
import type { WireNetwork } from '../../src/guest/protocol.js';
import { CellRuntime } from '../../src/agent/cell-runtime.js';
import { Prober } from '../../src/agent/prober.js';
import { Resources } from '../../src/core/resources.js';
import type { Instance } from '../../src/model/objects.js';
import { ContainerSpecSchema } from '../../src/model/schemas.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import { createVmManager } from '../../src/vm/qemu.js';

const logger = pino({ level: 'silent' });
const APPLETS = ['sh', 'echo', 'sleep', 'cat', 'seq', 'true', 'false', 'httpd', 'wget', 'kill', 'hostname', 'ls', 'rm'];
const IMAGE: ImageConfig = { entrypoint: [], cmd: ['sh'], env: ['PATH=/bin'], workingDir: '/', user: '' };
const CG_PARENT = `/carapace-gtest-${process.pid}`;

function shSpec(script: string): ContainerSpec {
  return { image: 'test/busybox:1', command: ['sh', '-c', script], env: {}, cpu: 0.5, memory: 64, pids: 128, readOnlyRootfs: false, isolation: 'cell', group: 'default', ports: [] };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

let dir: string;
let images: string;
let rootfs: string;
let stateDir: string;
let sock: string;
let agent: GuestAgent;
let agentAc: AbortController;
let agentDone: Promise<void>;
let chan: HostChannel;
let chanAc: AbortController;
let chanDone: Promise<void>;
const states: StateEvent[] = [];
const networkConfigs: WireNetwork[] = [];
const logs: LogEvent[] = [];
let seq = 0;
const newId = (p: string): string => `${p}-${process.pid}-${++seq}`;

async function waitFor<T>(what: string, f: () => T | undefined, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function waitForAsync<T>(what: string, f: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function startChannel(): void {
  chanAc = new AbortController();
  chan = new HostChannel({ socketPath: sock, cellId: 'cell-test', logger, requestTimeoutMs: 30_000, reconnectMinMs: 50 });
  chan.on('state', (s) => states.push(s));
  chan.on('log', (l) => logs.push(l));
  chanDone = chan.start(chanAc.signal);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-guest-'));
  images = join(dir, 'images');
  rootfs = join(images, 'busybox', 'rootfs');
  stateDir = join(dir, 'state');
  sock = join(dir, 'chan.sock');
  for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'www']) await mkdir(join(rootfs, d), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  for (const a of APPLETS) await symlink('busybox', join(rootfs, 'bin', a));
  await writeFile(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(rootfs, 'etc/group'), 'root:x:0:\n');
  await writeFile(join(rootfs, 'www/index.html'), 'hello from the cell\n');
  // The bundles live on a tmpfs, as in the VM.
  await mkdir(stateDir);
  const { run } = await import('../../src/proc/run.js');
  const m = await run('mount', ['-t', 'tmpfs', '-o', 'size=256m', 'tmpfs', stateDir]);
  expect(m.code).toBe(0);
  agentAc = new AbortController();
  agent = new GuestAgent({
    link: new SocketListenLink(sock),
    logger,
    stateDir,
    imagesRoot: images,
    cgroupParent: CG_PARENT,
    runcPath: '/usr/sbin/runc',
    seccompProfilePath: '/usr/share/containers/seccomp.json',
    noPivot: 'auto',
    logTailLines: 100,
    usageIntervalMs: 500,
    // The test's "VM" is this host: record what would be put on eth0 instead of doing it.
    configureNetwork: async (cfg) => {
      if (cfg.address === '10.9.9.9/18') throw new Error('address already in use');
      networkConfigs.push(cfg);
    },
  });
  agentDone = agent.start(agentAc.signal);
  await waitFor('agent socket', () => undefined as undefined | true, 0).catch(() => undefined);
  for (let i = 0; i < 100; i++) {
    try {
      await readdir(dir).then((e) => {
        if (!e.includes('chan.sock')) throw new Error('not yet');
      });
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  startChannel();
  await chan.waitReady(10_000);
});

afterAll(async () => {
  chanAc?.abort();
  await chanDone?.catch(() => undefined);
  agentAc?.abort();
  await agentDone?.catch(() => undefined);
  const { run } = await import('../../src/proc/run.js');
  await run('umount', ['-l', stateDir]).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

describe('guest agent with real runc', () => {
  it('two containers of the cell reach each other over localhost', async () => {
    const port = await freePort();
    const srv = newId('httpd');
    const cli = newId('wget');
    await chan.run({ containerId: srv, rootfs, image: IMAGE, container: shSpec(`httpd -f -p 127.0.0.1:${port} -h /www`), hostname: 'srv', labels: {} });
    await chan.run({
      containerId: cli,
      rootfs,
      image: IMAGE,
      container: shSpec(`for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://127.0.0.1:${port}/index.html && exit 0; sleep 0.2; done; exit 1`),
      hostname: 'cli',
      labels: {},
    });
    const exited = await waitFor('client exited', () => states.find((s) => s.containerId === cli && s.state.status === 'exited'));
    expect(exited.state.status === 'exited' && exited.state.exitCode).toBe(0);
    await waitFor('page in logs', () => logs.find((l) => l.containerId === cli && l.text === 'hello from the cell'));
    const usage = await new Promise<Parameters<Parameters<typeof chan.on<'usage'>>[1]>[0]>((resolve) => chan.once('usage', resolve));
    expect(usage.cell.memoryTotalBytes).toBeGreaterThan(0);
    const u = usage.containers.find((c) => c.containerId === srv);
    expect(u?.memoryBytes).toBeGreaterThan(0);
    await chan.destroy(srv);
    await chan.destroy(cli);
  });

  it('survives the host side disconnecting: the container keeps running and state is re-reported', async () => {
    const id = newId('survive');
    await chan.run({ containerId: id, rootfs, image: IMAGE, container: shSpec('i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done'), hostname: 'h3', labels: {} });
    const running = await waitFor('running', () => states.find((s) => s.containerId === id && s.state.status === 'running'));
    chanAc.abort();
    await chanDone;
    await new Promise((r) => setTimeout(r, 500)); // lines produced now wait in the agent's outbox
    states.length = 0;
    logs.length = 0;
    startChannel();
    chan.expectContainer(id); // a restarted host agent knows its ids from its store
    await chan.waitReady(10_000);
    const again = await waitFor('state re-reported', () => states.find((s) => s.containerId === id));
    expect(again.state).toEqual(running.state);
    await waitFor('buffered lines delivered', () => (logs.filter((l) => l.containerId === id).length >= 3 ? true : undefined));
    expect((await chan.list()).find((c) => c.containerId === id)?.state.status).toBe('running');
    await chan.destroy(id);
  });

  it('runs health checks inside the cell: http and tcp to loopback, exec through runc exec, a slow exec killed', async () => {
    const port = await freePort();
    const id = newId('probe');
    await chan.run({ containerId: id, rootfs, image: IMAGE, container: shSpec(`httpd -f -p 127.0.0.1:${port} -h /www`), hostname: 'p', labels: {} });
    const page = await waitForAsync('httpd up', async () => {
      const r = await chan.check(id, { httpGet: { path: '/index.html', port } }, 1_000);
      return r.ok ? r : undefined;
    });
    expect(page).toEqual({ ok: true, message: `HTTP GET http://127.0.0.1:${port}/index.html: 200 OK` });
    expect(await chan.check(id, { httpGet: { path: '/missing', port } }, 1_000)).toEqual({ ok: false, message: `HTTP GET http://127.0.0.1:${port}/missing: 404 Not Found` });
    expect(await chan.check(id, { tcpSocket: { port } }, 1_000)).toEqual({ ok: true, message: `TCP connect 127.0.0.1:${port}: connected` });
    const closed = await freePort();
    expect(await chan.check(id, { tcpSocket: { port: closed } }, 1_000)).toEqual({ ok: false, message: `TCP connect 127.0.0.1:${closed}: connection refused` });
    expect(await chan.check(id, { exec: { command: ['cat', '/www/index.html'] } }, 5_000)).toEqual({ ok: true, message: 'exec ["cat","/www/index.html"]: exit 0: hello from the cell' });
    expect(await chan.check(id, { exec: { command: ['cat', '/www/gone'] } }, 5_000)).toEqual({ ok: false, message: "exec [\"cat\",\"/www/gone\"]: exit 1: cat: can't open '/www/gone': No such file or directory" });
    const t0 = Date.now();
    expect(await chan.check(id, { exec: { command: ['sh', '-c', 'sleep 30 & sleep 31'] } }, 500)).toEqual({ ok: false, message: 'exec ["sh","-c","sleep 30 & sleep 31"]: timed out after 0.5s' });
    expect(Date.now() - t0).toBeLessThan(2_500);
    // Only the container's own process is left in its cgroup: the exec'd shell and its child were killed.
    const procs = async (): Promise<string[]> => (await readFile(join('/sys/fs/cgroup/pids', CG_PARENT, id, 'cgroup.procs'), 'utf8')).split('\n').filter(Boolean);
    await expect.poll(procs, { timeout: 3_000 }).toHaveLength(1);
    // Unknown containers are refused with a stable code; a stopped one fails its checks.
    await expect(chan.check(newId('nobody'), { tcpSocket: { port } }, 1_000)).rejects.toMatchObject({ code: 'GUEST_E_NOT_FOUND' });
    await chan.stop(id, 0);
    expect(await chan.check(id, { exec: { command: ['true'] } }, 1_000)).toEqual({ ok: false, message: `container ${id} is not running` });
    await chan.destroy(id);
  });

  it("sets a container up under the cell's CPU quota and holds it to its own once it runs", async () => {
    const id = newId('quota');
    await chan.run({ containerId: id, rootfs, image: IMAGE, container: { ...shSpec('sleep 30'), cpu: 0.05 }, hostname: 'q', labels: {} });
    // The bundle gave the runtime's setup all of the cell's CPUs…
    const spec = JSON.parse(await readFile(join(stateDir, 'containers', id, 'config.json'), 'utf8')) as { linux: { resources: { cpu: { quota: number; period: number } } } }; // the bundle's config.json
    expect(spec.linux.resources.cpu).toEqual({ quota: availableParallelism() * 100_000, period: 100_000 });
    // …and the container reported running holds its own 5% (cgroup v1 on this host; v2 in a cell: test/reliability/probes.ts).
    expect((await readFile(join('/sys/fs/cgroup/cpu', CG_PARENT, id, 'cpu.cfs_quota_us'), 'utf8')).trim()).toBe('5000');
    expect((await readFile(join('/sys/fs/cgroup/cpu', CG_PARENT, id, 'cpu.cfs_period_us'), 'utf8')).trim()).toBe('100000');
    await chan.stop(id, 0);
    await chan.destroy(id);
  });

  it('the prober drives a cell container through CellRuntime: readiness recorded on change, a failing liveness probe stops it', async () => {
    const store = await openSqliteStore({ path: join(dir, 'store.db'), logger });
    try {
      const resources = new Resources(store);
      const rt = new CellRuntime({ cellId: 'cell-test', isolation: 'cell', channel: chan, vms: createVmManager({ stateDir: join(dir, 'vms'), logger, accel: 'tcg' }), hostImagesRoot: images, guestImagesRoot: images, logger });
      const port = await freePort();
      const id = newId('prober');
      const container = ContainerSpecSchema.parse({
        image: 'test/busybox:1',
        isolation: 'cell',
        command: ['sh', '-c', `trap 'exit 0' TERM; echo alive > /tmp/alive; httpd -p 127.0.0.1:${port} -h /www; while true; do sleep 0.1; done`],
        readinessProbe: { httpGet: { path: '/ready.html', port }, periodSeconds: 1, failureThreshold: 2 },
        livenessProbe: { exec: { command: ['cat', '/tmp/alive'] }, periodSeconds: 1, failureThreshold: 2 },
      });
      const now = new Date().toISOString();
      const inst: Instance = await resources.write(
        {
          kind: 'Instance',
          metadata: { name: 'web-0', tenant: 'acme', uid: 'uid-web-0', labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
          spec: { owner: { kind: 'Service', name: 'web', uid: 'svc' }, index: 0, container, restartPolicy: 'Always', maxRestarts: -1, host: 'h1', cell: 'cell-test', ownerGeneration: 1 },
          status: { phase: 'Running', reason: 'Started', restarts: 0, containerId: id, ready: false },
        },
        0,
      );
      await rt.start({ id, rootfs, image: IMAGE, container, hostname: 'web-0', labels: {} });
      const prober = new Prober({ resources, logger, stopGraceMs: 2_000, timeScale: 0.2 });
      const startedAtMs = Date.now();
      prober.watch({ key: 'acme/web-0', inst, containerId: id, driver: rt, startedAtMs, initialReady: false });
      const get = async (): Promise<Instance['status']> => (await resources.mustGet('Instance', 'web-0', 'acme')).status;
      // Readiness fails twice in a row: recorded with the reason (`connection refused` while httpd starts, then 404).
      const notReady = await waitForAsync('NotReady 404', async () => {
        const st = await get();
        return st.reason === 'NotReady' && st.message?.endsWith('404 Not Found') ? st : undefined;
      });
      expect(notReady.ready).toBe(false);
      expect(notReady.message).toMatch(new RegExp(`^readiness probe failed \\d+ times: HTTP GET http://127\\.0\\.0\\.1:${port}/ready\\.html: 404 Not Found$`));
      const rv = (await resources.mustGet('Instance', 'web-0', 'acme')).metadata.resourceVersion;
      await new Promise((r) => setTimeout(r, 800)); // four more checks failing the same way: nothing new to write
      expect((await resources.mustGet('Instance', 'web-0', 'acme')).metadata.resourceVersion).toBe(rv);
      // The page appears: ready, and the failure message is gone.
      expect((await rt.check(id, { exec: { command: ['sh', '-c', 'echo yes > /www/ready.html'] } }, 5_000)).ok).toBe(true);
      const ready = await waitForAsync('ready', async () => ((await get()).ready ? get() : undefined));
      expect(ready.reason).toBe('Ready');
      expect(ready.message).toBeUndefined();
      // Liveness starts failing: after two failures the prober stops the container in the cell.
      expect((await rt.check(id, { exec: { command: ['rm', '/tmp/alive'] } }, 5_000)).ok).toBe(true);
      const exited = await rt.wait(id);
      expect(exited.exitCode).toBe(0); // it trapped SIGTERM and exited cleanly
      expect(prober.watching().size).toBe(0);
      expect(prober.takeUnhealthy(id)).toBe(`liveness probe failed 2 times: exec ["cat","/tmp/alive"]: exit 1: cat: can't open '/tmp/alive': No such file or directory`);
      expect(prober.takeUnhealthy(id)).toBeUndefined();
      // Measured here: one check through the channel, the guest agent and runc (no VM).
      const id2 = newId('latency');
      const timeIt = async (action: Parameters<typeof rt.check>[1], n: number): Promise<number> => {
        const t0 = performance.now();
        for (let i = 0; i < n; i++) expect(await rt.check(id2, action, 5_000)).toMatchObject({ ok: true });
        return (performance.now() - t0) / n;
      };
      await chan.destroy(id);
      await rt.start({ id: id2, rootfs, image: IMAGE, container: shSpec(`httpd -f -p 127.0.0.1:${port} -h /www`), hostname: 'lat', labels: {} });
      await waitForAsync('httpd', async () => ((await rt.check(id2, { tcpSocket: { port } }, 1_000)).ok ? true : undefined));
      const http = await timeIt({ httpGet: { path: '/index.html', port } }, 20);
      const tcp = await timeIt({ tcpSocket: { port } }, 20);
      const exec = await timeIt({ exec: { command: ['true'] } }, 10);
      console.log(`cell check latency (channel + guest agent + runc, no VM): httpGet ${http.toFixed(1)} ms, tcpSocket ${tcp.toFixed(1)} ms, exec ${exec.toFixed(1)} ms`);
      await chan.destroy(id2);
    } finally {
      await store.close();
    }
  });

  it('puts a claimed cell on its tenant network when asked, and reports a failure as an error', async () => {
    const cfg = { address: '10.128.3.7/18', gateway: '10.128.3.1', dns: ['10.128.3.1'], mtu: 1450 };
    await chan.configureNetwork(cfg);
    expect(networkConfigs).toEqual([cfg]);
    await expect(chan.configureNetwork({ ...cfg, address: '10.9.9.9/18' })).rejects.toMatchObject({ code: 'GUEST_E_INTERNAL' });
    await expect(chan.configureNetwork({ ...cfg, address: 'not-an-address' })).rejects.toThrow();
  });

  it('refuses a rootfs outside the images share and a duplicate id, with stable codes', async () => {
    await expect(chan.run({ containerId: newId('bad'), rootfs: '/etc', image: IMAGE, container: shSpec('true'), hostname: 'b', labels: {} })).rejects.toMatchObject({ code: 'GUEST_E_BAD_REQUEST' });
    const id = newId('dup');
    await chan.run({ containerId: id, rootfs, image: IMAGE, container: shSpec('sleep 30'), hostname: 'd', labels: {} });
    await expect(chan.run({ containerId: id, rootfs, image: IMAGE, container: shSpec('true'), hostname: 'd', labels: {} })).rejects.toMatchObject({ code: 'GUEST_E_EXISTS' });
    await expect(chan.run({ containerId: newId('nocmd'), rootfs, image: IMAGE, container: { ...shSpec('x'), command: ['/bin/does-not-exist'] }, hostname: 'n', labels: {} })).rejects.toMatchObject({ code: 'GUEST_E_START_FAILED' });
    await expect(chan.stop(newId('nobody'), 0)).rejects.toMatchObject({ code: 'GUEST_E_NOT_FOUND' });
    await chan.destroy(id);
    expect(await readdir(join(stateDir, 'containers'))).toEqual([]);
  });
});
