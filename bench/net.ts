/**
 * `npm run bench -- net`: the tenant network's data path beside the raw one, in one run, each
 * Carapace figure divided by its raw baseline built here with the same kernel objects and no
 * Carapace (bench/net-raw.ts):
 *  - host:  two host-tier services of one tenant, the client reaching the server through its
 *           service address (a DNAT to the endpoint), vs two namespaces on a plain bridge;
 *  - cell:  two cells of one tenant (two groups, two VMs on taps), vs two QEMU VMs with the
 *           cells' kernel and flags on taps of a plain bridge;
 *  - xhost: two namespace hosts, each with the tenant's segment made by the data plane
 *           (network/, the agent's library: bridge, VXLAN, firewall), vs a raw VXLAN;
 *  - DNS lookup p99 from a host-tier container to its tenant's resolver; after a new replica
 *    is reported ready, how long until the service address sends it traffic; after a replica
 *    is killed, how long until the address stops sending it any.
 * TCP round trips are 1-byte echoes with TCP_NODELAY (a static C tool compiled here), p50 and
 * p99; throughput is Debian's iperf3, receiver side. Both sides use the same tools.
 * Final JSON line: {"bench":"net","host_rtt_ratio","host_tput_ratio","cell_rtt_ratio",
 * "cell_tput_ratio","xhost_rtt_ratio","xhost_tput_ratio","dns_p99_ms","join_after_ready_ms",
 * "leave_after_death_ms"} (rtt ratios of p50, except cells: of the mean, since a guest's clock
 * under software emulation ticks in 4 ms; every figure is also printed).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { pino } from 'pino';
import { startAllInOne } from '../src/allinone/allinone.js';
import { buildBusyboxImage, freePort, startRegistry } from '../src/image/testing/index.js';
import type { Instance, Service } from '../src/model/objects.js';
import { netnsName } from '../src/network/ipam.js';
import { createTenantNetworking } from '../src/network/tenant-networking.js';
import { run, runOrThrow } from '../src/proc/run.js';
import { buildTools, IPERF_PORT, IPERF_SECONDS, measureFromNamespace, rawBridgePair, rawVmPair, rawVxlanPair, RTT_PORT, RTT_ROUNDS, toolImageFiles, waitForPort, type PathFigures, type Tools } from './net-raw.js';
import { until } from '../src/proc/until.js';

const log = (s: string): boolean => process.stderr.write(`${s}\n`);
const PREFIX = 'cbn';
const TENANT = 'bench';
const round = (x: number, d = 3): number => Math.round(x * 10 ** d) / 10 ** d;
const show = (what: string, f: PathFigures): boolean => log(`${what}: rtt p50 ${f.rttP50Us} us, p99 ${f.rttP99Us} us, mean ${f.rttMeanUs} us, ${(f.bitsPerSecond / 1e9).toFixed(2)} Gbit/s`);

/** (xhost, Carapace) Two namespace hosts whose segments of one tenant the data plane makes, joined by its VXLAN. */
async function dataPlaneXhost(tools: Tools, dir: string): Promise<PathFigures> {
  const under = 'cbnu0';
  const hosts = [
    { ns: 'cbn-h1', veth: 'cbnv1', ip: '10.254.9.11', block: '10.128.0.0/24' },
    { ns: 'cbn-h2', veth: 'cbnv2', ip: '10.254.9.12', block: '10.128.1.0/24' },
  ];
  const logger = pino({ level: 'warn' });
  const nets = hosts.map((h) => createTenantNetworking({ stateDir: join(dir, h.ns), logger, prefix: 'cx', netns: h.ns }));
  try {
    await runOrThrow('ip', ['link', 'add', under, 'type', 'bridge']);
    await runOrThrow('ip', ['link', 'set', under, 'up']);
    for (const h of hosts) {
      await runOrThrow('ip', ['netns', 'add', h.ns]);
      await runOrThrow('ip', ['link', 'add', h.veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns]);
      await runOrThrow('ip', ['link', 'set', h.veth, 'master', under, 'up']);
      await runOrThrow('ip', ['-n', h.ns, 'addr', 'add', `${h.ip}/24`, 'dev', 'eth0']);
      await runOrThrow('ip', ['-n', h.ns, 'link', 'set', 'eth0', 'up']);
      await runOrThrow('ip', ['-n', h.ns, 'link', 'set', 'lo', 'up']);
    }
    const eps = [];
    for (const [i, h] of hosts.entries()) {
      const net = nets[i];
      if (!net) continue;
      await net.ensureSegment({ tenant: TENANT, cidr: '10.128.0.0/18', block: h.block, vni: 1000, domain: 'carapace.internal', egress: { default: 'allow' }, underlay: h.ip });
      await net.setPeers(TENANT, hosts.filter((o) => o !== h).map((o) => o.ip));
      eps.push(await net.attach({ id: `xw${i}`, tenant: TENANT, kind: 'netns', ports: [] }));
    }
    const [client, server] = eps;
    if (!client?.netnsPath || !server?.netnsPath) throw new Error('no endpoints');
    await runOrThrow('nsenter', [`--net=${server.netnsPath}`, 'sh', '-c', `${tools.tcprtt} -s ${RTT_PORT} >/dev/null 2>&1 & ${tools.iperf3} -s -D -p ${IPERF_PORT}`]);
    await waitForPort(tools, client.netnsPath, server.ip, RTT_PORT, 30_000);
    return await measureFromNamespace(tools, client.netnsPath, server.ip);
  } finally {
    for (const [i, h] of hosts.entries()) {
      const pids = (await run('ip', ['netns', 'pids', netnsName(`xw${i}`)])).stdout.split('\n').filter(Boolean);
      if (pids.length > 0) await run('kill', ['-9', ...pids]);
      await nets[i]?.removeAll().catch((e: unknown) => log(`cleanup of ${h.ns}: ${String(e)}`));
      await run('ip', ['netns', 'del', h.ns]);
    }
    await run('ip', ['link', 'del', under]);
  }
}

