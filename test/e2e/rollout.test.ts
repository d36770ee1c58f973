/**
 * Rolling updates for real, through `carapace up` and the CLI: a 4-replica host-tier service
 * with a readiness probe is changed while a client (in another container of the tenant)
 * requests its service address in a loop: no request fails, and at no sampled moment are
 * fewer than 4 replicas ready (maxSurge 1 / maxUnavailable 0, the defaults). `rollout history`
 * lists both revisions with who made them; `rollout undo` returns to revision 1's env; a new
 * template whose readiness never passes misses a short progressDeadlineSeconds and is rolled
 * back by itself, the client never noticing. A 3-replica cell-tier service (a cell per replica:
 * they would share its network) rolled to a new image: no failed request, never fewer than 3 ready.
 *
 * The replicas' script keeps serving for 2 s after SIGTERM before it stops httpd (what a
 * Kubernetes preStop sleep does): a replica asked to stop leaves the service's endpoints at
 * once (it is no longer ready), and its open requests finish in that time.
 */
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import { instanceReady, type Instance, type Service } from '../../src/model/objects.js';
import type { RolloutReport } from '../../src/model/rollout.js';
import { netnsName } from '../../src/network/ipam.js';
import { clientLoop } from '../network/tenant-helpers.js';
import { applyDocs, cli, destroyAll, eventually, freePort, manifest, Server, tempDir, tokens } from './helpers.js';

const PREFIX = 'crl';

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
let image: string;
/** The same busybox under another tag: a new image for the cell service's rollout. */
let image2: string;

/**
 * Serves `$VERSION $(hostname)`; on SIGTERM serves 2 s more, then stops. The shell waits on a
 * long sleep (a trapped signal ends `wait` at once) rather than forking one every 0.2 s: in a
 * cell under software emulation each fork costs the VM real cpu.
 */
const WEB = `
mkdir -p /www && echo "$VERSION $(hostname)" > /www/index.html
httpd -f -p 8080 -h /www &
pid=$!
trap 'sleep 2; kill $pid; exit 0' TERM
while true; do sleep 3600 & wait $!; done
`;

async function apply(docs: object[], extra: string[] = []): Promise<void> {
  const r = await applyDocs(server.url, tmp.dir, docs, extra, 300_000);
  expect(r.code, r.stdout + r.stderr).toBe(0);
}

async function list<T>(kind: string): Promise<T[]> {
  const r = await cli(server.url, ['get', kind, '-o', 'json', '-t', 'acme']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { items: T[] }).items;
}

/** `rollout history -o json`: the revisions with who made them. */
async function history(): Promise<RolloutReport['history']> {
  const h = await cli(server.url, ['rollout', 'history', 'acme/web', '-o', 'json']);
  expect(h.code, h.stderr).toBe(0);
  return JSON.parse(h.stdout) as RolloutReport['history']; // the CLI prints the report's history as JSON
}

function web(env: Record<string, string>, extra: object = {}): object {
  return {
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name: 'web', tenant: 'acme' },
    spec: {
      image,
      isolation: 'host',
      replicas: 4,
      cpu: 0.05,
      memory: '32Mi',
      command: ['sh', '-c', WEB],
      env,
      ports: [{ containerPort: 8080 }],
      readinessProbe: { httpGet: { path: '/', port: 8080 }, periodSeconds: 1 },
      ...extra,
    },
  };
}

/** One sample of a service's replicas: ready, existing, and existing without a deletion request. */
interface ReadySample {
  ready: number;
  total: number;
  live: number;
}

/**
 * Samples how many replicas of `service` are ready (and how many exist) every 200 ms until
 * stopped. It reads the API itself: a CLI process per sample would keep a core busy starting
 * node, which the cells' emulated vCPUs need.
 */
function readySampler(service = 'web'): { samples: ReadySample[]; stop: () => Promise<void> } {
  const samples: ReadySample[] = [];
  let running = true;
  const done = (async () => {
    while (running) {
      const r = await fetch(`${server.url}/v1/tenants/acme/instances`, { headers: { authorization: `Bearer ${tokens.get(server.url) ?? ''}` } });
      expect(r.status).toBe(200);
      const insts = ((await r.json()) as { items: Instance[] }).items.filter((i) => i.spec.owner.name === service); // the API's list body
      samples.push({ ready: insts.filter(instanceReady).length, total: insts.length, live: insts.filter((i) => !i.metadata.deletionRequestedAt).length });
      await sleep(200);
    }
  })();
  return {
    samples,
    stop: async () => {
      running = false;
      await done;
    },
  };
}

