/**
 * Security probes from inside real containers of each isolation tier, placed by a real
 * `carapace up`: `host` (runc), `sandbox` (gVisor) and `cell` (runc inside the tenant's VM).
 * Tenant `beta` runs a web server with a secret file per host-run tier; tenant `alpha` runs
 * one probe per tier that reports, and the test checks:
 *
 * - capabilities (Podman's 11, nothing ambient or inheritable), no_new_privs, seccomp filter
 *   mode (for gVisor: the sandbox process on the host, since the sentry emulates the rest);
 * - masked and read-only paths: /proc/kcore, sched_debug, timer_list, keys, acpi, scsi,
 *   /sys/firmware empty or absent, /proc/sysrq-trigger not writable;
 * - cgroup limits equal to the spec (cpu quota, memory, pids);
 * - it sees only its own processes, not the host's nor another tenant's;
 * - it sees neither a file on the host nor another tenant's files;
 * - it cannot open a TCP connection to another tenant's containers, nor to the host's services
 *   on any host address (the API, listening on every address here; the registry; through its
 *   gateway, the host's own address and loopback); it can connect to its own listener (the
 *   control that the probe can connect at all) and, from every tier, to a published port
 *   (public by design);
 * - its own service's name resolves (the tenant's DNS works), another tenant's does not, and
 *   another tenant's DNS server does not answer it.
 *
 * Connections are tried with busybox `nc` (exit 0 once connected): busybox-static's `wget`
 * crashes (SIGSEGV in glibc's static resolver) in an image without NSS libraries, which would
 * make every "cannot reach" pass for the wrong reason.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Instance } from '../../src/model/objects.js';
import { containerIdFor } from '../../src/agent/container-id.js';
import { tcpSocketCheck } from '../../src/runtime/probe-check.js';
import { destroyAll, freePort, Server, tempDir } from '../e2e/helpers.js';
import { call, quiet, sleep, type Log } from './harness.js';

export type Tier = 'host' | 'sandbox' | 'cell';
export const TIERS: readonly Tier[] = ['host', 'sandbox', 'cell'];

export interface ProbeOptions {
  tiers?: readonly Tier[];
  log?: Log;
}

export interface TierReport {
  tier: Tier;
  /** What the probe printed, parsed. */
  facts: Record<string, string>;
  /** Checks that failed (empty when the tier is as claimed). */
  failures: string[];
  /** Checks made. */
  checks: number;
}

export interface ProbeResult {
  tiers: TierReport[];
  failures: number;
  checks: number;
}

/** CapEff of exactly Podman's 11 default capabilities (as in test/runtime). */
const CAP_MASK_11 = '00000000800405fb';
const MEMORY_MIB = 48;
const PIDS = 64;
const CPU = 0.25;

/** The probe: one `key value` fact per line, between BEGIN and END. */
const PROBE = `
echo BEGIN
grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t' | sed 's/:/ /'
for p in /proc/kcore /proc/sched_debug /proc/timer_list /proc/keys /proc/latency_stats /proc/timer_stats /proc/acpi /proc/scsi /sys/firmware; do
  if [ -d $p ]; then echo "masked$p $(ls -A $p 2>/dev/null | wc -l)"; elif [ -e $p ]; then echo "masked$p $(head -c 4096 $p 2>/dev/null | wc -c)"; else echo "masked$p 0"; fi
done
(echo x > /proc/sysrq-trigger) 2>/dev/null && echo "sysrq writable" || echo "sysrq refused"
for f in memory/memory.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us memory.max pids.max cpu.max; do [ -r /sys/fs/cgroup/$f ] && echo "cgroup/$f $(cat /sys/fs/cgroup/$f | tr ' ' '/')"; done
echo "procs $(for d in /proc/[0-9]*; do cat $d/comm 2>/dev/null; done | sort | uniq | tr '\\n' ',')"
echo "pid1 $(cat /proc/1/comm)"
[ -e "$HOST_MARKER" ] && echo "hostfile visible" || echo "hostfile hidden"
echo "foreignfiles $(find / -xdev -name 'beta-secret-*' 2>/dev/null | wc -l)"
nc -l -p 9999 >/dev/null 2>&1 &
sleep 1
GW=$(ip route | awk '/^default/ {print $3}')
echo "gateway $GW"
for t in $TARGETS; do a=\${t%:*}; [ "$a" = GW ] && a=$GW; nc -w 4 $a \${t#*:} </dev/null >/dev/null 2>&1 && echo "reach/$t yes" || echo "reach/$t no"; done
for n in $NAMES; do case $n in *@*) q="\${n%@*} \${n#*@}";; *) q=$n;; esac; nslookup $q >/dev/null 2>&1 && echo "dns/$n yes" || echo "dns/$n no"; done
echo END
`;

