/**
 * The raw baselines of `npm run bench -- net`, built by the bench itself with the same kernel
 * objects Carapace uses and no Carapace: two network namespaces on a plain bridge; two QEMU
 * VMs (the cells' kernel, initramfs and flags) on taps of a plain bridge; two namespace
 * "hosts" joined by a VXLAN. And the tools measured with, the same on both sides: a static
 * TCP round-trip tool compiled here (`tcprtt`) and Debian's iperf3.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { run, runOrThrow } from '../src/proc/run.js';
import { createVmManager } from '../src/vm/qemu.js';

/** One round of measurements between a client and a server. */
export interface PathFigures {
  rttP50Us: number;
  rttP99Us: number;
  /**
   * Mean round trip over the whole run: what a VM under software emulation can measure (its
   * clock advances in 4 ms ticks there, so its per-round-trip p50/p99 are 0 or 4000 us).
   */
  rttMeanUs: number;
  /** iperf3 receiver throughput, bits per second. */
  bitsPerSecond: number;
}

/** Round trips per measurement and iperf3 seconds: enough for a stable p99 on 2 cores. */
export const RTT_ROUNDS = 4000;
export const IPERF_SECONDS = 5;
/** Ports the servers listen on, inside every workload. */
export const RTT_PORT = 7000;
export const IPERF_PORT = 5201;

const TCPRTT_C = String.raw`
/* tcprtt: 1-byte TCP round trips. server: tcprtt -s PORT ; client: tcprtt -c ADDRESS PORT N -> JSON p50/p99 (microseconds) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
  int one = 1;
  if (argc == 3 && strcmp(argv[1], "-s") == 0) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[2])); a.sin_addr.s_addr = INADDR_ANY;
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) { perror("listen"); return 1; }
    for (;;) {
      int c = accept(s, 0, 0); if (c < 0) continue;
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (fork() == 0) { char b; while (read(c, &b, 1) == 1) if (write(c, &b, 1) != 1) break; _exit(0); }
      close(c);
    }
  }
  if (argc == 5 && strcmp(argv[1], "-c") == 0) {
    int n = atoi(argv[4]);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) { fprintf(stderr, "not an IPv4 address: %s\n", argv[2]); return 2; }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double *t = malloc(sizeof(double) * n); char b = 'x';
    struct timespec s0, s1; clock_gettime(CLOCK_MONOTONIC, &s0);
    for (int i = 0; i < n; i++) {
      struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
      if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1) { perror("io"); return 1; }
      clock_gettime(CLOCK_MONOTONIC, &t1);
      t[i] = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
    }
    clock_gettime(CLOCK_MONOTONIC, &s1);
    double total = (s1.tv_sec - s0.tv_sec) * 1e6 + (s1.tv_nsec - s0.tv_nsec) / 1e3;
    qsort(t, n, sizeof(double), cmp);
    printf("{\"n\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f}\n", n, t[n / 2], t[(int)(n * 0.99)], total / n);
    return 0;
  }
  fprintf(stderr, "usage: tcprtt -s PORT | tcprtt -c ADDRESS PORT N\n");
  return 2;
}
`;

/** The measuring tools, in `dir/bin` (and iperf3's libraries in `dir/lib`, for images without them). */
export interface Tools {
  dir: string;
  tcprtt: string;
  iperf3: string;
  /** Every file a workload needs to run both, by absolute path inside it -> host path. */
  files: Record<string, string>;
}

/** Compiles tcprtt (static) and gathers iperf3 with its shared libraries (from `ldd`). */
export async function buildTools(dir: string): Promise<Tools> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await writeFile(join(dir, 'tcprtt.c'), TCPRTT_C);
  const tcprtt = join(dir, 'bin', 'tcprtt');
  await runOrThrow('gcc', ['-O2', '-static', '-o', tcprtt, join(dir, 'tcprtt.c')], { timeoutMs: 120_000 });
  const iperf3 = '/usr/bin/iperf3';
  const files: Record<string, string> = { '/usr/local/bin/tcprtt': tcprtt, '/usr/local/bin/iperf3': iperf3 };
  for (const line of (await runOrThrow('ldd', [iperf3])).stdout.split('\n')) {
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (m?.[1]) files[m[1]] = m[1];
  }
  return { dir, tcprtt, iperf3, files };
}

