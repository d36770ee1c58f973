/**
 * A real database on volumes, in every tier, through `carapace up` and the CLI: PostgreSQL 15
 * built from this host's Debian packages, its data on a Volume, its password a Secret.
 * Rows written over its published port (with the host's psql and scram-sha-256) survive:
 * kill -9 of the container (the agent restarts it: crash recovery from its WAL), kill -9 of
 * the all-in-one (the agent and server: the database keeps answering meanwhile and is adopted),
 * re-creation of the instance, and kill -9 of its cell's QEMU (the instance comes back in
 * another cell of the group on the same host, on the same volume). A sandboxed (gVisor) client
 * reaches the cell's database by its service name with the password from the same Secret.
 * Per-replica volumes keep each replica's own data across a scale down and up. The password
 * is in no log line, audit record, container log or file of the store.
 */
import { spawn } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import { buildPostgresImage, POSTGRES_VOLUME } from '../../src/image/testing/debian-images.js';
import type { Cell, Instance } from '../../src/model/objects.js';
import { cli, destroyAll, eventually, freePort, Server, tempDir } from './helpers.js';

const PASSWORD = 'pg-e2e-5d1f0c2b-never-logged';
/** The host's psql (postgresql-client-15): the same build as the image's. */
const HOST_PSQL = '/usr/lib/postgresql/15/bin/psql';

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
let images: { postgres: string; busybox: string };

const doc = (kind: string, name: string, spec: object): object => ({ apiVersion: 'carapace/v1', kind, metadata: { name, tenant: 'acme' }, spec });

async function apply(docs: object[], extra: string[] = ['--wait', '--timeout', '420']): Promise<void> {
  const file = join(tmp.dir, `m-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, docs.map((d) => JSON.stringify(d)).join('\n---\n'));
  const r = await cli(server.url, ['apply', '-f', file, ...extra], undefined, 480_000);
  expect(r.code, `${r.stdout}${r.stderr}\n--- server warnings ---\n${warnings()}`).toBe(0);
}

/** The server's last warnings and errors, for failure messages. */
function warnings(): string {
  return server.log.split('\n').filter((l) => /"level":(40|50)/.test(l)).slice(-15).join('\n');
}

async function instance(name: string): Promise<Instance | undefined> {
  const r = await cli(server.url, ['get', 'instances', '-o', 'json']);
  return (JSON.parse(r.stdout) as { items: Instance[] }).items.find((i) => i.metadata.name === name);
}

async function cells(): Promise<Cell[]> {
  return (JSON.parse((await cli(server.url, ['get', 'cells', '-o', 'json'])).stdout) as { items: Cell[] }).items;
}

/**
 * Runs statements with the host's psql over TCP (scram-sha-256); every result's lines joined by
 * ' / ' (psql 15 prints the result of each statement of a multi-statement -c), columns by '|'.
 */
function psql(port: number, sql: string): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(HOST_PSQL, ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-At', '-c', sql], {
      env: { ...process.env, PGPASSWORD: PASSWORD, PGCONNECT_TIMEOUT: '5' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ ok: code === 0, out: out.trim().split('\n').join(' / ') });
    });
  });
}

/**
 * Waits until the last result of `sql` is `want` (the database may be starting or
 * recovering). `sql` may run more than once: writes in it must be idempotent.
 */
async function expectRows(port: number, sql: string, want: string, timeoutMs: number, what: string): Promise<void> {
  let last = '';
  await eventually(
    async () => {
      const r = await psql(port, sql);
      last = r.out;
      return r.ok && r.out.split(' / ').pop() === want ? true : undefined;
    },
    timeoutMs,
    `${what} (last answer: ${last})`,
  ).catch(async (e: unknown) => {
    // What the database's instance and container say, to tell a dead server from an unreachable one.
    const insts = (await cli(server.url, ['get', 'instances', '-o', 'wide'])).stdout;
    const logs = await Promise.all(['pghost-0', 'pgcell-0'].map(async (n) => {
      const l = await cli(server.url, ['logs', `acme/${n}`, '--tail', '15']);
      return `${n}: ${l.stdout}${l.stderr}`;
    }));
    throw new Error(`${String(e)}; last answer: ${last}\n--- instances ---\n${insts}\n--- logs ---\n${logs.join('\n')}\n--- server warnings ---\n${warnings()}`);
  });
}

/** Waits for the sandboxed client's output to include `text`; on a timeout says what it printed last and where everything runs. */
async function clientSees(text: string, timeoutMs: number, what: string): Promise<void> {
  await eventually(async () => (await cli(server.url, ['logs', 'acme/pgclient-0'])).stdout.includes(text) || undefined, timeoutMs, what).catch(async (e: unknown) => {
    const out = await cli(server.url, ['logs', 'acme/pgclient-0', '--tail', '20']);
    const insts = (await cli(server.url, ['get', 'instances', '-o', 'wide'])).stdout;
    const svc = (await cli(server.url, ['get', 'service', 'acme/pgcell', '-o', 'yaml'])).stdout;
    throw new Error(`${String(e)}\n--- client's last lines ---\n${out.stdout}${out.stderr}\n--- instances ---\n${insts}\n--- service pgcell ---\n${svc}\n--- server warnings ---\n${warnings()}`);
  });
}

