/**
 * The OpenAPI 3.1 document, generated from the route table, the manifest schemas, the error
 * catalogue and the authorisation rules, so it cannot drift from what the server does. It is
 * written for client generators (openapi-typescript, openapi-generator) as much as for people:
 * every `$ref` resolves inside the document, the bearer token is a declared security scheme,
 * every error status an operation can answer is listed with the error body's schema, and
 * `servers` is set. `test/api/openapi.test.ts` lints the served document with Redocly's
 * recommended rules and type-checks a client generated from it.
 */
import { z } from 'zod';
import { classifyRoute } from '../auth/rbac.js';
import { ERROR_CATALOGUE } from '../model/errors.js';
import { KINDS, type Kind } from '../model/objects.js';
import { MANIFEST_SCHEMAS, type ApplyKind } from '../model/schemas.js';
import { ROUTES, type QueryParam, type RouteDef } from '../model/routes.js';
import { REQUEST_BODIES } from './bodies.js';

let cached: unknown;

const IPV4 = { type: 'string', format: 'ipv4' };

/** The name of the security scheme every authenticated operation requires. */
export const BEARER_SCHEME = 'bearerToken';

/**
 * What a read of an object says about its network (the rest of its status is documented in
 * model/objects.ts): the status properties per kind that has addresses.
 */
const NETWORK_STATUS: Partial<Record<Kind, Record<string, unknown>>> = {
  Tenant: { network: { type: 'object', description: 'The tenant network, once its first work was placed', properties: { cidr: { type: 'string', description: 'e.g. 10.128.0.0/18' }, vni: { type: 'integer', description: 'VXLAN network identifier' } } } },
  Service: { address: { ...IPV4, description: 'The service address (VIP), claimed at creation, released at deletion' } },
  Instance: { address: { ...IPV4, description: "Its address on the tenant network (an instance in a cell has the cell's)" } },
  Cell: { address: { ...IPV4, description: "The VM's address on its tenant network" } },
  Machine: { address: { ...IPV4, description: "The VM's address on its tenant network" }, mac: { type: 'string', description: "Its NIC's MAC address" } },
  Host: { address: { ...IPV4, description: "The host's underlay address (where other hosts' VXLAN reaches it)" } },
};

/**
 * Kinds whose stored `spec` is what their manifest's spec schema parses to (defaults filled
 * in). A Secret is not among them: its stored spec holds key names and sizes, never values.
 */
const SPEC_AS_PARSED: readonly ApplyKind[] = ['Tenant', 'Service', 'Job', 'Machine', 'Volume', 'VolumeSnapshot', 'Config'];

/** The error statuses by component name; each is described from the catalogue's codes. */
const ERROR_RESPONSES: Readonly<Record<number, string>> = {
  400: 'BadRequest',
  401: 'Unauthenticated',
  403: 'Forbidden',
  404: 'NotFound',
  409: 'Conflict',
  413: 'PayloadTooLarge',
  415: 'UnsupportedMediaType',
  422: 'Unprocessable',
  500: 'InternalError',
  503: 'Unavailable',
};

/** Routes that answer 201 on success (server.ts sets it): minted tokens and join tokens. */
const CREATED_201 = new Set(['POST /v1/tokens', 'POST /v1/join-tokens']);

function schemaOf(s: z.ZodType, io: 'input' | 'output'): Record<string, unknown> {
  const { $schema: _drop, ...rest } = z.toJSONSchema(s, { io, unrepresentable: 'any' }) as Record<string, unknown>;
  return rest;
}

const ref = (name: string): { $ref: string } => ({ $ref: `#/components/schemas/${name}` });
const json = (schema: unknown): Record<string, unknown> => ({ content: { 'application/json': { schema } } });
const text = (...types: string[]): Record<string, unknown> => ({ content: Object.fromEntries(types.map((t) => [t, { schema: { type: 'string' } }])) });

/** The catalogue codes a client can get over HTTP (status 0 marks the CLI's own codes). */
function wireCodes(): string[] {
  return Object.entries(ERROR_CATALOGUE)
    .filter(([, e]) => e.status !== 0)
    .map(([code]) => code);
}

/**
 * The error statuses an operation can answer: what admission, body parsing, query parsing
 * and the core can refuse with for this shape of route. 500 and 503 (store unavailable) can
 * happen anywhere.
 */
