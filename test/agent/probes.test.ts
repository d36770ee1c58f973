/**
 * Liveness and readiness probes end to end on real containers: the all-in-one in this
 * process (API, controller, host agent, SQLite), a real registry with a busybox httpd image,
 * real runc and runsc containers on their tenant network, driven through the REST API.
 * Probe periods run 10x faster (probeTimeScale 0.1): a `periodSeconds: 1` checks every 100 ms.
 * Also how containers end: `status.lastState` across restarts, and `stopGracePeriodSeconds`
 * (the agent's own default grace here is 2 s).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAllInOne, type RunningAllInOne } from '../../src/allinone/allinone.js';
import { formatDescribe, formatTable } from '../../src/cli/format.js';
import { buildBusyboxImage, freePort, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Instance, Service } from '../../src/model/objects.js';
import { createTenantNetworking } from '../../src/network/tenant-networking.js';
import { createRuncDriver, createRunscDriver } from '../../src/runtime/index.js';
import { sleep } from '../../src/proc/sleep.js';
import { until } from '../../src/proc/until.js';
import { apiClient } from '../api-client.js';
import { failureLogger } from '../failure-log.js';

const logger = failureLogger();
const netPrefix = 'cpb';
let dir: string;
let stateDir: string;
let registry: RunningRegistry;
let image: string;
let aio: RunningAllInOne;
const savedConfigEnv = process.env['CARAPACE_CONFIG'];

const { api } = apiClient(() => aio);

const applyService = (name: string, spec: object): Promise<Service> =>
  api('PUT', `/v1/tenants/acme/services/${name}`, { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant: 'acme' }, spec: { image, isolation: 'host', cpu: 0.1, memory: 32, ...spec } });
const instance = (name: string): Promise<Instance> => api('GET', `/v1/tenants/acme/instances/${name}`);
const service = (name: string): Promise<Service> => api('GET', `/v1/tenants/acme/services/${name}`);

/**
 * Runs `command` in an instance's container (as an exec check does), so the test decides when
 * what its probes see changes, instead of a timer in the container racing a loaded machine.
 */
async function execIn(i: Instance, command: string[]): Promise<void> {
  const driver = i.spec.container.isolation === 'sandbox' ? createRunscDriver({ stateDir: join(stateDir, 'runtime', 'runsc'), logger }) : createRuncDriver({ stateDir: join(stateDir, 'runtime', 'runc'), logger });
  expect(await driver.check(i.status.containerId ?? '', { exec: { command } }, 10_000)).toMatchObject({ ok: true });
}

async function deleteService(name: string): Promise<void> {
  await api('DELETE', `/v1/tenants/acme/services/${name}`);
  await until(`${name} gone`, async () => ((await api<{ items: Instance[] }>('GET', '/v1/tenants/acme/instances')).items.some((i) => i.spec.owner.name === name) ? undefined : true));
}

async function startAio(): Promise<RunningAllInOne> {
  return startAllInOne({ stateDir, port: await freePort(), logger, hostName: 'probes', netPrefix, probeTimeScale: 0.1, stopGraceMs: 2_000 });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-probes-'));
  stateDir = join(dir, 'state');
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json'); // the first start saves the admin token there
  registry = await startRegistry({ dir: join(dir, 'registry') });
  image = (
    await buildBusyboxImage({
      registry: registry.address,
      repository: 'probes/web',
      tag: '1',
      cmd: ['sh', '-c', "trap 'exit 0' TERM; httpd -p 8080 -h /www; while true; do sleep 0.1; done"],
      files: { '/www/index.html': 'hello\n', '/www/healthz': 'ok\n' },
    })
  ).reference;
  aio = await startAio();
  await api('PUT', '/v1/tenants/acme', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } });
}, 120_000);

afterAll(async () => {
  await aio?.stop();
  for (const [runtime, make] of [
    ['runc', createRuncDriver],
    ['runsc', createRunscDriver],
  ] as const) {
    const d = make({ stateDir: join(stateDir, 'runtime', runtime), logger });
    for (const c of await d.recover().catch(() => [])) {
      await d.stop(c.id, 0).catch(() => undefined);
      await d.destroy(c.id).catch(() => undefined);
    }
  }
  await createTenantNetworking({ stateDir: join(stateDir, 'network'), logger, prefix: netPrefix }).removeAll().catch(() => undefined);
  await registry?.stop();
  await rm(dir, { recursive: true, force: true });
  if (savedConfigEnv === undefined) delete process.env['CARAPACE_CONFIG'];
  else process.env['CARAPACE_CONFIG'] = savedConfigEnv;
}, 120_000);

