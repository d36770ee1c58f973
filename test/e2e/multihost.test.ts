/**
 * Many hosts for real: each host is a network namespace made here (a veth pair on a bridge,
 * an address the test assigns) running its own `carapace agent`, which joins the server over
 * mutual TLS with a join token. The server runs on etcd. A service's cells spread across
 * zones; cutting a host off (its link down) moves its work to the other host; healing the
 * link makes the returning agent destroy its stale copies, so nothing runs twice. Logs, exec
 * sessions and port-forwards of instances on the joined hosts are relayed through their agents.
 */
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import { startTlsEtcd } from '../../src/pki/testing/etcd-pki.js';
import type { EtcdProcess } from '../../src/store/testing/etcd.js';
import type { Cell, Host, Instance } from '../../src/model/objects.js';
import { LABELS } from '../../src/agent/container-id.js';
import { createVmManager } from '../../src/vm/qemu.js';
import { run, runOrThrow } from '../../src/proc/run.js';
import { Agent, apiCaFile, CLI, cli, containers, destroyAll, eventually, freePort, Server, tempDir, tokens } from './helpers.js';
import { ip, makeLan, netnsAgent, removeLan, type NetnsHost, type NetnsLan } from './netns-hosts.js';

const GW = '10.70.0.1';
const HOSTS: NetnsHost[] = [
  { name: 'h1', ns: 'cmh-h1', veth: 'cmhv1', ip: '10.70.0.11', zone: 'a' },
  { name: 'h2', ns: 'cmh-h2', veth: 'cmhv2', ip: '10.70.0.12', zone: 'b' },
];
const LAN: NetnsLan = { bridge: 'cmh0', gw: GW, hosts: HOSTS };

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let etcd: EtcdProcess;
let server: Server;
let agentPort = 0;
const agents: Record<string, Agent> = {};

async function list<T>(what: string): Promise<T[]> {
  const r = await cli(server.url, ['get', what, '-o', 'json']);
  if (r.code !== 0) throw new Error(r.stderr);
  return (JSON.parse(r.stdout) as { items: T[] }).items;
}

function agentFor(h: NetnsHost, token?: string): Agent {
  return netnsAgent(LAN, h, { dir: tmp.dir, agentPort, registry: registry.address, ...(token ? { token } : {}), args: ['--accel', 'tcg'] });
}

/** Serves its hostname on 8080 and tries each of $TARGETS every 2 s (`@name`: a lookup only), printing `R target yes|no`. */
const PROBE = `mkdir -p /www && hostname > /www/index.html; httpd -p 8080 -h /www; while true; do for t in $TARGETS; do case $t in @*) if timeout 5 nslookup \${t#@} >/dev/null 2>&1; then echo "R $t yes"; else echo "R $t no"; fi ;; *) if timeout 5 nc -w 3 \${t%:*} \${t#*:} </dev/null >/dev/null 2>&1; then echo "R $t yes"; else echo "R $t no"; fi ;; esac; done; echo ROUND; sleep 2; done`;

/** The latest `R target yes|no` per target in an instance's log, from complete rounds. */
async function probeResults(instance: string): Promise<Map<string, string>> {
  const lines = (await cli(server.url, ['logs', instance, '--tail', '200'])).stdout.split('\n');
  const last = lines.map((l) => l.endsWith('ROUND')).lastIndexOf(true);
  const out = new Map<string, string>();
  for (const l of lines.slice(0, Math.max(0, last))) {
    const m = /R (\S+) (yes|no)$/.exec(l);
    if (m) out.set(m[1] as string, m[2] as string); // both groups always match
  }
  return out;
}

/** Waits until `instance` reaches every `yes` target, then checks every `no` target is refused. */
async function probed(instance: string, yes: string[], no: string[]): Promise<void> {
  const r = await eventually(async () => {
    const got = await probeResults(instance);
    return yes.every((t) => got.get(t) === 'yes') && no.every((t) => got.has(t)) ? got : undefined;
  }, 180_000, `${instance} reaches ${yes.join(', ')}`).catch(async (e: unknown) => {
    throw new Error(`${(e as Error).message}: ${JSON.stringify([...(await probeResults(instance))])}`, { cause: e });
  });
  for (const t of no) expect(`${instance} -> ${t}: ${r.get(t) ?? '?'}`).toBe(`${instance} -> ${t}: no`);
}

