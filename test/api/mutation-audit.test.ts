/**
 * Invariant 3 for every mutating route of the route table, over real HTTP with a real SQLite
 * store and audit log: each request that changes something leaves exactly one audit record
 * (outcome `success`), and each refused one exactly one (outcome `failure`, with the code it
 * answered) — whether it was refused before the handler (no token) or by the core. The routes
 * come from ROUTES: a mutating route added later without a recipe here fails the test, and so
 * does one whose recipe shows a missing or doubled record. Then the whole log is searched for
 * every secret the run handed out (API tokens, join tokens) and every stored hash of one.
 *
 * A request that changes nothing (applying an unchanged manifest, cordoning a cordoned host,
 * revoking a revoked token) is not a mutation and writes no record; each recipe below therefore
 * starts from a state in which its request does change something.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { AuditLog } from '../../src/audit/log.js';
import type { AuditRecord } from '../../src/audit/record.js';
import { authenticate, type TokenRecord } from '../../src/auth/tokens.js';
import { CA_KEY, JOIN_TOKEN_PREFIX, TOKENS_KEY_PREFIX } from '../../src/model/keys.js';
import { ensureClusterCa } from '../../src/pki/x509.js';
import { recordAgentCert } from '../../src/core/agent-trust.js';
import { bootstrapToken } from '../../src/core/api-tokens.js';
import { SYSTEM } from '../../src/core/audit-context.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { newKeyLine, parseKeyring } from '../../src/keyring/keyring.js';
import type { Host, Instance } from '../../src/model/objects.js';
import { ROUTES, type RouteDef } from '../../src/model/routes.js';
import { parseJoinToken, type JoinTokenRecord } from '../../src/pki/agents.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';

let dir: string;
let store: Store;
let audit: AuditLog;
let app: FastifyInstance;
let base = '';
let admin = '';
/** Writes fixtures straight to the store, unaudited: the state a recipe starts from is not what it tests. */
let fixtures: Resources;
let n = 0;
const env = { now: () => new Date().toISOString(), newId: () => `id${++n}` };
/** Every secret the API handed out during the run. */
const secrets: string[] = [];

const IMG = '127.0.0.1:5000/x/web:1';
/** The servers' keyring: a new primary in front of the old key (a rotation under way). */
const OLD_LINE = newKeyLine();
const OLD_RING = parseKeyring(OLD_LINE);
const RING = parseKeyring(`${newKeyLine()}\n${OLD_LINE}`);
const manifest = (kind: string, name: string, tenant: string | undefined, spec: Record<string, unknown>): Record<string, unknown> => ({
  apiVersion: 'carapace/v1',
  kind,
  metadata: { name, ...(tenant !== undefined ? { tenant } : {}) },
  spec,
});
const SPECS: Record<string, Record<string, unknown>> = {
  Tenant: {},
  Service: { image: IMG, isolation: 'host' },
  Job: { image: IMG, isolation: 'host' },
  Machine: { kernel: 'host', running: false },
  Volume: { size: '64Mi' },
  Secret: { data: { password: 'mutation-audit-secret-value' } },
  Config: { data: { 'app.yaml': 'a: 1' } },
  // Of the volume `v` the recipes make first (a snapshot of an unbound volume: created, Failed).
  VolumeSnapshot: { volume: 'v' },
};

/** A volume `v` for a VolumeSnapshot recipe to name (unaudited fixture). */
async function volumeFixture(tenant: string): Promise<void> {
  await cp().handle({ type: 'apply', manifest: manifest('Volume', 'v', tenant, SPECS['Volume'] ?? {}) as never });
}

