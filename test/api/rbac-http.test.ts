/**
 * The RBAC matrix over real HTTP: every route of the route table (so a new endpoint cannot be
 * missed) x every principal (none, cluster-admin, tenant-admin, tenant-viewer of acme) x own
 * and other tenant, against a listening server over a real SQLite store holding objects of
 * two tenants (services, jobs, instances, cells, machines, tokens, audit records, usage).
 * The oracle is written from the rules, not from rbac.ts. Checks: zero unauthorised
 * successes (status and store unchanged), and zero leaks of the other tenant in lists,
 * single reads, logs, watch streams, the event stream, audit export, usage and tokens.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { ROUTES, type RouteDef } from '../../src/model/routes.js';
import { newKeyLine, parseKeyring } from '../../src/keyring/keyring.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { WorkloadController } from '../../src/control/controller.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import { authenticate } from '../../src/auth/tokens.js';
import { bootstrapToken, issueToken } from '../../src/core/api-tokens.js';
import { contextFor } from '../../src/core/audit-context.js';
import { AuditLog } from '../../src/audit/log.js';
import type { Store } from '../../src/store/store.js';
import type { Host } from '../../src/model/objects.js';
import type { LogLine } from '../../src/runtime/driver.js';

const OWN = 'acme';
const OTHER = 'globex';
type Who = 'none' | 'cluster-admin' | 'tenant-admin' | 'tenant-viewer';
const WHO: Who[] = ['none', 'cluster-admin', 'tenant-admin', 'tenant-viewer'];

let n = 0;
const env = { now: () => new Date().toISOString(), newId: () => `id${++n}x${Date.now().toString(36)}` };
let dir: string;
let store: Store;
let app: FastifyInstance;
let base = '';
const tokens: Record<Who, string> = { none: '', 'cluster-admin': '', 'tenant-admin': '', 'tenant-viewer': '' };
/** Per tenant: a cell name and a token id, to put in URLs. */
const cellOf: Record<string, string> = {};
const tokenIdOf: Record<string, string> = {};

