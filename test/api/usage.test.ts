/**
 * Usage accounting end to end over a real SQLite store, the real API, control plane and
 * controller, with a clock the test moves: known allocations (placements, a scale-down, a
 * cell) and known samples produce exactly the expected report; per-cell rows add up to the
 * tenant row; a tenant token sees only its own tenant; bad queries get codes and paths.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { WorkloadController } from '../../src/control/controller.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import { authenticate } from '../../src/auth/tokens.js';
import { bootstrapToken, issueToken } from '../../src/core/api-tokens.js';
import { contextFor } from '../../src/core/audit-context.js';
import { AuditLog } from '../../src/audit/log.js';
import type { SampleBatch } from '../../src/usage/samples.js';
import { sampleBatchKey } from '../../src/model/keys.js';
import type { Store } from '../../src/store/store.js';
import type { Host, Instance } from '../../src/model/objects.js';

const T0 = Date.parse('2026-03-01T00:00:00.000Z');
const H = 3_600_000;
const MIB = 1_048_576n;
let clock = T0;
let n = 0;
const env = { now: () => new Date(clock).toISOString(), newId: () => `id${++n}` };

let dir: string;
let store: Store;
let app: FastifyInstance;
let resources: Resources;
let controller: WorkloadController;
let admin = '';
let acmeViewer = '';

async function call(method: 'GET' | 'PUT' | 'DELETE', url: string, token = admin, body?: unknown): Promise<{ status: number; json: any; text: string }> {
  const r = await app.inject({ method, url, headers: { authorization: `Bearer ${token}` }, ...(body !== undefined ? { payload: body as object } : {}) });
  let json: unknown;
  try {
    json = r.json();
  } catch {
    json = undefined;
  }
  return { status: r.statusCode, json, text: r.body };
}

const manifest = (kind: string, name: string, tenant: string | undefined, spec: Record<string, unknown>): Record<string, unknown> => ({
  apiVersion: 'carapace/v1',
  kind,
  metadata: { name, ...(tenant ? { tenant } : {}) },
  spec,
});

async function reconcileAll(): Promise<void> {
  for (const t of ['acme', 'globex']) for (const s of ['web', 'api']) await controller.reconcile(`Service/${t}/${s}`);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-usage-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  const audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  resources = new Resources(store, audit, env);
  const logger = pino({ level: 'silent' });
  app = buildApi({ controlPlane: new ControlPlane(resources, env), store, logs: { logs: async function* () {} }, logger, auth: { authenticate: (t) => authenticate(store, t) }, env, audit });
  await app.ready();
  controller = new WorkloadController({ resources, env, logger });
  admin = (await bootstrapToken(resources, { id: 'admin', name: 'admin', now: env.now() }))!.token; // fresh store: bootstraps
  const adminPrincipal = { tokenId: 'admin', name: 'admin', role: 'cluster-admin' as const };
  acmeViewer = (await issueToken(resources, contextFor(adminPrincipal), { id: 'acmeview', name: 'acme viewer', role: 'tenant-viewer', tenant: 'acme', now: env.now() })).token;
  const host: Host = {
    kind: 'Host',
    metadata: { name: 'h1', uid: 'h1', labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() },
    spec: { labels: {}, unschedulable: false, overcommit: { cpu: 4, memory: 1 } },
    status: { state: 'Ready', lastHeartbeatAt: env.now(), isolation: ['cell', 'dedicated', 'host', 'sandbox'], capacity: { cpu: 8, memoryMiB: 16384 }, agentVersion: 'test' },
  };
  await resources.write(host, 0);
});

afterAll(async () => {
  await app.close();
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

describe('usage reports', () => {
  it('reports exactly what known allocations and samples add up to', async () => {
    // t0: acme runs web (2 x 0.5 cpu / 256 MiB on the host) and api (0.25 cpu / 128 MiB in a cell);
    // globex runs web (1 x 1 cpu / 512 MiB on the host).
    for (const t of ['acme', 'globex']) expect((await call('PUT', `/v1/tenants/${t}`, admin, manifest('Tenant', t, undefined, {}))).status).toBe(201);
    const img = '127.0.0.1:5000/x/web:1';
    expect((await call('PUT', '/v1/tenants/acme/services/web', admin, manifest('Service', 'web', 'acme', { image: img, isolation: 'host', replicas: 2, cpu: 0.5, memory: 256 }))).status).toBe(201);
    expect((await call('PUT', '/v1/tenants/acme/services/api', admin, manifest('Service', 'api', 'acme', { image: img, isolation: 'cell', cpu: 0.25, memory: 128 }))).status).toBe(201);
    expect((await call('PUT', '/v1/tenants/globex/services/web', admin, manifest('Service', 'web', 'globex', { image: img, isolation: 'host', cpu: 1, memory: 512 }))).status).toBe(201);
    await reconcileAll();
    const placed = (await resources.list('Instance')).items;
    expect(placed.map((i) => `${i.metadata.tenant}/${i.metadata.name}@${i.spec.host}`).sort()).toEqual(['acme/api-0@h1', 'acme/web-0@h1', 'acme/web-1@h1', 'globex/web-0@h1']);
    const cell = placed.find((i) => i.metadata.name === 'api-0')?.spec.cell ?? '';
    expect(cell).not.toBe('');

    // t0+1h: acme scales web to 1; its agent removes web-1 (the allocation ends with the object).
    clock = T0 + H;
    expect((await call('PUT', '/v1/tenants/acme/services/web', admin, manifest('Service', 'web', 'acme', { image: img, isolation: 'host', replicas: 1, cpu: 0.5, memory: 256 }))).status).toBe(200);
    await reconcileAll();
    expect((await resources.get('Instance', 'web-1', 'acme'))?.metadata.deletionRequestedAt).toBeDefined();
    expect(await resources.remove('Instance', 'web-1', 'acme')).toBe(true);
    // A status change that does not change the allocation writes no new record.
    const before = (await store.list('usage/')).items.length;
    await resources.mutate('Instance', 'web-0', 'acme', (i: Instance) => ((i.status = { ...i.status, phase: 'Running' }), i));
    expect((await store.list('usage/')).items.length).toBe(before);

    // Measured: the host sampled acme/web-0 twice (1,800 core-seconds between them), and the cell's QEMU.
    const web0 = (await resources.get('Instance', 'web-0', 'acme'))!; // placed above
    const subject = { kind: 'instance' as const, tenant: 'acme', group: 'default', name: 'web-0', uid: web0.metadata.uid };
    const cellObj = (await resources.get('Cell', cell))!; // created by the controller above
    const cellSubject = { kind: 'cell' as const, tenant: 'acme', group: 'default', name: cell, uid: cellObj.metadata.uid };
    const batch = (t: number, cpu: number, qemuCpu: number): SampleBatch => ({
      host: 'h1',
      time: t,
      samples: [
        { subject, time: t, cpuSecondsTotal: cpu, memoryBytes: 100 * 1_048_576, source: 'c1' },
        { subject: cellSubject, time: t, cpuSecondsTotal: qemuCpu, memoryBytes: 300 * 1_048_576, source: 'pid:1' },
      ],
    });
    await store.put(sampleBatchKey(T0 + 10 * 60_000, 'h1'), batch(T0 + 10 * 60_000, 5, 100));
    await store.put(sampleBatchKey(T0 + 70 * 60_000, 'h1'), batch(T0 + 70 * 60_000, 1805, 400));

    clock = T0 + 2 * H;
    const since = new Date(T0).toISOString();
    const until = new Date(T0 + 2 * H).toISOString();
    const r = await call('GET', `/v1/usage?since=${since}&until=${until}&by=tenant`);
    expect(r.status).toBe(200);
    const rows = r.json.rows as { tenant: string; charged: { cpuUs: string; memByteMs: string }; used: { cpuUs: string }; reserved: Record<string, { cpuUs: string; memByteMs: string }>; measured: Record<string, { cpuUs: string; memByteMs: string }> }[];
    const acme = rows.find((x) => x.tenant === 'acme')!; // acme has usage
    const globex = rows.find((x) => x.tenant === 'globex')!; // globex too
    const cpuUs = (cores: number, ms: number): bigint => BigInt(cores * 1000) * BigInt(ms); // millicore-ms = cpu-us
    const memBms = (mib: bigint, ms: number): bigint => mib * MIB * BigInt(ms);
    // web-0 2h + web-1 1h at 0.5 cpu / 256 MiB.
    expect(BigInt(acme.reserved['hostInstances']!.cpuUs)).toBe(cpuUs(0.5, 3 * H));
    expect(BigInt(acme.reserved['hostInstances']!.memByteMs)).toBe(memBms(256n, 3 * H));
    // The cell: 2 cpu / 2048 MiB for 2h; api inside it: 0.25 / 128 MiB for 2h.
    expect(BigInt(acme.reserved['cells']!.cpuUs)).toBe(cpuUs(2, 2 * H));
    expect(BigInt(acme.reserved['cells']!.memByteMs)).toBe(memBms(2048n, 2 * H));
    expect(BigInt(acme.reserved['cellInstances']!.cpuUs)).toBe(cpuUs(0.25, 2 * H));
    // Charged = cells + host instances (what is held on the host); the in-cell share is not billed twice.
    expect(BigInt(acme.charged.cpuUs)).toBe(cpuUs(2, 2 * H) + cpuUs(0.5, 3 * H));
    expect(BigInt(globex.charged.cpuUs)).toBe(cpuUs(1, 2 * H));
    // Measured: 1,800 core-seconds for web-0, 300 for QEMU (counters lose nothing over a long
    // gap); memory is a gauge: each sample stands for at most 60 s (we do not know what it was
    // in between), so two samples an hour apart count 2 x 60 s of 100 MiB.
    expect(BigInt(acme.measured['hostInstances']!.cpuUs)).toBe(1_800_000_000n);
    expect(BigInt(acme.measured['cells']!.cpuUs)).toBe(300_000_000n);
    expect(BigInt(acme.used.cpuUs)).toBe(2_100_000_000n);
    expect(BigInt(acme.measured['hostInstances']!.memByteMs)).toBe(100n * MIB * 120_000n);

    // By cell: rows add up to the tenant row exactly.
    const byCell = (await call('GET', `/v1/usage?since=${since}&until=${until}&by=cell&tenant=acme`)).json.rows as typeof rows;
    expect(byCell.map((x: any) => x.cell).sort()).toEqual(['', cell]);
    const sum = (k: 'charged' | 'used'): bigint => byCell.reduce((a, x) => a + BigInt(x[k].cpuUs), 0n);
    expect(sum('charged')).toBe(BigInt(acme.charged.cpuUs));
    expect(sum('used')).toBe(BigInt(acme.used.cpuUs));

    // Adjacent windows add up to the whole.
    const mid = new Date(T0 + 45 * 60_000).toISOString();
    const a = (await call('GET', `/v1/usage?since=${since}&until=${mid}&tenant=acme`)).json.rows[0];
    const b = (await call('GET', `/v1/usage?since=${mid}&until=${until}&tenant=acme`)).json.rows[0];
    expect(BigInt(a.charged.cpuUs) + BigInt(b.charged.cpuUs)).toBe(BigInt(acme.charged.cpuUs));
    expect(BigInt(a.used.cpuUs) + BigInt(b.used.cpuUs)).toBe(BigInt(acme.used.cpuUs));

    // CSV and table render the same figures rounded for people.
    const csv = (await call('GET', `/v1/usage?since=${since}&until=${until}&format=csv`)).text.split('\n');
    expect(csv[0]?.startsWith('tenant,group,cell,charged_cpu_s,charged_mem_mib_s')).toBe(true);
    expect(csv.find((l) => l.startsWith('acme,'))?.split(',')[3]).toBe('19800.000000');
  });

  it("gives a tenant token only its tenant's usage, whatever it asks for", async () => {
    const since = new Date(T0).toISOString();
    const until = new Date(T0 + 2 * H).toISOString();
    for (const q of ['', '&tenant=globex', '&by=cell', '&by=group&tenant=globex']) {
      const r = await call('GET', `/v1/usage?since=${since}&until=${until}${q}`, acmeViewer);
      expect(r.status).toBe(200);
      expect(r.json.rows.length).toBeGreaterThan(0);
      expect(r.json.rows.every((x: { tenant: string }) => x.tenant === 'acme')).toBe(true);
    }
    expect((await call('GET', '/v1/usage', 'cpt_nope.nope')).status).toBe(401);
  });

  it('refuses bad queries with a code and the parameter', async () => {
    for (const [q, path] of [
      ['by=host', 'query.by'],
      ['format=xml', 'query.format'],
      ['since=yesterday', 'query.since'],
      ['since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z', 'query.until'],
      ['since=2020-01-01T00:00:00Z&until=2026-01-01T00:00:00Z', 'query.since'],
    ] as const) {
      const r = await call('GET', `/v1/usage?${q}`);
      expect(r.status, q).toBe(400);
      expect(r.json.error.code).toBe('CARAPACE_E_BAD_QUERY');
      expect(r.json.error.details[0].path).toBe(path);
    }
  });
});