/** Beta's web server: prints its address, keeps a secret file, serves on 8080. */
const TARGET = `
echo "beta-secret" > /tmp/beta-secret-$(hostname)
mkdir -p /www && echo secret > /www/index.html
echo "ADDR $(ip -4 -o addr show eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)"
exec httpd -f -p 8080 -h /www
`;

function parseFacts(text: string): Record<string, string> | undefined {
  const lines = text.split('\n');
  const b = lines.indexOf('BEGIN');
  const e = lines.indexOf('END');
  if (b === -1 || e === -1) return undefined;
  const facts: Record<string, string> = {};
  for (const l of lines.slice(b + 1, e)) {
    const i = l.indexOf(' ');
    if (i > 0) facts[l.slice(0, i)] = l.slice(i + 1).trim();
  }
  return facts;
}

/** Runs the probes of the given tiers and checks them. */
export async function runProbes(o: ProbeOptions = {}): Promise<ProbeResult> {
  const log = o.log ?? quiet;
  const tiers = o.tiers ?? TIERS;
  const tmp = await tempDir('carapace-probes-');
  const stateDir = join(tmp.dir, 'up');
  const prefix = 'cr3';
  let registry: RunningRegistry | undefined;
  let server: Server | undefined;
  const marker = `/tmp/carapace-probe-host-${randomBytes(6).toString('hex')}`;
  try {
    await writeFile(marker, 'the host\n');
    registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
    const image = (await buildBusyboxImage({ registry: registry.address, repository: 'probes/busybox', tag: '1' })).reference;
    server = new Server(stateDir, await freePort(), ['--net-prefix', prefix, '--listen', '0.0.0.0', '--accel', 'tcg'], { CARAPACE_LOG_LEVEL: 'warn' }, 'up');
    await server.start();
    const srv = server;
    const token = readFileSync(join(stateDir, 'admin-token'), 'utf8').trim();
    const api = (method: string, path: string, body?: unknown) => call(srv.url, token, method, path, body, 30_000);
    const apply = async (tenant: string, name: string, spec: object): Promise<void> => {
      const r = await api('PUT', `/v1/tenants/${tenant}/services/${name}`, { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant }, spec: { image, ...spec } });
      if (r.status >= 300) throw new Error(`apply ${tenant}/${name}: ${r.status} ${JSON.stringify(r.json)}`);
    };
    const logsOf = async (tenant: string, name: string): Promise<string> => {
      const r = await api('GET', `/v1/tenants/${tenant}/instances/${name}-0/logs`);
      if (r.status !== 200) return '';
      const text = typeof r.json === 'string' ? r.json : JSON.stringify(r.json);
      return text
        .split('\n')
        .filter(Boolean)
        .map((l) => {
          try {
            return (JSON.parse(l) as { text: string }).text;
          } catch {
            return '';
          }
        })
        .join('\n');
    };
    const waitFor = async <T>(what: string, f: () => Promise<T | undefined>, ms: number): Promise<T> => {
      const deadline = Date.now() + ms;
      for (;;) {
        const v = await f().catch(() => undefined);
        if (v !== undefined) return v;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n--- server log ---\n${srv.log.slice(-3000)}`);
        await sleep(500);
      }
    };
    for (const t of ['alpha', 'beta']) await api('PUT', `/v1/tenants/${t}`, { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: t } });

    // Beta's targets on the host-run tiers; their addresses come from their own output.
    const targets: string[] = [];
    const betaAddrs: string[] = [];
    // Beta publishes its host target's port: published ports are public by design, so every
    // probe must reach it (the control that shows the probe's network works at all).
    const published = await freePort();
    for (const tier of ['host', 'sandbox'] as const) {
      await apply('beta', `target-${tier}`, { isolation: tier, command: ['sh', '-c', TARGET], ...(tier === 'host' ? { ports: [{ containerPort: 8080, hostPort: published }] } : {}) });
    }
    for (const tier of ['host', 'sandbox'] as const) {
      const addr = await waitFor(`beta's ${tier} target`, async () => /ADDR (\d+\.\d+\.\d+\.\d+)/.exec(await logsOf('beta', `target-${tier}`))?.[1], 120_000);
      targets.push(`${addr}:8080`);
      betaAddrs.push(addr);
    }
    // Beta's DNS server: its segment's gateway, the first address of its block (a /24).
    const betaDns = `${betaAddrs[0]?.split('.').slice(0, 3).join('.') ?? ''}.1`;
    // A host address that is not loopback (the API listens on every address here).
    const hostIp = Object.values(networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal)?.address ?? '127.0.0.1';
    log(`probes: beta serves on ${targets.join(', ')}`);
    // The published port is the control that the probes' network works at all: wait until the
    // agent has programmed it (it answers from the host) so a "no" can only mean the probe's side.
    await waitFor(`beta's published port ${published}`, async () => ((await tcpSocketCheck('127.0.0.1', published, 2_000)).ok ? true : undefined), 60_000);
    const apiPort = new URL(srv.url).port;

    const reports: TierReport[] = [];
    for (const tier of tiers) {
      // Every tier reaches the host through its segment's gateway (GW, read by the probe).
      const hostAddr = 'GW';
      const tierTargets = ['127.0.0.1:9999', ...targets, `${hostAddr}:${apiPort}`, `${hostAddr}:${registry.port}`, `${hostAddr}:${published}`, `${hostIp}:${apiPort}`, `${hostIp}:22`];
      // Its own service by short and full name (the control), another tenant's by its full
      // name from its own resolver, and (name@server) another tenant's resolver asked directly.
      const names = [`probe-${tier}`, `probe-${tier}.alpha.carapace.internal`, 'target-host.beta.carapace.internal', `target-host@${betaDns}`, `target-host.beta.carapace.internal@${betaDns}`];
      await apply('alpha', `probe-${tier}`, {
        isolation: tier,
        cpu: CPU,
        memory: `${MEMORY_MIB}Mi`,
        pids: PIDS,
        env: { HOST_MARKER: marker, TARGETS: tierTargets.join(' '), NAMES: names.join(' ') },
        command: ['sh', '-c', `${PROBE}\nexec sleep 3600`],
      });
      let seen = '';
      const facts = await waitFor(`the ${tier} probe (its output so far: ${JSON.stringify(seen.slice(-2000))})`, async () => parseFacts((seen = await logsOf('alpha', `probe-${tier}`))), tier === 'cell' ? 400_000 : 120_000).catch(async (e: unknown) => {
        const inst = (await api('GET', `/v1/tenants/alpha/instances/probe-${tier}-0`)).json as Instance;
        throw new Error(`${(e as Error).message.split('\n')[0] ?? ''}; output: ${JSON.stringify(seen.slice(-2000))}; instance: ${JSON.stringify(inst.status)}`, { cause: e });
      });
      const inst = (await api('GET', `/v1/tenants/alpha/instances/probe-${tier}-0`)).json as Instance;
      const report = check(tier, facts, tierTargets, targets, `${hostAddr}:${apiPort}`, `${hostAddr}:${registry.port}`, `${hostAddr}:${published}`);
      checkNames(report, facts, tier, betaDns);
      if (tier === 'sandbox') checkSandboxHost(report, containerIdFor(inst));
      log(`probes: ${tier}: ${report.checks} checks, ${report.failures.length} failed${report.failures.length ? `: ${report.failures.join('; ')}` : ''}`);
      reports.push(report);
    }
    return { tiers: reports, failures: reports.reduce((a, r) => a + r.failures.length, 0), checks: reports.reduce((a, r) => a + r.checks, 0) };
  } finally {
    await server?.stop();
    await destroyAll(stateDir, { prefix });
    await registry?.stop();
    await rm(marker, { force: true });
    await tmp.cleanup();
  }
}

