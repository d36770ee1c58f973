/**
 * Roles and authorisation, as pure functions (no I/O): who may call which route, which
 * objects a principal may see in lists and watch streams, and which tokens it may mint.
 *
 * The rules (see README.md for the table):
 * - `cluster-admin` may do everything.
 * - `tenant-admin` reads and writes the tenant-scoped objects (services, jobs, instances,
 *   machines, logs) of its own tenant; reads its own Tenant object but cannot change it
 *   (quotas and policy are the operator's, or a tenant could raise its own quota); sees only
 *   its own cells (read-only); never sees hosts; cannot create or delete tenants.
 * - `tenant-viewer` is `tenant-admin` restricted to reads: GET (incl. logs and watch), but
 *   not exec (a GET handshake that runs code in a workload) nor port-forward (one that
 *   reaches an unpublished port of a workload).
 * - Routes that do not name a tenant (`GET /v1/services`, `GET /v1/cells`, watches) are
 *   allowed for tenant roles, but the result says `postFilter`: the caller MUST drop what
 *   {@link canSee} refuses (see {@link filterList}).
 * - Anything not classified here is denied, to everyone (default deny): a new route must be
 *   taught to {@link classifyRoute} before anyone can call it.
 */
import type { RouteDef } from '../model/routes.js';
import { KINDS, type Kind } from '../model/objects.js';

/** The roles a token can carry, most powerful first. */
export const ROLES = ['cluster-admin', 'tenant-admin', 'tenant-viewer'] as const;
export type Role = (typeof ROLES)[number];

/** True for the roles bound to one tenant. */
export function isTenantRole(role: Role): role is 'tenant-admin' | 'tenant-viewer' {
  return role === 'tenant-admin' || role === 'tenant-viewer';
}

/**
 * Who is calling: the result of authenticating a bearer token. `tenant` is set exactly when
 * the role is a tenant role.
 */
export interface Principal {
  /** The id of the token that authenticated (for audit and self-revocation). */
  tokenId: string;
  /** The token's human name (e.g. "ci-deploy"). */
  name: string;
  role: Role;
  tenant?: string;
}

/**
 * What authorisation looks at: the matched route plus its path parameters and the `tenant`
 * query parameter (watch streams). Build it with {@link requestFor}.
 */
export interface AuthzRequest {
  route: Pick<RouteDef, 'method' | 'url' | 'kind' | 'objectKind' | 'action'>;
  /** Path parameters as fastify parsed them (`:tenant`, `:name`). */
  params: { tenant?: string; name?: string };
  /** The `tenant` query parameter, for watch routes. */
  queryTenant?: string;
}

/** Builds an {@link AuthzRequest} from a RouteDef and the request's params and query. */
export function requestFor(route: AuthzRequest['route'], params: { tenant?: string; name?: string } = {}, query: Record<string, unknown> = {}): AuthzRequest {
  const qt = query['tenant'];
  const p: AuthzRequest['params'] = {};
  if (typeof params.tenant === 'string') p.tenant = params.tenant;
  if (typeof params.name === 'string') p.name = params.name;
  return { route, params: p, ...(typeof qt === 'string' ? { queryTenant: qt } : {}) };
}

/**
 * What to do with an allowed response before it leaves: `items` (filter a list with
 * filterList), `object` (check the fetched object with canSee; answer 404 when it fails, so
 * names of other tenants' objects do not leak), `events` (filter every watch event with
 * canSee).
 */
export type PostFilter = 'items' | 'object' | 'events';

/** The verdict of {@link authorize}. */
export type Decision =
  | { allowed: true; postFilter?: PostFilter }
  | { allowed: false; code: 'CARAPACE_E_UNAUTHENTICATED' | 'CARAPACE_E_FORBIDDEN'; message: string };

/** Meta routes anyone may call without a token (liveness probes, the API description). */
export const PUBLIC_ROUTES: readonly string[] = ['GET /healthz', 'GET /openapi.json'];

/**
 * Meta routes only a cluster-admin may read: /metrics carries every tenant's names, groups
 * and cells in its labels, so a tenant token must not read it.
 */
export const ADMIN_ONLY_ROUTES: readonly string[] = ['GET /metrics'];

/**
 * How a route is classified: whether it reads or writes, which object kind it touches, and
 * where (in the URL) the tenant it concerns is named. `undefined` from classifyRoute means the
 * route is not understood and is denied to everyone.
 */
export type RouteClass =
  | { type: 'public' }
  | { type: 'admin' }
  /** Any valid token; the handler itself checks what the principal may do (token management). */
  | { type: 'self' }
  | {
      type: 'object';
      verb: 'read' | 'write';
      objectKind: Kind;
      /** Which parameter names the tenant the request is about, if any. */
      tenantFrom: 'path-tenant' | 'path-name' | 'query-tenant' | 'none';
      /** Set when the route can return objects of several tenants. */
      postFilter?: PostFilter;
    };