/** DNS lookups from inside a namespace to its resolver: p99 in ms, of `n` lookups of `name`. */
async function dnsP99(ns: string, server: string, name: string, n: number): Promise<number> {
  const script = `
    const { Resolver } = require('node:dns').promises;
    const r = new Resolver(); r.setServers([process.argv[1]]);
    (async () => { const t = [];
      for (let i = 0; i < ${n}; i++) { const t0 = process.hrtime.bigint(); await r.resolve4(process.argv[2]); t.push(Number(process.hrtime.bigint() - t0) / 1e6); }
      t.sort((a, b) => a - b); console.log(JSON.stringify({ p50: t[t.length >> 1], p99: t[Math.floor(t.length * 0.99)] })); })();`;
  const out = await runOrThrow('nsenter', [`--net=${ns}`, process.execPath, '-e', script, server, name], { timeoutMs: 120_000 });
  return (JSON.parse(out.stdout) as { p99: number }).p99; // the script's own output line
}

/** A client loop in `ns` against `url` (20 ms apart): samples of when a request started, and what answered. */
function clientLoop(ns: string, url: string): { stop: () => void; samples: { t: number; ok: boolean; body?: string }[] } {
  const script = `
    const http = require('http'); const url = process.argv[1];
    const once = () => { const t = Date.now(); const next = (s) => { console.log(JSON.stringify(s)); setTimeout(once, 20); };
      const req = http.get(url, { timeout: 1000, agent: false }, (r) => { let b = ''; r.on('data', (c) => (b += c)); r.on('end', () => next({ t, ok: true, body: b.trim() })); });
      req.on('timeout', () => req.destroy(new Error('timeout'))); req.on('error', () => next({ t, ok: false })); };
    once();`;
  const samples: { t: number; ok: boolean; body?: string }[] = [];
  const child = spawn('nsenter', [`--net=${ns}`, process.execPath, '-e', script, url], { stdio: ['ignore', 'pipe', 'ignore'] });
  let buf = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (c: string) => {
    buf += c;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      samples.push(JSON.parse(buf.slice(0, nl)) as { t: number; ok: boolean; body?: string }); // one JSON sample per line
      buf = buf.slice(nl + 1);
    }
  });
  return { stop: () => child.kill('SIGKILL'), samples };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-bench-net-'));
  // The all-in-one saves its admin token for the CLI: into this run's directory, not the user's config.
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json');
  const tools = await buildTools(join(dir, 'tools'));
  log(`tools: tcprtt ${RTT_ROUNDS} round trips, iperf3 ${IPERF_SECONDS} s`);

  const rawHost = await rawBridgePair(tools, 'n1');
  show('raw host (two namespaces on a bridge)', rawHost);
  const rawXhost = await rawVxlanPair(tools, 'n1');
  show('raw xhost (a VXLAN between two namespace hosts)', rawXhost);
  const xhost = await dataPlaneXhost(tools, join(dir, 'xhost'));
  show('carapace xhost (the data plane\'s segments on two namespace hosts)', xhost);
  const rawCell = await rawVmPair(tools, 'n1', join(dir, 'rawvms'), pino({ level: 'warn' }));
  show('raw VMs (two QEMU VMs on taps of a bridge)', rawCell);

  const registry = await startRegistry({ dir: join(dir, 'registry') });
  const files = await toolImageFiles(tools);
  const image = (await buildBusyboxImage({ registry: registry.address, repository: 'bench/net', tag: '1', files: { ...files, '/www/index.html': 'x\n' } })).reference;
  const stateDir = join(dir, 'state');
  const aio = await startAllInOne({ stateDir, port: await freePort(), logger: pino({ level: 'warn' }), netPrefix: PREFIX, cellGraceMs: 0, probeTimeScale: 1 });
  const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const r = await fetch(`${aio.url}${path}`, { method, headers: { authorization: `Bearer ${aio.adminToken}`, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : null });
    if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
    return (await r.json()) as T;
  };
  // Each replica answers with its address: a restarted replica (a new container) is told apart.
  const serve = `/usr/local/bin/tcprtt -s ${RTT_PORT} & /usr/local/bin/iperf3 -s -D -p ${IPERF_PORT}; ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1 > /www/index.html; exec httpd -f -p 8080 -h /www`;
  const svc = (name: string, spec: object): object => ({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant: TENANT }, spec: { image, cpu: 1, memory: '256Mi', ports: [{ containerPort: 8080 }, { containerPort: RTT_PORT }, { containerPort: IPERF_PORT }], ...spec } });
  const instance = (name: string): Promise<Instance> => api<Instance>('GET', `/v1/tenants/${TENANT}/instances/${name}`);
  const running = (name: string, ms: number): Promise<Instance> => until(`${name} running`, async () => { const i = await instance(name); return i.status.phase === 'Running' && i.status.address ? i : undefined; }, ms);
  const service = (name: string): Promise<Service> => until(`${name}'s address`, async () => { const s = await api<Service>('GET', `/v1/tenants/${TENANT}/services/${name}`); return s.status.address ? s : undefined; }, 30_000);
  try {
    await api('PUT', `/v1/tenants/${TENANT}`, { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: TENANT } });
    // host: a client container reaches the server through its service address.
    await api('PUT', `/v1/tenants/${TENANT}/services/hsrv`, svc('hsrv', { isolation: 'host', command: ['sh', '-c', serve] }));
    await api('PUT', `/v1/tenants/${TENANT}/services/hcli`, svc('hcli', { isolation: 'host', command: ['sleep', '100000'] }));
    const hsrv = await service('hsrv');
    const hcli = await running('hcli-0', 120_000);
    await running('hsrv-0', 120_000);
    const cliNs = join('/var/run/netns', netnsName(hcli.status.containerId ?? ''));
    await waitForPort(tools, cliNs, hsrv.status.address ?? '', RTT_PORT, 60_000);
    const host = await measureFromNamespace(tools, cliNs, hsrv.status.address ?? '');
    show('carapace host (host-tier client -> service address)', host);
    // The raw pair again, after: the baseline is the mean of the runs before and after, so
    // the order of the measurements (a warmer or busier machine) favours neither side.
    const rawHost2 = await rawBridgePair(tools, 'n2');
    show('raw host, again', rawHost2);
    const rawHostAvg: PathFigures = {
      rttP50Us: (rawHost.rttP50Us + rawHost2.rttP50Us) / 2,
      rttP99Us: (rawHost.rttP99Us + rawHost2.rttP99Us) / 2,
      rttMeanUs: (rawHost.rttMeanUs + rawHost2.rttMeanUs) / 2,
      bitsPerSecond: (rawHost.bitsPerSecond + rawHost2.bitsPerSecond) / 2,
    };

    // DNS from that client: its tenant's resolver, a service's full name.
    const gateway = (await runOrThrow('nsenter', [`--net=${cliNs}`, 'ip', '-4', 'route', 'show', 'default'])).stdout.split(' ')[2] ?? '';
    const dns = await dnsP99(cliNs, gateway, `hsrv.${TENANT}.carapace.internal`, 500);
    log(`dns: p99 ${dns.toFixed(2)} ms (500 lookups)`);

    // Join and leave: a 2-replica service with a readiness probe behind its address.
    const probe = { readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 } };
    await api('PUT', `/v1/tenants/${TENANT}/services/rep`, svc('rep', { isolation: 'host', replicas: 1, cpu: 0.2, memory: '64Mi', command: ['sh', '-c', serve], ...probe }));
    const rep = await service('rep');
    await until('rep-0 ready', async () => ((await instance('rep-0')).status.ready ? true : undefined), 120_000);
    const loop = clientLoop(cliNs, `http://${rep.status.address ?? ''}:8080/`);
    let joinMs = NaN;
    let leaveMs = NaN;
    try {
      await until('answers through the address', async () => (loop.samples.some((s) => s.ok) ? true : undefined), 30_000);
      await api('PUT', `/v1/tenants/${TENANT}/services/rep`, svc('rep', { isolation: 'host', replicas: 2, cpu: 0.2, memory: '64Mi', command: ['sh', '-c', serve], ...probe }));
      const readyAt = await until('rep-1 ready', async () => ((await instance('rep-1').catch(() => undefined))?.status.ready ? Date.now() : undefined), 120_000);
      const rep1 = (await instance('rep-1')).status.address;
      const joinedAt = await until('rep-1 answering', async () => loop.samples.find((s) => s.ok && s.body === rep1 && s.t >= readyAt - 1_000)?.t, 30_000);
      joinMs = Math.max(0, joinedAt - readyAt);
      log(`join: rep-1 answered ${joinMs} ms after it was reported ready (status polled every 50 ms)`);
      const victim = await instance('rep-1');
      const killedAt = Date.now();
      process.kill(victim.status.pid ?? 0, 'SIGKILL');
      await until('the loop ran on', async () => (loop.samples.some((s) => s.t > killedAt + 5_000) ? true : undefined), 30_000);
      // Failures, or answers from the killed container's address (its restart gets another).
      const bad = loop.samples.filter((s) => s.t >= killedAt && (!s.ok || s.body === rep1));
      leaveMs = bad.length > 0 ? Math.max(0, (bad[bad.length - 1]?.t ?? killedAt) - killedAt) : 0;
      log(`leave: the last request that reached the killed replica (or failed) started ${leaveMs} ms after the kill`);
    } finally {
      loop.stop();
    }

    // cell: two cells of the tenant (two groups); the client cell measures and prints.
    await api('PUT', `/v1/tenants/${TENANT}/services/csrv`, svc('csrv', { isolation: 'cell', group: 'a', command: ['sh', '-c', serve] }));
    const csrv = await service('csrv');
    const measure = [
      `until /usr/local/bin/tcprtt -c ${csrv.status.address ?? ''} ${RTT_PORT} 1 >/dev/null 2>&1; do sleep 0.5; done`,
      `echo "RTT $(/usr/local/bin/tcprtt -c ${csrv.status.address ?? ''} ${RTT_PORT} ${RTT_ROUNDS})"`,
      `echo "IPERF $(/usr/local/bin/iperf3 -c ${csrv.status.address ?? ''} -p ${IPERF_PORT} -t ${IPERF_SECONDS} -J | tr -d '\\n')"`,
      'exec sleep 100000',
    ].join('; ');
    await api('PUT', `/v1/tenants/${TENANT}/services/ccli`, svc('ccli', { isolation: 'cell', group: 'b', command: ['sh', '-c', measure] }));
    const text = await until('the cell client\'s figures', async () => {
      const r = await fetch(`${aio.url}/v1/tenants/${TENANT}/instances/ccli-0/logs`, { headers: { authorization: `Bearer ${aio.adminToken}` } });
      const t = r.status === 200 ? await r.text() : '';
      return t.includes('IPERF ') ? t : undefined;
    }, 900_000);
    const lines = text.split('\n').map((l) => { try { return (JSON.parse(l) as { text: string }).text; } catch { return ''; } });
    const rtt = JSON.parse(lines.find((l) => l.startsWith('RTT '))?.slice(4) ?? '{}') as { p50_us: number; p99_us: number; mean_us: number };
    const ip = JSON.parse(lines.find((l) => l.startsWith('IPERF '))?.slice(6) ?? '{}') as { end?: { sum_received?: { bits_per_second?: number } } };
    const cell: PathFigures = { rttP50Us: rtt.p50_us, rttP99Us: rtt.p99_us, rttMeanUs: rtt.mean_us, bitsPerSecond: ip.end?.sum_received?.bits_per_second ?? 0 };
    show('carapace cell (cell -> another cell\'s service address)', cell);

    const ratio = (a: number, b: number): number => round(a / b);
    log(`p99 ratios: host ${ratio(host.rttP99Us, rawHostAvg.rttP99Us)}, xhost ${ratio(xhost.rttP99Us, rawXhost.rttP99Us)} (cells: mean only, see rttMeanUs)`);
    console.log(JSON.stringify({
      bench: 'net',
      host_rtt_ratio: ratio(host.rttP50Us, rawHostAvg.rttP50Us),
      host_tput_ratio: ratio(host.bitsPerSecond, rawHostAvg.bitsPerSecond),
      cell_rtt_ratio: ratio(cell.rttMeanUs, rawCell.rttMeanUs),
      cell_tput_ratio: ratio(cell.bitsPerSecond, rawCell.bitsPerSecond),
      xhost_rtt_ratio: ratio(xhost.rttP50Us, rawXhost.rttP50Us),
      xhost_tput_ratio: ratio(xhost.bitsPerSecond, rawXhost.bitsPerSecond),
      dns_p99_ms: round(dns, 2),
      join_after_ready_ms: joinMs,
      leave_after_death_ms: leaveMs,
    }));
  } finally {
    for (const s of ['hsrv', 'hcli', 'rep', 'csrv', 'ccli']) await api('DELETE', `/v1/tenants/${TENANT}/services/${s}`).catch(() => undefined);
    await until('instances gone', async () => ((await api<{ items: Instance[] }>('GET', `/v1/tenants/${TENANT}/instances`)).items.length === 0 ? true : undefined), 120_000).catch(() => log('instances left behind'));
    await aio.stop();
    for (const vm of aio.vms.recover()) await aio.vms.destroy(vm.id, 0);
    await createTenantNetworking({ stateDir: join(stateDir, 'network'), logger: pino({ level: 'warn' }), prefix: PREFIX }).removeAll();
    await registry.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
