import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ROUTES, type RouteDef } from '../model/routes.js';
import { KINDS, type Kind } from '../model/objects.js';
import {
  authorize,
  canCreateToken,
  canRevokeToken,
  canSee,
  classifyRoute,
  filterList,
  PUBLIC_ROUTES,
  requestFor,
  ROLES,
  type Principal,
  type Role,
} from './rbac.js';

const OWN = 'acme';
const OTHER = 'globex';

const principals: Record<'none' | Role, Principal | undefined> = {
  none: undefined,
  'cluster-admin': { tokenId: 'root', name: 'root', role: 'cluster-admin' },
  'tenant-admin': { tokenId: 'ta', name: 'ta', role: 'tenant-admin', tenant: OWN },
  'tenant-viewer': { tokenId: 'tv', name: 'tv', role: 'tenant-viewer', tenant: OWN },
};

function isPublic(r: RouteDef): boolean {
  return PUBLIC_ROUTES.includes(`${r.method} ${r.url}`);
}

/** The tenant a request names in its URL or query (what a tenant role must own), if any. */
function namedTenant(r: RouteDef, params: { tenant?: string; name?: string }, queryTenant: string | undefined): string | undefined {
  if (r.url.includes(':tenant')) return params.tenant;
  if (r.objectKind === 'Tenant' && r.url.includes(':name')) return params.name;
  // The server refuses ?tenant= on watches of cluster kinds; only scoped kinds are narrowed by it.
  if (r.kind === 'watch' && r.objectKind !== undefined && KINDS[r.objectKind].scoped) return queryTenant;
  return undefined;
}

/**
 * The matrix: every route x every principal x the tenant named in the URL (own / other) x
 * the watch query tenant (absent / own / other). The oracle below is written from the rules
 * in the brief, independently of rbac.ts's classification.
 */
interface Cell {
  route: RouteDef;
  who: keyof typeof principals;
  params: { tenant?: string; name?: string };
  queryTenant: string | undefined;
}

// Casts in this file: Object.keys/entries of literal records (keys are exactly the declared
// ones) and fc.constantFrom of literal unions (the values listed are members of the union).
function cells(): Cell[] {
  const out: Cell[] = [];
  for (const route of ROUTES) {
    const tenantChoices = route.url.includes(':tenant') || (route.objectKind === 'Tenant' && route.url.includes(':name')) ? [OWN, OTHER] : [undefined];
    const queryChoices = route.kind === 'watch' && route.objectKind !== undefined && KINDS[route.objectKind].scoped ? [undefined, OWN, OTHER] : [undefined];
    for (const who of Object.keys(principals) as (keyof typeof principals)[]) {
      for (const t of tenantChoices) {
        for (const q of queryChoices) {
          const params: Cell['params'] = {};
          if (route.url.includes(':tenant')) params.tenant = t;
          if (route.url.includes(':name')) params.name = route.objectKind === 'Tenant' ? t : 'web';
          out.push({ route, who, params, queryTenant: q });
        }
      }
    }
  }
  return out;
}

function expected(c: Cell): 'allow' | 'unauthenticated' | 'forbidden' {
  if (isPublic(c.route)) return 'allow';
  if (c.who === 'none') return 'unauthenticated';
  if (c.who === 'cluster-admin') return 'allow';
  if (c.route.url === '/metrics' || c.route.url === '/v1/audit/verify') return 'forbidden'; // every tenant's data: operators only
  if (c.route.url.startsWith('/v1/join-tokens') || c.route.url.startsWith('/v1/agent-certs')) return 'forbidden'; // the cluster's trust: operators only
  if (c.route.url === '/v1/secrets/reencrypt' || c.route.url === '/v1/keys/reencrypt') return 'forbidden'; // key rotation covers every tenant: operators only
  if (c.route.url === '/v1/audit/records' || c.route.url === '/v1/events' || c.route.url === '/v1/usage') return 'allow'; // the handler narrows to the caller's tenant
  if (c.route.kind === 'tokens') return 'allow'; // the token handlers check grants themselves (tokens.test.ts)
  const kind = c.route.objectKind;
  if (kind === 'Host') return 'forbidden';
  // exec's and port-forward's handshakes are GETs, but they run code in / reach into a workload: writes.
  const write = c.route.method !== 'GET' || c.route.kind === 'exec' || c.route.kind === 'portforward';
  if (write && c.who === 'tenant-viewer') return 'forbidden';
  if (write && (kind === 'Tenant' || kind === 'Cell')) return 'forbidden';
  const named = namedTenant(c.route, c.params, c.queryTenant);
  if (named !== undefined && named !== OWN) return 'forbidden';
  return 'allow';
}