const ACTION_METHOD: Record<NonNullable<RouteDef['action']>, RouteDef['method']> = {
  get: 'GET',
  list: 'GET',
  listAll: 'GET',
  apply: 'PUT',
  create: 'POST',
  delete: 'DELETE',
};

function hasParam(url: string, name: string): boolean {
  return url.split('/').includes(`:${name}`);
}

/**
 * Classifies a route, or returns undefined when it does not fit any known shape (then
 * authorize denies it to everyone). Pure; safe to call at startup to check a route table.
 */
export function classifyRoute(route: AuthzRequest['route']): RouteClass | undefined {
  if (route.kind === 'audit') {
    // Verification (POST: against checkpoints the caller kept off the store) changes nothing,
    // but reads the whole log: cluster-admins only.
    if (route.url === '/v1/audit/verify') return route.method === 'GET' || route.method === 'POST' ? { type: 'admin' } : undefined;
    if (route.method !== 'GET') return undefined;
    // Records: the handler forces a tenant token's export to its own tenant.
    return route.url === '/v1/audit/records' || route.url === '/v1/events' ? { type: 'self' } : undefined;
  }
  // Join tokens and agent certificates: the cluster's trust, cluster-admins only.
  if (route.kind === 'pki') return /^\/v1\/(join-tokens|agent-certs)(\/:name(\/revoke)?)?$/.test(route.url) ? { type: 'admin' } : undefined;
  // Operator actions on hosts (cordon, drain): infrastructure, cluster-admins only.
  if (route.kind === 'hostOp') return route.method === 'POST' && /^\/v1\/hosts\/:name\/(cordon|uncordon|drain)$/.test(route.url) ? { type: 'admin' } : undefined;
  // Key rotation re-encrypts every tenant's secrets (and the CA key): the operator's, cluster-admins only.
  if (route.kind === 'secrets') return route.method === 'POST' && (route.url === '/v1/secrets/reencrypt' || route.url === '/v1/keys/reencrypt') ? { type: 'admin' } : undefined;
  // The usage report: the handler forces a tenant token's report to its own tenant.
  if (route.kind === 'usage') return route.method === 'GET' && route.url === '/v1/usage' ? { type: 'self' } : undefined;
  if (route.kind === 'tokens') return route.url === '/v1/tokens' || route.url === '/v1/tokens/:name' ? { type: 'self' } : undefined;
  // Who am I: any valid token reads its own principal, nothing else.
  if (route.kind === 'whoami') return route.method === 'GET' && route.url === '/v1/whoami' ? { type: 'self' } : undefined;
  // The server's version: any valid token (not public: an anonymous scanner learns no release to match exploits to).
  if (route.kind === 'version') return route.method === 'GET' && route.url === '/v1/version' ? { type: 'self' } : undefined;
  if (route.kind === 'meta') {
    const id = `${route.method} ${route.url}`;
    if (PUBLIC_ROUTES.includes(id)) return { type: 'public' };
    return ADMIN_ONLY_ROUTES.includes(id) ? { type: 'admin' } : undefined;
  }
  const kind = route.objectKind;
  if (kind === undefined || !Object.hasOwn(KINDS, kind)) return undefined;
  const scoped = KINDS[kind].scoped;
  const pathTenant = hasParam(route.url, 'tenant');
  const pathName = hasParam(route.url, 'name');
  // Scoped kinds live under /v1/tenants/:tenant/...; cluster kinds never have :tenant.
  if (!scoped && pathTenant) return undefined;
  if (route.kind === 'watch') {
    if (route.method !== 'GET' || pathTenant || pathName) return undefined;
    return { type: 'object', verb: 'read', objectKind: kind, tenantFrom: scoped ? 'query-tenant' : 'none', postFilter: 'events' };
  }
  if (route.kind === 'logs') {
    if (route.method !== 'GET' || !scoped || !pathTenant || !pathName) return undefined;
    return { type: 'object', verb: 'read', objectKind: kind, tenantFrom: 'path-tenant' };
  }
  if (route.kind === 'rollout') {
    // A service's rollout: reading it is reading the service; its operations change its spec.
    if (kind !== 'Service' || !pathTenant || !pathName) return undefined;
    if (route.method === 'GET' && route.url === '/v1/tenants/:tenant/services/:name/rollout') return { type: 'object', verb: 'read', objectKind: kind, tenantFrom: 'path-tenant' };
    if (route.method === 'POST' && /^\/v1\/tenants\/:tenant\/services\/:name\/rollout\/(undo|restart|pause|resume)$/.test(route.url)) return { type: 'object', verb: 'write', objectKind: kind, tenantFrom: 'path-tenant' };
    return undefined;
  }
  if (route.kind === 'exec' || route.kind === 'portforward') {
    // The handshake is a GET (WebSocket), but an exec runs code in a tenant's workload, and a
    // port-forward reaches a port the tenant did not publish: a write, so tenant-admin and
    // up, never a viewer.
    if (route.method !== 'GET' || kind !== 'Instance' || !pathTenant || !pathName) return undefined;
    return { type: 'object', verb: 'write', objectKind: kind, tenantFrom: 'path-tenant' };
  }
  if (route.kind !== 'action' || route.action === undefined || !Object.hasOwn(ACTION_METHOD, route.action)) return undefined;
  if (ACTION_METHOD[route.action] !== route.method) return undefined;
  const verb = route.method === 'GET' ? 'read' : 'write';
  const wantsName = route.action === 'get' || route.action === 'apply' || route.action === 'delete';
  if (wantsName !== pathName) return undefined;
  if (route.action === 'listAll') {
    // Only scoped kinds have a cross-tenant list; its results must be filtered.
    if (!scoped || pathTenant) return undefined;
    return { type: 'object', verb, objectKind: kind, tenantFrom: 'none', postFilter: 'items' };
  }
  if (scoped) {
    if (!pathTenant) return undefined;
    return { type: 'object', verb, objectKind: kind, tenantFrom: 'path-tenant' };
  }
  // Cluster-scoped kinds. A Tenant's name is the tenant; Cells carry the tenant in their spec
  // (filtered after the fact); Hosts concern no tenant.
  if (kind === 'Tenant') {
    if (route.action === 'list') return { type: 'object', verb, objectKind: kind, tenantFrom: 'none', postFilter: 'items' };
    if (route.action === 'create') return { type: 'object', verb, objectKind: kind, tenantFrom: 'none' };
    return { type: 'object', verb, objectKind: kind, tenantFrom: 'path-name' };
  }
  if (kind === 'Cell') {
    return { type: 'object', verb, objectKind: kind, tenantFrom: 'none', postFilter: route.action === 'list' ? 'items' : 'object' };
  }
  return { type: 'object', verb, objectKind: kind, tenantFrom: 'none' };
}