/** From inside `instance`'s network namespace (a host-tier container), TCP to each address fails. */
async function checkUnreachable(instance: string, targets: string[]): Promise<void> {
  const [tenant, name] = instance.split('/') as [string, string];
  const i = (await list<Instance>('instances')).find((x) => x.metadata.tenant === tenant && x.metadata.name === name);
  const ns = `/var/run/netns/carapace-${i?.status.containerId ?? '?'}`;
  for (const t of targets) {
    const [addr, port] = t.split(':') as [string, string];
    const r = await run('nsenter', [`--net=${ns}`, 'timeout', '4', 'bash', '-c', `exec 3<>/dev/tcp/${addr}/${port}`]);
    expect(`${instance} -> ${t}: ${r.code === 0 ? 'connected' : 'refused'}`).toBe(`${instance} -> ${t}: refused`);
  }
}

/** What really runs: instance uid -> hosts running it (containers), and live VMs per host. */
async function reality(): Promise<{ containers: Map<string, string[]>; vms: Map<string, string[]> }> {
  const out = { containers: new Map<string, string[]>(), vms: new Map<string, string[]>() };
  for (const h of HOSTS) {
    for (const c of await containers(join(tmp.dir, h.name))) {
      if (c.state.status !== 'running') continue;
      const uid = c.labels[LABELS.uid] ?? '?';
      out.containers.set(uid, [...(out.containers.get(uid) ?? []), h.name]);
    }
    const vms = createVmManager({ stateDir: join(tmp.dir, h.name, 'vms'), logger: pino({ level: 'silent' }), accel: 'tcg' });
    for (const vm of vms.recover()) if (vm.state === 'running') out.vms.set(vm.id, [...(out.vms.get(vm.id) ?? []), h.name]);
  }
  return out;
}

beforeAll(async () => {
  tmp = await tempDir('carapace-multihost-');
  await makeLan(LAN);
  registry = await startRegistry({ dir: join(tmp.dir, 'registry'), host: GW });
  etcd = await startTlsEtcd();
  agentPort = await freePort();
  server = new Server(join(tmp.dir, 'server'), await freePort(), [...etcd.storeArgs, '--agent-port', String(agentPort), '--agent-listen', GW, '--advertise', GW], {}, 'server');
  await server.start();
  const token = (await readFile(join(tmp.dir, 'server', 'join-token'), 'utf8')).trim();
  for (const h of HOSTS) {
    agents[h.name] = agentFor(h, token);
    await agents[h.name]!.start(); // just made
  }
  await eventually(async () => (await list<Host>('hosts')).filter((x) => x.status.state === 'Ready').length === 2, 60_000, 'two hosts ready').catch(async (e: unknown) => {
    throw new Error(`${(e as Error).message}\nhosts: ${JSON.stringify((await list<Host>('hosts')).map((h) => [h.metadata.name, h.status.state, h.status.message]))}\n${Object.values(agents).map((a) => a.log.split('\n').filter((l) => !/"level":30/.test(l)).slice(-15).join('\n')).join('\n---\n')}`, { cause: e });
  });
}, 180_000);

afterAll(async () => {
  await cli(server.url, ['delete', 'service', 'acme/web']).catch(() => undefined);
  await cli(server.url, ['delete', 'service', 'acme/db']).catch(() => undefined);
  await eventually(async () => (await list<Instance>('instances')).length === 0, 60_000, 'instances removed').catch(() => undefined);
  for (const a of Object.values(agents)) await a.stop();
  await server?.stop();
  for (const h of HOSTS) await destroyAll(join(tmp.dir, h.name), { netns: h.ns }).catch(() => undefined);
  await removeLan(LAN);
  await etcd?.stop();
  await registry?.stop();
  await tmp?.cleanup();
}, 180_000);

