/**
 * Tenant networks for real, through `carapace up` and the CLI: one tenant's services in two
 * cells (VMs on taps), on the host (runc), in a sandbox (gVisor) and a machine (its own OS
 * asks DHCP) find and reach each other by name; another tenant's workloads in every tier can
 * neither resolve those names nor reach those addresses; a replica killed behind a service
 * address leaves the rotation within 2 s while a client loops.
 *
 * Every workload runs the same busybox script: it serves its name over HTTP on 8080 and, every
 * 2 s, tries each of its TARGETS and prints `R <target> yes|no`: a lookup (`@name`, busybox's
 * own resolver) or a TCP connection (busybox nc, names through the container's resolv.conf).
 * A connection, not an HTTP exchange: reach is what is under test (on gVisor's host-stack
 * mode, which sandboxes used before netstack, busybox's wget failed reads with EAGAIN now and
 * then; see runtime/index.ts).
 */
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Cell, Instance, Machine, Service } from '../../src/model/objects.js';
import { buildHelloMachine, HELLO_MACHINE_FILE } from '../../src/vm/testing/hello-machine.js';
import { netnsName } from '../../src/network/ipam.js';
import { clientLoop } from '../network/tenant-helpers.js';
import { runOrThrow } from '../../src/proc/run.js';
import { cli, destroyAll, eventually, freePort, Server, tempDir } from './helpers.js';

const PREFIX = 'ctn';
const DOMAIN = 'carapace.internal';

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
let image: string;

/** Serves its hostname, then probes TARGETS (`name:port`, or `@name` for a lookup only) forever. */
const PROBE = `
mkdir -p /www && hostname > /www/index.html
httpd -p 8080 -h /www
while true; do
  for t in $TARGETS; do
    case $t in
      @*) n=\${t#@}; if timeout 5 nslookup $n >/dev/null 2>&1; then echo "R $t yes"; else echo "R $t no"; fi ;;
      *) if timeout 5 nc -w 3 \${t%:*} \${t#*:} </dev/null >/dev/null 2>&1; then echo "R $t yes"; else echo "R $t no"; fi ;;
    esac
  done
  echo ROUND
  sleep 2
done
`;

const manifest = (docs: object[]): string => docs.map((d) => JSON.stringify(d)).join('\n---\n');