/** Kinds tenant roles may never touch, not even filtered: infrastructure. */
const HIDDEN_FROM_TENANTS: readonly Kind[] = ['Host'];
/** Kinds tenant roles may read (filtered to their own) but never write. */
const READ_ONLY_FOR_TENANTS: readonly Kind[] = ['Tenant', 'Cell', 'Host'];

function deny(message: string): Decision {
  return { allowed: false, code: 'CARAPACE_E_FORBIDDEN', message };
}

// `ROLES as readonly string[]` below only widens the element type so a runtime string can be tested.
function validPrincipal(p: Principal): boolean {
  if (!(ROLES as readonly string[]).includes(p.role)) return false;
  if (isTenantRole(p.role)) return typeof p.tenant === 'string' && p.tenant !== '';
  return p.tenant === undefined;
}

/**
 * Decides whether `principal` (undefined: no valid token) may make `request`. Pure and total:
 * it never throws, and anything it cannot classify is denied. Call it after routing, before
 * the handler; when the decision carries `postFilter`, apply it to the response.
 */
export function authorize(principal: Principal | undefined, request: AuthzRequest): Decision {
  const cls = classifyRoute(request.route);
  if (cls === undefined) return deny(`${request.route.method} ${request.route.url} is not covered by the authorisation rules`);
  if (cls.type === 'public') return { allowed: true };
  if (principal === undefined) {
    return { allowed: false, code: 'CARAPACE_E_UNAUTHENTICATED', message: 'a valid bearer token is required (Authorization: Bearer <token>)' };
  }
  if (!validPrincipal(principal)) return deny('the token has an invalid role');
  if (principal.role === 'cluster-admin') return { allowed: true };
  if (cls.type === 'admin') return deny(`${request.route.method} ${request.route.url} is for cluster-admins only`);
  if (cls.type === 'self') return { allowed: true };

  const own = principal.tenant ?? ''; // validPrincipal guarantees a tenant for tenant roles
  const kind = cls.objectKind;
  const what = `${request.route.method} ${request.route.url}`;
  if (HIDDEN_FROM_TENANTS.includes(kind)) return deny(`${KINDS[kind].plural} are infrastructure; ${principal.role} cannot access them`);
  if (cls.verb === 'write') {
    if (principal.role === 'tenant-viewer') return deny(`a tenant-viewer token is read-only (${what})`);
    if (READ_ONLY_FOR_TENANTS.includes(kind)) return deny(`only a cluster-admin can change ${KINDS[kind].plural}`);
  }
  let named: string | undefined;
  switch (cls.tenantFrom) {
    case 'path-tenant':
      named = request.params.tenant;
      if (named === undefined) return deny(`${what}: the tenant is missing from the request`);
      break;
    case 'path-name':
      named = request.params.name;
      if (named === undefined) return deny(`${what}: the tenant is missing from the request`);
      break;
    case 'query-tenant':
      named = request.queryTenant;
      break;
    case 'none':
      break;
  }
  if (named !== undefined && named !== own) return deny(`the token is for tenant "${own}"; it cannot access tenant "${named}"`);
  return cls.postFilter !== undefined ? { allowed: true, postFilter: cls.postFilter } : { allowed: true };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * The tenant an object belongs to for visibility: metadata.tenant for scoped kinds, the
 * name for a Tenant, spec.tenant for a Cell ('' for an unassigned warm cell), undefined for
 * anything else (Hosts, malformed values).
 */
export function owningTenant(object: unknown): string | undefined {
  if (!isRecord(object) || typeof object['kind'] !== 'string' || !isRecord(object['metadata'])) return undefined;
  const kind = object['kind'];
  const md = object['metadata'];
  if (!Object.hasOwn(KINDS, kind)) return undefined;
  if (kind === 'Tenant') return typeof md['name'] === 'string' ? md['name'] : undefined;
  if (kind === 'Cell') {
    const spec = object['spec'];
    return isRecord(spec) && typeof spec['tenant'] === 'string' ? spec['tenant'] : undefined;
  }
  if (KINDS[kind as Kind].scoped) return typeof md['tenant'] === 'string' ? md['tenant'] : undefined; // hasOwn above: kind is a Kind
  return undefined;
}

/**
 * True when `principal` may see `object` (a stored object, or a watch event's value). Fails
 * closed: malformed values, hosts and warm (unassigned) cells are invisible to tenant roles.
 * Use it per event on watch streams and on single objects behind a `postFilter: 'object'`.
 */
export function canSee(principal: Principal | undefined, object: unknown): boolean {
  if (principal === undefined || !validPrincipal(principal)) return false;
  if (principal.role === 'cluster-admin') return true;
  const t = owningTenant(object);
  return t !== undefined && t !== '' && t === principal.tenant;
}

/**
 * Drops the items of a list that `principal` may not see, and items that are not of `kind`
 * (a list of services must hold only services). Returns a new array; cluster-admins get
 * every item of the kind.
 */
export function filterList<T>(principal: Principal | undefined, kind: Kind, items: readonly T[]): T[] {
  return items.filter((o) => isRecord(o) && o['kind'] === kind && canSee(principal, o));
}

/** What a new token would carry. */
export interface Grant {
  role: Role;
  tenant?: string;
}

/**
 * "A role cannot grant more than it has": cluster-admin may mint any token; tenant-admin only
 * tenant-admin or tenant-viewer tokens of its own tenant; tenant-viewer none. Also checks the
 * grant is well-formed (tenant roles need a tenant; cluster-admin has none).
 */
export function canCreateToken(principal: Principal | undefined, grant: Grant): Decision {
  if (principal === undefined) return { allowed: false, code: 'CARAPACE_E_UNAUTHENTICATED', message: 'a valid bearer token is required' };
  if (!validPrincipal(principal)) return deny('the token has an invalid role');
  if (!(ROLES as readonly string[]).includes(grant.role)) return deny(`unknown role "${String(grant.role)}"`);
  if (isTenantRole(grant.role) ? typeof grant.tenant !== 'string' || grant.tenant === '' : grant.tenant !== undefined) {
    return deny(`a ${grant.role} token ${isTenantRole(grant.role) ? 'needs' : 'cannot have'} a tenant`);
  }
  if (principal.role === 'cluster-admin') return { allowed: true };
  if (principal.role === 'tenant-viewer') return deny('a tenant-viewer cannot create tokens');
  if (grant.role === 'cluster-admin') return deny('a tenant-admin cannot create a cluster-admin token');
  if (grant.tenant !== principal.tenant) return deny(`the token is for tenant "${principal.tenant ?? ''}"; it cannot create tokens for tenant "${grant.tenant ?? ''}"`);
  return { allowed: true };
}

/**
 * Whether `principal` may revoke the token `target` (its id and grant): admins revoke what
 * they could create, and anyone may revoke the token they are using (logging out). A
 * cluster-admin may revoke any token, even a malformed record.
 */
export function canRevokeToken(principal: Principal | undefined, target: Grant & { id: string }): Decision {
  if (principal !== undefined && validPrincipal(principal) && (principal.role === 'cluster-admin' || principal.tokenId === target.id)) return { allowed: true };
  return canCreateToken(principal, { role: target.role, ...(target.tenant !== undefined ? { tenant: target.tenant } : {}) });
}