describe('many hosts in network namespaces', () => {
  it('spreads cells across zones, moves a cut-off host\'s work, and fences it when it returns', async () => {
    const image = (await buildBusyboxImage({ registry: registry.address, repository: 'mh/busybox', tag: '1' })).reference;
    const file = join(tmp.dir, 'acme.yaml');
    await writeFile(
      file,
      [
        { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } },
        { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image, isolation: 'host', replicas: 2, ports: [{ containerPort: 8080 }], command: ['sh', '-c', `echo hello from $(hostname); ${PROBE}`], env: { TARGETS: 'web-0:8080 web-1:8080 web:8080' } } },
        { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'globex' } },
        // globex on both hosts: its own replicas by name (the control), acme's names never.
        { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'gx', tenant: 'globex' }, spec: { image, isolation: 'host', replicas: 2, ports: [{ containerPort: 8080 }], command: ['sh', '-c', PROBE], env: { TARGETS: `gx-0:8080 gx-1:8080 @web-0.acme.${'carapace.internal'} @web-1.acme.carapace.internal` } } },
        { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'db', tenant: 'acme' }, spec: { image, isolation: 'dedicated', replicas: 2, cpu: 0.25, memory: '64Mi', command: ['sleep', '3600'] } },
      ]
        .map((d) => JSON.stringify(d))
        .join('\n---\n'),
    );
    const applied = await cli(server.url, ['apply', '-f', file, '--wait', '--timeout', '400'], undefined, 420_000);
    expect(applied.code, applied.stdout + applied.stderr + Object.values(agents).map((a) => a.log.slice(-2000)).join('\n')).toBe(0);
    const before = await list<Instance>('instances');
    const cells = await list<Cell>('cells');
    // Replicas and the cells of the dedicated service spread across the two zones' hosts.
    expect(before.filter((i) => i.spec.owner.name === 'web').map((i) => i.spec.host).sort()).toEqual(['h1', 'h2']);
    expect(cells.filter((c) => c.spec.tenant === 'acme').map((c) => c.spec.host).sort()).toEqual(['h1', 'h2']);

    // acme's replicas on the two hosts reach each other by name over the tenant's VXLAN; so do
    // globex's, on their own network; globex cannot resolve acme's names; nor reach its addresses.
    for (const name of ['web-0', 'web-1']) await probed(`acme/${name}`, ['web-0:8080', 'web-1:8080', 'web:8080'], []);
    const acmeAddrs = before.filter((i) => i.spec.owner.name === 'web').map((i) => `${i.status.address ?? '?'}:8080`);
    for (const name of ['gx-0', 'gx-1']) await probed(`globex/${name}`, ['gx-0:8080', 'gx-1:8080'], ['@web-0.acme.carapace.internal', '@web-1.acme.carapace.internal']);
    expect(new Set((await list<Instance>('instances')).filter((i) => i.metadata.tenant === 'globex').map((i) => i.spec.host))).toEqual(new Set(['h1', 'h2']));
    await checkUnreachable('globex/gx-0', acmeAddrs);

    // Logs of instances on the joined hosts come through the agent API.
    for (const i of before.filter((x) => x.spec.owner.name === 'web')) {
      const logs = await eventually(async () => {
        const l = await cli(server.url, ['logs', `acme/${i.metadata.name}`]);
        return l.stdout.includes(`hello from ${i.metadata.name}`) ? l : undefined;
      }, 20_000, `logs of ${i.metadata.name} on ${i.spec.host}`);
      expect(logs.code).toBe(0);
    }
    // So do exec sessions (the server runs no agent: every session is relayed to the instance's host).
    for (const i of before.filter((x) => x.spec.owner.name === 'web')) {
      const r = await cli(server.url, ['exec', `acme/${i.metadata.name}`, '--', 'sh', '-c', 'hostname; echo err >&2; exit 3']);
      expect({ code: r.code, stdout: r.stdout.trim(), stderr: r.stderr.trim() }, `exec on ${i.spec.host}`).toEqual({ code: 3, stdout: i.metadata.name, stderr: 'err' });
      // And forwarded connections: its unpublished httpd answers its name on a local port.
      const fwd = spawn(process.execPath, [CLI, 'port-forward', `acme/${i.metadata.name}`, ':8080'], {
        env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', CARAPACE_SERVER: server.url, CARAPACE_TOKEN: tokens.get(server.url) ?? '', CARAPACE_CONFIG: '/nonexistent/carapace-config.json', CARAPACE_CA_FILE: apiCaFile(server.url) ?? '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let said = '';
      fwd.stdout.on('data', (d: Buffer) => (said += d.toString()));
      fwd.stderr.on('data', (d: Buffer) => (said += d.toString()));
      try {
        const port = await eventually(async () => /^Forwarding from 127\.0\.0\.1:(\d+) -> /m.exec(said)?.[1], 30_000, `port-forward to ${i.metadata.name} listening`);
        const page = await eventually(async () => {
          const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(20_000) }).catch(() => undefined);
          return res?.ok ? res.text() : undefined;
        }, 60_000, `${i.metadata.name}'s page through the forward`).catch((e: unknown) => {
          throw new Error(`${(e as Error).message}; port-forward said: ${said}`, { cause: e });
        });
        expect(page.trim()).toBe(i.metadata.name);
      } finally {
        fwd.kill('SIGINT');
      }
    }

    // Cut h1 off the network: its agent can reach neither the server nor anything else.
    await ip('link', 'set', 'cmhv1', 'down');
    await eventually(async () => (await list<Host>('hosts')).find((x) => x.metadata.name === 'h1' && x.status.state === 'NotReady'), 30_000, 'h1 NotReady');
    const moved = await eventually(async () => {
      const l = await list<Instance>('instances');
      return l.length === 6 && l.every((i) => i.spec.host === 'h2' && i.status.phase === 'Running') ? l : undefined;
    }, 300_000, 'all work running on h2');
    expect(moved).toHaveLength(6);
    // h1 still runs its stale copies: it cannot hear that they moved.
    const during = await reality();
    const stale = before.filter((i) => i.spec.host === 'h1');
    for (const i of stale.filter((x) => !x.spec.cell)) expect(during.containers.get(i.metadata.uid)).toEqual(['h1']);
    const staleCell = cells.find((c) => c.spec.host === 'h1' && c.spec.tenant === 'acme')!; // one cell per host, checked above
    expect(during.vms.get(staleCell.metadata.name)).toEqual(['h1']);

    // Heal the link: the returning agent destroys what no object explains; nothing runs twice.
    await ip('link', 'set', 'cmhv1', 'up');
    await eventually(async () => (await list<Host>('hosts')).find((x) => x.metadata.name === 'h1' && x.status.state === 'Ready'), 60_000, 'h1 Ready again');
    const healed = await eventually(async () => {
      const r = await reality();
      return stale.every((i) => !r.containers.has(i.metadata.uid)) && !r.vms.has(staleCell.metadata.name) ? r : undefined;
    }, 90_000, 'stale copies fenced');
    const now = await list<Instance>('instances');
    for (const i of now.filter((x) => !x.spec.cell)) expect(healed.containers.get(i.metadata.uid), i.metadata.name).toEqual(['h2']);
    // h1 runs nothing of acme or globex any more: no segment, endpoint or DNS server of theirs is
    // left on it, and h2's VXLANs no longer flood to it (no stale routes, addresses or peers).
    await eventually(async () => {
      const links = (await runOrThrow('ip', ['-n', 'cmh-h1', '-br', 'link'])).stdout;
      return !/^c[bxet][0-9a-f]/m.test(links) ? true : undefined;
    }, 90_000, "h1's tenant segments removed");
    await eventually(async () => {
      const fdb = (await runOrThrow('ip', ['netns', 'exec', 'cmh-h2', 'bridge', 'fdb', 'show'])).stdout;
      return !fdb.includes('dst 10.70.0.11') ? true : undefined; // neither flood entries nor learned ones
    }, 60_000, "h2's VXLANs stop flooding to h1");
    const liveCells = (await list<Cell>('cells')).filter((c) => c.spec.tenant === 'acme');
    expect([...healed.vms.keys()].filter((id) => id.startsWith('cell-')).sort()).toEqual(liveCells.map((c) => c.metadata.name).sort());
  }, 900_000);
});