describe('RBAC matrix generated from ROUTES', () => {
  const matrix = cells();

  it('covers every route for every principal', () => {
    expect(new Set(matrix.map((c) => `${c.route.method} ${c.route.url}`)).size).toBe(ROUTES.length);
    // Recorded for the report: routes x principals x tenant/query variants.
    expect(matrix.length).toBeGreaterThan(ROUTES.length * 4);
  });

  it('matches the oracle in every cell: zero unauthorised successes, no wrongful refusals', () => {
    const wrong: string[] = [];
    for (const c of matrix) {
      const d = authorize(principals[c.who], requestFor(c.route, c.params, c.queryTenant !== undefined ? { tenant: c.queryTenant } : {}));
      const got = d.allowed ? 'allow' : d.code === 'CARAPACE_E_UNAUTHENTICATED' ? 'unauthenticated' : 'forbidden';
      const want = expected(c);
      if (got !== want) wrong.push(`${c.who} ${c.route.method} ${c.route.url} ${JSON.stringify(c.params)} q=${c.queryTenant ?? '-'}: got ${got}, want ${want}`);
    }
    expect(wrong).toEqual([]);
  });

  it('refuses every non-GET route, exec and port-forward to viewers, and every host route to tenant roles', () => {
    for (const c of matrix) {
      const d = authorize(principals[c.who], requestFor(c.route, c.params, c.queryTenant !== undefined ? { tenant: c.queryTenant } : {}));
      // Token routes are admitted for any valid token; their handlers enforce grants (tokens.test.ts).
      if (c.who === 'tenant-viewer' && (c.route.method !== 'GET' || c.route.kind === 'exec' || c.route.kind === 'portforward') && c.route.kind !== 'tokens') expect(d.allowed).toBe(false);
      if ((c.who === 'tenant-viewer' || c.who === 'tenant-admin') && c.route.objectKind === 'Host') expect(d.allowed).toBe(false);
      if (c.who === 'cluster-admin') expect(d).toMatchObject({ allowed: true });
    }
  });

  it('marks every allowed tenant-role request that does not name the tenant for filtering', () => {
    for (const c of matrix) {
      if (c.who !== 'tenant-admin' && c.who !== 'tenant-viewer') continue;
      if (isPublic(c.route)) continue;
      const d = authorize(principals[c.who], requestFor(c.route, c.params, c.queryTenant !== undefined ? { tenant: c.queryTenant } : {}));
      if (!d.allowed || c.route.kind === 'tokens' || c.route.kind === 'audit' || c.route.kind === 'usage' || c.route.kind === 'whoami' || c.route.kind === 'version') continue; // these handlers narrow to the caller themselves
      const named = namedTenant(c.route, c.params, c.queryTenant);
      if (named === undefined) expect(d.postFilter, `${c.route.method} ${c.route.url}`).toBeDefined();
      if (c.route.kind === 'watch') expect(d.postFilter).toBe('events');
    }
  });

  it('classifies every route in ROUTES (a new route must be taught to authorize, or it is denied to all)', () => {
    const unclassified = ROUTES.filter((r) => classifyRoute(r) === undefined).map((r) => `${r.method} ${r.url}`);
    expect(unclassified).toEqual([]);
  });

  it('denies unknown route shapes to everyone, cluster-admin included (default deny)', () => {
    const unknown: RouteDef[] = [
      { method: 'POST', url: '/v1/admin/reset', summary: '', kind: 'meta' },
      { method: 'GET', url: '/debug/pprof', summary: '', kind: 'meta' },
      { method: 'GET', url: '/v1/services/:name', summary: '', kind: 'action', objectKind: 'Service', action: 'get' },
      { method: 'POST', url: '/v1/tenants/:tenant/services/:name', summary: '', kind: 'action', objectKind: 'Service', action: 'get' },
      { method: 'DELETE', url: '/v1/watch/services', summary: '', kind: 'watch', objectKind: 'Service' },
      { method: 'GET', url: '/v1/tenants/:tenant/hosts', summary: '', kind: 'action', objectKind: 'Host', action: 'list' },
      { method: 'GET', url: '/v1/widgets', summary: '', kind: 'action', objectKind: 'Widget' as Kind, action: 'list' }, // deliberately not a Kind
      { method: 'GET', url: '/v1/services', summary: '', kind: 'action', objectKind: 'Service' }, // no action
    ];
    for (const r of unknown) {
      expect(classifyRoute(r), `${r.method} ${r.url}`).toBeUndefined();
      for (const p of Object.values(principals)) expect(authorize(p, requestFor(r, { tenant: OWN, name: OWN })).allowed).toBe(false);
    }
  });

  it('holds the safety rules for arbitrary routes, params and principals (property)', () => {
    const name = fc.oneof(fc.constant(OWN), fc.constant(OTHER), fc.string({ maxLength: 8 }));
    const principal = fc.oneof(
      fc.constant(undefined),
      fc.record({ tokenId: fc.constant('x'), name: fc.constant('x'), role: fc.constantFrom(...ROLES), tenant: fc.option(name, { nil: undefined }) }),
    );
    const route = fc.oneof(
      fc.constantFrom(...ROUTES),
      fc.record({
        method: fc.constantFrom('GET', 'PUT', 'POST', 'DELETE') as fc.Arbitrary<RouteDef['method']>,
        url: fc.constantFrom(...ROUTES.map((r) => r.url), '/v1/x/:tenant', '/other'),
        summary: fc.constant(''),
        kind: fc.constantFrom('action', 'logs', 'exec', 'portforward', 'watch', 'meta') as fc.Arbitrary<RouteDef['kind']>,
        objectKind: fc.option(fc.constantFrom(...(Object.keys(KINDS) as Kind[])), { nil: undefined }),
        action: fc.option(fc.constantFrom('apply', 'create', 'get', 'list', 'listAll', 'delete') as fc.Arbitrary<NonNullable<RouteDef['action']>>, { nil: undefined }),
      }),
    );
    fc.assert(
      fc.property(principal, route, fc.option(name, { nil: undefined }), fc.option(name, { nil: undefined }), fc.option(name, { nil: undefined }), (p, r, t, n, q) => {
        const d = authorize(p, requestFor(r, { ...(t !== undefined ? { tenant: t } : {}), ...(n !== undefined ? { name: n } : {}) }, q !== undefined ? { tenant: q } : {}));
        if (!d.allowed) return;
        if (isPublic(r) || r.kind === 'tokens' || r.kind === 'audit' || r.kind === 'usage' || r.kind === 'whoami') return; // these handlers check the caller themselves
        if (r.kind === 'version') return; // the server's version: no tenant's data, any valid token
        // Allowed and not public: the route is known, the principal is valid.
        expect(classifyRoute(r)).toBeDefined();
        expect(p).toBeDefined();
        if (p === undefined || p.role === 'cluster-admin') return;
        expect(p.tenant).toBeTruthy();
        expect(r.objectKind).not.toBe('Host');
        if (p.role === 'tenant-viewer') expect(r.method).toBe('GET');
        if (p.role === 'tenant-viewer') expect(r.kind).not.toBe('exec');
        if (p.role === 'tenant-viewer') expect(r.kind).not.toBe('portforward');
        if (r.method !== 'GET') expect(['Tenant', 'Cell', 'Host']).not.toContain(r.objectKind);
        const named = namedTenant(r, { ...(t !== undefined ? { tenant: t } : {}), ...(n !== undefined ? { name: n } : {}) }, q);
        if (named !== undefined) expect(named).toBe(p.tenant);
        else if (r.objectKind !== 'Tenant' || r.action !== 'create') expect(d.postFilter).toBeDefined();
      }),
      { numRuns: 5000 },
    );
  });
});

