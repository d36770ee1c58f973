/**
 * Load: many event-stream watchers plus a steady stream of writes against a real
 * `carapace server` (SQLite store, no agents: instances stay Pending, so all the work is the
 * control plane's). Half the watchers follow `/v1/events` (audit records and lifecycle
 * events), half `/v1/watch/instances`. Writes are applies of services at a fixed rate, open
 * loop (the k-th write is sent at start + k/rate whatever happened before, so slow answers
 * cannot hide later ones); each changes the service's spec, so the controller rewrites its
 * instance and every watcher has events to read.
 *
 * Reported: write latency p50/p99/max over the measured phase (after a warm-up), write
 * errors, watchers that failed or ended early, events delivered, and the server's memory.
 * Memory growth is what the server retains: RSS and heap right after a full garbage
 * collection at the start and at the end of the measured phase (a preload in the server
 * process runs `gc()` when sent SIGUSR2 and writes `process.memoryUsage()`). Sampled RSS
 * between collections is a sawtooth of tens of MiB at this rate (V8 collects when it
 * pleases), so comparing two samples would measure the collector's timing, not a leak; the
 * samples still give the peak.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { connect } from 'node:tls';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { freePort, Server, tempDir } from '../e2e/helpers.js';
import { percentile, quiet, rssKiB, sleep, type Log } from './harness.js';

export interface LoadOptions {
  watchers: number;
  writesPerSec: number;
  /** The measured phase. */
  seconds: number;
  /** Writes at the same rate before measuring (caches, JIT, the store's first pages). */
  warmupSeconds: number;
  services: number;
  log?: Log;
}

export interface LoadResult {
  watchers: number;
  /** Watchers still streaming at the end. */
  watchersAlive: number;
  /** Watchers that failed to connect or whose stream ended or broke. */
  watcherErrors: number;
  writes: number;
  writeErrors: number;
  writeP50Ms: number;
  writeP99Ms: number;
  writeMaxMs: number;
  /** SSE events delivered to all watchers during the measured phase. */
  events: number;
  /** RSS right after a full collection, at the start and the end of the measured phase. */
  rssStartMiB: number;
  rssEndMiB: number;
  /** The V8 heap in use right after those collections. */
  heapStartMiB: number;
  heapEndMiB: number;
  /** Highest sampled RSS (every 500 ms) over the measured phase. */
  rssPeakMiB: number;
  /** Growth of the RSS retained after a full collection, start to end of the measured phase. */
  memGrowthPct: number;
  /** The same from halfway to the end. */
  memGrowthSecondHalfPct: number;
  /** Growth of the V8 heap in use after a full collection, start to end. */
  heapGrowthPct: number;
  /** The machine's 1-minute load average when measuring began (other work shows in the tail). */
  load1m: number;
  seconds: number;
}

const service = (i: number, seq: number): unknown => ({
  apiVersion: 'carapace/v1',
  kind: 'Service',
  metadata: { name: `w${i}`, tenant: 'load' },
  spec: { image: '127.0.0.1:5999/load/none:1', isolation: 'host', replicas: 1, command: ['sleep', '3600'], cpu: 0.01, memory: '8Mi', env: { SEQ: String(seq) } },
});

