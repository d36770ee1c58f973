/**
 * The route table: every endpoint as data (method, URL, what it does, which action it
 * becomes). The server (api/) registers exactly these; the OpenAPI document, the
 * authorisation rules (auth/rbac.ts) and the tests that cover every route read the same
 * table, so no endpoint can be missed. It lives in model/, below both the HTTP edge and the
 * authoriser, because both depend on it (it imports nothing but model/).
 */
import { KINDS, type Kind } from './objects.js';

export type RouteKind = 'action' | 'logs' | 'exec' | 'portforward' | 'watch' | 'meta' | 'tokens' | 'audit' | 'usage' | 'hostOp' | 'pki' | 'whoami' | 'secrets' | 'version' | 'rollout';

/**
 * A query parameter a route reads (the handler parses it; this is what the OpenAPI document
 * declares, so a generated client can pass it). `date-time`: ISO 8601; `repeated`: given once
 * per value (`?command=sh&command=-c`).
 */
export interface QueryParam {
  name: string;
  type: 'string' | 'integer' | 'boolean' | 'date-time';
  description: string;
  enum?: readonly string[];
  repeated?: boolean;
}

export interface RouteDef {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE';
  url: string;
  summary: string;
  kind: RouteKind;
  /** The query parameters it reads, if any. */
  query?: readonly QueryParam[];
  /** The object kind the route is about, when it is about one. */
  objectKind?: Kind;
  /** For action routes: which action the request becomes. */
  action?: 'apply' | 'create' | 'get' | 'list' | 'listAll' | 'delete';
  /** A POST that changes nothing (its input is too big for a query string): a success leaves no audit record; a refusal still does. */
  readOnly?: true;
}

const RESOURCE_VERSION: QueryParam = { name: 'resourceVersion', type: 'integer', description: "Resume after this store revision (a list's resourceVersion, or the last event's id)" };
const TENANT_FILTER: QueryParam = { name: 'tenant', type: 'string', description: "Only this tenant's (cluster-admin; a tenant token always gets only its own)" };
const SINCE: QueryParam = { name: 'since', type: 'date-time', description: 'From this time (ISO 8601)' };
const UNTIL: QueryParam = { name: 'until', type: 'date-time', description: 'Until this time (ISO 8601)' };
const LOG_QUERY: readonly QueryParam[] = [
  { name: 'follow', type: 'boolean', description: 'Keep the stream open and send new lines as they come' },
  { name: 'tail', type: 'integer', description: 'Start with the last N lines' },
];

const APPLYABLE: readonly Kind[] = ['Tenant', 'Service', 'Job', 'Machine', 'Volume', 'Secret', 'Config', 'VolumeSnapshot'];