const manifest = (kind: string, name: string, tenant: string | undefined, spec: Record<string, unknown>): Record<string, unknown> => ({
  apiVersion: 'carapace/v1',
  kind,
  metadata: { name, ...(tenant ? { tenant } : {}) },
  spec,
});
const IMG = '127.0.0.1:5000/x/web:1';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-rbac-http-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  const audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  const resources = new Resources(store, audit, env);
  const logger = pino({ level: 'silent' });
  // Logs name the tenant they belong to, so a leak would show.
  const logs = {
    logs: async function* (tenant: string, name: string): AsyncIterable<LogLine> {
      yield { time: env.now(), stream: 'stdout', text: `log of ${tenant}/${name}` };
    },
    machineLogs: async function* (tenant: string, name: string): AsyncIterable<LogLine> {
      yield { time: env.now(), stream: 'stdout', text: `console of ${tenant}/${name}` };
    },
  };
  app = buildApi({ controlPlane: new ControlPlane(resources, env, undefined, parseKeyring(newKeyLine())), store, logs, logger, auth: { authenticate: (t) => authenticate(store, t) }, env, audit });
  base = await app.listen({ port: 0, host: '127.0.0.1' });
  tokens['cluster-admin'] = (await bootstrapToken(resources, { id: 'root', name: 'root', now: env.now() }))!.token; // fresh store
  const root = { tokenId: 'root', name: 'root', role: 'cluster-admin' as const };
  tokens['tenant-admin'] = (await issueToken(resources, contextFor(root), { id: 'acmeadmin', name: 'acme admin', role: 'tenant-admin', tenant: OWN, now: env.now() })).token;
  tokens['tenant-viewer'] = (await issueToken(resources, contextFor(root), { id: 'acmeview', name: 'acme viewer', role: 'tenant-viewer', tenant: OWN, now: env.now() })).token;
  await issueToken(resources, contextFor(root), { id: 'globexadmin', name: 'globex admin', role: 'tenant-admin', tenant: OTHER, now: env.now() });
  // A third acme token to revoke: revoking the tokens the matrix uses would end the run early.
  await issueToken(resources, contextFor(root), { id: 'acmeci', name: 'acme ci', role: 'tenant-viewer', tenant: OWN, now: env.now() });
  tokenIdOf[OWN] = 'acmeci';
  tokenIdOf[OTHER] = 'globexadmin';
  const host: Host = {
    kind: 'Host',
    metadata: { name: 'h1', uid: 'h1', labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() },
    spec: { labels: {}, unschedulable: false, overcommit: { cpu: 4, memory: 1 } },
    status: { state: 'Ready', lastHeartbeatAt: env.now(), isolation: ['cell', 'dedicated', 'host', 'machine', 'sandbox'], capacity: { cpu: 8, memoryMiB: 16384 }, agentVersion: 'test' },
  };
  await resources.write(host, 0);
  const cp = new ControlPlane(resources, env, undefined, parseKeyring(newKeyLine()));
  const controller = new WorkloadController({ resources, env, logger });
  for (const t of [OWN, OTHER]) {
    await cp.handle({ type: 'apply', manifest: manifest('Tenant', t, undefined, {}) as never }); // parsed by the API normally; the shape is a valid manifest
    for (const [kind, name, spec] of [
      ['Service', 'web', { image: IMG, isolation: 'cell' }],
      ['Job', 'batch', { image: IMG, isolation: 'host' }],
      ['Machine', 'vm', { kernel: 'host', running: false }],
      ['Volume', 'data', { size: '64Mi' }],
      ['VolumeSnapshot', 'snap', { volume: 'data' }],
    ] as const) {
      const r = await request(`${base}/v1/tenants/${t}/${kind.toLowerCase()}s/${name}`, { method: 'PUT', headers: { authorization: `Bearer ${tokens['cluster-admin']}`, 'content-type': 'application/json' }, body: JSON.stringify(manifest(kind, name, t, spec)) });
      expect(r.statusCode, await r.body.text()).toBe(201);
    }
    await controller.reconcile(`Service/${t}/web`);
    await controller.reconcile(`Job/${t}/batch`);
    const cell = (await resources.list('Cell')).items.find((c) => c.spec.tenant === t);
    cellOf[t] = cell?.metadata.name ?? '';
    expect(cellOf[t]).not.toBe('');
  }
});

