/**
 * Carapace as a user runs it: `carapace up` (a child process), a real registry with images
 * built here, and the real CLI. Real runc/runsc/conmon containers; faults are real SIGKILLs.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Instance, Job } from '../../src/model/objects.js';
import { cli, containers, destroyAll, eventually, freePort, Server, tempDir } from './helpers.js';

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
let images: { busybox: string; web: string };

const manifest = (docs: object[]): string => docs.map((d) => JSON.stringify(d)).join('\n---\n');
const tenant = (name: string): object => ({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name } });
const service = (name: string, t: string, spec: object): object => ({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant: t }, spec: { isolation: 'host', ...spec } });

async function applyText(text: string, extra: string[] = []): Promise<Awaited<ReturnType<typeof cli>>> {
  const file = join(tmp.dir, `m-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, text);
  return cli(server.url, ['apply', '-f', file, ...extra]);
}

async function instances(t?: string): Promise<Instance[]> {
  const r = await cli(server.url, ['get', 'instances', '-o', 'json', ...(t ? ['-t', t] : [])]);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { items: Instance[] }).items;
}

beforeAll(async () => {
  tmp = await tempDir('carapace-e2e-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  const busybox = await buildBusyboxImage({ registry: registry.address, repository: 'e2e/busybox', tag: '1' });
  const web = await buildBusyboxImage({
    registry: registry.address,
    repository: 'e2e/web',
    tag: '1',
    cmd: ['httpd', '-f', '-p', '8080', '-h', '/www'],
    files: { '/www/index.html': 'hello from e2e\n' },
  });
  images = { busybox: busybox.reference, web: web.reference };
  // Sample usage every second so the usage report has measured figures within the test.
  server = new Server(join(tmp.dir, 'state'), await freePort(), [], { CARAPACE_USAGE_SAMPLE_MS: '1000' });
  await server.start();
  const t = await applyText(manifest([tenant('acme'), tenant('globex')]));
  expect(t.code, t.stderr).toBe(0);
}, 120_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'));
  await registry?.stop();
  await tmp?.cleanup();
}, 120_000);

describe('all-in-one through the CLI', () => {
  it('runs a service with apply --wait, shows it in get/describe, and streams its logs', async () => {
    const r = await applyText(
      manifest([service('hello', 'acme', { image: images.busybox, replicas: 2, command: ['sh', '-c', 'echo hello from $(hostname); echo oops >&2; sleep 3600'] })]),
      ['--wait', '--timeout', '90'],
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/service\/acme\/hello created/);
    expect(r.stdout).toMatch(/instance\/acme\/hello-0: running on e2e/);
    const mine = (await instances('acme')).filter((i) => i.spec.owner.name === 'hello');
    expect(mine.map((i) => [i.metadata.name, i.status.phase])).toEqual([
      ['hello-0', 'Running'],
      ['hello-1', 'Running'],
    ]);
    expect(mine[0]?.status.imageDigest).toMatch(/^sha256:/);
    const table = await cli(server.url, ['get', 'services', '-t', 'acme']);
    expect(table.stdout).toMatch(/hello\s+2\/2\s+host/);
    const desc = await cli(server.url, ['describe', 'service', 'acme/hello']);
    expect(desc.stdout).toMatch(/Replicas:\s+2 desired, 2 ready/);
    expect(desc.stdout).toMatch(/hello-1/);
    const logs = await eventually(async () => {
      const l = await cli(server.url, ['logs', 'acme/hello-0']);
      return l.stdout.includes('hello from hello-0') && l.stderr.includes('oops') ? l : undefined;
    }, 10_000, 'logs');
    expect(logs.code).toBe(0);
    const real = (await containers(server.stateDir)).filter((c) => c.labels['carapace.instance']?.startsWith('hello-'));
    expect(real.filter((c) => c.state.status === 'running')).toHaveLength(2);
  });

  it('reports reserved and measured usage of a busy container, exact and per tenant', async () => {
    const r = await applyText(manifest([service('burn', 'acme', { image: images.busybox, cpu: 0.25, command: ['sh', '-c', 'while :; do :; done'] })]), ['--wait', '--timeout', '90']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    type Row = { tenant: string; charged: { cpuUs: string }; used: { cpuUs: string }; measured: Record<string, { cpuUs: string; memByteMs: string }> };
    // The cgroup counter of a container spinning at its 0.25-core quota grows by about 250 ms a second.
    const rows = await eventually(async () => {
      const u = await cli(server.url, ['report', 'usage', '--since', '10m', '-o', 'json', '-t', 'acme']);
      expect(u.code, u.stderr).toBe(0);
      const parsed = (JSON.parse(u.stdout) as { rows: Row[] }).rows;
      return BigInt(parsed[0]?.measured['hostInstances']?.cpuUs ?? '0') > 1_000_000n ? parsed : undefined;
    }, 30_000, 'measured cpu');
    expect(rows.map((x) => x.tenant)).toEqual(['acme']);
    expect(BigInt(rows[0]!.charged.cpuUs)).toBeGreaterThan(0n); // rows[0] exists: checked above
    expect(BigInt(rows[0]!.measured['hostInstances']!.memByteMs)).toBeGreaterThan(0n);
    const table = await cli(server.url, ['report', 'usage', '--since', '1h', '--by', 'group']);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^TENANT\s+GROUP\s+CHARGED CPU-S/);
    expect(table.stdout).toMatch(/\nacme\s+default\s/);
    const bad = await cli(server.url, ['report', 'usage', '--since', 'last tuesday']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/^error CARAPACE_E_BAD_QUERY: /);
    await cli(server.url, ['delete', 'service', 'acme/burn']);
  });

  it('publishes a port: the web page answers on the host', async () => {
    const port = await freePort();
    const r = await applyText(manifest([service('web', 'acme', { image: images.web, ports: [{ containerPort: 8080, hostPort: port }] })]), ['--wait', '--timeout', '90']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const body = await eventually(async () => (await fetch(`http://127.0.0.1:${port}/`)).text(), 15_000, 'web page');
    expect(body).toBe('hello from e2e\n');
  });

  it('waits for readiness: apply --wait says why a replica is not ready; get and describe show it', async () => {
    const probe = { httpGet: { path: '/ready', port: 8080 }, periodSeconds: 1, failureThreshold: 1 };
    // httpd in the background under a shell that exits on SIGTERM: the update below replaces the container quickly.
    const command = ['sh', '-c', "trap 'exit 0' TERM; httpd -p 8080 -h /www; while true; do sleep 0.2; done"];
    const r = await applyText(manifest([service('unready', 'acme', { image: images.web, command, readinessProbe: probe })]), ['--wait', '--timeout', '8']);
    expect(r.code, r.stdout + r.stderr).not.toBe(0);
    // The reason follows the check: `connection refused` while httpd starts, then `404 Not Found`.
    expect(r.stdout).toMatch(/instance\/acme\/unready-0: running on e2e, not ready: readiness probe failed \d+ times?: HTTP GET http:\/\/10\.128\.\d+\.\d+:8080\/ready: 404 Not Found\n/);
    const table = await cli(server.url, ['get', 'instances', '-t', 'acme']);
    expect(table.stdout).toMatch(/acme\s+unready-0\s+service\/unready\s+e2e\s+host\s+Running\s+no\s+0\s+\S+\s+NotReady\n/);
    const desc = await cli(server.url, ['describe', 'instance', 'acme/unready-0']);
    expect(desc.stdout).toMatch(/Phase:\s+Running\nReady:\s+false\nReason:\s+NotReady\nMessage:\s+readiness probe failed \d+ times?: HTTP GET http:\/\/10\.128\.\d+\.\d+:8080\/ready: 404 Not Found\n/);
    expect(desc.stdout).toMatch(/Readiness:\s+http-get :8080\/ready delay=0s timeout=1s period=1s #success=1 #failure=1\n/);
    expect((await cli(server.url, ['get', 'services', '-t', 'acme'])).stdout).toMatch(/unready\s+0\/1\s+host/);
    // The same probe on a page that exists: --wait succeeds once the replica is ready.
    const ok = await applyText(manifest([service('unready', 'acme', { image: images.web, command, readinessProbe: { ...probe, httpGet: { path: '/index.html', port: 8080 } } })]), ['--wait', '--timeout', '30']);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    // The running, not ready replica is replaced by a new one (under a free ordinal) once that one is ready.
    expect(ok.stdout).toMatch(/instance\/acme\/unready-\d+: running on e2e\n/);
    expect((await cli(server.url, ['get', 'services', '-t', 'acme'])).stdout).toMatch(/unready\s+1\/1\s+host/);
    await cli(server.url, ['delete', 'service', 'acme/unready']);
  });

  it('runs a sandboxed (gVisor) service', async () => {
    const r = await applyText(manifest([service('sbx', 'globex', { image: images.busybox, isolation: 'sandbox', command: ['sh', '-c', 'dmesg | head -1; sleep 3600'] })]), ['--wait', '--timeout', '120']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const logs = await eventually(async () => {
      const l = await cli(server.url, ['logs', 'globex/sbx-0']);
      return /gVisor/i.test(l.stdout) ? l : undefined;
    }, 20_000, 'gVisor dmesg');
    expect(logs.stdout).toMatch(/gVisor/i);
  });

  it('restarts a crashing container with backoff and reports why', async () => {
    const r = await applyText(manifest([service('crash', 'acme', { image: images.busybox, command: ['sh', '-c', 'echo crashing; exit 3'] })]), ['--wait', '--timeout', '60']);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/crash-0: failing: Error: exited with code 3/);
    const inst = await eventually(async () => (await instances('acme')).find((i) => i.metadata.name === 'crash-0' && i.status.restarts >= 2), 30_000, 'restarts');
    expect(inst.status.exitCode).toBe(3);
    // Backoff grows: the third restart is not before 1 s + 2 s after the first exit.
    expect(['Backoff', 'Running']).toContain(inst.status.phase);
  });

  it('reports an image that does not exist and a registry that is down, without crashing', async () => {
    const down = `127.0.0.1:${await freePort()}/nothing/here:1`;
    const r = await applyText(
      manifest([
        service('noimage', 'acme', { image: `${registry.address}/e2e/does-not-exist:1` }),
        service('noregistry', 'acme', { image: down }),
      ]),
      ['--wait', '--timeout', '60'],
    );
    expect(r.code).toBe(1);
    const all = await eventually(async () => {
      const l = await instances('acme');
      const a = l.find((i) => i.metadata.name === 'noimage-0');
      const b = l.find((i) => i.metadata.name === 'noregistry-0');
      return a?.status.reason === 'ImageNotFound' && b?.status.reason === 'RegistryUnreachable' ? [a, b] : undefined;
    }, 60_000, 'pull failure reasons');
    expect(all[0]?.status.message).toContain('does-not-exist');
    expect((await fetch(`${server.url}/healthz`)).ok).toBe(true);
    await cli(server.url, ['delete', 'service', 'acme/noimage']);
    await cli(server.url, ['delete', 'service', 'acme/noregistry']);
  });

  it('runs a job to completion', async () => {
    const r = await applyText(
      manifest([{ apiVersion: 'carapace/v1', kind: 'Job', metadata: { name: 'batch', tenant: 'globex' }, spec: { image: images.busybox, isolation: 'host', command: ['sh', '-c', 'echo working; sleep 0.3'], completions: 3, parallelism: 2 } }]),
      ['--wait', '--timeout', '90'],
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const job = JSON.parse((await cli(server.url, ['get', 'jobs', 'globex/batch', '-o', 'json'])).stdout) as Job;
    expect(job.status).toMatchObject({ phase: 'Succeeded', succeeded: 3 });
    const logs = await cli(server.url, ['logs', 'globex/batch-2']);
    expect(logs.stdout).toContain('working');
  });

  it('gives clear one-line errors for bad input and an unreachable server', async () => {
    const bad = await applyText('apiVersion: carapace/v1\nkind: Service\nmetadata: {name: x, tenant: acme}\nspec:\n  image: [unclosed\n');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^error CARAPACE_E_MALFORMED_BODY: .*document 1 is not valid YAML at line \d+/);
    const invalid = await applyText(manifest([service('v', 'acme', { image: images.busybox, replicas: -2, cpu: 'fast' })]));
    expect(invalid.stderr).toMatch(/error CARAPACE_E_VALIDATION/);
    expect(invalid.stderr).toMatch(/spec\.replicas/);
    expect(invalid.stderr).toMatch(/spec\.cpu/);
    const machine = await applyText(manifest([{ apiVersion: 'carapace/v1', kind: 'Machine', metadata: { name: 'm', tenant: 'acme' }, spec: { disk: { image: '../../etc/shadow' } } }]));
    expect(machine.stderr).toMatch(/CARAPACE_E_VALIDATION/);
    expect(machine.stderr).toMatch(/spec\.disk\.image: must be a file name in the machine image directory/);
    const noToken = await cli(server.url, ['get', 'services', '--token', 'cpt_forged.secret']);
    expect(noToken.code).toBe(1);
    expect(noToken.stderr).toMatch(/^error CARAPACE_E_UNAUTHENTICATED: /);
    const unreachable = await cli(`http://127.0.0.1:${await freePort()}`, ['get', 'tenants']);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr.trim().split('\n')).toHaveLength(1);
    expect(unreachable.stderr).toMatch(/CARAPACE_E_SERVER_UNREACHABLE/);
  });

  it('deleting a service stops and removes its containers', async () => {
    const before = (await containers(server.stateDir)).filter((c) => c.labels['carapace.instance']?.startsWith('hello-'));
    expect(before.length).toBe(2);
    const d = await cli(server.url, ['delete', 'service', 'acme/hello']);
    expect(d.code, d.stderr).toBe(0);
    await eventually(async () => (await instances('acme')).every((i) => i.spec.owner.name !== 'hello'), 30_000, 'instances removed');
    const after = (await containers(server.stateDir)).filter((c) => c.labels['carapace.instance']?.startsWith('hello-'));
    expect(after).toEqual([]);
  });

  it('survives kill -9 of the server: nothing lost, nothing duplicated, containers adopted', async () => {
    const r = await applyText(manifest([service('steady', 'globex', { image: images.busybox, replicas: 2, command: ['sleep', '3600'] })]), ['--wait', '--timeout', '90']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const before = (await instances('globex')).filter((i) => i.spec.owner.name === 'steady');
    // Acknowledged but not yet acted on: killed right after the write returns.
    const quick = await applyText(manifest([service('quick', 'globex', { image: images.busybox, replicas: 1, command: ['sleep', '3600'] })]));
    expect(quick.code).toBe(0);
    await server.kill9();
    await server.start();
    const after = await eventually(async () => {
      const l = (await instances('globex')).filter((i) => ['steady', 'quick'].includes(i.spec.owner.name));
      return l.length === 3 && l.every((i) => i.status.phase === 'Running') ? l : undefined;
    }, 60_000, 'steady state after restart');
    // The same containers (same ids and pids): adopted, not restarted.
    for (const b of before) {
      const a = after.find((i) => i.metadata.name === b.metadata.name);
      expect([a?.status.containerId, a?.status.pid, a?.status.restarts]).toEqual([b.status.containerId, b.status.pid, b.status.restarts]);
    }
    // Exactly one running container per instance; none that no instance owns.
    const real = await containers(server.stateDir);
    const running = real.filter((c) => c.state.status === 'running');
    const all = await instances();
    const wanted = new Set(all.filter((i) => i.status.phase === 'Running').map((i) => i.status.containerId));
    for (const c of running) expect(wanted.has(c.id), `orphan container ${c.id}`).toBe(true);
    const perInstance = new Map<string, number>();
    for (const c of running) perInstance.set(c.labels['carapace.instance.uid'] ?? '', (perInstance.get(c.labels['carapace.instance.uid'] ?? '') ?? 0) + 1);
    expect([...perInstance.values()].every((n) => n === 1)).toBe(true);
  });

  it('stops on SIGTERM while its containers run on, and adopts them at the next start', async () => {
    const before = (await instances('globex')).filter((i) => i.spec.owner.name === 'steady' && i.status.phase === 'Running');
    expect(before.length).toBe(2);
    // Exits by itself (the waits on its containers' exits end with it), well before the SIGKILL.
    expect(await server.stop()).toBe('exited');
    expect(server.log).toContain('carapace all-in-one stopped (containers keep running)');
    const alive = (await containers(server.stateDir)).filter((c) => c.state.status === 'running').map((c) => c.id);
    for (const b of before) expect(alive).toContain(b.status.containerId);
    await server.start();
    const after = await eventually(async () => {
      const l = (await instances('globex')).filter((i) => i.spec.owner.name === 'steady');
      return l.length === 2 && l.every((i) => i.status.phase === 'Running') ? l : undefined;
    }, 60_000, 'steady adopted after the restart');
    expect(after.map((i) => i.status.containerId).sort()).toEqual(before.map((i) => i.status.containerId).sort());
  });

  it('scaling a service up leaves the replicas that stay running as they are (same containers)', async () => {
    const before = (await instances('globex')).filter((i) => i.spec.owner.name === 'steady');
    expect(before.map((i) => i.status.phase)).toEqual(['Running', 'Running']);
    const r = await applyText(manifest([service('steady', 'globex', { image: images.busybox, replicas: 3, command: ['sleep', '3600'] })]), ['--wait', '--timeout', '90']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const after = (await instances('globex')).filter((i) => i.spec.owner.name === 'steady');
    expect(after.map((i) => i.metadata.name).sort()).toEqual(['steady-0', 'steady-1', 'steady-2']);
    for (const b of before) {
      const a = after.find((i) => i.metadata.name === b.metadata.name);
      expect([a?.status.containerId, a?.status.pid, a?.metadata.generation], b.metadata.name).toEqual([b.status.containerId, b.status.pid, b.metadata.generation]);
    }
  });
});
