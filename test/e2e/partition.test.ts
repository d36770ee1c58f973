/**
 * No split brain (ARCHITECTURE.md invariant 9), with real processes: `carapace server` and two
 * `carapace agent`s in network namespaces joined through the agent API, real runc containers.
 * h1 runs a service with a volume pinned to it (fencing `stop` by default), a service with
 * `fencing: stop` and no volume, and a stateless one (`keep` by default). Cutting h1's link
 * (not killing anything) makes its agent fence: it stops the `stop` instances once its lease
 * went unrenewed for the grace G, before the control plane replaces them after the fence
 * wait W; the logs of both agents (one clock: one machine) order the fence before the
 * replacement's start, and polling both hosts' runtimes during the cut never sees two running
 * copies of a `stop` instance. The `keep` instance runs on through the cut (and twice, by
 * choice). Healing the link: nothing runs twice, nothing is left on h1, and the volume's
 * service runs on h1 again (its data is there).
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Host, Instance } from '../../src/model/objects.js';
import { LABELS } from '../../src/agent/container-id.js';
import { fenceTimings } from '../../src/model/fencing.js';
import { applyDocs, cli, containers, destroyAll, eventually, freePort, Server, tempDir, type Agent } from './helpers.js';
import { ip, makeLan, netnsAgent, removeLan, type NetnsHost, type NetnsLan } from './netns-hosts.js';

const HOSTS: NetnsHost[] = [
  { name: 'h1', ns: 'cpt-h1', veth: 'cptv1', ip: '10.71.0.11', zone: 'a' },
  { name: 'h2', ns: 'cpt-h2', veth: 'cptv2', ip: '10.71.0.12', zone: 'b' },
];
const LAN: NetnsLan = { bridge: 'cpt0', gw: '10.71.0.1', hosts: HOSTS };
const H1 = HOSTS[0] as NetnsHost; // listed above
/** The default timings (TTL 3 s): G 3 s, W 9 s. */
const T = fenceTimings();

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
let agentPort = 0;
const agents: Record<string, Agent> = {};

async function list<T>(what: string): Promise<T[]> {
  const r = await cli(server.url, ['get', what, '-o', 'json']);
  if (r.code !== 0) throw new Error(r.stderr);
  return (JSON.parse(r.stdout) as { items: T[] }).items;
}

/** What runs now: `tenant/instance` -> the hosts with a running container of it (from the hosts' runtimes, not the store). */
async function runningNow(): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const h of HOSTS) {
    for (const c of await containers(join(tmp.dir, h.name))) {
      if (c.state.status !== 'running') continue;
      const k = `${c.labels[LABELS.tenant] ?? '?'}/${c.labels[LABELS.instance] ?? '?'}`;
      out.set(k, [...(out.get(k) ?? []), h.name]);
    }
  }
  return out;
}

/** An agent's pino lines with message `msg` for `instance` (time: ms since the epoch, this machine's clock). */
function logLines(a: Agent, msg: string, instance: string): { time: number; container?: string }[] {
  const out: { time: number; container?: string }[] = [];
  for (const l of a.log.split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      const j = JSON.parse(l) as { msg?: string; instance?: string; time?: number; container?: string };
      if (j.msg === msg && j.instance === instance && typeof j.time === 'number') out.push({ time: j.time, ...(j.container ? { container: j.container } : {}) });
    } catch {
      // not a log line of the agent's (a child's output)
    }
  }
  return out;
}

beforeAll(async () => {
  tmp = await tempDir('carapace-partition-');
  await makeLan(LAN);
  registry = await startRegistry({ dir: join(tmp.dir, 'registry'), host: LAN.gw });
  agentPort = await freePort();
  // The embedded SQLite store: the partition is between the hosts and the server, not in the store.
  // (`carapace server` opens it before it makes its state directory.)
  await mkdir(join(tmp.dir, 'server'), { recursive: true, mode: 0o700 });
  server = new Server(join(tmp.dir, 'server'), await freePort(), ['--agent-port', String(agentPort), '--agent-listen', LAN.gw, '--advertise', LAN.gw], {}, 'server');
  await server.start();
  const token = (await readFile(join(tmp.dir, 'server', 'join-token'), 'utf8')).trim();
  for (const h of HOSTS) {
    agents[h.name] = netnsAgent(LAN, h, { dir: tmp.dir, agentPort, registry: registry.address, token, args: ['--accel', 'tcg'] });
    await agents[h.name]!.start(); // just made
  }
  await eventually(async () => (await list<Host>('hosts')).filter((x) => x.status.state === 'Ready').length === 2, 60_000, 'two hosts ready');
}, 180_000);

