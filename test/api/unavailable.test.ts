/**
 * The API over a real etcd that goes away: while the store cannot be reached every request
 * is answered 503 CARAPACE_E_UNAVAILABLE (retry later), never 500 (a bug) and never a hang;
 * once etcd is back, the same requests succeed.
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
import { AuditLog } from '../../src/audit/log.js';
import { openEtcdStore, type EtcdStore } from '../../src/store/etcd.js';
import { startTlsEtcd } from '../../src/pki/testing/etcd-pki.js';
import type { EtcdProcess } from '../../src/store/testing/etcd.js';
import type { Principal } from '../../src/auth/rbac.js';

let dir: string;
let etcd: EtcdProcess;
let store: EtcdStore;
let app: FastifyInstance;
const env = { now: () => new Date().toISOString(), newId: () => Math.random().toString(36).slice(2) };
const admin: Principal = { tokenId: 't', name: 'admin', role: 'cluster-admin' };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-unavail-'));
  etcd = await startTlsEtcd();
  store = await openEtcdStore({ ...etcd.storeOptions, callTimeoutMs: 2_000 });
  const audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  const resources = new Resources(store, audit, env);
  // Authentication is not what this test is about: every caller is an admin.
  app = buildApi({ controlPlane: new ControlPlane(resources, env), store, logs: { logs: async function* () {} }, logger: pino({ level: 'silent' }), auth: { authenticate: async () => admin }, env, audit });
  await app.ready();
}, 60_000);

afterAll(async () => {
  await app?.close();
  await store?.close();
  await etcd?.stop();
  await rm(dir, { recursive: true, force: true });
});

const tenant = (name: string): object => ({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name }, spec: {} });

describe('the API while its store is unreachable', () => {
  it('answers 503 CARAPACE_E_UNAVAILABLE to reads and writes, and serves again once the store is back', async () => {
    const auth = { authorization: 'Bearer x' };
    expect((await app.inject({ method: 'PUT', url: '/v1/tenants/a', payload: tenant('a'), headers: auth })).statusCode).toBe(201);
    await etcd.kill('SIGKILL');
    try {
      for (const req of [
        { method: 'PUT' as const, url: '/v1/tenants/b', payload: tenant('b') },
        { method: 'GET' as const, url: '/v1/tenants/a' },
        { method: 'GET' as const, url: '/v1/tenants' },
        { method: 'DELETE' as const, url: '/v1/tenants/a' },
      ]) {
        const r = await app.inject({ ...req, headers: auth });
        expect([req.method, req.url, r.statusCode, r.json().error.code]).toEqual([req.method, req.url, 503, 'CARAPACE_E_UNAVAILABLE']);
      }
    } finally {
      await etcd.restart();
    }
    const deadline = Date.now() + 20_000;
    let status = 0;
    while (Date.now() < deadline && status !== 200) {
      status = (await app.inject({ method: 'GET', url: '/v1/tenants/a', headers: auth })).statusCode;
      if (status !== 200) await new Promise((r) => setTimeout(r, 200));
    }
    expect(status).toBe(200);
    expect([200, 201]).toContain((await app.inject({ method: 'PUT', url: '/v1/tenants/b', payload: tenant('b'), headers: auth })).statusCode);
  }, 60_000);
});