/** The checks on one tier's facts. */
function check(tier: Tier, f: Record<string, string>, targets: string[], foreign: string[], apiAddr: string, registryAddr: string, publicAddr: string): TierReport {
  const failures: string[] = [];
  let checks = 0;
  const expect = (what: string, ok: boolean, got: unknown): void => {
    checks++;
    if (!ok) failures.push(`${what} (got ${JSON.stringify(got)})`);
  };
  // Capabilities, no_new_privs, seccomp: inside the container for runc (host and cell).
  // gVisor reports its own emulated view; what protects the host there is checked on the sandbox process.
  expect('CapEff is Podman\'s 11 capabilities', f['CapEff'] === CAP_MASK_11, f['CapEff']);
  expect('CapBnd is Podman\'s 11 capabilities', f['CapBnd'] === CAP_MASK_11, f['CapBnd']);
  // gVisor has no ambient capabilities at all (its status has no CapAmb line).
  expect('no inheritable or ambient capabilities', f['CapInh'] === '0000000000000000' && (f['CapAmb'] === '0000000000000000' || (tier === 'sandbox' && f['CapAmb'] === undefined)), [f['CapInh'], f['CapAmb']]);
  if (tier !== 'sandbox') {
    expect('no_new_privs is set', f['NoNewPrivs'] === '1', f['NoNewPrivs']);
    expect('a seccomp filter is loaded', f['Seccomp'] === '2', f['Seccomp']);
  }
  for (const p of ['/proc/kcore', '/proc/sched_debug', '/proc/timer_list', '/proc/keys', '/proc/latency_stats', '/proc/timer_stats', '/proc/acpi', '/proc/scsi', '/sys/firmware']) {
    expect(`${p} is masked`, f[`masked${p}`] === '0', f[`masked${p}`]);
  }
  expect('/proc/sysrq-trigger is not writable', f['sysrq'] === 'refused', f['sysrq']);
  // cgroup limits as asked: v1 files on this host, v2 inside a cell's guest. gVisor keeps the
  // limits on the sandbox's host cgroup and shows its own view inside.
  if (tier === 'host') {
    expect('memory limit', f['cgroup/memory/memory.limit_in_bytes'] === String(MEMORY_MIB * 1024 * 1024), f['cgroup/memory/memory.limit_in_bytes']);
    expect('pids limit', f['cgroup/pids/pids.max'] === String(PIDS), f['cgroup/pids/pids.max']);
    expect('cpu quota', f['cgroup/cpu/cpu.cfs_quota_us'] === String(CPU * 100_000), f['cgroup/cpu/cpu.cfs_quota_us']);
  }
  if (tier === 'cell') {
    expect('memory limit', f['cgroup/memory.max'] === String(MEMORY_MIB * 1024 * 1024), f['cgroup/memory.max']);
    expect('pids limit', f['cgroup/pids.max'] === String(PIDS), f['cgroup/pids.max']);
    expect('cpu quota', f['cgroup/cpu.max'] === `${CPU * 100_000}/100000`, f['cgroup/cpu.max']);
  }
  // Only its own processes: the probe's shell and its tools, with itself as pid 1.
  const procs = (f['procs'] ?? '').split(',').filter(Boolean);
  const own = new Set(['sh', 'cat', 'sort', 'uniq', 'tr', 'ls', 'grep', 'sleep', 'find', 'nc', 'head', 'wc', 'sed', 'awk', 'cut']); // nc: its own listener
  expect('sees only its own processes', procs.length > 0 && procs.every((p) => own.has(p)), procs);
  expect('its shell is pid 1', f['pid1'] === 'sh', f['pid1']);
  expect('cannot see a file on the host', f['hostfile'] === 'hidden', f['hostfile']);
  expect("cannot see another tenant's files", f['foreignfiles'] === '0', f['foreignfiles']);
  for (const t of targets) {
    if (t === '127.0.0.1:9999') {
      expect('reaches its own listener on localhost (the probe can connect at all)', f[`reach/${t}`] === 'yes', f[`reach/${t}`]);
      continue;
    }
    if (t === publicAddr) {
      // Published ports are public by design: reached through the segment's gateway from every tier.
      expect(`reaches another tenant's published port at ${t} (public by design: the route out works)`, f[`reach/${t}`] === 'yes', f[`reach/${t}`]);
      continue;
    }
    const what = foreign.includes(t) ? `cannot reach another tenant's container at ${t}` : t === apiAddr ? `cannot reach the control plane's API through its gateway at ${t}` : t === registryAddr ? `cannot reach the host's registry through its gateway at ${t}` : `cannot reach the host's service at ${t}`;
    expect(what, f[`reach/${t}`] === 'no', f[`reach/${t}`]);
  }
  return { tier, facts: f, failures, checks };
}