afterAll(async () => {
  await app.close();
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

/** The name a route's `:name` takes for a tenant. */
function nameFor(r: RouteDef, tenant: string): string {
  if (r.kind === 'tokens') return tokenIdOf[tenant] ?? '';
  switch (r.objectKind) {
    case 'Tenant':
      return tenant;
    case 'Service':
      return 'web';
    case 'Job':
      return 'batch';
    case 'Machine':
      return 'vm';
    case 'Volume':
      return 'data';
    case 'VolumeSnapshot':
      return 'snap';
    case 'Instance':
      return 'web-0';
    case 'Cell':
      return cellOf[tenant] ?? '';
    case 'Host':
      return 'h1';
    default:
      return 'x';
  }
}

/** Is the route about a tenant's own things, and which tenant does a request name? */
function routeNames(r: RouteDef): { tenantInPath: boolean; tenantAsName: boolean } {
  return { tenantInPath: r.url.includes(':tenant'), tenantAsName: r.url.includes(':name') && (r.objectKind === 'Tenant' || r.objectKind === 'Cell' || r.kind === 'tokens') };
}

type Verdict = 'allow' | 'unauthenticated' | 'forbidden' | 'hidden';

/** The rules, written from the brief (independently of src/auth). */
function oracle(r: RouteDef, who: Who, target: string | undefined): Verdict {
  const id = `${r.method} ${r.url}`;
  if (id === 'GET /healthz' || id === 'GET /openapi.json') return 'allow';
  if (who === 'none') return 'unauthenticated';
  if (who === 'cluster-admin') return 'allow';
  if (r.url === '/metrics' || r.url === '/v1/audit/verify' || r.objectKind === 'Host') return 'forbidden';
  if (r.url.startsWith('/v1/join-tokens') || r.url.startsWith('/v1/agent-certs')) return 'forbidden'; // the cluster's trust
  if (r.url === '/v1/secrets/reencrypt' || r.url === '/v1/keys/reencrypt') return 'forbidden'; // key rotation covers every tenant
  if (r.kind === 'tokens') {
    if (r.method === 'GET') return 'allow';
    if (who === 'tenant-viewer') return 'forbidden'; // cannot mint, nor revoke others' tokens
    return target === OTHER ? 'forbidden' : 'allow';
  }
  // exec and port-forward: GET handshakes that run code in / reach into a workload
  const write = r.method !== 'GET' || r.kind === 'exec' || r.kind === 'portforward';
  if (write && who === 'tenant-viewer') return 'forbidden';
  if (write && (r.objectKind === 'Tenant' || r.objectKind === 'Cell')) return 'forbidden';
  if (target === OTHER) return r.objectKind === 'Cell' ? 'hidden' : 'forbidden';
  return 'allow';
}

function bodyFor(r: RouteDef, tenant: string, name: string): unknown {
  if (r.kind === 'tokens') return { name: 'new', role: 'tenant-viewer', tenant };
  const fresh = `new${++n}`;
  const nm = r.method === 'PUT' ? name : fresh;
  switch (r.objectKind) {
    case 'Tenant':
      return manifest('Tenant', r.method === 'PUT' ? tenant : fresh, undefined, { displayName: 'changed' });
    case 'Service':
      return manifest('Service', nm, tenant, { image: IMG, isolation: 'cell', replicas: 1, env: { CHANGED: `${n}` } });
    case 'Job':
      return manifest('Job', nm, tenant, { image: IMG, isolation: 'host' });
    case 'Machine':
      return manifest('Machine', nm, tenant, { kernel: 'host', running: false, cpu: 1 });
    case 'Volume':
      return manifest('Volume', nm, tenant, { size: '64Mi' });
    case 'VolumeSnapshot':
      return manifest('VolumeSnapshot', nm, tenant, { volume: 'data' });
    default:
      return {};
  }
}

/**
 * Reads a response; streams (SSE, follow) are read for a moment after their headers and then
 * cut. The answer itself is waited for however long a loaded machine takes (the test's timeout
 * bounds it): only the reading of a body that never ends is cut.
 */
async function send(method: RouteDef['method'], url: string, token: string, body?: unknown): Promise<{ status: number; text: string }> {
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  try {
    const r = await request(url, {
      method,
      signal: ac.signal,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    timer = setTimeout(() => ac.abort(), 500);
    let text = '';
    try {
      for await (const chunk of r.body) text += String(chunk);
    } catch {
      // A stream cut by the abort above: what arrived is what we check.
    }
    return { status: r.statusCode, text };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * True when a response body shows the other tenant to an acme token. Audit records and events
 * of acme's own refused attempts on globex name globex (acme sent that name itself): those are
 * acme's records, not a leak.
 */
function leaksOther(route: RouteDef, text: string): boolean {
  if (!text.includes(OTHER)) return false;
  if (route.kind !== 'audit') return true;
  const records = text
    .split('\n')
    .map((l) => (l.startsWith('data: ') ? l.slice(6) : l))
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { actor?: { tenant?: string }; target?: { tenant?: string } });
  return records.some((r) => r.actor?.tenant !== OWN && r.target?.tenant !== OWN && (r as { tenant?: string }).tenant !== OWN);
}

describe('RBAC over HTTP, generated from the route table', () => {
  it('allows exactly what the rules allow and leaks nothing of the other tenant', async () => {
    const problems: string[] = [];
    let requests = 0;
    // Reads first, then writes, then deletes: so objects exist while they are read.
    const order = (r: RouteDef): number => (r.method === 'GET' ? 0 : r.method === 'DELETE' ? 2 : 1);
    for (const route of [...ROUTES].sort((a, b) => order(a) - order(b))) {
      const names = routeNames(route);
      // Token creation names its tenant in the body.
      const targets = names.tenantInPath || names.tenantAsName || (route.kind === 'tokens' && route.method === 'POST') ? [OWN, OTHER] : [undefined];
      for (const who of WHO) {
        for (const target of targets) {
          const t = target ?? OWN;
          let path = route.url.replace(':tenant', t).replace(':name', nameFor(route, t));
          // Streams replay from the start of history, so every past event is a candidate leak.
          if (route.kind === 'watch' || route.url === '/v1/events') path += '?resourceVersion=0';
          if (route.kind === 'logs') path += '?follow=false';
          const before = await store.revision();
          const body = route.method === 'PUT' || route.method === 'POST' ? bodyFor(route, t, nameFor(route, t)) : undefined;
          const res = await send(route.method, `${base}${path}`, tokens[who], body);
          requests++;
          const want = oracle(route, who, target);
          const what = `${who} ${route.method} ${path} -> ${res.status}`;
          if (res.status >= 500) problems.push(`${what}: server error ${res.text.slice(0, 200)}`);
          if (want === 'unauthenticated' && res.status !== 401) problems.push(`${what}: expected 401`);
          if (want === 'forbidden' && res.status !== 403) problems.push(`${what}: expected 403`);
          if (want === 'hidden' && res.status !== 404) problems.push(`${what}: expected 404 (another tenant's cell is not confirmed to exist)`);
          if (want === 'allow' && (res.status === 401 || res.status === 403)) problems.push(`${what}: expected to be allowed: ${res.text.slice(0, 200)}`);
          // A refused request changes nothing but the audit log's record of the refusal.
          if (want !== 'allow' && route.method !== 'GET') {
            const changed = (await store.list('')).items.filter((e) => e.version > before && !e.key.startsWith('audit/'));
            if (changed.length > 0) problems.push(`${what}: refused but changed ${changed.map((e) => e.key).join(', ')}`);
          }
          if ((who === 'tenant-admin' || who === 'tenant-viewer') && res.status < 300 && route.method === 'GET' && leaksOther(route, res.text)) {
            problems.push(`${what}: leaks ${OTHER}: ${res.text.slice(0, 300)}`);
          }
        }
      }
    }
    expect(problems).toEqual([]);
    // Every route x principal x tenant variant was exercised.
    expect(requests).toBeGreaterThan(ROUTES.length * WHO.length);
  }, 240_000);
  it("revokes by name only among the tokens the caller may revoke: another tenant's token of that name is neither matched nor confirmed", async () => {
    const live = async (): Promise<{ id: string; tenant?: string }[]> =>
      (JSON.parse((await send('GET', `${base}/v1/tokens`, tokens['cluster-admin'])).text) as { items: { id: string; name: string; tenant?: string; revokedAt?: string }[] }).items.filter((t) => t.name === 'shared name' && !t.revokedAt);
    const other = await send('POST', `${base}/v1/tokens`, tokens['cluster-admin'], { name: 'shared name', role: 'tenant-viewer', tenant: OTHER });
    expect(other.status).toBe(201);
    const byName = `${base}/v1/tokens/${encodeURIComponent('shared name')}`;
    const hidden = await send('DELETE', byName, tokens['tenant-admin']);
    expect([hidden.status, JSON.parse(hidden.text).error.code]).toEqual([404, 'CARAPACE_E_NOT_FOUND']);
    expect(hidden.text).not.toContain(OTHER);
    expect(await live()).toHaveLength(1);
    // With an acme token of the same name, the name is unambiguous for acme's admin: two live
    // tokens share it, but acme's admin may revoke only its own.
    expect((await send('POST', `${base}/v1/tokens`, tokens['cluster-admin'], { name: 'shared name', role: 'tenant-viewer', tenant: OWN })).status).toBe(201);
    const mine = await send('DELETE', byName, tokens['tenant-admin']);
    expect(mine.status, mine.text).toBe(200);
    expect(JSON.parse(mine.text).revoked.tenant).toBe(OWN);
    expect((await live()).map((t) => t.tenant)).toEqual([OTHER]);
  });
});