async function apply(docs: object[], extra: string[] = []): Promise<void> {
  const file = join(tmp.dir, `m-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, manifest(docs));
  const r = await cli(server.url, ['apply', '-f', file, ...extra], undefined, 400_000);
  expect(r.code, r.stdout + r.stderr).toBe(0);
}

async function list<T>(kind: string): Promise<T[]> {
  const r = await cli(server.url, ['get', kind, '-o', 'json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { items: T[] }).items;
}

function prober(tenant: string, name: string, spec: object, targets: string[]): object {
  return {
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name, tenant },
    spec: { image, cpu: 0.2, memory: '48Mi', command: ['sh', '-c', PROBE], env: { TARGETS: targets.join(' ') }, ports: [{ containerPort: 8080 }], ...spec },
  };
}

/** This host's tenant-network rules, counters' values left out and lines sorted (a rewrite may reorder elements). */
async function ruleset(): Promise<string[]> {
  const text = (await runOrThrow('nft', ['list', 'table', 'inet', `${PREFIX}carapace`])).stdout;
  return text.replace(/packets \d+ bytes \d+/g, '').split('\n').map((l) => l.trim()).filter(Boolean).sort();
}

/** The latest `R target yes|no` of each target in one instance's log, from complete rounds only. */
async function results(instance: string): Promise<Map<string, string>> {
  const r = await cli(server.url, ['logs', instance, '--tail', '200']);
  const lines = r.stdout.split('\n');
  const lastRound = lines.lastIndexOf(lines.filter((l) => l.endsWith('ROUND')).pop() ?? '\0');
  const out = new Map<string, string>();
  for (const l of lines.slice(0, lastRound)) {
    const m = /R (\S+) (yes|no)$/.exec(l);
    if (m) out.set(m[1] as string, m[2] as string); // both groups always match
  }
  return out;
}

beforeAll(async () => {
  tmp = await tempDir('carapace-tenantnet-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  image = (await buildBusyboxImage({ registry: registry.address, repository: 'tenantnet/busybox', tag: '1' })).reference;
  const stateDir = join(tmp.dir, 'state');
  await buildHelloMachine(join(stateDir, 'machine-images'));
  server = new Server(stateDir, await freePort(), ['--net-prefix', PREFIX, '--accel', 'tcg'], { CARAPACE_LOG_LEVEL: 'warn' }, 'up');
  await server.start();
}, 240_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'), { prefix: PREFIX });
  await registry?.stop();
  await tmp?.cleanup();
}, 180_000);

describe('tenant networks', () => {
  it("a tenant's services reach each other by name across two cells, the host, a sandbox and a machine; another tenant's reach nothing of it", async () => {
    // acme: web and api in cells of two groups (two VMs), a host and a sandbox service, a machine.
    const acmeTargets = ['web:8080', 'api:8080', `hostsvc.acme.${DOMAIN}:8080`, 'sandsvc:8080', 'vm1:80'];
    const acme = [
      { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} },
      prober('acme', 'web', { isolation: 'cell', group: 'g1' }, acmeTargets),
      prober('acme', 'api', { isolation: 'cell', group: 'g2' }, acmeTargets),
      prober('acme', 'hostsvc', { isolation: 'host' }, acmeTargets),
      prober('acme', 'sandsvc', { isolation: 'sandbox' }, acmeTargets),
      { apiVersion: 'carapace/v1', kind: 'Machine', metadata: { name: 'vm1', tenant: 'acme' }, spec: { kernel: 'host', initrd: HELLO_MACHINE_FILE, cpu: 1, memory: '128Mi' } },
    ];
    await apply(acme, ['--wait', '--timeout', '360']);
    const acmeInstances = (await list<Instance>('instances')).filter((i) => i.metadata.tenant === 'acme');
    const cells = (await list<Cell>('cells')).filter((c) => c.spec.tenant === 'acme');
    expect(new Set(acmeInstances.filter((i) => i.spec.cell).map((i) => i.spec.cell)).size).toBe(2);
    // Every workload has an address on acme's network; a cell's instances have their cell's.
    const acmeNet = /^10\.(1[2-9]\d|2[0-5]\d)\.\d+\.\d+$/;
    for (const i of acmeInstances) expect(i.status.address, i.metadata.name).toMatch(acmeNet);
    for (const c of cells) expect(acmeInstances.filter((i) => i.spec.cell === c.metadata.name).every((i) => i.status.address === c.status.address)).toBe(true);
    const vm1 = await eventually(async () => (await list<Machine>('machines')).find((m) => m.metadata.name === 'vm1' && m.status.address), 60_000, 'the machine has an address');
    expect(vm1.status.address).toMatch(acmeNet);
    const services = await list<Service>('services');
    for (const s of services) expect(s.status.address, s.metadata.name).toMatch(/^10\.(11[2-9]|12[0-7])\.\d+\.\d+$/);

    // Every acme workload reaches every acme name (the machine once its own OS took its DHCP lease).
    for (const name of ['web', 'api', 'hostsvc', 'sandsvc']) {
      await eventually(async () => {
        const r = await results(`acme/${name}-0`);
        return acmeTargets.every((t) => r.get(t) === 'yes') ? r : undefined;
      }, 240_000, `acme/${name}-0 reaches ${acmeTargets.join(', ')}`).catch(async (e: unknown) => {
        throw new Error(`${(e as Error).message}: ${JSON.stringify([...(await results(`acme/${name}-0`))])}`, { cause: e });
      });
    }

    // globex, in every tier: its own names work (the control); acme's names and addresses do not.
    const acmeAddresses = [...new Set([...acmeInstances.map((i) => i.status.address), vm1.status.address])].map((a) => `${a ?? ''}:8080`);
    const acmeVips = services.filter((s) => s.metadata.tenant === 'acme').map((s) => `${s.status.address ?? ''}:8080`);
    const globexTargets = ['gcell:8080', 'ghost:8080', ...acmeAddresses, ...acmeVips, `@web.acme.${DOMAIN}`, `@vm1.acme.${DOMAIN}`, `@hostsvc.acme.${DOMAIN}`];
    await apply(
      [
        { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'globex' }, spec: {} },
        prober('globex', 'gcell', { isolation: 'cell' }, globexTargets),
        prober('globex', 'ghost', { isolation: 'host' }, globexTargets),
        prober('globex', 'gsand', { isolation: 'sandbox' }, globexTargets),
      ],
      ['--wait', '--timeout', '360'],
    );
    for (const name of ['gcell', 'ghost', 'gsand']) {
      const r = await eventually(async () => {
        const got = await results(`globex/${name}-0`);
        return got.get('gcell:8080') === 'yes' && got.get('ghost:8080') === 'yes' && globexTargets.every((t) => got.has(t)) ? got : undefined;
      }, 240_000, `globex/${name}-0 reaches its own services`);
      for (const t of globexTargets.slice(2)) expect(`${name} -> ${t}: ${r.get(t) ?? '?'}`).toBe(`${name} -> ${t}: no`);
    }
  }, 900_000);

  it('a replica killed behind a service address leaves the rotation within 2 s while a client loops', async () => {
    await apply(
      [
        // Small: the host's cpu is mostly reserved by the four VMs of the test before.
        prober('acme', 'rep', { isolation: 'host', replicas: 3, cpu: 0.05, readinessProbe: { httpGet: { path: '/', port: 8080 }, periodSeconds: 1 } }, []),
      ],
      ['--wait', '--timeout', '300'],
    );
    const client = (await list<Instance>('instances')).find((i) => i.metadata.name === 'hostsvc-0');
    const svc = (await list<Service>('services')).find((s) => s.metadata.name === 'rep');
    expect(client?.status.containerId && svc?.status.address).toBeTruthy();
    const loop = clientLoop(netnsName(client?.status.containerId ?? ''), `http://${svc?.status.address ?? ''}:8080/`);
    try {
      // All three answer through the address before anything is killed.
      await eventually(async () => new Set(loop.samples.filter((s) => s.ok).map((s) => s.body)).size === 3, 30_000, 'three replicas answering');
      const victim = (await list<Instance>('instances')).find((i) => i.metadata.name === 'rep-1');
      const killedAt = Date.now();
      process.kill(victim?.status.pid ?? 0, 'SIGKILL');
      // Let the loop run well past the bound, then look at when failures stopped.
      await eventually(async () => loop.samples.some((s) => s.t > killedAt + 6_000), 30_000, 'the client loop ran on');
      const after = loop.samples.filter((s) => s.t >= killedAt);
      const lastFailure = after.filter((s) => !s.ok).pop();
      const leftMs = lastFailure ? lastFailure.t - killedAt : 0;
      expect(leftMs, `failures until ${leftMs} ms after the kill`).toBeLessThanOrEqual(2_000);
      expect(after.filter((s) => s.t > killedAt + 2_000).every((s) => s.ok)).toBe(true);
    } finally {
      loop.child.kill('SIGKILL');
    }
  }, 300_000);
  it('kill -9 of carapace (agent and control plane): connections through service addresses go on, nothing is re-addressed, rules are recovered', async () => {
    // Every host-tier replica of acme running now (the previous test restarted a killed one).
    const before = await eventually(async () => {
      const l = (await list<Instance>('instances')).filter((i) => i.metadata.tenant === 'acme' && i.spec.container.isolation === 'host');
      return l.every((i) => i.status.phase === 'Running' && i.status.ready) ? l : undefined;
    }, 120_000, "acme's host-tier replicas running and ready");
    const client = before.find((i) => i.metadata.name === 'hostsvc-0');
    const svc = (await list<Service>('services')).find((s) => s.metadata.name === 'rep');
    const loop = clientLoop(netnsName(client?.status.containerId ?? ''), `http://${svc?.status.address ?? ''}:8080/`);
    try {
      await eventually(async () => loop.samples.filter((s) => s.ok).length > 10, 30_000, 'the client loop answered');
      // The rules as they settle after the last test's restart of rep-1: every DNAT goes to a
      // live instance's address (a snapshot taken while the old address was still being
      // replaced compared stale rules with recovered, correct ones).
      const rules = await eventually(async () => {
        const live = new Set((await list<Instance>('instances')).filter((i) => i.status.phase === 'Running').map((i) => i.status.address));
        const r = await ruleset();
        const targets = r.flatMap((l) => [...l.matchAll(/dnat ip to (\d+\.\d+\.\d+\.\d+)/g)].map((m) => m[1]));
        return targets.length > 0 && targets.every((t) => live.has(t)) ? r : undefined;
      }, 60_000, 'the rules to point at live instances only');
      const killedAt = Date.now();
      await server.kill9();
      // With nothing of Carapace running, the kernel keeps serving the address.
      await eventually(async () => loop.samples.some((s) => s.t > killedAt + 3_000), 30_000, 'the loop ran on');
      const whileDown = loop.samples.filter((s) => s.t > killedAt);
      expect(whileDown.length).toBeGreaterThan(0);
      expect(whileDown.every((s) => s.ok)).toBe(true);
      await server.start();
      // The restarted agent adopted everything: same containers, same addresses, the same rules.
      await eventually(async () => {
        const now = (await list<Instance>('instances')).filter((i) => i.metadata.tenant === 'acme' && i.spec.container.isolation === 'host');
        return now.length === before.length && now.every((i) => i.status.phase === 'Running') ? now : undefined;
      }, 180_000, 'instances running after the restart');
      const after = (await list<Instance>('instances')).filter((i) => i.metadata.tenant === 'acme' && i.spec.container.isolation === 'host');
      for (const i of before) {
        const a = after.find((x) => x.metadata.name === i.metadata.name);
        expect([a?.status.containerId, a?.status.address], i.metadata.name).toEqual([i.status.containerId, i.status.address]);
      }
      const restartedAt = Date.now();
      await eventually(async () => loop.samples.some((s) => s.t > restartedAt + 3_000), 30_000, 'the loop ran on after the restart');
      expect(loop.samples.filter((s) => s.t > killedAt).every((s) => s.ok)).toBe(true);
      const recovered = await ruleset();
      // The lines that differ, so a failure says which rule was lost or added.
      const lost = rules.filter((l) => !recovered.includes(l));
      const added = recovered.filter((l) => !rules.includes(l));
      const where = (await list<Instance>('instances')).map((i) => `${i.metadata.tenant ?? ''}/${i.metadata.name}=${i.status.address ?? '-'} (${i.status.phase}, restarts ${i.status.restarts})`);
      expect(recovered, `rules lost: ${JSON.stringify(lost)}; rules added: ${JSON.stringify(added)}; instances now: ${where.join(', ')}`).toEqual(rules);
    } finally {
      loop.child.kill('SIGKILL');
    }
  }, 300_000);
});
