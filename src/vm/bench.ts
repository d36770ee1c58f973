/**
 * Measurement helpers for `npm run bench -- cell`: how long a raw cell boot takes (QEMU start
 * to the first line on the guest channel) and what the QEMU process costs beyond guest RAM.
 * Each call boots real VMs under a throwaway state dir and destroys them afterwards.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import type { Logger } from 'pino';
import { createVmManager, type Accel } from './qemu.js';

/** One measured boot. */
export interface RawBootSample {
  /** launch() call to the guest's first channel line, in ms. */
  bootToReadyMs: number;
  /** Resident set of the QEMU process, KiB. */
  rssKiB: number;
  /** Resident part of the guest RAM mapping, KiB (what the guest touched). */
  guestRamRssKiB: number;
  /** rssKiB minus guestRamRssKiB: QEMU's own overhead, KiB. */
  overheadKiB: number;
}

/** Boots `runs` cells one after another (default 3) and returns the samples and the p50 boot time. */
export async function timeRawBoot(o: { logger: Logger; runs?: number; memoryMiB?: number; accel?: Accel; stateDir?: string }): Promise<{ samples: RawBootSample[]; p50BootMs: number }> {
  const stateDir = o.stateDir ?? mkdtempSync('/tmp/cvm-bench-');
  const memoryMiB = o.memoryMiB ?? 256;
  const mgr = createVmManager({ stateDir, logger: o.logger, accel: o.accel ?? 'auto' });
  await mgr.accel(); // probe (once, cached) before timing anything
  const samples: RawBootSample[] = [];
  try {
    for (let i = 0; i < (o.runs ?? 3); i++) {
      const id = `bench-${i}`;
      const t0 = Date.now();
      const vm = await mgr.launch({
        id, cpus: 1, memoryMiB, channel: true, labels: {}, shares: [], ports: [],
        exec: `echo '{"type":"ready"}' > "$CARAPACE_PORT"; sleep 600`,
      });
      // channelSocket is set because the spec asked for a channel.
      await firstLine(vm.channelSocket ?? '', 120_000);
      const bootToReadyMs = Date.now() - t0;
      const { rssKiB, guestRamRssKiB } = qemuMemory(vm.pid, memoryMiB);
      samples.push({ bootToReadyMs, rssKiB, guestRamRssKiB, overheadKiB: rssKiB - guestRamRssKiB });
      await mgr.destroy(id, 100);
    }
  } finally {
    for (const vm of mgr.recover()) await mgr.destroy(vm.id, 100);
    if (o.stateDir === undefined) rmSync(stateDir, { recursive: true, force: true });
  }
  const sorted = samples.map((s) => s.bootToReadyMs).sort((a, b) => a - b);
  return { samples, p50BootMs: sorted[Math.floor(sorted.length / 2)] ?? 0 };
}

function firstLine(path: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    let buf = '';
    const t = setTimeout(() => { s.destroy(); reject(new Error('no ready line')); }, timeoutMs);
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n')) { clearTimeout(t); s.destroy(); resolve(buf.slice(0, buf.indexOf('\n'))); }
    });
    s.on('error', (e) => { clearTimeout(t); reject(e); });
  });
}

/** Total RSS of `pid` and the RSS of its guest RAM mapping (the anonymous mapping of exactly memoryMiB). */
function qemuMemory(pid: number, memoryMiB: number): { rssKiB: number; guestRamRssKiB: number } {
  const smaps = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  let total = 0;
  let guest = 0;
  let size = 0;
  for (const line of smaps) {
    const m = /^(Size|Rss):\s+(\d+) kB/.exec(line);
    if (!m) continue;
    const kb = Number(m[2]);
    if (m[1] === 'Size') size = kb;
    else {
      total += kb;
      if (size === memoryMiB * 1024) guest += kb;
    }
  }
  return { rssKiB: total, guestRamRssKiB: guest };
}