/** Rolls to completion through `rollout status --watch`; returns its exit code and output. */
async function watch(service = 'web', timeoutS = 240): Promise<{ code: number; out: string }> {
  const r = await cli(server.url, ['rollout', 'status', `acme/${service}`, '--watch', '--timeout', String(timeoutS)], undefined, (timeoutS + 60) * 1000);
  return { code: r.code, out: r.stdout + r.stderr };
}

beforeAll(async () => {
  tmp = await tempDir('carapace-rollout-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  image = (await buildBusyboxImage({ registry: registry.address, repository: 'rollout/busybox', tag: '1' })).reference;
  image2 = (await buildBusyboxImage({ registry: registry.address, repository: 'rollout/busybox', tag: '2' })).reference;
  // The cell case's rolling update needs a 4th cell (the surge; a cell per replica) beside
  // three: four 2 vCPU cells and the host-tier replicas are more cpu than 2 cores at the
  // default overcommit of 4 admit (its surge replica would wait Unschedulable), so this host
  // takes 8 per core. TCG: cells boot under emulation here, whatever the probe would say.
  server = new Server(join(tmp.dir, 'state'), await freePort(), ['--net-prefix', PREFIX, '--accel', 'tcg', '--cpu-overcommit', '8'], { CARAPACE_LOG_LEVEL: 'warn' }, 'up');
  await server.start();
  await apply([
    { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} },
    { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'client', tenant: 'acme' }, spec: { image, isolation: 'host', cpu: 0.05, memory: '32Mi', command: ['sh', '-c', 'while true; do sleep 1; done'] } },
    web({ VERSION: 'v1' }),
  ], ['--wait', '--timeout', '240']);
}, 300_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'), { prefix: PREFIX });
  await registry?.stop();
  await tmp?.cleanup();
}, 180_000);

