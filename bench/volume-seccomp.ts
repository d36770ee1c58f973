/**
 * `npm run bench -- volume-seccomp [PAIRS]`: what the containers' seccomp filter costs fio on a
 * cell's volume under software emulation; the diagnosis behind `bench/volume.ts`'s cell ratio.
 * Two VMs of a cell's shape (the VM layer: kernel, initramfs, `microvm,pcie=on`, 8 root ports,
 * 2 vCPUs, 2 GiB, the cells' shares and guest agent), one running the guest agent as cells do
 * (containers-common's profile: what every container in a cell gets), one with `--seccomp none`.
 * In each, CellRuntime starts the fio container of `bench/volume.ts` (same image, job, cpu and
 * memory) on a hot-plugged ext4 image made as VolumeStore makes one; pairs alternate (filtered,
 * unfiltered, …) after an unmeasured run that lays the file out. Everything else (the agent,
 * runc, the container's cgroup, its bind mount) is the same on both sides, so the ratio
 * unfiltered / filtered is the filter's share of the overhead. Prints its figures and one JSON
 * line: {"bench":"volume-seccomp","randrw_ratio","seq_ratio"} (ratios: without / with filter).
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { DEFAULT_DISK_SLOTS } from '../src/agent/cells.js';
import { CellRuntime } from '../src/agent/cell-runtime.js';
import { HostChannel } from '../src/guest/host-channel.js';
import { createImageStore } from '../src/image/local-store.js';
import { buildFioImage, startRegistry, type RunningRegistry } from '../src/image/testing/index.js';
import { ContainerSpecSchema } from '../src/model/schemas.js';
import { createVmManager } from '../src/vm/qemu.js';
import { fioArgs, makeExt4Image, parseFioTerse, showFigures, VOLUME_BYTES, type FioFigures } from './volume-raw.js';

const PAIRS = Number(process.argv[2] ?? 3);
const log = (s: string): boolean => process.stderr.write(`${s}\n`);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
};

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-bench-volsc-'));
  const logger = pino({ level: 'warn' });
  const vms = createVmManager({ stateDir: join(dir, 'vms'), logger, accel: 'auto' });
  const aborts: AbortController[] = [];
  let registry: RunningRegistry | undefined;
  try {
    registry = await startRegistry({ dir: join(dir, 'registry') });
    const reference = (await buildFioImage(registry.address)).reference;
    const imagesDir = join(dir, 'images');
    const pulled = await createImageStore({ cacheDir: imagesDir, logger }).ensure(reference);
    const hostImagesRoot = join(imagesDir, 'rootfs');
    const installDir = fileURLToPath(new URL('../..', import.meta.url));
    const sides = ['filtered', 'unfiltered'] as const;
    const runtimes = new Map<string, { runtime: CellRuntime; image: string }>();
    for (const side of sides) {
      const vm = await vms.launch({
        id: side,
        cpus: 2,
        memoryMiB: 2048,
        hotplugSlots: DEFAULT_DISK_SLOTS,
        shares: [
          { tag: 'usr', path: '/usr', readonly: true, mountPoint: '/usr' },
          { tag: 'carapace', path: installDir, readonly: true, mountPoint: '/opt/carapace' },
          { tag: 'images', path: hostImagesRoot, readonly: true, mountPoint: '/carapace/images' },
        ],
        exec: `/usr/bin/node /opt/carapace/dist/src/guest/main.js --images /carapace/images${side === 'unfiltered' ? ' --seccomp none' : ''}`,
        ports: [],
        channel: true,
        labels: {},
      });
      const ac = new AbortController();
      aborts.push(ac);
      const channel = new HostChannel({ socketPath: vm.channelSocket ?? '', cellId: side, logger, requestTimeoutMs: 300_000 });
      void channel.start(ac.signal);
      await channel.waitReady(600_000);
      const image = join(dir, `${side}.img`);
      await mkdir(dir, { recursive: true });
      await makeExt4Image(image, VOLUME_BYTES, side);
      runtimes.set(side, { runtime: new CellRuntime({ cellId: side, isolation: 'cell', channel, vms, hostImagesRoot, guestImagesRoot: '/carapace/images', logger }), image });
      log(`${side}: VM up`);
    }
    let seq = 0;
    const fio = async (side: string, createOnly = false): Promise<FioFigures | undefined> => {
      const r = runtimes.get(side);
      if (!r) throw new Error(`no VM ${side}`);
      const id = `fio-${side}-${seq++}`;
      const container = ContainerSpecSchema.parse({ image: reference, isolation: 'cell', cpu: 1.5, memory: '256Mi', command: ['fio', ...fioArgs('/vol', createOnly)] });
      await r.runtime.start({ id, rootfs: pulled.rootfs, image: pulled.config, container, hostname: id, labels: {} }, { volumes: [{ id: `bench.${side}`, image: r.image, mountPath: '/vol', readOnly: false }] });
      const exited = await r.runtime.wait(id, AbortSignal.timeout(600_000));
      const lines: string[] = [];
      for await (const l of r.runtime.logs(id, { follow: false })) lines.push(l.text);
      await r.runtime.destroy(id);
      if (exited.exitCode !== 0) throw new Error(`fio in ${side} exited ${exited.exitCode}: ${lines.slice(-5).join(' | ')}`);
      return createOnly ? undefined : parseFioTerse(lines);
    };
    for (const side of sides) await fio(side, true);
    const rr: number[] = [];
    const sr: number[] = [];
    for (let i = 0; i < PAIRS; i++) {
      const f = await fio('filtered');
      const u = await fio('unfiltered');
      if (!f || !u) throw new Error('no figures');
      log(`pair ${i + 1}/${PAIRS}: with seccomp    ${showFigures(f)}`);
      log(`pair ${i + 1}/${PAIRS}: without seccomp ${showFigures(u)}`);
      rr.push(u.randrwIops / f.randrwIops);
      sr.push(Math.sqrt((u.seqReadMBs / f.seqReadMBs) * (u.seqWriteMBs / f.seqWriteMBs)));
    }
    log(`ratios without/with: randrw ${rr.map((x) => x.toFixed(3)).join(' ')}; seq ${sr.map((x) => x.toFixed(3)).join(' ')}`);
    console.log(JSON.stringify({ bench: 'volume-seccomp', randrw_ratio: Number(median(rr).toFixed(3)), seq_ratio: Number(median(sr).toFixed(3)) }));
  } finally {
    log('cleaning up');
    for (const ac of aborts) ac.abort();
    for (const vm of vms.recover()) await vms.destroy(vm.id, 0).catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