function figures(rttJson: string, iperfJson: string): PathFigures {
  const rtt = JSON.parse(rttJson) as { p50_us: number; p99_us: number; mean_us: number }; // tcprtt's own output line
  const ip = JSON.parse(iperfJson) as { end?: { sum_received?: { bits_per_second?: number } }; error?: string }; // iperf3 -J output
  if (ip.error) throw new Error(`iperf3: ${ip.error}`);
  return { rttP50Us: rtt.p50_us, rttP99Us: rtt.p99_us, rttMeanUs: rtt.mean_us, bitsPerSecond: ip.end?.sum_received?.bits_per_second ?? 0 };
}

/**
 * Measures from inside network namespace `clientNs` (or the host, undefined) to `address`,
 * where tcprtt and iperf3 servers listen: `RTT_ROUNDS` round trips, then `IPERF_SECONDS` of iperf3.
 */
export async function measureFromNamespace(tools: Tools, clientNs: string | undefined, address: string): Promise<PathFigures> {
  const inNs = (cmd: string[]): [string, string[]] => (clientNs ? ['nsenter', [`--net=${clientNs}`, ...cmd]] : [cmd[0] ?? '', cmd.slice(1)]);
  const [f1, a1] = inNs([tools.tcprtt, '-c', address, String(RTT_PORT), String(RTT_ROUNDS)]);
  const rtt = await runOrThrow(f1, a1, { timeoutMs: 120_000 });
  const [f2, a2] = inNs([tools.iperf3, '-c', address, '-p', String(IPERF_PORT), '-t', String(IPERF_SECONDS), '-J']);
  const ip = await run(f2, a2, { timeoutMs: 120_000 });
  return figures(rtt.stdout.trim(), ip.stdout);
}

/** Starts the two servers inside network namespace `ns` (detached; killed with the namespace's processes). */
async function serveInNamespace(tools: Tools, ns: string): Promise<void> {
  await runOrThrow('ip', ['netns', 'exec', ns, 'sh', '-c', `${tools.tcprtt} -s ${RTT_PORT} >/dev/null 2>&1 & ${tools.iperf3} -s -D -p ${IPERF_PORT}`]);
}

async function killNamespace(ns: string): Promise<void> {
  const pids = (await run('ip', ['netns', 'pids', ns])).stdout.split('\n').filter(Boolean);
  if (pids.length > 0) await run('kill', ['-9', ...pids]);
  await run('ip', ['netns', 'del', ns]);
}