function errorStatuses(r: RouteDef, isPublic: boolean): number[] {
  const s = new Set<number>([500, 503]);
  if (!isPublic) [401, 403].forEach((x) => s.add(x));
  // A name in the URL, or one in a body (a manifest's tenant, a token's tenant), may not exist.
  if (r.url.includes('/:') || r.method !== 'GET') s.add(404);
  // Query parameters are parsed strictly (resourceVersion, follow, tail, since, format...).
  if (r.method !== 'GET' || ['watch', 'logs', 'audit', 'usage'].includes(r.kind)) s.add(400);
  if (r.method !== 'GET') s.add(409);
  if (r.method === 'PUT' || r.method === 'POST') [413, 415, 422].forEach((x) => s.add(x));
  return [...s].sort((a, b) => a - b);
}

/** The body of `GET …/services/NAME/rollout` (core/rollout-report.ts RolloutReport). */
const ROLLOUT_REPORT_SCHEMA = {
  type: 'object',
  required: ['tenant', 'name', 'generation', 'observedGeneration', 'replicas', 'updatedReplicas', 'readyReplicas', 'availableReplicas', 'settings', 'complete', 'history'],
  properties: {
    tenant: { type: 'string' },
    name: { type: 'string' },
    generation: { type: 'integer' },
    observedGeneration: { type: 'integer' },
    replicas: { type: 'integer' },
    revision: { type: 'integer', description: 'The current revision (absent until the controller has seen the service)' },
    updatedReplicas: { type: 'integer' },
    readyReplicas: { type: 'integer' },
    availableReplicas: { type: 'integer' },
    settings: { type: 'object', description: 'spec.rollout with its defaults filled in' },
    condition: { type: 'object', description: 'The Progressing condition: status, reason, message, lastTransitionTime' },
    complete: { type: 'boolean', description: 'The current spec is observed and rolled out' },
    waiting: {
      type: 'array',
      description: 'Replicas the placement pipeline could not place, with why (absent when none waits): what a rollout that stands still waits for',
      items: { type: 'object', required: ['name', 'reason', 'message'], properties: { name: { type: 'string' }, reason: { type: 'string', description: '`Unschedulable` or a volume wait reason' }, message: { type: 'string' } } },
    },
    history: {
      type: 'array',
      items: {
        type: 'object',
        required: ['revision', 'cause', 'summary', 'template', 'generation', 'createdAt', 'current'],
        properties: {
          revision: { type: 'integer' },
          cause: { type: 'string', enum: ['update', 'undo', 'rollback', 'restart'] },
          summary: { type: 'string' },
          template: { type: 'object' },
          generation: { type: 'integer' },
          createdAt: { type: 'string', format: 'date-time' },
          completedAt: { type: 'string', format: 'date-time' },
          changedBy: { type: 'string', description: "The audit record's actor id (`controller` for a rollback)" },
          changedAt: { type: 'string', format: 'date-time' },
          action: { type: 'string' },
          current: { type: 'boolean' },
        },
      },
    },
  },
} as const;

/** The success responses of a route: what `handle` in server.ts renders for it. */
function successResponses(r: RouteDef): Record<string, unknown> {
  const id = `${r.method} ${r.url}`;
  const ok = (description: string, body: Record<string, unknown>): Record<string, unknown> => ({ [CREATED_201.has(id) ? '201' : '200']: { description, ...body } });
  if (r.kind === 'action' && r.objectKind !== undefined) {
    const object = ref(r.objectKind);
    switch (r.action) {
      case 'get':
        return { '200': { description: `The ${r.objectKind}`, ...json(object) } };
      case 'list':
      case 'listAll':
        return { '200': { description: `The ${KINDS[r.objectKind].plural}`, ...json(ref(`${r.objectKind}List`)) } };
      case 'apply':
        return { '200': { description: 'Updated', ...json(object) }, '201': { description: 'Created', ...json(object) } };
      case 'create':
        return { '201': { description: 'Created', ...json(object) } };
      case 'delete':
        return { '200': { description: 'Deleted (or deletion under way)', ...json(ref('Deleted')) } };
    }
  }
  if (r.kind === 'watch' || r.url === '/v1/events') return ok('Server-Sent Events, until the client disconnects', text('text/event-stream'));
  // A WebSocket handshake: 101 then binary frames (src/exec/frames.ts); refusals before it are ordinary errors.
  if (r.kind === 'exec')
    return {
      '101': {
        description:
          'Switching Protocols: a WebSocket of exec frames (channel byte 0 stdin, 1 stdout, 2 stderr, 3 exit status JSON, 4 resize JSON, 5 stdin EOF). ' +
          'A browser, which cannot set an Authorization header, offers the subprotocols `v1.exec.carapace.dev` and `base64url.bearer.authorization.carapace.dev.<token in base64url>`; ' +
          'the server answers with `v1.exec.carapace.dev` and sends a refusal to such a client as the status frame `{"error": {code, message}}` after the handshake.',
      },
    };
  if (r.kind === 'portforward') return { '101': { description: 'Switching Protocols: a WebSocket carrying one TCP connection to the port (binary frames, channel byte 0 data, 1 end of data (half-close), 2 status JSON); refused ports answer 502 CARAPACE_E_PORT_UNREACHABLE before it' } };
  if (r.kind === 'logs') return ok('NDJSON lines, one per log line', text('application/x-ndjson'));
  // A rollout operation answers the service as written; the report is its own shape (core/rollout-report.ts).
  if (r.kind === 'rollout') return r.method === 'POST' ? ok('The service, its spec changed (or unchanged when already so)', json(ref('Service'))) : ok('The rollout report: revision, counts, condition, history with who and when', json(ROLLOUT_REPORT_SCHEMA));
  if (r.url === '/v1/audit/records') return ok('Audit records, JSON lines or CSV (?format)', text('application/x-ndjson', 'text/csv'));
  if (r.url === '/v1/usage') return ok('The usage report (?format)', { content: { 'application/json': { schema: { type: 'object' } }, 'text/csv': { schema: { type: 'string' } }, 'text/plain': { schema: { type: 'string' } } } });
  if (r.url === '/metrics') return ok('Prometheus text exposition', text('text/plain'));
  if (r.url === '/healthz') return ok('The server answers', json({ type: 'object', required: ['ok'], properties: { ok: { type: 'boolean', const: true }, leader: { type: 'boolean', description: 'Whether this server runs the scheduler and reconcilers' } } }));
  return ok('OK', json({ type: 'object' }));
}

