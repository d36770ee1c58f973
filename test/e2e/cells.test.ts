/**
 * Cells, dedicated VMs and machines for real: QEMU (software emulation here), the guest agent
 * inside each VM running runc, images from a real registry, all through `carapace up` and the
 * CLI. VM boots are slow under TCG, so this file boots few VMs and checks much with each.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Cell, Instance, Machine } from '../../src/model/objects.js';
import type { Volume } from '../../src/model/volumes.js';
import { VolumeStore } from '../../src/storage/volume-store.js';
import { buildHelloMachine } from '../../src/vm/testing/hello-machine.js';
import { authed, cli, destroyAll, eventually, freePort, Server, tempDir } from './helpers.js';

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
let images: { busybox: string; web: string };
const webPort = 0;

const manifest = (docs: object[]): string => docs.map((d) => JSON.stringify(d)).join('\n---\n');
const tenant = (name: string, spec: object = {}): object => ({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name }, spec });
const service = (name: string, t: string, spec: object): object => ({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name, tenant: t }, spec: { cpu: 0.25, memory: '64Mi', ...spec } });

async function apply(docs: object[], extra: string[] = []): Promise<Awaited<ReturnType<typeof cli>>> {
  const file = join(tmp.dir, `m-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, manifest(docs));
  return cli(server.url, ['apply', '-f', file, ...extra], undefined, 300_000);
}

async function list<T>(kind: string): Promise<T[]> {
  const r = await cli(server.url, ['get', kind, '-o', 'json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { items: T[] }).items;
}

beforeAll(async () => {
  tmp = await tempDir('carapace-cells-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  const busybox = await buildBusyboxImage({ registry: registry.address, repository: 'cells/busybox', tag: '1' });
  const web = await buildBusyboxImage({ registry: registry.address, repository: 'cells/web', tag: '1', cmd: ['httpd', '-f', '-p', '8080', '-h', '/www'], files: { '/www/index.html': 'served from inside a cell\n' } });
  images = { busybox: busybox.reference, web: web.reference };
  const stateDir = join(tmp.dir, 'state');
  await buildHelloMachine(join(stateDir, 'machine-images'));
  // One warm cell: the first tenant's cell is taken from the pool instead of booting.
  server = new Server(stateDir, await freePort(), ['--warm-cells', '1', '--accel', 'tcg'], { CARAPACE_CELL_GRACE_MS: '3000', CARAPACE_USAGE_SAMPLE_MS: '2000', CARAPACE_VOLUME_SWEEP_MS: '1000', CARAPACE_VOLUME_HANDOUT_GRACE_MS: '20000' });
  await server.start();
  const warm = await eventually(async () => (await list<Cell>('cells')).find((c) => c.spec.tenant === '' && c.status.phase === 'Ready'), 150_000, 'a warm cell');
  // The pool offers a cell only once it has run its prewarm container (its first start is warm).
  expect(warm.status.message).toMatch(/^guest agent ready, prewarmed in \d+ ms$/);
  expect((await apply([tenant('acme'), tenant('globex', { minIsolation: 'cell' })])).code).toBe(0);
}, 240_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'));
  await registry?.stop();
  await tmp?.cleanup();
}, 120_000);

describe('cells', () => {
  let hostPort = webPort;

  it("packs a trust group's two services into one cell (a warm one) where they reach each other", async () => {
    hostPort = await freePort();
    const r = await apply(
      [
        service('web', 'acme', { image: images.web, isolation: 'cell', ports: [{ containerPort: 8080, hostPort }] }),
        service('client', 'acme', { image: images.busybox, isolation: 'cell', command: ['sh', '-c', 'while true; do wget -q -O - http://127.0.0.1:8080/; sleep 2; done'] }),
      ],
      ['--wait', '--timeout', '240'],
    );
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const insts = (await list<Instance>('instances')).filter((i) => i.metadata.tenant === 'acme');
    const cellsUsed = new Set(insts.map((i) => i.spec.cell));
    expect(cellsUsed.size).toBe(1);
    const [cellName] = [...cellsUsed];
    const cell = (await list<Cell>('cells')).find((c) => c.metadata.name === cellName);
    expect(cell?.spec.tenant).toBe('acme');
    expect(cell?.spec.warm).toBe(true); // assigned from the warm pool, never to be returned
    // The client reached the web service over the cell's shared network.
    await eventually(async () => (await cli(server.url, ['logs', 'acme/client-0'])).stdout.includes('served from inside a cell'), 30_000, 'client log');
    // The published port reaches the web service inside the VM.
    const body = await eventually(async () => (await fetch(`http://127.0.0.1:${hostPort}/`)).text(), 30_000, 'published port');
    expect(body).toBe('served from inside a cell\n');
    // Metrics for the tools above: per tenant, group and cell.
    const prom = await (await authed(server.url, '/metrics')).text();
    expect(prom).toContain(`carapace_instances{tenant="acme",group="default",isolation="cell",cell="${cellName}",phase="Running"} 2`);
    expect(prom).toMatch(new RegExp(`carapace_cell_reserved_cpu_cores\\{tenant="acme",group="default",cell="${cellName}",host="e2e"\\} 2`));
    // The pool is refilled with a new unassigned cell.
    await eventually(async () => (await list<Cell>('cells')).some((c) => c.spec.tenant === '' && !c.metadata.deletionRequestedAt), 10_000, 'pool refill');
    // Usage per cell: the VM's reservation, the QEMU process's measured CPU, and the
    // instances inside it; the cell rows add up to the tenant row exactly.
    type Row = { tenant: string; cell?: string; charged: { cpuUs: string }; used: { cpuUs: string }; reserved: Record<string, { cpuUs: string }>; measured: Record<string, { cpuUs: string }> };
    const report = async (by: string): Promise<Row[]> => {
      const u = await cli(server.url, ['report', 'usage', '--since', '1h', '--until', 'now', '--by', by, '-o', 'json', '-t', 'acme']);
      expect(u.code, u.stderr).toBe(0);
      return (JSON.parse(u.stdout) as { rows: Row[] }).rows;
    };
    const byCell = await eventually(async () => {
      const rows = await report('cell');
      const row = rows.find((x) => x.cell === cellName);
      return row && BigInt(row.measured['cells']?.cpuUs ?? '0') > 0n && BigInt(row.reserved['cellInstances']?.cpuUs ?? '0') > 0n ? rows : undefined;
    }, 30_000, 'cell usage');
    const cellRow = byCell.find((x) => x.cell === cellName)!; // found above
    expect(BigInt(cellRow.reserved['cells']!.cpuUs)).toBeGreaterThan(BigInt(cellRow.reserved['cellInstances']!.cpuUs));
    expect(byCell.every((x) => x.tenant === 'acme')).toBe(true);
  }, 300_000);

  it('gives a container in a cell its volume (hot-plugged), secret, config and env; the data outlives the container and goes back to the host', async () => {
    const doc = (kind: string, name: string, spec: object): object => ({ apiVersion: 'carapace/v1', kind, metadata: { name, tenant: 'acme' }, spec });
    // What the container sees, without printing the secret: whether the file and the env
    // value agree, and the password's length.
    const script = [
      'echo "$GEN" >> /data/starts',
      'if [ "$(cat /run/secrets/db/password)" = "$DB_PASSWORD" ]; then echo "secret: file and env agree, $(printf %s "$DB_PASSWORD" | wc -c) bytes"; fi',
      'echo "config: $(cat /etc/app/mode) $MODE"',
      'echo "starts: $(cat /data/starts | tr "\\n" " ")"',
      'exec sleep 3600',
    ].join('; ');
    const keeper = (gen: string): object =>
      service('keeper', 'acme', {
        image: images.busybox,
        isolation: 'cell',
        command: ['sh', '-c', script],
        env: { GEN: gen },
        volumes: [{ volume: 'celldata', mountPath: '/data' }],
        secrets: [{ secret: 'db' }],
        configs: [{ config: 'app', mountPath: '/etc/app' }],
        envFrom: [
          { name: 'DB_PASSWORD', secret: 'db', key: 'password' },
          { name: 'MODE', config: 'app', key: 'mode' },
        ],
      });
    const docs = [doc('Volume', 'celldata', { size: '16Mi' }), doc('Secret', 'db', { data: { password: 'cell-pw-42' } }), doc('Config', 'app', { data: { mode: 'production' } })];
    const r = await apply([...docs, keeper('1')], ['--wait', '--timeout', '240']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const logs = async (): Promise<string> => (await cli(server.url, ['logs', 'acme/keeper-0'])).stdout;
    const first = await eventually(async () => ((await logs()).includes('starts:') ? logs() : undefined), 60_000, 'keeper log');
    expect(first).toContain('secret: file and env agree, 10 bytes');
    expect(first).toContain('config: production production');
    expect(first).toContain('starts: 1 ');
    expect(first).not.toContain('cell-pw-42');
    // A spec change re-creates the container in the cell: the volume comes back with its data.
    expect((await apply([keeper('2')], ['--wait', '--timeout', '240'])).code).toBe(0);
    await eventually(async () => ((await logs()).includes('starts: 1 2 ') ? true : undefined), 60_000, 'the re-created container on the same data');
    // Deleting the service detaches the volume from the cell and gives it back to the host,
    // where it can be mounted: its data is there.
    expect((await cli(server.url, ['delete', 'service', 'keeper', '-t', 'acme'])).code).toBe(0);
    await eventually(async () => ((await list<Instance>('instances')).some((i) => i.metadata.name === 'keeper-0') ? undefined : true), 60_000, 'keeper gone');
    const vol = (await list<Volume>('volumes')).find((v) => v.metadata.name === 'celldata');
    expect(vol?.status).toMatchObject({ phase: 'Bound', host: 'e2e' });
    const store = new VolumeStore({ stateDir: join(tmp.dir, 'state'), logger: pino({ level: 'silent' }) });
    const dir = await eventually(async () => store.mount(vol?.metadata.uid ?? ''), 30_000, 'the volume given back to the host');
    try {
      expect(await readFile(join(dir, 'starts'), 'utf8')).toBe('1\n2\n');
    } finally {
      await store.unmount(vol?.metadata.uid ?? '');
    }
  }, 300_000);

  it('never puts two tenants in one cell, and gives a dedicated instance its own VM', async () => {
    const refused = await apply([service('h', 'globex', { image: images.busybox, isolation: 'host', command: ['sleep', '3600'] })]);
    expect(refused.stderr).toMatch(/CARAPACE_E_POLICY_VIOLATION: .*minIsolation "cell"/);
    const r = await apply(
      [
        service('worker', 'globex', { image: images.busybox, isolation: 'cell', command: ['sh', '-c', 'echo globex worker up; sleep 3600'] }),
        service('solo', 'acme', { image: images.busybox, isolation: 'dedicated', command: ['sh', '-c', 'echo alone; sleep 3600'] }),
      ],
      ['--wait', '--timeout', '280'],
    );
    expect(r.code, `${r.stdout}${r.stderr}\n--- server log ---\n${server.log.split('\n').filter((l) => /"level":(40|50)|cell/.test(l)).slice(-40).join('\n')}`).toBe(0);
    const cells = await list<Cell>('cells');
    const insts = await list<Instance>('instances');
    for (const i of insts) {
      const c = cells.find((x) => x.metadata.name === i.spec.cell);
      expect(c?.spec.tenant, `${i.metadata.tenant}/${i.metadata.name}`).toBe(i.metadata.tenant);
    }
    const worker = insts.find((i) => i.metadata.name === 'worker-0');
    const web = insts.find((i) => i.metadata.name === 'web-0');
    const solo = insts.find((i) => i.metadata.name === 'solo-0');
    expect(worker?.spec.cell).not.toBe(web?.spec.cell);
    expect(solo?.spec.cell).not.toBe(web?.spec.cell);
    const soloCell = cells.find((c) => c.metadata.name === solo?.spec.cell);
    expect(soloCell?.spec.dedicated).toBe(true);
    expect(insts.filter((i) => i.spec.cell === solo?.spec.cell)).toHaveLength(1);
    expect((await cli(server.url, ['logs', 'globex/worker-0'])).stdout).toContain('globex worker up');
  }, 300_000);

  it('restarts a container that dies inside its cell', async () => {
    // It runs out of its 16 MiB: the guest's cgroup OOM killer kills it (SIGKILL, 137), like a
    // crash. (A container cannot SIGKILL its own PID 1 from inside its PID namespace.)
    const r = await apply([service('flaky', 'acme', { image: images.busybox, isolation: 'cell', memory: '16Mi', command: ['sh', '-c', 'echo started; x=$(head -c 40000000 /dev/zero | tr "\\0" a); echo survived'] })]);
    expect(r.code).toBe(0);
    const flaky = await eventually(async () => (await list<Instance>('instances')).find((i) => i.metadata.name === 'flaky-0' && i.status.restarts >= 2), 150_000, 'restarts');
    expect(flaky.status.exitCode).toBe(137);
    const web = (await list<Instance>('instances')).find((i) => i.metadata.name === 'web-0');
    expect(flaky.spec.cell).toBe(web?.spec.cell); // same group, same cell: the fault stayed inside it
    expect(web?.status.phase).toBe('Running');
    await cli(server.url, ['delete', 'service', 'acme/flaky']);
  }, 180_000);

  it('keeps cell containers running across a kill -9 of the server and adopts them', async () => {
    const before = (await list<Instance>('instances')).filter((i) => i.spec.cell && !i.metadata.name.startsWith('flaky-'));
    await server.kill9();
    await server.start();
    const after = await eventually(async () => {
      const l = (await list<Instance>('instances')).filter((i) => i.spec.cell && !i.metadata.name.startsWith('flaky-'));
      return l.length === before.length && l.every((i) => i.status.phase === 'Running') ? l : undefined;
    }, 90_000, 'cells re-attached');
    for (const b of before) {
      const a = after.find((i) => i.metadata.uid === b.metadata.uid);
      expect([a?.status.containerId, a?.status.restarts]).toEqual([b.status.containerId, b.status.restarts]);
    }
    const body = await eventually(async () => (await fetch(`http://127.0.0.1:${hostPort}/`)).text(), 30_000, 'published port after restart');
    expect(body).toBe('served from inside a cell\n');
  }, 150_000);

  it("replaces a lost cell's instances in a warm cell when its QEMU is killed", async () => {
    const insts = (await list<Instance>('instances')).filter((i) => i.metadata.tenant === 'acme' && (i.metadata.name === 'web-0' || i.metadata.name === 'client-0'));
    const cellName = insts[0]?.spec.cell ?? '';
    expect(insts.map((i) => i.spec.cell)).toEqual([cellName, cellName]);
    const cell = (await list<Cell>('cells')).find((c) => c.metadata.name === cellName)!; // web-0's cell exists
    await eventually(async () => (await list<Cell>('cells')).some((c) => c.spec.tenant === '' && c.status.phase === 'Ready'), 150_000, 'a warm cell to fail over into');
    process.kill(cell.status.pid!, 'SIGKILL'); // a Ready cell has a QEMU pid
    const after = await eventually(async () => {
      const now = (await list<Instance>('instances')).filter((i) => i.metadata.tenant === 'acme' && (i.metadata.name === 'web-0' || i.metadata.name === 'client-0'));
      return now.length === 2 && now.every((i) => i.spec.cell !== cellName && i.status.phase === 'Running') ? now : undefined;
    }, 120_000, 'instances running in another cell');
    expect(new Set(after.map((i) => i.spec.cell)).size).toBe(1); // still together: same (tenant, group)
    const newCell = (await list<Cell>('cells')).find((c) => c.metadata.name === after[0]?.spec.cell);
    expect(newCell?.spec).toMatchObject({ tenant: 'acme', group: 'default', warm: true });
    // The published port answers again, from the new cell.
    expect(await eventually(async () => (await fetch(`http://127.0.0.1:${hostPort}/`)).text(), 30_000, 'published port after failover')).toBe('served from inside a cell\n');
    // The lost cell is gone and every step is audited with its timings.
    await eventually(async () => !(await list<Cell>('cells')).some((c) => c.metadata.name === cellName), 30_000, 'lost cell removed');
    const records = (await cli(server.url, ['audit', 'export', '-t', 'acme'])).stdout.trim().split('\n').map((l) => JSON.parse(l) as { action: string; target: { name: string }; detail?: Record<string, unknown> });
    const lost = records.find((r) => r.action === 'cell.lost' && r.target.name === cellName);
    expect(String(lost?.detail?.['reason'])).toMatch(/the VM exited/);
    expect(Number(lost?.detail?.['detectMs'])).toBeLessThan(5_000);
    for (const n of ['web-0', 'client-0']) {
      expect(records.some((r) => r.action === 'instance.failover' && r.target.name === n)).toBe(true);
      expect(Number(records.find((r) => r.action === 'instance.recovered' && r.target.name === n)?.detail?.['recoveryMs'])).toBeGreaterThan(0);
    }
  }, 240_000);

  it('retires an empty cell after its grace period and never hands it back', async () => {
    const worker = (await list<Instance>('instances')).find((i) => i.metadata.name === 'worker-0');
    const cellName = worker?.spec.cell ?? '';
    expect(cellName).not.toBe('');
    expect((await cli(server.url, ['delete', 'service', 'globex/worker'])).code).toBe(0);
    await eventually(async () => !(await list<Cell>('cells')).some((c) => c.metadata.name === cellName), 90_000, 'cell retired');
  }, 120_000);
});

describe('machines', () => {
  it('boots a plain VM with a volume as its extra disk, whose console log shows it; stops it; a deleted machine gives its volume back', async () => {
    const m = { apiVersion: 'carapace/v1', kind: 'Machine', metadata: { name: 'legacy', tenant: 'acme' }, spec: { kernel: 'host', initrd: 'hello-machine.cpio.gz', memory: '128Mi', disks: [{ volume: 'legacydisk' }] } };
    const disk = { apiVersion: 'carapace/v1', kind: 'Volume', metadata: { name: 'legacydisk', tenant: 'acme' }, spec: { size: '16Mi' } };
    const r = await apply([disk, m], ['--wait', '--timeout', '120']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const log = await eventually(async () => {
      const l = await cli(server.url, ['logs', 'machine/acme/legacy']);
      return l.stdout.includes('machine heartbeat 1') ? l.stdout : undefined;
    }, 90_000, 'machine console');
    expect(log).toMatch(/hello from a Carapace machine: Linux/);
    const missing = await apply([{ ...m, metadata: { name: 'broken', tenant: 'acme' }, spec: { kernel: 'host', initrd: 'nope.img' } }], ['--wait', '--timeout', '60']);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toMatch(/ImageMissing: not in the machine image directory .*nope\.img/);
    expect((await cli(server.url, ['machine', 'stop', 'acme/legacy'])).code).toBe(0);
    await eventually(async () => (await list<Machine>('machines')).find((x) => x.metadata.name === 'legacy')?.status.phase === 'Stopped', 60_000, 'machine stopped');
    await cli(server.url, ['delete', 'machine', 'acme/legacy']);
    await cli(server.url, ['delete', 'machine', 'acme/broken']);
    await eventually(async () => (await list<Machine>('machines')).length === 0, 60_000, 'machines removed');
    // The volume was handed to the machine's VM (QEMU opened its image); with the VM gone the
    // agent's sweep gives it back to the host, where it can be mounted again.
    const vol = (await list<Volume>('volumes')).find((v) => v.metadata.name === 'legacydisk');
    const store = new VolumeStore({ stateDir: join(tmp.dir, 'state'), logger: pino({ level: 'silent' }) });
    await eventually(async () => ((await store.list()).find((v) => v.id === vol?.metadata.uid)?.attachment === 'none' ? true : undefined), 60_000, 'the volume given back to the host');
  }, 300_000);
});