/** Runs the load and measures. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const log = o.log ?? quiet;
  const tmp = await tempDir('carapace-load-');
  const preload = join(tmp.dir, 'gc-on-sigusr2.cjs');
  const report = join(tmp.dir, 'memory.json');
  await writeFile(preload, GC_PRELOAD);
  const server = new Server(join(tmp.dir, 'server'), await freePort(), ['--store', `sqlite:${join(tmp.dir, 'store.db')}`, '--no-agent-api'], { CARAPACE_LOG_LEVEL: 'warn', NODE_OPTIONS: `--require ${preload}`, CARAPACE_TEST_MEMORY_REPORT: report }, 'server');
  // The server's API is HTTPS: the pool verifies it against the CA it wrote at start.
  let writePool = new Agent({ connections: 64, pipelining: 1 });
  const ac = new AbortController();
  try {
    await server.start();
    await writePool.close();
    const ca = await readFile(join(server.stateDir, 'api-ca.crt'), 'utf8');
    writePool = new Agent({ connections: 64, pipelining: 1, connect: { ca } });
    const pid = server.proc?.pid ?? 0;
    const token = (await readFile(join(server.stateDir, 'admin-token'), 'utf8')).trim();
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    const put = async (path: string, body: unknown): Promise<number> => {
      const r = await request(`${server.url}${path}`, { method: 'PUT', headers, body: JSON.stringify(body), dispatcher: writePool, headersTimeout: 30_000, bodyTimeout: 30_000 });
      await r.body.text();
      return r.statusCode;
    };
    if ((await put('/v1/tenants/load', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'load' } })) >= 300) throw new Error('cannot create the tenant');
    for (let i = 0; i < o.services; i++) await put(`/v1/tenants/load/services/w${i}`, service(i, 0));

    // Watchers: each a long-lived SSE stream on its own bare TLS socket (the cheapest client, so
    // the measurement is the server's cost, not the client's); events counted by `id:` lines.
    let events = 0;
    let counting = false;
    let watcherErrors = 0;
    let alive = 0;
    const port = Number(new URL(server.url).port);
    const sockets: Socket[] = [];
    const NEEDLE = Buffer.from('\nid: ');
    for (let w = 0; w < o.watchers; w++) {
      const path = w % 2 === 0 ? '/v1/events' : '/v1/watch/instances';
      const sock = connect({ host: '127.0.0.1', port, ca });
      sockets.push(sock);
      let first = true;
      let open = false;
      sock.on('secureConnect', () => sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${headers.authorization}\r\nAccept: text/event-stream\r\n\r\n`));
      sock.on('data', (chunk: Buffer) => {
        if (first) {
          first = false;
          if (!chunk.subarray(0, 12).toString('latin1').startsWith('HTTP/1.1 200')) {
            watcherErrors++;
            sock.destroy();
            return;
          }
          open = true;
          alive++;
        }
        if (counting) for (let k = chunk.indexOf(NEEDLE); k !== -1; k = chunk.indexOf(NEEDLE, k + 1)) events++;
      });
      const gone = (): void => {
        if (open) alive--;
        open = false;
        if (!ac.signal.aborted) watcherErrors++;
      };
      sock.once('close', gone);
      sock.on('error', () => undefined); // 'close' follows
      if (w % 50 === 49) await sleep(20); // connect in bursts, not all in one tick
    }
    ac.signal.addEventListener('abort', () => sockets.forEach((x) => x.destroy()));
    for (let i = 0; i < 200 && alive + watcherErrors < o.watchers; i++) await sleep(100);
    log(`load: ${alive} watchers streaming (${watcherErrors} failed)`);

    // Open-loop writes: warm-up, then the measured phase.
    const latencies: number[] = [];
    let writeErrors = 0;
    const rss: { at: number; kib: number }[] = [];
    let seq = 0;
    const phase = async (seconds: number, measure: boolean): Promise<void> => {
      const total = Math.round(seconds * o.writesPerSec);
      const t0 = performance.now();
      const inflight: Promise<void>[] = [];
      const sampler = setInterval(() => rss.push({ at: performance.now() - t0, kib: rssKiB(pid) }), 500);
      for (let k = 0; k < total; k++) {
        const due = t0 + (k * 1000) / o.writesPerSec;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        const i = k % o.services;
        inflight.push(
          (async () => {
            const start = performance.now();
            const status = await put(`/v1/tenants/load/services/w${i}`, service(i, ++seq)).catch(() => 0);
            if (!measure) return;
            if (status >= 200 && status < 300) latencies.push(performance.now() - start);
            else writeErrors++;
          })(),
        );
      }
      await Promise.all(inflight);
      clearInterval(sampler);
    };
    // What the server holds right after a full collection (the preload answers SIGUSR2).
    type Collected = { rss: number; heapUsed: number; external: number; RssAnon: number; RssFile: number; RssShmem: number };
    const collected = async (): Promise<Collected> => {
      await rm(report, { force: true });
      process.kill(pid, 'SIGUSR2');
      for (let i = 0; i < 100; i++) {
        const text = await readFile(report, 'utf8').catch(() => '');
        if (text.endsWith('\n')) return JSON.parse(text) as Collected; // safe: written whole by GC_PRELOAD
        await sleep(100);
      }
      throw new Error('the server did not report its memory after a collection');
    };
    await phase(o.warmupSeconds, false);
    const before = await collected();
    rss.length = 0;
    const load1m = loadavg()[0] ?? 0;
    counting = true;
    // A collection halfway too: growth that goes on in the second half is a leak, growth that
    // stops is caches and allocator arenas settling (the store's page cache is 16 MiB).
    let middle: Collected | undefined;
    const halfway = setTimeout(() => void collected().then((m) => (middle = m), () => undefined), (o.seconds * 1000) / 2);
    await phase(o.seconds, true);
    clearTimeout(halfway);
    counting = false;
    const after = await collected();
    const mib = (x: number): string => (x / 1024 / 1024).toFixed(1);
    log(`load: after a full GC, start -> end (MiB): anonymous ${mib(before.RssAnon)} -> ${mib(after.RssAnon)}, file-backed ${mib(before.RssFile)} -> ${mib(after.RssFile)}, shared ${mib(before.RssShmem)} -> ${mib(after.RssShmem)}, external ${mib(before.external)} -> ${mib(after.external)}`);
    const MiB = 1024 * 1024;
    const start = before.rss / MiB;
    const end = after.rss / MiB;
    const peak = Math.max(...rss.map((s) => s.kib)) / 1024;
    const step = Math.max(1, Math.floor(rss.length / 10));
    log(`load: server RSS over the measured phase (MiB): ${rss.filter((_, i) => i % step === 0).map((x) => (x.kib / 1024).toFixed(0)).join(' ')}`);
    const sorted = latencies.sort((a, b) => a - b);
    const result: LoadResult = {
      watchers: o.watchers,
      watchersAlive: alive,
      watcherErrors,
      writes: latencies.length + writeErrors,
      writeErrors,
      writeP50Ms: round(percentile(sorted, 50)),
      writeP99Ms: round(percentile(sorted, 99)),
      writeMaxMs: round(sorted[sorted.length - 1] ?? NaN),
      events,
      rssStartMiB: round(start),
      rssEndMiB: round(end),
      heapStartMiB: round(before.heapUsed / MiB),
      heapEndMiB: round(after.heapUsed / MiB),
      rssPeakMiB: round(peak),
      memGrowthPct: round(((end - start) / start) * 100),
      memGrowthSecondHalfPct: middle ? round(((after.rss - middle.rss) / middle.rss) * 100) : NaN,
      heapGrowthPct: round(((after.heapUsed - before.heapUsed) / before.heapUsed) * 100),
      load1m: round(load1m),
      seconds: o.seconds,
    };
    log(`load: ${result.writes} writes at ${o.writesPerSec}/s with ${alive} watchers: p50 ${result.writeP50Ms} ms, p99 ${result.writeP99Ms} ms, max ${result.writeMaxMs} ms, ${writeErrors} errors; ${events} events delivered; server after a full GC: RSS ${result.rssStartMiB} -> ${result.rssEndMiB} MiB (${result.memGrowthPct}%; second half ${result.memGrowthSecondHalfPct}%), heap ${result.heapStartMiB} -> ${result.heapEndMiB} MiB; sampled RSS peak ${result.rssPeakMiB} MiB; load ${result.load1m}`);
    ac.abort();
    return result;
  } finally {
    ac.abort();
    await writePool.destroy();
    await server.stop();
    await tmp.cleanup();
  }
}

/**
 * Preloaded into the server (NODE_OPTIONS=--require): on SIGUSR2, a full collection, then
 * process.memoryUsage() written to CARAPACE_TEST_MEMORY_REPORT. `gc` is reached through a
 * V8 flag set at run time, so the server runs with its usual flags otherwise.
 */
const GC_PRELOAD = `'use strict';
const v8 = require('node:v8');
const vm = require('node:vm');
const fs = require('node:fs');
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');
process.on('SIGUSR2', () => {
  gc();
  gc();
  const m = process.memoryUsage();
  const out = process.env.CARAPACE_TEST_MEMORY_REPORT;
  // Resident memory by kind (kB): anonymous (heaps, malloc), file-backed, shared.
  const kinds = {};
  for (const l of fs.readFileSync('/proc/self/status', 'utf8').split('\\n')) {
    const f = /^(RssAnon|RssFile|RssShmem):\\s+(\\d+)/.exec(l);
    if (f) kinds[f[1]] = Number(f[2]) * 1024;
  }
  fs.writeFileSync(out + '.tmp', JSON.stringify({ rss: m.rss, heapUsed: m.heapUsed, external: m.external, ...kinds }) + '\\n');
  fs.renameSync(out + '.tmp', out);
});
`;

function round(x: number): number {
  return Math.round(x * 10) / 10;
}