/** A declared query parameter (model/routes.ts) as an OpenAPI parameter. */
function queryParameter(q: QueryParam): Record<string, unknown> {
  const scalar: Record<string, unknown> = q.type === 'date-time' ? { type: 'string', format: 'date-time' } : { type: q.type, ...(q.enum ? { enum: [...q.enum] } : {}) };
  return { name: q.name, in: 'query', required: false, description: q.description, schema: q.repeated ? { type: 'array', items: scalar } : scalar, ...(q.repeated ? { style: 'form', explode: true } : {}) };
}

/** The read schema of one kind: what GET, PUT and POST return. */
function objectSchema(kind: Kind): Record<string, unknown> {
  const network = NETWORK_STATUS[kind];
  const parsedSpec = (SPEC_AS_PARSED as readonly string[]).includes(kind);
  return {
    type: 'object',
    description: `A stored ${kind}: metadata kept by the control plane, the spec as applied, and a status written by the control plane (the fields listed here; model/objects.ts has all of them).`,
    required: ['kind', 'metadata', 'spec'],
    properties: {
      kind: { type: 'string', const: kind },
      metadata: ref('ObjectMeta'),
      spec: parsedSpec ? ref(`${kind}Spec`) : { type: 'object' },
      status: { type: 'object', ...(network ? { properties: network } : {}) },
    },
  };
}

