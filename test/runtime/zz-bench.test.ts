import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'vitest';
import { createRuncDriver, createRunscDriver } from '../../src/runtime/index.js';
import { IMAGE, logger, makeRootfs, shSpec } from './helpers.js';
const p50 = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
it('bench', async () => {
  const w = await makeRootfs();
  const stateDir = await mkdtemp(join(tmpdir(), 'bench-'));
  const N = 20;
  const raw: number[] = [];
  const b = join(stateDir, 'rawbundle'); await mkdir(b);
  execFileSync('runc', ['spec'], { cwd: b });
  const cfg = JSON.parse(await readFile(join(b, 'config.json'), 'utf8'));
  cfg.root = { path: w.rootfs, readonly: true }; cfg.process.terminal = false; cfg.process.args = ['sleep', '5'];
  await writeFile(join(b, 'config.json'), JSON.stringify(cfg));
  for (let i = 0; i < N; i++) {
    const t = performance.now();
    const r = spawnSync('runc', ['--root', join(stateDir, 'rawroot'), 'run', '-d', '-b', b, `raw${i}`], { stdio: 'ignore' });
    raw.push(performance.now() - t);
    if (r.status !== 0) throw new Error('raw failed');
    spawnSync('runc', ['--root', join(stateDir, 'rawroot'), 'delete', '--force', `raw${i}`]);
  }
  for (const [name, d] of [['runc', createRuncDriver({ stateDir: join(stateDir, 'd1'), logger })], ['runsc', createRunscDriver({ stateDir: join(stateDir, 'd2'), logger })]] as const) {
    const ts: number[] = []; const ds: number[] = [];
    for (let i = 0; i < N; i++) {
      const t = performance.now();
      await d.start({ id: `b${i}`, rootfs: w.rootfs, image: IMAGE, container: shSpec('sleep 5'), hostname: 'b', labels: {} });
      ts.push(performance.now() - t);
      const t2 = performance.now();
      await d.destroy(`b${i}`);
      ds.push(performance.now() - t2);
    }
    console.log(`${name} driver start p50=${p50(ts).toFixed(1)}ms min=${Math.min(...ts).toFixed(1)} destroy p50=${p50(ds).toFixed(1)}ms`);
  }
  console.log(`raw runc run -d p50=${p50(raw).toFixed(1)}ms min=${Math.min(...raw).toFixed(1)}`);
}, 300_000);