/** DNS: its own names resolve, another tenant's do not, another tenant's server does not answer. */
function checkNames(report: TierReport, f: Record<string, string>, tier: Tier, betaDns: string): void {
  const expect = (what: string, ok: boolean, got: unknown): void => {
    report.checks++;
    if (!ok) report.failures.push(`${what} (got ${JSON.stringify(got)})`);
  };
  const own = [`probe-${tier}`, `probe-${tier}.alpha.carapace.internal`];
  for (const n of own) expect(`resolves its own service's name ${n}`, f[`dns/${n}`] === 'yes', f[`dns/${n}`]);
  expect("cannot resolve another tenant's service by its full name", f['dns/target-host.beta.carapace.internal'] === 'no', f['dns/target-host.beta.carapace.internal']);
  for (const n of [`target-host@${betaDns}`, `target-host.beta.carapace.internal@${betaDns}`]) {
    expect(`another tenant's DNS server at ${betaDns} does not answer (${n})`, f[`dns/${n}`] === 'no', f[`dns/${n}`]);
  }
}

/**
 * gVisor: the host-side sandbox process (runsc-sandbox, the sentry) runs under a seccomp
 * filter with no_new_privs and without the capabilities a root process would have.
 */
function checkSandboxHost(report: TierReport, containerId: string): void {
  const expect = (what: string, ok: boolean, got: unknown): void => {
    report.checks++;
    if (!ok) report.failures.push(`${what} (got ${JSON.stringify(got)})`);
  };
  const sentries: { pid: string; status: string }[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmdline.includes(containerId) && cmdline.includes('boot')) sentries.push({ pid, status: readFileSync(`/proc/${pid}/status`, 'utf8') });
    } catch {
      // gone meanwhile
    }
  }
  expect("the sandbox's sentry process is found on the host", sentries.length > 0, sentries.length);
  // Its limits are on its host cgroup (the pids limit with the sandbox's own headroom).
  const cg = (f: string): string | undefined => {
    try {
      return readFileSync(`/sys/fs/cgroup/${f.split('/')[0] ?? ''}/carapace/${containerId}/${f.split('/')[1] ?? ''}`, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  expect('sandbox memory limit', cg('memory/memory.limit_in_bytes') === String(MEMORY_MIB * 1024 * 1024), cg('memory/memory.limit_in_bytes'));
  expect('sandbox cpu quota', cg('cpu/cpu.cfs_quota_us') === String(CPU * 100_000), cg('cpu/cpu.cfs_quota_us'));
  expect('sandbox pids limit (the spec plus the sandbox\'s own 128)', cg('pids/pids.max') === String(PIDS + 128), cg('pids/pids.max'));
  for (const s of sentries) {
    const field = (k: string): string | undefined => new RegExp(`^${k}:\\s*(\\S+)`, 'm').exec(s.status)?.[1];
    expect(`sentry ${s.pid} runs under a seccomp filter`, field('Seccomp') === '2', field('Seccomp'));
    expect(`sentry ${s.pid} has no_new_privs`, field('NoNewPrivs') === '1', field('NoNewPrivs'));
  }
}
