/**
 * A world for API tests, built one way: a real SQLite store and audit log in a temporary
 * directory, the real control plane behind the real HTTP edge (`app.inject`), the workload
 * controller (driven by the test: no agents run), a cluster-admin token, and a clock the test
 * moves (`setClock`). `call` sends a request with a token (default: the admin's).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { AuditLog } from '../../src/audit/log.js';
import type { Role } from '../../src/auth/rbac.js';
import { authenticate } from '../../src/auth/tokens.js';
import { bootstrapToken, issueToken } from '../../src/core/api-tokens.js';
import { contextFor } from '../../src/core/audit-context.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { WorkloadController } from '../../src/control/controller.js';
import type { Host } from '../../src/model/objects.js';
import { openSqliteStore, type SqliteStore } from '../../src/store/sqlite.js';

export interface ApiWorld {
  store: SqliteStore;
  resources: Resources;
  controller: WorkloadController;
  app: FastifyInstance;
  admin: string;
  setClock(ms: number): void;
  call(method: 'GET' | 'PUT' | 'POST' | 'DELETE', url: string, body?: unknown, token?: string): Promise<{ status: number; json: any; text: string }>;
  /** Mints a token of `role` (for `tenant`), returning its secret. */
  token(role: Role, tenant?: string): Promise<string>;
  /** Registers a Ready host with every tier. */
  addHost(name: string): Promise<void>;
  close(): Promise<void>;
}

/** A manifest of `kind` (tenant-scoped when `tenant` is given). */
export function manifest(kind: string, name: string, tenant: string | undefined, spec: Record<string, unknown>): Record<string, unknown> {
  return { apiVersion: 'carapace/v1', kind, metadata: { name, ...(tenant !== undefined ? { tenant } : {}) }, spec };
}

/** Opens a world at clock `t0` (epoch ms); `close()` it in afterAll. */
export async function openApiWorld(t0 = Date.parse('2026-03-01T00:00:00.000Z')): Promise<ApiWorld> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-api-world-'));
  let clock = t0;
  let n = 0;
  const env = { now: () => new Date(clock).toISOString(), newId: () => `id${++n}` };
  const store = await openSqliteStore({ path: join(dir, 'store.db') });
  const audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  const resources = new Resources(store, audit, env);
  const logger = pino({ level: 'silent' });
  const app = buildApi({ controlPlane: new ControlPlane(resources, env), store, logs: { logs: async function* () {} }, logger, auth: { authenticate: (t) => authenticate(store, t) }, env, audit });
  await app.ready();
  const controller = new WorkloadController({ resources, env, logger });
  const admin = (await bootstrapToken(resources, { id: 'admin', name: 'admin', now: env.now() }))!.token; // a fresh store bootstraps once
  const adminPrincipal = { tokenId: 'admin', name: 'admin', role: 'cluster-admin' as const };
  return {
    store,
    resources,
    controller,
    app,
    admin,
    setClock: (ms) => {
      clock = ms;
    },
    call: async (method, url, body, token = admin) => {
      const r = await app.inject({ method, url, headers: { authorization: `Bearer ${token}` }, ...(body !== undefined ? { payload: body as object } : {}) });
      let json: unknown;
      try {
        json = r.json();
      } catch {
        json = undefined;
      }
      return { status: r.statusCode, json, text: r.body };
    },
    token: async (role, tenant) =>
      (await issueToken(resources, contextFor(adminPrincipal), { id: `tok${++n}`, name: `${role} ${tenant ?? ''}`, role, ...(tenant !== undefined ? { tenant } : {}), now: env.now() })).token,
    addHost: async (name) => {
      const host: Host = {
        kind: 'Host',
        metadata: { name, uid: name, labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() },
        spec: { labels: {}, unschedulable: false, overcommit: { cpu: 4, memory: 1 } },
        status: { state: 'Ready', lastHeartbeatAt: env.now(), isolation: ['cell', 'dedicated', 'host', 'machine', 'sandbox'], capacity: { cpu: 8, memoryMiB: 16384 }, agentVersion: 'test' },
      };
      await resources.write(host, 0);
    },
    close: async () => {
      await app.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