afterAll(async () => {
  await ip('link', 'set', H1.veth, 'up').catch(() => undefined);
  for (const s of ['db', 'worker', 'web']) await cli(server.url, ['delete', 'service', `acme/${s}`]).catch(() => undefined);
  await eventually(async () => (await list<Instance>('instances')).length === 0, 60_000, 'instances removed').catch(() => undefined);
  for (const a of Object.values(agents)) await a.stop();
  await server?.stop();
  for (const h of HOSTS) await destroyAll(join(tmp.dir, h.name), { netns: h.ns }).catch(() => undefined);
  await removeLan(LAN);
  await registry?.stop();
  await tmp?.cleanup();
}, 180_000);

describe('a host cut off by a partition', () => {
  it('stops its fencing=stop instances before they start elsewhere, keeps fencing=keep ones, and runs nothing twice after the link heals', async () => {
    const image = (await buildBusyboxImage({ registry: registry.address, repository: 'pt/busybox', tag: '1' })).reference;
    const svc = (name: string, spec: Record<string, unknown>): object => ({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant: 'acme' }, spec: { image, isolation: 'host', replicas: 1, ...spec } });
    // Everything starts on h1: h2 is cordoned while it is placed (the volume is pinned to h1 anyway).
    expect((await cli(server.url, ['cordon', 'host/h2'])).code).toBe(0);
    const applied = await applyDocs(
      server.url,
      tmp.dir,
      [
        { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } },
        { apiVersion: 'carapace/v1', kind: 'Volume', metadata: { name: 'dbdata', tenant: 'acme' }, spec: { size: '32Mi', host: 'h1' } },
        // Writes to its volume every 200 ms: a second copy anywhere would be a second writer.
        svc('db', { volumes: [{ volume: 'dbdata', mountPath: '/data' }], command: ['sh', '-c', 'while true; do echo beat >> /data/beats; sleep 0.2; done'] }),
        svc('worker', { fencing: 'stop', command: ['sleep', '3600'] }),
        svc('web', { command: ['sleep', '3600'] }),
      ],
      ['--wait', '--timeout', '180'],
      200_000,
    );
    expect(applied.code, applied.stdout + applied.stderr).toBe(0);
    expect((await cli(server.url, ['uncordon', 'host/h2'])).code).toBe(0);
    const before = await list<Instance>('instances');
    expect(before.map((i) => `${i.metadata.name}@${i.spec.host}:${i.spec.fencing ?? '?'}`).sort()).toEqual(['db-0@h1:stop', 'web-0@h1:keep', 'worker-0@h1:stop']);
    const described = await cli(server.url, ['describe', 'service', 'acme/db']);
    expect(described.stdout).toMatch(/Fencing:\s+stop \(default: mounts a volume\)/);

    // Cut h1 off: its agent and containers live on; it reaches nothing, nothing reaches it.
    const cutAt = Date.now();
    await ip('link', 'set', H1.veth, 'down');
    // Both hosts' runtimes, sampled as fast as they answer, for the whole cut.
    const samples: { at: number; running: Map<string, string[]> }[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const at = Date.now();
        samples.push({ at, running: await runningNow() });
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    // Until both movable instances run on h2 again (worker after W, web after the TTL), and a little longer.
    let settledAt = 0;
    try {
      while (Date.now() - cutAt < 120_000) {
        const insts = await list<Instance>('instances').catch(() => []);
        const onH2 = (n: string): boolean => insts.some((i) => i.metadata.name === n && i.spec.host === 'h2' && i.status.phase === 'Running');
        if (!settledAt && onH2('worker-0') && onH2('web-0')) settledAt = Date.now();
        if (settledAt && Date.now() - settledAt > 3_000) break;
        await new Promise((r) => setTimeout(r, 200));
      }
    } finally {
      sampling = false;
      await sampler;
    }
    console.log(`partition: ${samples.length} samples of both runtimes in ${Date.now() - cutAt} ms`);
    expect(settledAt, 'worker-0 and web-0 run on h2 during the cut').toBeGreaterThan(0);
    const during = await list<Instance>('instances');
    const h1 = (await list<Host>('hosts')).find((x) => x.metadata.name === 'h1');
    expect(h1?.status).toMatchObject({ state: 'NotReady', reason: 'LeaseExpired' });
    expect(h1?.status.fencedAt).toBeDefined();
    // The volume's user never moves: its replacement waits for h1.
    expect(during.find((i) => i.metadata.name === 'db-0')?.status).toMatchObject({ phase: 'Pending', reason: 'VolumeHostNotReady' });

    // At no sampled moment do two copies of a fencing=stop instance run; the keep one ran on h1 throughout.
    for (const s of samples) {
      for (const n of ['acme/db-0', 'acme/worker-0']) expect((s.running.get(n) ?? []).length, `${n} at +${s.at - cutAt} ms: ${JSON.stringify(s.running.get(n))}`).toBeLessThanOrEqual(1);
      expect(s.running.get('acme/db-0') ?? [], `db-0 at +${s.at - cutAt} ms`).not.toContain('h2');
      expect(s.running.get('acme/web-0') ?? [], `web-0 at +${s.at - cutAt} ms`).toContain('h1');
    }
    expect(samples.some((s) => (s.running.get('acme/web-0') ?? []).length === 2)).toBe(true); // keep: two copies, by choice
    expect(samples.at(-1)?.running.get('acme/db-0')).toBeUndefined();
    expect(samples.at(-1)?.running.get('acme/worker-0')).toEqual(['h2']);

    // The logs, on one clock: each fencing=stop instance was fenced on h1, within G + check + budget
    // of the cut (+ the last renewal's period), before anything of it started on h2.
    const a1 = agents['h1']!;
    const a2 = agents['h2']!;
    const timings: Record<string, unknown> = {};
    for (const n of ['acme/db-0', 'acme/worker-0']) {
      const fenced = logLines(a1, `fenced: stopped ${n}`, n);
      expect(fenced, `h1 fenced ${n}`).toHaveLength(1);
      const fencedAt = fenced[0]!.time; // checked above
      expect(fencedAt - cutAt).toBeLessThan(T.graceMs + T.checkMs + T.stopBudgetMs + 1_000);
      const started = logLines(a2, 'starting container', n).map((l) => l.time);
      for (const t of started) expect(t, `${n} started on h2 after h1 fenced it`).toBeGreaterThan(fencedAt);
      timings[n] = { fencedMs: fencedAt - cutAt, startedOnH2Ms: started.map((t) => t - cutAt) };
    }
    expect(logLines(a2, 'starting container', 'acme/worker-0')).toHaveLength(1);
    expect(logLines(a2, 'starting container', 'acme/db-0')).toHaveLength(0);
    expect(logLines(a1, 'fenced: stopped acme/web-0', 'acme/web-0')).toHaveLength(0);
    timings['acme/web-0'] = { startedOnH2Ms: logLines(a2, 'starting container', 'acme/web-0').map((l) => l.time - cutAt) };
    console.log(`partition timings (ms after the cut): ${JSON.stringify(timings)}`);

    // Heal the link: h1 is back; one running copy of each instance, where the store says.
    await ip('link', 'set', H1.veth, 'up');
    await eventually(async () => (await list<Host>('hosts')).find((x) => x.metadata.name === 'h1' && x.status.state === 'Ready'), 90_000, 'h1 Ready again');
    const healed = await eventually(async () => {
      const insts = await list<Instance>('instances');
      const r = await runningNow();
      const ok = insts.length === 3 && insts.every((i) => i.status.phase === 'Running' && (r.get(`acme/${i.metadata.name}`) ?? []).join() === i.spec.host) && r.size === 3;
      return ok ? { insts, r } : undefined;
    }, 120_000, 'one running copy of each instance, on its host').catch(async (e: unknown) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify([...(await runningNow())])} ${JSON.stringify((await list<Instance>('instances')).map((i) => [i.metadata.name, i.spec.host, i.status.phase, i.status.reason]))}`, { cause: e });
    });
    expect(healed.insts.map((i) => `${i.metadata.name}@${i.spec.host}`).sort()).toEqual(['db-0@h1', 'web-0@h2', 'worker-0@h2']);
    expect(healed.r.get('acme/db-0')).toEqual(['h1']);
    expect(a1.log).toContain('lease renewed: fence lifted');
    // The db's data survived on h1 and it writes there again.
    const beats = async (): Promise<number> => Number((await cli(server.url, ['exec', 'acme/db-0', '--', 'sh', '-c', 'wc -l < /data/beats'])).stdout.trim());
    const n0 = await beats();
    expect(n0).toBeGreaterThan(0);
    await eventually(async () => (await beats()) > n0, 20_000, 'db writes on h1 again');
  }, 600_000);
});