function objectRoutes(): RouteDef[] {
  const out: RouteDef[] = [];
  for (const kind of Object.keys(KINDS) as Kind[]) {
    const { plural, scoped } = KINDS[kind];
    const lower = kind.toLowerCase();
    const collection = scoped ? `/v1/tenants/:tenant/${plural}` : `/v1/${plural}`;
    const item = `${collection}/:name`;
    if (scoped) out.push({ method: 'GET', url: `/v1/${plural}`, summary: `List ${plural} of every tenant`, kind: 'action', objectKind: kind, action: 'listAll' });
    out.push({ method: 'GET', url: collection, summary: `List ${plural}`, kind: 'action', objectKind: kind, action: 'list' });
    out.push({ method: 'GET', url: item, summary: `Read one ${lower}`, kind: 'action', objectKind: kind, action: 'get' });
    if (APPLYABLE.includes(kind)) {
      out.push({ method: 'PUT', url: item, summary: `Create or update a ${lower} from its manifest (apply)`, kind: 'action', objectKind: kind, action: 'apply' });
      out.push({ method: 'POST', url: collection, summary: `Create a ${lower}; fails if it exists`, kind: 'action', objectKind: kind, action: 'create' });
    }
    if (kind !== 'Host' && kind !== 'Cell') {
      out.push({
        method: 'DELETE',
        url: item,
        summary: kind === 'Instance' ? 'Stop and remove an instance (its owner replaces it)' : `Delete a ${lower}`,
        kind: 'action',
        objectKind: kind,
        action: 'delete',
        query: [{ name: 'resourceVersion', type: 'integer', description: 'Delete only if the object is still at this revision (else 409 CARAPACE_E_CONFLICT)' }],
      });
    }
    out.push({
      method: 'GET',
      url: `/v1/watch/${plural}`,
      summary: `Follow changes to ${plural} (Server-Sent Events)`,
      kind: 'watch',
      objectKind: kind,
      query: [RESOURCE_VERSION, ...(scoped ? [{ name: 'tenant', type: 'string', description: "Only this tenant's objects" } as const] : [])],
    });
  }
  out.push({ method: 'GET', url: '/v1/tenants/:tenant/instances/:name/logs', summary: "Read or follow an instance's container output (NDJSON)", kind: 'logs', objectKind: 'Instance', query: LOG_QUERY });
  // A WebSocket (RFC 6455 handshakes are GETs); ?command= (repeated), tty, stdin, cols, rows.
  out.push({
    method: 'GET',
    url: '/v1/tenants/:tenant/instances/:name/exec',
    summary: "Run a command in an instance's container (WebSocket; ?command= once per argument, &tty=true, &stdin=true, &cols, &rows); audited with the command line (tenant-admin and up)",
    kind: 'exec',
    objectKind: 'Instance',
    query: [
      { name: 'command', type: 'string', repeated: true, description: 'The command line, one parameter per argument (no shell)' },
      { name: 'tty', type: 'boolean', description: 'Run it under a terminal' },
      { name: 'stdin', type: 'boolean', description: "Send the client's input (stdin frames)" },
      { name: 'cols', type: 'integer', description: "The terminal's width (1-4096)" },
      { name: 'rows', type: 'integer', description: "The terminal's height (1-4096)" },
    ],
  });
  // A WebSocket per forwarded TCP connection (exec/forward.ts frames); ?port=.
  out.push({
    method: 'GET',
    url: '/v1/tenants/:tenant/instances/:name/portforward',
    summary: "Connect to a port of an instance's workload without publishing it (WebSocket, one per TCP connection; ?port=); audited with the port (tenant-admin and up)",
    kind: 'portforward',
    objectKind: 'Instance',
    query: [{ name: 'port', type: 'integer', description: "The workload's port to connect to (1-65535)" }],
  });
  // Tokens: any authenticated caller reaches these; the handlers decide (a role can only
  // grant or revoke what it could create, and only sees the tokens it could manage).
  out.push({ method: 'GET', url: '/v1/tokens', summary: 'List the API tokens the caller may manage (never their secrets)', kind: 'tokens' });
  out.push({ method: 'POST', url: '/v1/tokens', summary: 'Create an API token; its secret is shown once in the response', kind: 'tokens' });
  out.push({ method: 'DELETE', url: '/v1/tokens/:name', summary: 'Revoke an API token', kind: 'tokens' });
  out.push({ method: 'GET', url: '/v1/audit/records', summary: 'Export audit records (?since, ?until, ?format=jsonl|csv); a tenant token gets only its tenant\'s records', kind: 'audit', query: [SINCE, UNTIL, { name: 'format', type: 'string', enum: ['jsonl', 'csv'], description: 'jsonl (default) or csv' }, TENANT_FILTER] });
  out.push({ method: 'GET', url: '/v1/events', summary: 'Follow audit and lifecycle events (Server-Sent Events); a tenant token sees only its tenant\'s', kind: 'audit', query: [RESOURCE_VERSION, TENANT_FILTER] });
  out.push({ method: 'GET', url: '/v1/audit/verify', summary: 'Verify the audit hash chain and signed checkpoints (cluster-admin)', kind: 'audit' });
  out.push({ method: 'POST', url: '/v1/audit/verify', summary: 'Verify the audit log against checkpoints kept off the store (an `--audit-copy` file: `carapace audit verify --against FILE`) and the keys that signed them (cluster-admin)', kind: 'audit', readOnly: true });
  for (const [op, what] of [
    ['cordon', 'Cordon a host: nothing new is placed on it (cluster-admin)'],
    ['uncordon', 'Undo cordon and drain (cluster-admin)'],
    ['drain', "Drain a host: cordon it and move its instances elsewhere within each service's maxUnavailable (cluster-admin)"],
  ] as const) {
    out.push({ method: 'POST', url: `/v1/hosts/:name/${op}`, summary: what, kind: 'hostOp', objectKind: 'Host' });
  }
  out.push({ method: 'POST', url: '/v1/join-tokens', summary: 'Create a join token for agents (?ttlSeconds, default 86400); shown once (cluster-admin)', kind: 'pki', query: [{ name: 'ttlSeconds', type: 'integer', description: 'Lifetime, 60 to 2592000 (default 86400)' }, { name: 'description', type: 'string', description: 'What it is for (kept, at most 200 characters)' }] });
  out.push({ method: 'GET', url: '/v1/join-tokens', summary: 'List join tokens, never their secrets (cluster-admin)', kind: 'pki' });
  out.push({ method: 'GET', url: '/v1/agent-certs', summary: "List hosts' agent certificates (cluster-admin)", kind: 'pki' });
  out.push({ method: 'POST', url: '/v1/agent-certs/:name/revoke', summary: "Revoke a host's agent certificate: it is refused at once (cluster-admin)", kind: 'pki' });
  out.push({ method: 'DELETE', url: '/v1/agent-certs/:name', summary: "Forget a host's certificate record so the host may join again (cluster-admin)", kind: 'pki' });
  out.push({ method: 'GET', url: '/v1/usage', summary: 'Usage report (?since, ?until, ?by=tenant|group|cell|volume, ?format=json|csv|table, ?tenant); reserved and measured, exact; a tenant token gets only its tenant', kind: 'usage', query: [
    SINCE,
    UNTIL,
    { name: 'by', type: 'string', enum: ['tenant', 'group', 'cell', 'volume'], description: 'Rows per tenant (default), group, cell or volume' },
    { name: 'format', type: 'string', enum: ['json', 'csv', 'table'], description: 'json (default), csv or table' },
    TENANT_FILTER,
  ] });
  // Rolling updates of a service (model/rollout.ts): its state and history, and the operations.
  out.push({ method: 'GET', url: '/v1/tenants/:tenant/services/:name/rollout', summary: "A service's rollout: revision, replica counts, the Progressing condition, and its revisions with who made each and when (from the audit log)", kind: 'rollout', objectKind: 'Service' });
  for (const [op, what] of [
    ['undo', "Return to an earlier revision's template (?toRevision=N; default the one before the current), as a new revision rolled out in waves"],
    ['restart', 'Replace every replica in waves: a new revision with the same template (sets spec.restartedAt)'],
    ['pause', 'Stop replacing replicas (spec.rollout.paused); scaling still happens'],
    ['resume', 'Go on replacing replicas (spec.rollout.paused false)'],
  ] as const) {
    out.push({
      method: 'POST',
      url: `/v1/tenants/:tenant/services/:name/rollout/${op}`,
      summary: what,
      kind: 'rollout',
      objectKind: 'Service',
      ...(op === 'undo' ? { query: [{ name: 'toRevision', type: 'integer', description: 'The revision to return to (`rollout history` lists them)' } as const] } : {}),
    });
  }
  out.push({ method: 'GET', url: '/v1/tenants/:tenant/machines/:name/logs', summary: "Read or follow a machine's serial console (NDJSON)", kind: 'logs', objectKind: 'Machine', query: LOG_QUERY });
  out.push({ method: 'POST', url: '/v1/secrets/reencrypt', summary: "Re-encrypt every Secret (or one tenant's, body {tenant}) under the keyring's primary key (cluster-admin); `/v1/keys/reencrypt` also re-seals the CA key", kind: 'secrets' });
  out.push({ method: 'POST', url: '/v1/keys/reencrypt', summary: "Key rotation: re-seal the cluster CA's private key and re-encrypt every Secret under the keyring's primary key (cluster-admin); then older keys can leave the keyring", kind: 'secrets' });
  out.push({ method: 'GET', url: '/v1/version', summary: "The server's release and the API version it serves (`carapace version`); any valid token", kind: 'version' });
  out.push({ method: 'GET', url: '/v1/whoami', summary: "The caller's token: its id, name, role and tenant (what the dashboard shows and offers)", kind: 'whoami' });
  return out;
}

export const ROUTES: readonly RouteDef[] = [
  { method: 'GET', url: '/healthz', summary: 'Liveness: the server answers; `leader` says whether it runs the scheduler and reconcilers', kind: 'meta' },
  { method: 'GET', url: '/openapi.json', summary: 'This API as an OpenAPI 3.1 document', kind: 'meta' },
  { method: 'GET', url: '/metrics', summary: 'Prometheus metrics (tenant, group and cell labels; scheduler and reconciler timings)', kind: 'meta' },
  ...objectRoutes(),
];