/** The document served at /openapi.json (built once: it depends on nothing but code). */
export function openApiDocument(): unknown {
  if (cached) return cached;
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of ROUTES) {
    const path = r.url.replace(/:(\w+)/g, '{$1}');
    const params = [...[...r.url.matchAll(/:(\w+)/g)].map((m) => ({ name: m[1], in: 'path', required: true, schema: { type: 'string' } })), ...(r.query ?? []).map(queryParameter)];
    const isPublic = classifyRoute(r)?.type === 'public';
    const op: Record<string, unknown> = {
      summary: r.summary,
      operationId: `${r.method.toLowerCase()}${path.replace(/[{}]/g, '').replace(/\/(\w)/g, (_m, c: string) => c.toUpperCase()).replace(/[^a-zA-Z0-9]/g, '')}`,
      parameters: params,
      // The document's top-level `security` asks for the bearer token; public routes opt out.
      ...(isPublic ? { security: [] } : {}),
      responses: {
        ...successResponses(r),
        ...Object.fromEntries(errorStatuses(r, isPublic).map((s) => [String(s), { $ref: `#/components/responses/${ERROR_RESPONSES[s] ?? 'Error'}` }])),
        default: { $ref: '#/components/responses/Error' },
      },
    };
    const body = REQUEST_BODIES[`${r.method} ${r.url}`];
    if (body) op['requestBody'] = { required: body.required, content: { 'application/json': { schema: ref(body.name) } } };
    if (r.action === 'apply' || r.action === 'create') {
      op['requestBody'] = {
        required: true,
        content: {
          'application/json': { schema: ref(`${r.objectKind}Manifest`) },
          // The server parses YAML bodies too (what `carapace apply -f` sends as written).
          'application/yaml': { schema: ref(`${r.objectKind}Manifest`) },
        },
      };
    }
    paths[path] = { ...(paths[path] ?? {}), [r.method.toLowerCase()]: op };
  }
  const byStatus = new Map<number, string[]>();
  for (const code of wireCodes()) {
    const status = ERROR_CATALOGUE[code as keyof typeof ERROR_CATALOGUE].status;
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  const errorResponse = (description: string): Record<string, unknown> => ({ description, ...json(ref('Error')) });
  cached = {
    openapi: '3.1.0',
    info: {
      title: 'Carapace API',
      version: '1',
      description: 'Containers and VMs under one control plane. Every error is `{error: {code, message, details}}` with a stable `CARAPACE_E_*` code (docs/errors.md).',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    // Relative: the API is reached under many addresses (loopback, a host's address, a load
    // balancer or a TLS-terminating proxy in front of several servers), and OpenAPI resolves a
    // relative server URL against where the document was fetched from. An absolute URL built
    // from the request's Host (and X-Forwarded-Proto) would trust client-supplied headers and
    // be wrong behind a proxy; this keeps the document the same for every caller.
    servers: [{ url: '/', description: 'The server this document was fetched from' }],
    security: [{ [BEARER_SCHEME]: [] }],
    paths,
    components: {
      securitySchemes: {
        [BEARER_SCHEME]: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'cpt_<id>.<secret>',
          description: 'An API token: the cluster-admin token the first server mints, or one from `carapace token create` (POST /v1/tokens).',
        },
      },
      responses: {
        ...Object.fromEntries(
          Object.entries(ERROR_RESPONSES).map(([status, name]) => [name, errorResponse(`Error; \`error.code\` is one of: ${(byStatus.get(Number(status)) ?? []).join(', ')}`)]),
        ),
        Error: errorResponse('Error (any other status)'),
      },
      schemas: {
        // Every kind that can be applied (the request bodies of its PUT and POST routes).
        ...Object.fromEntries(Object.entries(MANIFEST_SCHEMAS).map(([kind, schema]) => [`${kind}Manifest`, schemaOf(schema, 'input')])),
        // What reads return: the parsed spec (defaults filled in), per kind that stores it so.
        ...Object.fromEntries(SPEC_AS_PARSED.map((kind) => [`${kind}Spec`, schemaOf(MANIFEST_SCHEMAS[kind].shape.spec, 'output')])),
        ...Object.fromEntries((Object.keys(KINDS) as Kind[]).map((kind) => [kind, objectSchema(kind)])),
        ...Object.fromEntries(Object.values(REQUEST_BODIES).map((b) => [b.name, schemaOf(b.schema, 'input')])),
        ...Object.fromEntries(
          (Object.keys(KINDS) as Kind[]).map((kind) => [
            `${kind}List`,
            { type: 'object', required: ['items', 'resourceVersion'], properties: { items: { type: 'array', items: ref(kind) }, resourceVersion: { type: 'integer', description: 'The store revision the list was read at (resume a watch from it)' } } },
          ]),
        ),
        ObjectMeta: {
          type: 'object',
          required: ['name', 'uid', 'labels', 'resourceVersion', 'generation', 'createdAt', 'updatedAt'],
          properties: {
            name: { type: 'string' },
            tenant: { type: 'string', description: 'The owning tenant; absent for cluster-scoped kinds' },
            uid: { type: 'string' },
            labels: { type: 'object', additionalProperties: { type: 'string' } },
            resourceVersion: { type: 'integer', description: 'Store revision of the last write; send it back for optimistic concurrency' },
            generation: { type: 'integer', description: 'Grows by one whenever the spec changes' },
            createdAt: { type: 'string', format: 'date-time' },
            updatedAt: { type: 'string', format: 'date-time' },
            deletionRequestedAt: { type: 'string', format: 'date-time', description: 'Set while deletion (stopping containers) is under way' },
          },
        },
        Deleted: {
          type: 'object',
          required: ['deleted'],
          properties: { deleted: { type: 'object', required: ['kind', 'name'], properties: { kind: { type: 'string' }, name: { type: 'string' }, tenant: { type: 'string' } } } },
        },
        // The wire shape of CarapaceError.toJSON (model/errors.ts), for every error status.
        Error: {
          type: 'object',
          required: ['error'],
          properties: {
            error: {
              type: 'object',
              required: ['code', 'message', 'details'],
              properties: {
                code: { type: 'string', enum: wireCodes(), description: 'A stable code from the error catalogue (docs/errors.md)' },
                message: { type: 'string' },
                details: {
                  type: 'array',
                  description: 'One entry per offending field, e.g. {path: "spec.replicas", message: "must be >= 0"}',
                  items: { type: 'object', required: ['path', 'message'], properties: { path: { type: 'string' }, message: { type: 'string' } } },
                },
              },
            },
          },
        },
      },
    },
  };
  return cached;
}