describe('probes on real containers', () => {
  it('a failing httpGet liveness probe restarts a runc container, with the reason in its status', async () => {
    // The test breaks the container's health endpoint (each run starts healthy, from the image).
    await applyService('live', {
      command: ['sh', '-c', "trap 'exit 0' TERM; httpd -p 8080 -h /www; while true; do sleep 0.1; done"],
      livenessProbe: { httpGet: { path: '/healthz', port: 8080 }, periodSeconds: 1, failureThreshold: 2 },
    });
    const first = await until('live-0 running', async () => {
      const i = await instance('live-0');
      return i.status.phase === 'Running' ? i : undefined;
    });
    expect(first.status.ready).toBe(true); // no readiness probe: ready once running
    await until('service ready 1/1', async () => ((await service('live')).status.ready === 1 ? true : undefined));
    await execIn(first, ['rm', '/www/healthz']);
    const unhealthy = await until('Unhealthy backoff', async () => {
      const i = await instance('live-0');
      return i.status.reason === 'Unhealthy' ? i : undefined;
    });
    expect(unhealthy.status.phase).toBe('Backoff');
    expect(unhealthy.status.ready).toBe(false);
    expect(unhealthy.status.restarts).toBe(1);
    expect(unhealthy.status.exitCode).toBe(0); // it exited cleanly on SIGTERM: still a failure
    expect(unhealthy.status.message).toMatch(/^liveness probe failed 2 times: HTTP GET http:\/\/10\.128\.\d+\.\d+:8080\/healthz: 404 Not Found; restarting in 1s$/);
    // What a user sees: the table's REASON column and describe's Reason and Message.
    expect(formatTable('Instance', [unhealthy])).toMatch(/live-0\s+service\/live\s+probes\s+host\s+Backoff\s+no\s+1\s+\S+\s+Unhealthy/);
    expect(formatDescribe(unhealthy)).toMatch(/Reason:\s+Unhealthy\nMessage:\s+liveness probe failed 2 times: HTTP GET/);
    expect(formatDescribe(unhealthy)).toMatch(/Liveness:\s+http-get :8080\/healthz delay=0s timeout=1s period=1s #success=1 #failure=2\n/);
    // The stopped container's end, as lastState keeps it: the agent's cause, not its exit 0.
    expect(unhealthy.status.lastState).toMatchObject({ reason: 'Unhealthy', exitCode: 0, containerId: first.status.containerId });
    // Restarted after the backoff as a new container; the counter keeps growing while it stays unhealthy.
    const second = await until('restarted', async () => {
      const i = await instance('live-0');
      return i.status.phase === 'Running' && i.status.restarts === 1 ? i : undefined;
    });
    expect(second.status.containerId).toMatch(/-r1$/);
    expect(second.status.containerId).not.toBe(first.status.containerId);
    await execIn(second, ['rm', '/www/healthz']);
    await until('second restart', async () => ((await instance('live-0')).status.restarts >= 2 ? true : undefined));
    await deleteService('live');
  });

  it('a failing readiness probe keeps an instance not ready and out of the service ready count; it never restarts it', async () => {
    // ready-0 serves /ready at once; ready-1 once the test writes the page.
    await applyService('ready', {
      replicas: 2,
      command: [
        'sh',
        '-c',
        `trap 'exit 0' TERM; httpd -p 8080 -h /www; if [ "$(hostname)" = ready-0 ]; then echo ok > /www/ready; fi; while true; do sleep 0.1; done`,
      ],
      readinessProbe: { httpGet: { path: '/ready', port: 8080 }, periodSeconds: 1, failureThreshold: 2 },
    });
    const notReady = await until('ready-1 NotReady (404)', async () => {
      const i = await instance('ready-1');
      return i.status.reason === 'NotReady' && i.status.message?.endsWith('404 Not Found') ? i : undefined;
    });
    expect(notReady.status, JSON.stringify(notReady.status)).toMatchObject({ phase: 'Running', ready: false, restarts: 0 });
    expect(notReady.status.message).toMatch(/^readiness probe failed \d+ times: HTTP GET http:\/\/10\.128\.\d+\.\d+:8080\/ready: 404 Not Found$/);
    expect(formatTable('Instance', [notReady])).toMatch(/ready-1\s+service\/ready\s+probes\s+host\s+Running\s+no\s+0\s+\S+\s+NotReady/);
    // ready-0's first check may still be due (the two start independently): wait for it, then look.
    const ready0 = await until('ready-0 ready', async () => ((await instance('ready-0')).status.ready ? instance('ready-0') : undefined));
    expect(ready0.status).toMatchObject({ phase: 'Running', ready: true, reason: 'Ready' });
    const svc = await until('service ready 1', async () => {
      const s = await service('ready');
      return s.status.ready === 1 ? s : undefined;
    });
    expect(formatTable('Service', [svc])).toMatch(/ready\s+1\/2\s+host/);
    // The page appears in ready-1: it becomes ready, the failure message goes, the service counts 2.
    await execIn(notReady, ['sh', '-c', 'echo ok > /www/ready']);
    const ready = await until('ready-1 ready', async () => {
      const i = await instance('ready-1');
      return i.status.ready ? i : undefined;
    });
    expect(ready.status.reason).toBe('Ready');
    expect(ready.status.message).toBeUndefined();
    expect(ready.status.restarts).toBe(0);
    await until('service ready 2', async () => ((await service('ready')).status.ready === 2 ? true : undefined));
  });

  it('after an agent restart, adopted containers keep their readiness and are probed again', async () => {
    await deleteService('ready');
    // Ready at once; the page stays until the test takes it away (after the restart, whenever that ends).
    await applyService('adopt', {
      command: ['sh', '-c', "trap 'exit 0' TERM; httpd -p 8080 -h /www; echo ok > /www/ready; while true; do sleep 0.1; done"],
      readinessProbe: { httpGet: { path: '/ready', port: 8080 }, periodSeconds: 1, failureThreshold: 2 },
    });
    const before = await until('adopt-0 ready', async () => {
      const i = await instance('adopt-0');
      return i.status.ready ? i : undefined;
    });
    await aio.stop(); // the containers keep running
    aio = await startAio();
    const after = await instance('adopt-0');
    expect(after.status).toMatchObject({ phase: 'Running', ready: true, containerId: before.status.containerId });
    // Readiness was carried over, not reset to false by the new agent: sampled ten times over
    // the new agent's checks (one per 100 ms) of a page that is there, it is true every time.
    for (let i = 0; i < 10; i++) {
      expect((await instance('adopt-0')).status.ready).toBe(true);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect((await service('adopt')).status.ready).toBe(1);
    // The new agent's prober probes the adopted container: it notices the page going away.
    await execIn(before, ['rm', '/www/ready']);
    const gone = await until('adopt-0 NotReady', async () => {
      const i = await instance('adopt-0');
      return i.status.reason === 'NotReady' ? i : undefined;
    });
    // Neither the agent's restart nor the failing readiness probe restarted it (a first start
    // that failed under a loaded CI machine before the test's agent restart is not this test's
    // subject: the container the test saw ready is the one still running, as often restarted).
    expect(gone.status).toMatchObject({ phase: 'Running', ready: false, restarts: before.status.restarts, containerId: before.status.containerId });
    expect(gone.status.message).toMatch(/^readiness probe failed 2 times: HTTP GET http:\/\/10\.128\.\d+\.\d+:8080\/ready: 404 Not Found$/);
    await until('service ready 0', async () => ((await service('adopt')).status.ready === 0 ? true : undefined));
    await deleteService('adopt');
  });

  it('exec liveness and tcpSocket readiness probes on a gVisor (runsc) sandbox', async () => {
    await applyService('sand', {
      isolation: 'sandbox',
      command: ['sh', '-c', "trap 'exit 0' TERM; echo yes > /tmp/alive; httpd -p 8080 -h /www; while true; do sleep 0.1; done"],
      livenessProbe: { exec: { command: ['cat', '/tmp/alive'] }, periodSeconds: 1, failureThreshold: 2, timeoutSeconds: 5 },
      readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
    });
    const ready = await until('sand-0 ready', async () => {
      const i = await instance('sand-0');
      return i.status.ready ? i : undefined;
    });
    expect(ready.status).toMatchObject({ phase: 'Running', reason: 'Ready' });
    await execIn(ready, ['rm', '/tmp/alive']);
    const unhealthy = await until('sand-0 Unhealthy', async () => {
      const i = await instance('sand-0');
      return i.status.reason === 'Unhealthy' ? i : undefined;
    }, 60_000);
    expect(unhealthy.status.message).toBe(`liveness probe failed 2 times: exec ["cat","/tmp/alive"]: exit 1: cat: can't open '/tmp/alive': No such file or directory; restarting in 1s`);
    expect(unhealthy.status.restarts).toBe(1);
    await until('sand-0 back and ready', async () => {
      const i = await instance('sand-0');
      return i.status.phase === 'Running' && i.status.ready && i.status.restarts === 1 ? true : undefined;
    }, 60_000);
    await deleteService('sand');
  });

  it('measures check latency per handler and isolation (Prometheus histogram)', async () => {
    await applyService('lat', {
      command: ['sh', '-c', "trap 'exit 0' TERM; httpd -p 8080 -h /www; while true; do sleep 0.1; done"],
      livenessProbe: { exec: { command: ['true'] }, periodSeconds: 1 },
      readinessProbe: { httpGet: { path: '/index.html', port: 8080 }, periodSeconds: 1 },
    });
    await applyService('lat-tcp', {
      command: ['sh', '-c', "trap 'exit 0' TERM; httpd -p 8080 -h /www; while true; do sleep 0.1; done"],
      readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
    });
    await until('lat ready', async () => ((await instance('lat-0')).status.ready && (await instance('lat-tcp-0')).status.ready ? true : undefined));
    const series = (text: string, name: 'sum' | 'count', labels: string): number =>
      [...text.matchAll(new RegExp(`^carapace_probe_duration_seconds_${name}\\{([^}]*)\\} (\\S+)$`, 'gm'))]
        .filter((m) => labels.split(',').every((l) => (m[1] ?? '').includes(l)))
        .reduce((s, m) => s + Number(m[2]), 0);
    const labelsOf = (handler: string, isolation: string): string => `handler="${handler}",isolation="${isolation}",result="success"`;
    // More than 10 successful checks of each host handler (every 100 ms: about a second on an
    // idle machine): waited for, not assumed after a fixed time.
    const text = await until('more than 10 successful checks of each host handler', async () => {
      const t = await (await fetch(`${aio.url}/metrics`, { headers: { authorization: `Bearer ${aio.adminToken}` } })).text();
      return ['exec', 'httpGet', 'tcpSocket'].every((h) => series(t, 'count', labelsOf(h, 'host')) > 10) ? t : undefined;
    }, 60_000);
    const rows: string[] = [];
    for (const [handler, isolation] of [
      ['exec', 'host'],
      ['httpGet', 'host'],
      ['tcpSocket', 'host'],
      ['exec', 'sandbox'],
      ['tcpSocket', 'sandbox'],
    ] as const) {
      const labels = labelsOf(handler, isolation);
      const n = series(text, 'count', labels);
      if (isolation === 'host') expect(n).toBeGreaterThan(10);
      if (n > 0) rows.push(`${handler}/${isolation}: ${((series(text, 'sum', labels) / n) * 1000).toFixed(1)} ms mean over ${n}`);
    }
    console.log(`probe check latency: ${rows.join('; ')}`);
    await deleteService('lat');
    await deleteService('lat-tcp');
  });
});

describe('how containers end, on real runc containers', () => {
  it('lastState keeps the exit code, reason and times of the previous container across its restart', async () => {
    // Runs 2 s, then fails: long enough for the restarted container to be seen running.
    await applyService('crash', { command: ['sh', '-c', 'sleep 2; exit 3'] });
    const first = await until('crash-0 running', async () => {
      const i = await instance('crash-0');
      return i.status.phase === 'Running' ? i : undefined;
    });
    // A new instance has no last state (unless a loaded machine let its first container end before the poll saw it run).
    if (first.status.restarts === 0) expect(first.status.lastState).toBeUndefined();
    const again = await until('crash-0 restarted and running, with the first exit in lastState', async () => {
      const i = await instance('crash-0');
      return i.status.phase === 'Running' && i.status.restarts >= 1 && i.status.lastState ? i : undefined;
    }, 60_000);
    const last = again.status.lastState;
    expect(last).toMatchObject({ exitCode: 3, reason: 'Error', message: 'exited with code 3' });
    expect(again.status.containerId).not.toBe(last?.containerId);
    // Times of the container that ended: it started when the instance said, ran its 2 s, and ended before the new one started.
    const started = Date.parse(last?.startedAt ?? '');
    const finished = Date.parse(last?.finishedAt ?? '');
    expect(finished - started).toBeGreaterThanOrEqual(1_900);
    expect(finished).toBeLessThanOrEqual(Date.parse(again.status.startedAt ?? ''));
    expect(formatDescribe(again)).toMatch(/\nLast state:\s+Terminated \(Error\), exit code 3, started \S+, finished \S+ \(ran \d/);
    // The next exit replaces it: the second container's end, not the first's.
    const next = await until('crash-0 ended again', async () => {
      const i = await instance('crash-0');
      return i.status.lastState && i.status.lastState.containerId === again.status.containerId ? i : undefined;
    }, 60_000);
    expect(next.status.lastState).toMatchObject({ exitCode: 3, reason: 'Error' });
    await deleteService('crash');
  });

  it('a container killed by the OOM killer ends with reason OOMKilled (read from its memory cgroup)', async () => {
    // The shell reads 200 MB into a variable under a 32 MiB limit (no swap: memory+swap = limit).
    await applyService('hog', { memory: 32, command: ['sh', '-c', 'x=$(yes | head -c 200000000); echo survived; sleep 1000'] });
    const oom = await until('hog-0 OOM-killed and waiting to restart', async () => {
      const i = await instance('hog-0');
      return i.status.lastState && i.status.phase === 'Backoff' ? i : undefined;
    }, 60_000);
    expect(oom.status.lastState).toMatchObject({ reason: 'OOMKilled', exitCode: 137 });
    expect(oom.status.reason).toBe('OOMKilled');
    expect(oom.status.message).toMatch(/^exited with code 137 \(OOM-killed: it used more than its memory limit\); restarting in \d+s$/);
    expect(formatDescribe(oom)).toMatch(/\nLast state:\s+Terminated \(OOMKilled\), exit code 137, /);
    await deleteService('hog');
  });

  it('stopGracePeriodSeconds: a container that ignores SIGTERM is killed after its own grace, not the agent\'s', async () => {
    const runc = createRuncDriver({ stateDir: join(stateDir, 'runtime', 'runc'), logger });
    const ignoring = ['sh', '-c', "trap '' TERM; while true; do sleep 0.1; done"];
    await applyService('quick', { command: ignoring, stopGracePeriodSeconds: 1 });
    await applyService('patient', { command: ignoring, stopGracePeriodSeconds: 12 });
    const running = async (name: string): Promise<Instance> =>
      until(`${name}-0 running`, async () => {
        const i = await instance(`${name}-0`);
        return i.status.phase === 'Running' ? i : undefined;
      });
    const quick = await running('quick');
    const patient = await running('patient');
    expect(quick.spec.stopGracePeriodSeconds).toBe(1);
    expect(formatDescribe(patient)).toMatch(/\nStop grace:\s+12s/);
    // 1 s: SIGTERM is ignored, SIGKILL follows; the instance is gone within a generous deadline.
    await api('DELETE', '/v1/tenants/acme/services/quick');
    await until('quick gone', async () => ((await api<{ items: Instance[] }>('GET', '/v1/tenants/acme/instances')).items.some((i) => i.spec.owner.name === 'quick') ? undefined : true), 30_000);
    expect(await runc.inspect(quick.status.containerId ?? '')).toBeUndefined();
    // 12 s: well past the agent's own 2 s the container still runs while its instance is Stopping.
    await api('DELETE', '/v1/tenants/acme/services/patient');
    await until('patient-0 Stopping', async () => ((await instance('patient-0')).status.phase === 'Stopping' ? true : undefined), 30_000);
    // Throughout 5 s from then (more than twice the agent's default), it keeps running.
    const stoppingSeen = Date.now();
    while (Date.now() - stoppingSeen < 5_000) {
      expect((await runc.inspect(patient.status.containerId ?? ''))?.state.status).toBe('running');
      await sleep(250);
    }
    await until('patient gone', async () => ((await api<{ items: Instance[] }>('GET', '/v1/tenants/acme/instances')).items.some((i) => i.spec.owner.name === 'patient') ? undefined : true), 60_000);
    expect(await runc.inspect(patient.status.containerId ?? '')).toBeUndefined();
  });
});