function obj(kind: Kind, name: string, tenant: string | undefined, spec: Record<string, unknown> = {}): Record<string, unknown> {
  return { kind, metadata: { name, ...(tenant !== undefined ? { tenant } : {}) }, spec };
}

describe('canSee / filterList', () => {
  const ta = principals['tenant-admin'];
  const tv = principals['tenant-viewer'];
  const root = principals['cluster-admin'];

  it('shows tenant roles only their own objects, their own tenant and their own cells', () => {
    for (const p of [ta, tv]) {
      expect(canSee(p, obj('Service', 'web', OWN))).toBe(true);
      expect(canSee(p, obj('Service', 'web', OTHER))).toBe(false);
      expect(canSee(p, obj('Tenant', OWN, undefined))).toBe(true);
      expect(canSee(p, obj('Tenant', OTHER, undefined))).toBe(false);
      expect(canSee(p, obj('Cell', 'c1', undefined, { tenant: OWN }))).toBe(true);
      expect(canSee(p, obj('Cell', 'c2', undefined, { tenant: OTHER }))).toBe(false);
      expect(canSee(p, obj('Cell', 'warm', undefined, { tenant: '' }))).toBe(false);
      expect(canSee(p, obj('Host', 'h1', undefined))).toBe(false);
      // A cell's metadata cannot smuggle it in: spec.tenant decides.
      expect(canSee(p, obj('Cell', 'c3', OWN, { tenant: OTHER }))).toBe(false);
      for (const junk of [null, 1, 'x', [], {}, { kind: 'Service' }, { kind: 'Nope', metadata: { tenant: OWN } }]) expect(canSee(p, junk)).toBe(false);
    }
    expect(canSee(undefined, obj('Service', 'web', OWN))).toBe(false);
    expect(canSee(root, obj('Host', 'h1', undefined))).toBe(true);
  });

  it('filters lists to a subset the principal may see, dropping every other tenant (property)', () => {
    const tenant = fc.constantFrom(OWN, OTHER, '', 'initech');
    const item = fc.oneof(
      fc.record({ kind: fc.constantFrom('Service', 'Job', 'Instance', 'Machine'), metadata: fc.record({ name: fc.string(), tenant }), spec: fc.constant({}) }),
      fc.record({ kind: fc.constant('Cell'), metadata: fc.record({ name: fc.string() }), spec: fc.record({ tenant }) }),
      fc.record({ kind: fc.constant('Tenant'), metadata: fc.record({ name: tenant }), spec: fc.constant({}) }),
      fc.record({ kind: fc.constant('Host'), metadata: fc.record({ name: fc.string() }), spec: fc.constant({}) }),
    );
    fc.assert(
      fc.property(fc.constantFrom(ta, tv, root), fc.constantFrom(...(Object.keys(KINDS) as Kind[])), fc.array(item, { maxLength: 30 }), (p, kind, items) => {
        const out = filterList(p, kind, items);
        for (const o of out) {
          expect(items).toContain(o);
          expect(o.kind).toBe(kind);
          expect(canSee(p, o)).toBe(true);
        }
        const visible = items.filter((o) => o.kind === kind && canSee(p, o));
        expect(out).toEqual(visible);
        if (p?.role !== 'cluster-admin') {
          for (const o of out) {
            const owner = o.kind === 'Cell' ? (o.spec as { tenant: string }).tenant : o.kind === 'Tenant' ? o.metadata.name : (o.metadata as { tenant?: string }).tenant; // shapes built above
            expect(owner).toBe(OWN);
          }
        } else {
          expect(out.length).toBe(items.filter((o) => o.kind === kind).length);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('canCreateToken / canRevokeToken: a role cannot grant more than it has', () => {
  const grants = [
    { role: 'cluster-admin' as const },
    { role: 'tenant-admin' as const, tenant: OWN },
    { role: 'tenant-viewer' as const, tenant: OWN },
    { role: 'tenant-admin' as const, tenant: OTHER },
    { role: 'tenant-viewer' as const, tenant: OTHER },
  ];
  const table: Record<keyof typeof principals, boolean[]> = {
    none: [false, false, false, false, false],
    'cluster-admin': [true, true, true, true, true],
    'tenant-admin': [false, true, true, false, false],
    'tenant-viewer': [false, false, false, false, false],
  };

  it('matches the grant table', () => {
    for (const [who, row] of Object.entries(table) as [keyof typeof principals, boolean[]][]) {
      grants.forEach((g, i) => {
        expect(canCreateToken(principals[who], g).allowed, `${who} -> ${JSON.stringify(g)}`).toBe(row[i]);
        expect(canRevokeToken(principals[who], { id: `t${i}`, ...g }).allowed, `${who} revokes ${JSON.stringify(g)}`).toBe(row[i]);
      });
    }
    expect(canCreateToken(undefined, grants[1]!)).toMatchObject({ allowed: false, code: 'CARAPACE_E_UNAUTHENTICATED' });
  });

  it('refuses malformed grants even to cluster-admin', () => {
    const root = principals['cluster-admin'];
    expect(canCreateToken(root, { role: 'tenant-admin' }).allowed).toBe(false);
    expect(canCreateToken(root, { role: 'tenant-viewer', tenant: '' }).allowed).toBe(false);
    expect(canCreateToken(root, { role: 'cluster-admin', tenant: OWN }).allowed).toBe(false);
    expect(canCreateToken(root, { role: 'god' as Role }).allowed).toBe(false); // deliberately not a Role
  });

  it('lets anyone revoke the token they are using, and nothing else of a higher role', () => {
    const tv = principals['tenant-viewer']!;
    expect(canRevokeToken(tv, { id: tv.tokenId, role: 'tenant-viewer', tenant: OWN }).allowed).toBe(true);
    expect(canRevokeToken(tv, { id: 'other', role: 'tenant-viewer', tenant: OWN }).allowed).toBe(false);
    expect(canRevokeToken(principals['tenant-admin'], { id: 'root', role: 'cluster-admin' }).allowed).toBe(false);
  });

  it('never lets a tenant principal grant a role or tenant it does not have (property)', () => {
    fc.assert(
      fc.property(fc.constantFrom(...ROLES), fc.option(fc.constantFrom(OWN, OTHER, ''), { nil: undefined }), fc.constantFrom(...ROLES), fc.option(fc.constantFrom(OWN, OTHER, ''), { nil: undefined }), (pr, pt, gr, gt) => {
        const p: Principal = { tokenId: 'p', name: 'p', role: pr, ...(pt !== undefined ? { tenant: pt } : {}) };
        const d = canCreateToken(p, { role: gr, ...(gt !== undefined ? { tenant: gt } : {}) });
        if (!d.allowed || pr === 'cluster-admin') return;
        expect(pr).toBe('tenant-admin');
        expect(gr).not.toBe('cluster-admin');
        expect(gt).toBe(pt);
        expect(gt).toBeTruthy();
      }),
    );
  });
});

describe('rollout routes', () => {
  const rollout = ROUTES.filter((r) => r.kind === 'rollout');

  it('are the report (a read of the service) and the four operations (writes of the service)', () => {
    expect(rollout.map((r) => `${r.method} ${r.url}`)).toEqual([
      'GET /v1/tenants/:tenant/services/:name/rollout',
      'POST /v1/tenants/:tenant/services/:name/rollout/undo',
      'POST /v1/tenants/:tenant/services/:name/rollout/restart',
      'POST /v1/tenants/:tenant/services/:name/rollout/pause',
      'POST /v1/tenants/:tenant/services/:name/rollout/resume',
    ]);
    for (const r of rollout) expect(classifyRoute(r)).toEqual({ type: 'object', verb: r.method === 'GET' ? 'read' : 'write', objectKind: 'Service', tenantFrom: 'path-tenant' });
  });

  it('a viewer reads its own tenant rollouts only; a tenant-admin operates on its own only', () => {
    for (const r of rollout) {
      const own = requestFor(r, { tenant: OWN, name: 'web' }, {});
      const other = requestFor(r, { tenant: OTHER, name: 'web' }, {});
      expect(authorize(principals['tenant-viewer'], own).allowed).toBe(r.method === 'GET');
      expect(authorize(principals['tenant-admin'], own).allowed).toBe(true);
      expect(authorize(principals['tenant-admin'], other).allowed).toBe(false);
      expect(authorize(principals['tenant-viewer'], other).allowed).toBe(false);
    }
  });

  it('an unknown rollout operation is denied to everyone', () => {
    const bogus: RouteDef = { method: 'POST', url: '/v1/tenants/:tenant/services/:name/rollout/scale', summary: '', kind: 'rollout', objectKind: 'Service' };
    expect(classifyRoute(bogus)).toBeUndefined();
    expect(classifyRoute({ ...bogus, objectKind: 'Job', url: '/v1/tenants/:tenant/jobs/:name/rollout/undo' })).toBeUndefined();
  });
});