/** (raw host) Two namespaces with veths on a plain bridge, addresses on one /24. */
export async function rawBridgePair(tools: Tools, tag: string): Promise<PathFigures> {
  const br = `rb${tag}`;
  const [a, b] = [`rawa-${tag}`, `rawb-${tag}`];
  try {
    await runOrThrow('ip', ['link', 'add', br, 'type', 'bridge']);
    await runOrThrow('ip', ['link', 'set', br, 'up']);
    for (const [ns, ip, i] of [[a, '10.250.7.2', 'a'], [b, '10.250.7.3', 'b']] as const) {
      await runOrThrow('ip', ['netns', 'add', ns]);
      await runOrThrow('ip', ['link', 'add', `rv${i}${tag}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await runOrThrow('ip', ['link', 'set', `rv${i}${tag}`, 'master', br, 'up']);
      await runOrThrow('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
      await runOrThrow('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      await runOrThrow('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    await serveInNamespace(tools, b);
    await waitForPort(tools, `/var/run/netns/${a}`, '10.250.7.3', RTT_PORT);
    return await measureFromNamespace(tools, `/var/run/netns/${a}`, '10.250.7.3');
  } finally {
    for (const ns of [a, b]) await killNamespace(ns).catch(() => undefined);
    await run('ip', ['link', 'del', br]);
  }
}

/**
 * (raw cross-host) Two namespace "hosts" on an underlay bridge, each with a bridge holding a
 * VXLAN (VNI 4242) and a workload namespace; the workloads talk across the VXLAN.
 */
export async function rawVxlanPair(tools: Tools, tag: string): Promise<PathFigures> {
  const under = `ru${tag}`;
  const hosts = [
    { h: `rxh1-${tag}`, w: `rxw1-${tag}`, uip: '10.251.7.11', wip: '10.252.7.2', i: '1' },
    { h: `rxh2-${tag}`, w: `rxw2-${tag}`, uip: '10.251.7.12', wip: '10.252.7.3', i: '2' },
  ];
  try {
    await runOrThrow('ip', ['link', 'add', under, 'type', 'bridge']);
    await runOrThrow('ip', ['link', 'set', under, 'up']);
    for (const x of hosts) {
      const peer = hosts.find((y) => y !== x)?.uip ?? '';
      await runOrThrow('ip', ['netns', 'add', x.h]);
      await runOrThrow('ip', ['netns', 'add', x.w]);
      await runOrThrow('ip', ['link', 'add', `ru${x.i}${tag}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', x.h]);
      await runOrThrow('ip', ['link', 'set', `ru${x.i}${tag}`, 'master', under, 'up']);
      const inH = (...args: string[]): Promise<unknown> => runOrThrow('ip', ['-n', x.h, ...args]);
      await inH('addr', 'add', `${x.uip}/24`, 'dev', 'eth0');
      await inH('link', 'set', 'eth0', 'up');
      await inH('link', 'set', 'lo', 'up');
      await inH('link', 'add', 'br0', 'type', 'bridge');
      await inH('link', 'add', 'vx0', 'type', 'vxlan', 'id', '4242', 'local', x.uip, 'dstport', '4789', 'nolearning');
      await inH('link', 'set', 'vx0', 'mtu', '1450', 'master', 'br0', 'up');
      await runOrThrow('ip', ['netns', 'exec', x.h, 'bridge', 'fdb', 'append', '00:00:00:00:00:00', 'dev', 'vx0', 'dst', peer]);
      await inH('link', 'set', 'br0', 'up');
      await inH('link', 'add', 'wv', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', x.w);
      await inH('link', 'set', 'wv', 'mtu', '1450', 'master', 'br0', 'up');
      await runOrThrow('ip', ['-n', x.w, 'addr', 'add', `${x.wip}/24`, 'dev', 'eth0']);
      await runOrThrow('ip', ['-n', x.w, 'link', 'set', 'eth0', 'mtu', '1450', 'up']);
      await runOrThrow('ip', ['-n', x.w, 'link', 'set', 'lo', 'up']);
    }
    const [c, s] = hosts as [(typeof hosts)[number], (typeof hosts)[number]];
    await serveInNamespace(tools, s.w);
    await waitForPort(tools, `/var/run/netns/${c.w}`, s.wip, RTT_PORT);
    return await measureFromNamespace(tools, `/var/run/netns/${c.w}`, s.wip);
  } finally {
    for (const x of hosts) {
      await killNamespace(x.w).catch(() => undefined);
      await killNamespace(x.h).catch(() => undefined);
    }
    await run('ip', ['link', 'del', under]);
  }
}

/** Waits until a TCP connect from inside `ns` to address:port succeeds (servers start asynchronously). */
export async function waitForPort(tools: Tools, ns: string | undefined, address: string, port: number, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // One round trip with the tool itself (Debian's busybox nc has no -z).
    const args = [tools.tcprtt, '-c', address, String(port), '1'];
    const r = ns ? await run('nsenter', [`--net=${ns}`, ...args]) : await run(args[0] ?? '', args.slice(1));
    if (r.code === 0) return;
    if (Date.now() > deadline) throw new Error(`nothing answers on ${address}:${port} from ${ns ?? 'the host'}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

/**
 * (raw VMs) Two QEMU VMs with the cells' kernel, initramfs and flags, each on a tap of a plain
 * bridge with a static address on the kernel command line; the client VM measures the server
 * VM with the same tools (shared read-only over 9p; iperf3 and its libraries come with /usr) and
 * prints the figures on its console.
 */
export async function rawVmPair(tools: Tools, tag: string, stateDir: string, logger: Logger): Promise<PathFigures> {
  const br = `rq${tag}`;
  const taps = [`rqa${tag}`, `rqb${tag}`];
  const vms = createVmManager({ stateDir, logger, accel: 'auto' });
  const toolsShare = { tag: 'tools', path: join(tools.dir, 'bin'), readonly: true, mountPoint: '/tools' };
  const usr = { tag: 'usr', path: '/usr', readonly: true, mountPoint: '/usr' };
  try {
    await runOrThrow('ip', ['link', 'add', br, 'type', 'bridge']);
    await runOrThrow('ip', ['addr', 'add', '10.253.7.1/24', 'dev', br]);
    await runOrThrow('ip', ['link', 'set', br, 'up']);
    for (const t of taps) {
      await runOrThrow('ip', ['tuntap', 'add', 'dev', t, 'mode', 'tap']);
      await runOrThrow('ip', ['link', 'set', t, 'master', br, 'up']);
    }
    const common = { cpus: 2, memoryMiB: 1024, channel: false, labels: {}, ports: [] as never[], shares: [usr, toolsShare] };
    await vms.launch({
      ...common,
      id: `rawsrv-${tag}`,
      nic: { tap: taps[1] ?? '', mac: '02:00:0a:fd:07:03' },
      append: 'carapace.net=10.253.7.3/24,10.253.7.1,10.253.7.1',
      exec: `/tools/tcprtt -s ${RTT_PORT} & /usr/bin/iperf3 -s -p ${IPERF_PORT}`,
    });
    const client = await vms.launch({
      ...common,
      id: `rawcli-${tag}`,
      nic: { tap: taps[0] ?? '', mac: '02:00:0a:fd:07:02' },
      append: 'carapace.net=10.253.7.2/24,10.253.7.1,10.253.7.1',
      exec: [
        `until /tools/tcprtt -c 10.253.7.3 ${RTT_PORT} 1 >/dev/null 2>&1; do sleep 0.5; done`,
        `echo "RTT $(/tools/tcprtt -c 10.253.7.3 ${RTT_PORT} ${RTT_ROUNDS})"`,
        `echo "IPERF $(/usr/bin/iperf3 -c 10.253.7.3 -p ${IPERF_PORT} -t ${IPERF_SECONDS} -J | tr -d '\\n')"`,
      ].join('; '),
    });
    await vms.wait(client.id);
    const lines = (await readFile(client.consoleLog, 'utf8')).split('\n');
    const rtt = lines.find((l) => l.startsWith('RTT '))?.slice(4);
    const ip = lines.find((l) => l.startsWith('IPERF '))?.slice(6);
    if (!rtt || !ip) throw new Error(`the raw client VM printed no figures: ${lines.slice(-10).join(' | ')}`);
    return figures(rtt, ip);
  } finally {
    for (const vm of vms.recover()) await vms.destroy(vm.id, 0).catch(() => undefined);
    for (const t of taps) await run('ip', ['link', 'del', t]);
    await run('ip', ['link', 'del', br]);
  }
}

/** Copies the tools into `dir` for an OCI image's `files` (absolute path in the image -> content). */
export async function toolImageFiles(tools: Tools): Promise<Record<string, { content: Buffer; mode: number }>> {
  const out: Record<string, { content: Buffer; mode: number }> = {};
  for (const [inImage, onHost] of Object.entries(tools.files)) out[inImage] = { content: await readFile(onHost), mode: 0o755 };
  return out;
}