describe('rolling updates', () => {
  let loop: ReturnType<typeof clientLoop> | undefined;

  afterAll(() => {
    loop?.child.kill('SIGKILL');
  });

  it('a change of the template rolls through the replicas while a client loops: no failed request, never fewer than 4 ready; history has 2 revisions; undo returns to revision 1', async () => {
    const client = (await list<Instance>('instances')).find((i) => i.metadata.name === 'client-0');
    const svc = (await list<Service>('services')).find((s) => s.metadata.name === 'web');
    expect(client?.status.containerId && svc?.status.address).toBeTruthy();
    loop = clientLoop(netnsName(client?.status.containerId ?? ''), `http://${svc?.status.address ?? ''}:8080/`);
    const l = loop;
    await eventually(async () => new Set(l.samples.filter((s) => s.ok).map((s) => s.body)).size === 4, 60_000, 'four v1 replicas answering');
    const from = l.samples.length;

    const sampler = readySampler();
    await apply([web({ VERSION: 'v2' })]);
    const rolled = await watch();
    await sampler.stop();
    expect(rolled.code, rolled.out).toBe(0);
    expect(rolled.out).toMatch(/service\/acme\/web: revision 2 rolled out \(4 of 4 updated and ready\)/);
    // Every replica now answers v2; nothing failed on the way.
    await eventually(async () => new Set(l.samples.slice(-40).filter((s) => s.ok && (s.body ?? '').startsWith('v2 ')).map((s) => s.body)).size === 4, 30_000, 'four v2 replicas answering');
    const during = l.samples.slice(from);
    expect(during.filter((s) => !s.ok).length, `failed requests out of ${during.length}`).toBe(0);
    expect(during.some((s) => (s.body ?? '').startsWith('v1 ')) && during.some((s) => (s.body ?? '').startsWith('v2 '))).toBe(true);
    expect(sampler.samples.length).toBeGreaterThan(3);
    expect(Math.min(...sampler.samples.map((s) => s.ready)), JSON.stringify(sampler.samples)).toBeGreaterThanOrEqual(4);
    expect(Math.max(...sampler.samples.map((s) => s.live)), JSON.stringify(sampler.samples)).toBeLessThanOrEqual(5);

    // History: two revisions, the second made by the admin's update (from the audit log).
    const h = await history();
    expect(h.map((r) => [r.revision, r.cause, r.template.env['VERSION'], r.current])).toEqual([
      [1, 'update', 'v1', false],
      [2, 'update', 'v2', true],
    ]);
    expect(h[1]?.changedBy).toBeTruthy();
    expect(h[1]?.action).toBe('update');
    const table = await cli(server.url, ['rollout', 'history', 'acme/web']);
    expect(table.stdout).toMatch(/^REVISION\s+CAUSE\s+CHANGED-BY\s+WHEN\s+TEMPLATE\n1\s+update\s+token:\S+\s+\S+\s+\S+\/rollout\/busybox:1 command=.* env=VERSION=v1\n2\*\s+update\s+token:\S+ .* env=VERSION=v2\n$/);

    // Undo: back to revision 1's template, as revision 3; the client still sees no failure.
    const before = l.samples.length;
    const undo = await cli(server.url, ['rollout', 'undo', 'acme/web', '--to-revision', '1']);
    expect(undo.code, undo.stderr).toBe(0);
    const back = await watch();
    expect(back.code, back.out).toBe(0);
    const insts = (await list<Instance>('instances')).filter((i) => i.spec.owner.name === 'web' && !i.metadata.deletionRequestedAt);
    // A replacement takes the lowest ordinal no record holds (its predecessor may still drain).
    expect(insts.map((i) => [i.spec.container.env['VERSION'], i.spec.revision])).toEqual([0, 1, 2, 3].map(() => ['v1', 3]));
    expect(new Set(insts.map((i) => i.metadata.name)).size).toBe(4);
    expect(insts.every((i) => /^web-\d+$/.test(i.metadata.name))).toBe(true);
    const h2 = await history();
    expect(h2.map((r) => [r.revision, r.cause, r.template.env['VERSION']])).toEqual([
      [2, 'update', 'v2'],
      [3, 'undo', 'v1'],
    ]);
    expect(h2[1]?.action).toBe('service.rollout.undo');
    await eventually(async () => new Set(l.samples.slice(-40).filter((s) => s.ok && (s.body ?? '').startsWith('v1 ')).map((s) => s.body)).size === 4, 30_000, 'four v1 replicas answering again');
    expect(l.samples.slice(before).filter((s) => !s.ok).length).toBe(0);

    // Bad input: an undo to a revision the history does not hold.
    const missing = await cli(server.url, ['rollout', 'undo', 'acme/web', '--to-revision', '1']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/CARAPACE_E_REVISION_NOT_FOUND: service acme\/web has no revision 1 \(revisions kept: 2, 3\)/);
  }, 600_000);

  it('a template whose readiness never passes misses its deadline and is rolled back by itself; the client never notices', async () => {
    const l = loop;
    if (!l) throw new Error('the first case starts the client loop');
    const from = l.samples.length;
    // Same image and env, a readiness probe on a page that does not exist: never ready.
    const file = join(tmp.dir, 'broken.yaml');
    await writeFile(file, manifest([web({ VERSION: 'v1' }, { readinessProbe: { httpGet: { path: '/nope', port: 8080 }, periodSeconds: 1 }, rollout: { progressDeadlineSeconds: 8 } })]));
    // apply --wait says the applied template was rolled back, and exits 1.
    const applied = await cli(server.url, ['apply', '-f', file, '--wait', '--timeout', '120'], undefined, 200_000);
    expect(applied.code, applied.stdout + applied.stderr).toBe(1);
    expect(applied.stdout).toMatch(/service\/acme\/web: rolled back: revision 4 made no progress for 8s; rolled back to revision 3's template as revision 5/);
    const r = await watch();
    expect(r.code, r.out).toBe(1);
    expect(r.out).toMatch(/revision 4 made no progress for 8s; rolled back to revision 3's template as revision 5/);
    const svc = await eventually(async () => {
      const s = (await list<Service>('services')).find((x) => x.metadata.name === 'web');
      return s?.status.revision === 5 && s.status.conditions?.[0]?.message.includes('is rolled out') ? s : undefined;
    }, 60_000, 'the rollback rolled out');
    expect(svc.spec.readinessProbe?.httpGet?.path).toBe('/');
    expect(svc.status.conditions?.[0]).toMatchObject({ type: 'Progressing', status: 'True', reason: 'RolledBack' });
    // The replicas of revision 3 ran on (taken over by revision 5); the broken surge is gone.
    const insts = await eventually(async () => {
      const all = (await list<Instance>('instances')).filter((i) => i.spec.owner.name === 'web');
      return all.length === 4 ? all : undefined;
    }, 60_000, 'four replicas');
    expect(insts.every((i) => i.spec.container.readinessProbe?.httpGet?.path === '/' && instanceReady(i))).toBe(true);
    const h = await history();
    expect(h.map((x) => [x.revision, x.cause])).toEqual([
      [2, 'update'],
      [4, 'update'],
      [5, 'rollback'],
    ]);
    expect(h[2]).toMatchObject({ changedBy: 'controller', action: 'service.rolledBack' });
    const during = l.samples.slice(from);
    expect(during.length).toBeGreaterThan(10);
    expect(during.filter((s) => !s.ok).length, `failed requests out of ${during.length}`).toBe(0);
  }, 400_000);

  it('a 3-replica cell service rolled to a new image: no failed request, never fewer than 3 ready', async () => {
    const l = loop;
    if (!l) throw new Error('the first case starts the client loop');
    const cellWeb = (img: string): object => ({
      apiVersion: 'carapace/v1',
      kind: 'Service',
      metadata: { name: 'cweb', tenant: 'acme' },
      spec: { image: img, isolation: 'cell', group: 'cw', replicas: 3, cpu: 0.05, memory: '32Mi', command: ['sh', '-c', WEB], env: { VERSION: 'c1' }, ports: [{ containerPort: 8080 }], readinessProbe: { httpGet: { path: '/', port: 8080 }, periodSeconds: 1 } },
    });
    // The host service's traffic goes on meanwhile, at 4 requests a second rather than 50: the
    // cells' emulated vCPUs share this host's two cores with it.
    l.child.kill('SIGKILL');
    const services = await list<Service>('services');
    const client = (await list<Instance>('instances')).find((i) => i.metadata.name === 'client-0');
    const ns = netnsName(client?.status.containerId ?? '');
    const hl = clientLoop(ns, `http://${services.find((s) => s.metadata.name === 'web')?.status.address ?? ''}:8080/`, 250);
    await apply([cellWeb(image)], ['--wait', '--timeout', '500']);
    const svc = (await list<Service>('services')).find((s) => s.metadata.name === 'cweb');
    // 5 s to answer, not 1: on this host the cells' vCPUs are emulated (TCG) on two cores, and a
    // cell booting beside them (the surge's) stalls a guest's answer for over a second now and
    // then (seen: 1 request in ~300, connected, answered late). The product stretches its own
    // checks of cells by the same factor under TCG (probes, heartbeats). A dropped or reset
    // connection still fails at once.
    const cl = clientLoop(ns, `http://${svc?.status.address ?? ''}:8080/`, 20, 5000);
    try {
      // Replicas of a service with ports have cells of their own (model-adapter.ts): three cells, three answers.
      await eventually(async () => new Set(cl.samples.filter((s) => s.ok).map((s) => s.body)).size === 3, 120_000, 'three cell replicas answering');
      const from = cl.samples.length;
      const sampler = readySampler('cweb');
      await apply([cellWeb(image2)]);
      const rolled = await watch('cweb', 300);
      await sampler.stop();
      expect(rolled.code, rolled.out).toBe(0);
      expect(rolled.out).toMatch(/service\/acme\/cweb: revision 2 rolled out \(3 of 3 updated and ready\)/);
      const insts = (await list<Instance>('instances')).filter((i) => i.spec.owner.name === 'cweb' && !i.metadata.deletionRequestedAt);
      expect(insts.map((i) => [i.spec.container.image, i.spec.container.isolation, Boolean(i.spec.cell)])).toEqual([0, 1, 2].map(() => [image2, 'cell', true]));
      expect(new Set(insts.map((i) => i.spec.cell)).size).toBe(3);
      const during = cl.samples.slice(from);
      expect(during.length).toBeGreaterThan(10);
      expect(during.filter((s) => !s.ok).length, `failed requests out of ${during.length}: ${JSON.stringify(during.filter((s) => !s.ok).slice(0, 5))}`).toBe(0);
      const ms = during.map((s) => s.ms ?? 0).sort((a, b) => a - b);
      console.log(`cell rollout: ${during.length} requests, p50 ${ms[Math.floor(ms.length / 2)]} ms, p99 ${ms[Math.floor(ms.length * 0.99)]} ms, max ${ms.at(-1)} ms`);
      expect(Math.min(...sampler.samples.map((s) => s.ready)), JSON.stringify(sampler.samples)).toBeGreaterThanOrEqual(3);
      expect(Math.max(...sampler.samples.map((s) => s.live)), JSON.stringify(sampler.samples)).toBeLessThanOrEqual(4);
      // The rest of acme's traffic went on meanwhile.
      expect(hl.samples.length).toBeGreaterThan(10);
      expect(hl.samples.filter((x) => !x.ok), 'failed requests to the host service').toEqual([]);
    } finally {
      cl.child.kill('SIGKILL');
      hl.child.kill('SIGKILL');
    }
  }, 900_000);
});