const postgres = (name: string, spec: object): object =>
  doc('Service', name, {
    image: images.postgres,
    cpu: 0.5,
    memory: '256Mi',
    secrets: [{ secret: 'db' }],
    // Ready once it accepts connections (its first start runs initdb: slow under emulation).
    readinessProbe: { exec: { command: ['pg_isready', '-h', '/var/run/postgresql', '-U', 'postgres'] }, periodSeconds: 2, timeoutSeconds: 10 },
    ...spec,
  });

beforeAll(async () => {
  tmp = await tempDir('carapace-pg-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  images = {
    postgres: (await buildPostgresImage(registry.address)).reference,
    busybox: (await buildBusyboxImage({ registry: registry.address, repository: 'pg/busybox', tag: '1' })).reference,
  };
  // One warm cell: the cell tier's failover lands in it instead of waiting for a boot.
  server = new Server(join(tmp.dir, 'state'), await freePort(), ['--warm-cells', '1', '--accel', 'tcg'], { CARAPACE_VOLUME_SWEEP_MS: '2000' });
  await server.start();
  await apply([{ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} }, doc('Secret', 'db', { data: { password: PASSWORD } })], []);
}, 600_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'));
  await registry?.stop();
  await tmp?.cleanup();
}, 180_000);

describe('PostgreSQL on volumes', () => {
  it('host tier: rows survive kill -9 of the container, kill -9 of the all-in-one (the database answers meanwhile) and re-creation', async () => {
    const port = await freePort();
    const svc = (gen: string): object => postgres('pghost', { isolation: 'host', env: { GEN: gen }, ports: [{ containerPort: 5432, hostPort: port }], volumes: [{ volume: 'hostpg', mountPath: POSTGRES_VOLUME }] });
    await apply([doc('Volume', 'hostpg', { size: '128Mi' }), svc('1')]);
    await expectRows(port, 'CREATE TABLE IF NOT EXISTS t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100) ON CONFLICT DO NOTHING; SELECT count(*) FROM t', '100', 120_000, 'rows written');

    // kill -9 of the database (the container's pid 1): the agent starts it again on the same
    // volume, and postgres recovers from its WAL.
    const first = await instance('pghost-0');
    process.kill(first!.status.pid!, 'SIGKILL'); // a Running instance has a pid
    await eventually(async () => ((await instance('pghost-0'))?.status.restarts ?? 0) > (first?.status.restarts ?? 0) || undefined, 60_000, 'the restart counted');
    await expectRows(port, 'SELECT count(*), sum(n) FROM t', '100|5050', 120_000, 'rows after kill -9 of the container');

    // kill -9 of the all-in-one (server and agent in one process): the database, supervised by
    // conmon, keeps answering; the restarted agent adopts the same container.
    await expectRows(port, 'INSERT INTO t SELECT generate_series(101, 200) ON CONFLICT DO NOTHING; SELECT count(*) FROM t', '200', 30_000, 'more rows');
    const before = await instance('pghost-0');
    await server.kill9();
    await expectRows(port, 'SELECT count(*) FROM t', '200', 30_000, 'rows while Carapace is down');
    await server.start();
    await eventually(async () => ((await instance('pghost-0'))?.status.phase === 'Running' ? true : undefined), 60_000, 'adopted');
    expect((await instance('pghost-0'))?.status.containerId).toBe(before?.status.containerId);
    await expectRows(port, 'INSERT INTO t SELECT generate_series(201, 300) ON CONFLICT DO NOTHING; SELECT count(*) FROM t', '300', 60_000, 'rows after the restart');

    // A spec change re-creates the instance (a new container): same volume, same rows.
    await apply([svc('2')]);
    expect((await instance('pghost-0'))?.status.containerId).not.toBe(before?.status.containerId);
    await expectRows(port, 'SELECT count(*), sum(n) FROM t', `300|${(300 * 301) / 2}`, 120_000, 'rows after re-creation');
  }, 900_000);

  it("cell tier: rows survive kill -9 of the cell's QEMU (failover into another cell on the same host); a sandboxed client reaches it by name", async () => {
    const port = await freePort();
    await apply([doc('Volume', 'cellpg', { size: '128Mi' }), postgres('pgcell', { isolation: 'cell', group: 'data', ports: [{ containerPort: 5432, hostPort: port }], volumes: [{ volume: 'cellpg', mountPath: POSTGRES_VOLUME }] })]);
    await expectRows(port, 'CREATE TABLE IF NOT EXISTS t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100) ON CONFLICT DO NOTHING; SELECT count(*) FROM t', '100', 300_000, 'rows written in the cell');

    // A client in a gVisor sandbox on the host, with the password from the same Secret, finds
    // the database by its service name on the tenant's network.
    // Under `timeout`: a query in flight when the VM dies waits forever on a peer that can send
    // no reset (psql sets no TCP timeout), and the loop would print nothing more.
    const query = 'timeout 10 psql -h pgcell -U postgres -d postgres -At -c "SELECT count(*) FROM t" 2>&1 | sed "s/^/count: /"';
    await apply([
      doc('Service', 'pgclient', {
        image: images.postgres,
        isolation: 'sandbox',
        cpu: 0.25,
        memory: '64Mi',
        command: ['sh', '-c', `while true; do ${query}; sleep 2; done`],
        envFrom: [{ name: 'PGPASSWORD', secret: 'db', key: 'password' }],
      }),
    ]);
    await clientSees('count: 100', 120_000, 'the sandboxed client reads the count');

    // Kill the cell's VM once another (warm) cell is ready to take its instance.
    const lost = (await instance('pgcell-0'))?.spec.cell ?? '';
    await eventually(async () => (await cells()).some((c) => c.spec.tenant === '' && c.status.phase === 'Ready') || undefined, 300_000, 'a warm cell to fail over into');
    const cell = (await cells()).find((c) => c.metadata.name === lost);
    process.kill(cell!.status.pid!, 'SIGKILL'); // a Ready cell has a QEMU pid
    await eventually(
      async () => {
        const i = await instance('pgcell-0');
        return i?.spec.cell !== lost && i?.status.phase === 'Running' ? true : undefined;
      },
      300_000,
      'pgcell-0 running in another cell',
    );
    const home = (await instance('pgcell-0'))?.spec.cell;
    expect((await cells()).find((c) => c.metadata.name === home)?.spec).toMatchObject({ tenant: 'acme', group: 'data' });
    await expectRows(port, 'SELECT count(*), sum(n) FROM t', '100|5050', 300_000, 'rows after the failover');
    // The client's next answers come from the database's new home, by the same name (101
    // rows exist only from now on: any line saying so was read after the failover).
    await expectRows(port, 'INSERT INTO t VALUES (101) ON CONFLICT DO NOTHING; SELECT count(*) FROM t', '101', 30_000, 'one more row');
    await clientSees('count: 101', 120_000, 'the client reads the new count');
  }, 1_200_000);

  it('per-replica volumes: each replica keeps its own data across a scale down and up', async () => {
    const keeper = (replicas: number): object =>
      doc('Service', 'keeper', {
        image: images.busybox,
        isolation: 'host',
        replicas,
        cpu: 0.1,
        memory: '32Mi',
        command: ['sh', '-c', 'hostname >> /data/starts; echo "starts: $(tr "\\n" " " < /data/starts)"; exec sleep 3600'],
        volumeTemplates: [{ name: 'kdata', size: '16Mi', mountPath: '/data' }],
      });
    const logs = async (n: string): Promise<string> => (await cli(server.url, ['logs', `acme/${n}`])).stdout;
    await apply([keeper(2)]);
    await eventually(async () => (await logs('keeper-1')).includes('starts: keeper-1 ') || undefined, 60_000, 'keeper-1 started');
    await apply([keeper(1)]);
    await eventually(async () => ((await instance('keeper-1')) === undefined ? true : undefined), 60_000, 'keeper-1 gone');
    const vols = JSON.parse((await cli(server.url, ['get', 'volumes', '-o', 'json'])).stdout) as { items: { metadata: { name: string } }[] };
    expect(vols.items.map((v) => v.metadata.name)).toContain('kdata-1'); // kept on scale down
    await apply([keeper(2)]);
    await eventually(async () => (await logs('keeper-1')).includes('starts: keeper-1 keeper-1 ') || undefined, 60_000, 'keeper-1 back on its own volume');
    expect(await logs('keeper-0')).toContain('starts: keeper-0 ');
    expect(await logs('keeper-0')).not.toContain('keeper-1');
  }, 300_000);

  it('the password is in no log line, audit record, container log or store file', async () => {
    expect(server.log.length).toBeGreaterThan(0);
    expect(server.log).not.toContain(PASSWORD);
    const audit = await cli(server.url, ['audit', 'export', '-t', 'acme']);
    expect(audit.code).toBe(0);
    expect(audit.stdout).toMatch(/"kind":\s*"Secret"/); // the secret's creation is audited (keys and a fingerprint)
    expect(audit.stdout).not.toContain(PASSWORD);
    for (const n of ['pghost-0', 'pgcell-0', 'pgclient-0']) {
      const l = await cli(server.url, ['logs', `acme/${n}`]);
      expect(l.stdout.length, `${n}: ${l.stderr}`).toBeGreaterThan(0);
      expect(l.stdout + l.stderr, n).not.toContain(PASSWORD);
    }
    const yaml = await cli(server.url, ['get', 'secrets', 'acme/db', '-o', 'yaml']);
    expect(yaml.stdout).toContain('password');
    expect(yaml.stdout).not.toContain(PASSWORD);
    const stateDir = join(tmp.dir, 'state');
    const storeFiles = (await readdir(stateDir)).filter((f) => f.startsWith('store.db'));
    expect(storeFiles).toContain('store.db');
    for (const f of storeFiles) expect((await readFile(join(stateDir, f))).includes(PASSWORD), f).toBe(false);
  });
});
