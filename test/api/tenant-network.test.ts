/**
 * Tenant networks through the real API over a real SQLite store with the audit log: a
 * service's address is claimed with its creation, kept across updates, released with its
 * deletion; a used-up service pool is refused with its stable code and audited; bad egress
 * rules and bad service names are refused at their exact field paths.
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
import { openSqliteStore } from '../../src/store/sqlite.js';
import { authenticate } from '../../src/auth/tokens.js';
import { bootstrapToken } from '../../src/core/api-tokens.js';
import { AuditLog } from '../../src/audit/log.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { vipClaimKey } from '../../src/model/keys.js';
import { NETWORK_DEFAULTS, networkPools } from '../../src/model/tenant-network.js';
import type { Store } from '../../src/store/store.js';

let dir: string;
let store: Store;
let app: FastifyInstance;
let audit: AuditLog;
let admin = '';
let n = 0;
const env = { now: () => '2026-01-01T00:00:00.000Z', newId: () => `uid-${++n}` };

const tenant = (name: string, spec: Record<string, unknown> = {}): Record<string, unknown> => ({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name }, spec });
const service = (name: string, t: string, spec: Record<string, unknown> = {}): Record<string, unknown> => ({
  apiVersion: 'carapace/v1',
  kind: 'Service',
  metadata: { name, tenant: t },
  spec: { image: '127.0.0.1:5000/x/web:1', isolation: 'host', ...spec },
});

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-api-net-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  audit = await AuditLog.open({ store, keyDir: join(dir, 'audit-keys') });
  const resources = new Resources(store, audit);
  // A service pool of two addresses, so running out is one apply away.
  const pools = networkPools({ ...NETWORK_DEFAULTS, servicePool: '10.112.0.0/30' });
  const auth = { authenticate: (t: string | undefined) => authenticate(store, t) };
  app = buildApi({ controlPlane: new ControlPlane(resources, env, pools), store, logs: { logs: async function* () {} }, logger: pino({ level: 'silent' }), auth, env, audit });
  await app.ready();
  admin = (await bootstrapToken(resources, { id: 'admin1', name: 'admin', now: env.now() }))!.token; // a fresh store bootstraps once
});

afterAll(async () => {
  await app.close();
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

async function call(method: 'GET' | 'PUT' | 'DELETE', url: string, body?: unknown): Promise<{ status: number; json: Record<string, any> }> {
  const r = await app.inject({ method, url, headers: { authorization: `Bearer ${admin}` }, ...(body !== undefined ? { payload: body as object } : {}) });
  return { status: r.statusCode, json: r.json() };
}

async function records(): Promise<AuditRecord[]> {
  return (await audit.read()).records as AuditRecord[]; // written by this test's log: well-formed
}

describe('tenant networks over the API', () => {
  it('claims a service address at creation, keeps it on update, releases it on deletion, refuses when none is left', async () => {
    expect((await call('PUT', '/v1/tenants/acme', tenant('acme'))).status).toBe(201);
    const web = await call('PUT', '/v1/tenants/acme/services/web', service('web', 'acme'));
    expect([web.status, web.json.status.address]).toEqual([201, '10.112.0.1']);
    const updated = await call('PUT', '/v1/tenants/acme/services/web', service('web', 'acme', { replicas: 3 }));
    expect([updated.status, updated.json.metadata.generation, updated.json.status.address]).toEqual([200, 2, '10.112.0.1']);
    expect((await call('GET', '/v1/tenants/acme/services/web')).json.status.address).toBe('10.112.0.1');
    expect((await call('PUT', '/v1/tenants/acme/services/api', service('api', 'acme'))).json.status.address).toBe('10.112.0.2');

    const refused = await call('PUT', '/v1/tenants/acme/services/db', service('db', 'acme'));
    expect([refused.status, refused.json.error.code]).toEqual([503, 'CARAPACE_E_NETWORK_POOL_EXHAUSTED']);
    expect(refused.json.error.message).toBe('service "db" in tenant "acme": no service address is left (every address of the service pool is taken); delete unused services');
    expect((await call('GET', '/v1/tenants/acme/services/db')).status).toBe(404);
    const audited = (await records()).filter((r) => r.outcome === 'failure' && r.target.name === 'db');
    expect(audited.map((r) => [r.action, r.detail?.['code']])).toEqual([['apply', 'CARAPACE_E_NETWORK_POOL_EXHAUSTED']]);

    expect((await call('DELETE', '/v1/tenants/acme/services/web')).status).toBe(200);
    expect(await store.get(vipClaimKey('10.112.0.1'))).toBeUndefined();
    expect((await records()).filter((r) => r.action === 'delete' && r.target.name === 'web' && r.outcome === 'success')).toHaveLength(1);
    // The released address is handed out again.
    expect((await call('PUT', '/v1/tenants/acme/services/db', service('db', 'acme'))).json.status.address).toBe('10.112.0.1');
    expect((await audit.verify()).ok).toBe(true);
  });

  it('refuses bad egress rules at their exact field paths, and keeps a good policy', async () => {
    const cases: [unknown, string, string][] = [
      [{ default: 'deny', allow: [{ cidr: '192.0.2.0/33' }] }, 'spec.network.egress.allow[0].cidr', 'must be an IPv4 CIDR such as 192.0.2.0/24'],
      [{ default: 'deny', allow: [{ cidr: '192.0.2.0/24' }, { cidr: '10.1.2.3/16' }] }, 'spec.network.egress.allow[1].cidr', 'has host bits set; did you mean 10.1.0.0/16?'],
      [{ default: 'deny', allow: [{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443, 70000] }] }, 'spec.network.egress.allow[0].ports[1]', 'must be a port from 1 to 65535'],
      [{ default: 'deny', allow: [{ cidr: '192.0.2.0/24', ports: [53] }] }, 'spec.network.egress.allow[0].protocol', 'is required when ports are given (tcp or udp)'],
    ];
    for (const [egress, path, message] of cases) {
      const r = await call('PUT', '/v1/tenants/strict', tenant('strict', { network: { egress } }));
      expect([r.status, r.json.error.code]).toEqual([400, 'CARAPACE_E_VALIDATION']);
      expect(r.json.error.details).toContainEqual({ path, message });
    }
    expect((await call('GET', '/v1/tenants/strict')).status).toBe(404);
    const ok = await call('PUT', '/v1/tenants/strict', tenant('strict', { network: { egress: { default: 'deny', allow: [{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443] }] } } }));
    expect(ok.status).toBe(201);
    expect(ok.json.spec.network).toEqual({ egress: { default: 'deny', allow: [{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443] }] } });
  });

  it('refuses a service name that is not a DNS label, at metadata.name', async () => {
    await call('PUT', '/v1/tenants/names', tenant('names'));
    const r = await app.inject({ method: 'POST', url: '/v1/tenants/names/services', headers: { authorization: `Bearer ${admin}` }, payload: service('Web_1', 'names') });
    expect([r.statusCode, r.json().error.code]).toEqual([400, 'CARAPACE_E_VALIDATION']);
    expect(r.json().error.details.map((d: { path: string }) => d.path)).toEqual(['metadata.name']);
  });
});