function host(name: string, cordoned = false): Host {
  const now = env.now();
  return {
    kind: 'Host',
    metadata: { name, uid: `uid-${name}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
    spec: { labels: {}, unschedulable: cordoned, ...(cordoned ? { draining: false } : {}) },
    status: { state: 'Ready', lastHeartbeatAt: now, isolation: ['host'], capacity: { cpu: 2, memoryMiB: 2048 }, agentVersion: 'test' },
  };
}

function instance(tenant: string, name: string): Instance {
  const now = env.now();
  return {
    kind: 'Instance',
    metadata: { name, tenant, uid: `uid-${name}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
    spec: { owner: { kind: 'Service', name: 'web', uid: 'svc' }, index: 0, host: '', container: { image: IMG, env: {}, cpu: 0.1, memory: 64, pids: 1024, readOnlyRootfs: false, isolation: 'host', group: 'default', ports: [] } },
    status: { phase: 'Pending', restarts: 0, ready: false },
  } as unknown as Instance; // the fields a delete reads; the rest is irrelevant here
}

/** One HTTP request as the recipes describe it. */
interface Call {
  path: string;
  body?: unknown;
  /** Default: the cluster-admin token; `null`: no Authorization header. */
  token?: string | null;
}

/**
 * How to exercise one mutating route: `setup` brings the store to a state where `success`
 * changes something; `refusal` is refused by the handler or the core (a token-less request is
 * tried on every route besides).
 */
interface Recipe {
  setup?: () => Promise<void>;
  success: Call;
  refusal: Call;
}

/** A fresh tenant for a recipe (unaudited fixture). */
async function tenantFixture(name: string): Promise<void> {
  await fixtures.write({ kind: 'Tenant', metadata: { name, uid: `uid-${name}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() }, spec: {} } as never, 0); // a stored Tenant as the core writes it
}

/** The recipes, keyed `METHOD url` as in ROUTES. */
function recipes(): Map<string, Recipe> {
  const m = new Map<string, Recipe>();
  for (const kind of ['Tenant', 'Service', 'Job', 'Machine', 'Volume', 'Secret', 'Config', 'VolumeSnapshot'] as const) {
    const scoped = kind !== 'Tenant';
    const plural = `${kind.toLowerCase()}s`;
    for (const method of ['PUT', 'POST'] as const) {
      const t = `t-${kind.toLowerCase()}-${method.toLowerCase()}`;
      const name = scoped ? 'obj' : t;
      const collection = scoped ? `/v1/tenants/${t}/${plural}` : `/v1/${plural}`;
      const url = scoped ? `/v1/tenants/:tenant/${plural}` : `/v1/${plural}`;
      m.set(`${method} ${method === 'PUT' ? `${url}/:name` : url}`, {
        ...(scoped ? { setup: () => tenantFixture(t).then(() => (kind === 'VolumeSnapshot' ? volumeFixture(t) : undefined)) } : {}),
        success: { path: method === 'PUT' ? `${collection}/${name}` : collection, body: manifest(kind, name, scoped ? t : undefined, SPECS[kind] ?? {}) },
        // The body is not a manifest: refused by the edge's parser.
        refusal: { path: method === 'PUT' ? `${collection}/${name}` : collection, body: {} },
      });
    }
  }
  for (const kind of ['Tenant', 'Service', 'Job', 'Machine', 'Volume', 'Instance', 'Secret', 'Config', 'VolumeSnapshot'] as const) {
    const t = `t-del-${kind.toLowerCase()}`;
    const item = kind === 'Tenant' ? `/v1/tenants/${t}` : `/v1/tenants/${t}/${kind.toLowerCase()}s/obj`;
    m.set(`DELETE ${kind === 'Tenant' ? '/v1/tenants/:name' : `/v1/tenants/:tenant/${kind.toLowerCase()}s/:name`}`, {
      setup: async () => {
        await tenantFixture(t);
        if (kind === 'VolumeSnapshot') await volumeFixture(t);
        if (kind === 'Instance') await fixtures.write(instance(t, 'obj'), 0);
        else if (kind !== 'Tenant') await cp().handle({ type: 'apply', manifest: manifest(kind, 'obj', t, SPECS[kind] ?? {}) as never }); // a valid manifest, applied unaudited below
      },
      success: { path: item },
      // Nothing of that name: refused by the core.
      refusal: { path: `${item}-missing` },
    });
  }
  for (const op of ['cordon', 'uncordon', 'drain'] as const) {
    const h = `h-${op}`;
    m.set(`POST /v1/hosts/:name/${op}`, {
      setup: () => fixtures.write(host(h, op === 'uncordon'), 0).then(() => undefined),
      success: { path: `/v1/hosts/${h}/${op}` },
      refusal: { path: `/v1/hosts/${h}-missing/${op}` },
    });
  }
  for (const op of ['undo', 'restart', 'pause', 'resume'] as const) {
    const t = `t-rollout-${op}`;
    m.set(`POST /v1/tenants/:tenant/services/:name/rollout/${op}`, {
      // A service with two revisions (image 1, then 2), as the controller records them; paused for resume.
      setup: async () => {
        await tenantFixture(t);
        await cp().handle({ type: 'apply', manifest: manifest('Service', 'web', t, { ...SPECS['Service'], image: IMG.replace(':1', ':2'), ...(op === 'resume' ? { rollout: { paused: true } } : {}) }) as never });
        await fixtures.mutate('Service', 'web', t, (s) => {
          const template = (image: string) => ({ ...s.spec, image, rollout: undefined, replicas: undefined, maxUnavailable: undefined }) as never; // a template as templateOf makes it
          s.status = { ...s.status, revision: 2, history: [1, 2].map((r) => ({ revision: r, template: template(IMG.replace(':1', `:${r}`)), createdAt: env.now(), generation: r, cause: 'update' as const })) };
          return s;
        });
      },
      success: { path: `/v1/tenants/${t}/services/web/rollout/${op}` },
      refusal: { path: op === 'undo' ? `/v1/tenants/${t}/services/web/rollout/undo?toRevision=9` : `/v1/tenants/${t}/services/missing/rollout/${op}` },
    });
  }
  m.set('POST /v1/secrets/reencrypt', {
    // A secret sealed under the old key (the control plane's keyring has a newer primary).
    setup: async () => {
      await tenantFixture('t-reencrypt');
      await new ControlPlane(fixtures, env, undefined, OLD_RING).handle({ type: 'apply', manifest: manifest('Secret', 'rotated', 't-reencrypt', SPECS['Secret'] ?? {}) as never });
    },
    success: { path: '/v1/secrets/reencrypt', body: { tenant: 't-reencrypt' } },
    refusal: { path: '/v1/secrets/reencrypt', body: { tenant: 't-reencrypt', extra: 1 } },
  });
  m.set('POST /v1/keys/reencrypt', {
    // The CA sealed under the old key (every secret is already under the primary: the route above ran first).
    setup: async () => {
      await fixtures.store.delete(CA_KEY);
      await ensureClusterCa(fixtures.store, OLD_RING);
    },
    success: { path: '/v1/keys/reencrypt', body: {} },
    refusal: { path: '/v1/keys/reencrypt', body: { tenant: 'acme' } },
  });
  m.set('POST /v1/tokens', {
    success: { path: '/v1/tokens', body: { name: 'ci deploy', role: 'tenant-viewer', tenant: 'acme' } },
    refusal: { path: '/v1/tokens', body: { name: 'ci deploy', role: 'emperor' } },
  });
  m.set('DELETE /v1/tokens/:name', {
    setup: async () => {
      const r = await call({ path: '/v1/tokens', body: { name: 'to revoke', role: 'cluster-admin' } }, 'POST');
      expect(r.status).toBe(201);
    },
    // By the name it was given.
    success: { path: `/v1/tokens/${encodeURIComponent('to revoke')}` },
    refusal: { path: '/v1/tokens/no-such-token' },
  });
  m.set('POST /v1/join-tokens', {
    success: { path: '/v1/join-tokens?ttlSeconds=600&description=rack%207' },
    refusal: { path: '/v1/join-tokens?ttlSeconds=1' },
  });
  for (const [method, url, path] of [
    ['POST', '/v1/agent-certs/:name/revoke', (h: string) => `/v1/agent-certs/${h}/revoke`],
    ['DELETE', '/v1/agent-certs/:name', (h: string) => `/v1/agent-certs/${h}`],
  ] as const) {
    const h = `h-cert-${method.toLowerCase()}`;
    m.set(`${method} ${url}`, {
      setup: () => recordAgentCert(new Resources(store), SYSTEM, { host: h, serial: '0a1b2c', notAfter: '2099-01-01T00:00:00.000Z', now: new Date(), via: 'join' }).then(() => undefined),
      success: { path: path(h) },
      refusal: { path: path(`${h}-missing`) },
    });
  }
  return m;
}

/** A control plane over the unaudited fixtures' Resources, for setting up objects. */
function cp(): ControlPlane {
  return new ControlPlane(fixtures, env, undefined, RING);
}

async function call(c: Call, method: string): Promise<{ status: number; json: any }> {
  const headers: Record<string, string> = {};
  const token = c.token === undefined ? admin : c.token;
  if (token !== null) headers['authorization'] = `Bearer ${token}`;
  if (c.body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(`${base}${c.path}`, { method, headers, ...(c.body !== undefined ? { body: JSON.stringify(c.body) } : {}) });
  const text = await r.text();
  const json = text === '' ? undefined : JSON.parse(text);
  // Whatever carries a secret is remembered, to search the audit log for it afterwards.
  for (const s of [json?.token]) if (typeof s === 'string') secrets.push(s);
  return { status: r.status, json };
}

async function records(): Promise<AuditRecord[]> {
  return (await audit.read()).records as AuditRecord[]; // all written by this log
}

/** Makes `c` and returns the records it left. */
async function recordsOf(c: Call, method: string): Promise<{ status: number; json: any; added: AuditRecord[] }> {
  const before = (await records()).length;
  const r = await call(c, method);
  return { ...r, added: (await records()).slice(before) };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-mutation-audit-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  const resources = new Resources(store, audit, env);
  fixtures = new Resources(store);
  app = buildApi({ controlPlane: new ControlPlane(resources, env, undefined, RING), store, logs: { logs: async function* () {} }, logger: pino({ level: 'silent' }), auth: { authenticate: (t) => authenticate(store, t) }, env, audit });
  base = (await app.listen({ port: 0, host: '127.0.0.1' })).replace('localhost', '127.0.0.1');
  admin = (await bootstrapToken(resources, { id: 'root', name: 'root', now: env.now() }))!.token; // a fresh store
  secrets.push(admin);
});

afterAll(async () => {
  await app.close();
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

describe('every mutating route of the route table', () => {
  const mutating: RouteDef[] = ROUTES.filter((r) => r.method !== 'GET' && !r.readOnly);

  it('has a recipe here (a route added without one fails until its audit record is proven)', () => {
    expect(mutating.length).toBeGreaterThan(20);
    expect([...recipes().keys()].sort()).toEqual(mutating.map((r) => `${r.method} ${r.url}`).sort());
  });

  for (const route of mutating) {
    const id = `${route.method} ${route.url}`;
    it(`${id}: one success record when it changes something, one failure record when refused`, async () => {
      const recipe = recipes().get(id);
      expect(recipe, `no recipe for ${id}`).toBeDefined();
      if (!recipe) return;
      await recipe.setup?.();

      const anonymous = await recordsOf({ ...recipe.refusal, token: null }, route.method);
      expect(anonymous.status).toBe(401);
      expect(anonymous.added.map((r) => [r.outcome, r.actor.id, r.detail?.['code']])).toEqual([['failure', 'anonymous', 'CARAPACE_E_UNAUTHENTICATED']]);

      const refused = await recordsOf(recipe.refusal, route.method);
      expect(refused.status, JSON.stringify(refused.json)).toBeGreaterThanOrEqual(400);
      expect(refused.status).toBeLessThan(500);
      expect(refused.added.map((r) => [r.outcome, r.actor.id, r.detail?.['code']])).toEqual([['failure', 'token:root', refused.json.error.code]]);

      const ok = await recordsOf(recipe.success, route.method);
      expect(ok.status, JSON.stringify(ok.json)).toBeLessThan(300);
      expect(ok.added.map((r) => [r.outcome, r.actor.id])).toEqual([['success', 'token:root']]);
      expect(ok.added[0]?.source).toBe('127.0.0.1');
    });
  }

  it('POST /v1/audit/verify changes nothing: no record when it answers, one failure record when refused', async () => {
    expect(ROUTES.filter((r) => r.readOnly).map((r) => `${r.method} ${r.url}`)).toEqual(['POST /v1/audit/verify']);
    const refused = await recordsOf({ path: '/v1/audit/verify', body: { checkpoints: 'no', publicKeys: [] } }, 'POST');
    expect(refused.status).toBe(400);
    expect(refused.added.map((r) => [r.outcome, r.actor.id, r.detail?.['code']])).toEqual([['failure', 'token:root', 'CARAPACE_E_VALIDATION']]);
    const ok = await recordsOf({ path: '/v1/audit/verify', body: { checkpoints: [], publicKeys: [] } }, 'POST');
    expect(ok.status, JSON.stringify(ok.json)).toBe(200);
    expect(ok.json.ok).toBe(true);
    expect(ok.added).toEqual([]);
  });

  it('leaves no secret, nor the hash of one, in any audit record', async () => {
    const hashes = [
      ...(await store.list<TokenRecord>(TOKENS_KEY_PREFIX)).items.map((e) => e.value.hash),
      ...(await store.list<JoinTokenRecord>(JOIN_TOKEN_PREFIX)).items.map((e) => e.value.hash),
    ];
    const joinTokens = secrets.filter((s) => s.startsWith('K1'));
    expect(joinTokens).toHaveLength(1);
    expect(secrets.filter((s) => s.startsWith('cpt_')).length).toBeGreaterThanOrEqual(3); // root, the created token, the one revoked
    expect(hashes.length).toBeGreaterThanOrEqual(4);
    const log = JSON.stringify(await audit.read());
    // Secret values applied through the Secret routes too.
    const parts = [...secrets, ...secrets.map((s) => (s.startsWith('K1') ? parseJoinToken(s).secret : s.split('.')[1] ?? s)), ...hashes, 'mutation-audit-secret-value'];
    for (const p of parts) expect(log.includes(p), `audit log holds ${p.slice(0, 12)}…`).toBe(false);
    expect((await audit.verify()).ok).toBe(true);
  });
});
