/**
 * The OpenAPI 3.1 document, generated from the route table and the manifest schemas, so
 * it cannot drift from what the server does.
 */
import { z } from 'zod';
import { ERROR_CATALOGUE } from '../model/errors.js';
import { MANIFEST_SCHEMAS } from '../model/schemas.js';
import { ROUTES } from '../model/routes.js';

let cached: unknown;

const IPV4 = { type: 'string', format: 'ipv4' };

/**
 * What a read of an object says about its network (the rest of an object is its manifest
 * plus fields documented in model/objects.ts): one schema per kind that has addresses.
 */
const NETWORK_STATUS: Record<string, unknown> = {
  Tenant: {
    type: 'object',
    properties: { status: { type: 'object', properties: { network: { type: 'object', description: "The tenant network, once its first work was placed", properties: { cidr: { type: 'string', description: 'e.g. 10.128.0.0/18' }, vni: { type: 'integer', description: 'VXLAN network identifier' } } } } } },
  },
  Service: { type: 'object', properties: { status: { type: 'object', properties: { address: { ...IPV4, description: "The service address (VIP), claimed at creation, released at deletion" } } } } },
  Instance: { type: 'object', properties: { status: { type: 'object', properties: { address: { ...IPV4, description: "Its address on the tenant network (an instance in a cell has the cell's)" } } } } },
  Cell: { type: 'object', properties: { status: { type: 'object', properties: { address: { ...IPV4, description: "The VM's address on its tenant network" } } } } },
  Machine: { type: 'object', properties: { status: { type: 'object', properties: { address: { ...IPV4, description: "The VM's address on its tenant network" }, mac: { type: 'string', description: "Its NIC's MAC address" } } } } },
  Host: { type: 'object', properties: { status: { type: 'object', properties: { address: { ...IPV4, description: "The host's underlay address (where other hosts' VXLAN reaches it)" } } } } },
};

function schemaOf(s: z.ZodType): unknown {
  const { $schema: _drop, ...rest } = z.toJSONSchema(s, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return rest;
}

/** The document served at /openapi.json. */
export function openApiDocument(): unknown {
  if (cached) return cached;
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of ROUTES) {
    const path = r.url.replace(/:(\w+)/g, '{$1}');
    const params = [...r.url.matchAll(/:(\w+)/g)].map((m) => ({ name: m[1], in: 'path', required: true, schema: { type: 'string' } }));
    const op: Record<string, unknown> = {
      summary: r.summary,
      operationId: `${r.method.toLowerCase()}${path.replace(/[{}]/g, '').replace(/\/(\w)/g, (_m, c: string) => c.toUpperCase()).replace(/[^a-zA-Z0-9]/g, '')}`,
      parameters: params,
      responses: {
        '200': { description: 'OK' },
        default: { description: 'Error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
      },
    };
    if (r.action === 'get' && r.objectKind !== undefined && NETWORK_STATUS[r.objectKind] !== undefined) {
      op['responses'] = { ...(op['responses'] as Record<string, unknown>), '200': { description: 'OK', content: { 'application/json': { schema: { $ref: `#/components/schemas/${r.objectKind}Network` } } } } };
    }
    if (r.kind === 'exec') {
      // A WebSocket handshake: 101 then binary frames (src/exec/frames.ts); refusals are ordinary errors.
      op['responses'] = { '101': { description: 'Switching Protocols: a WebSocket of exec frames (channel byte 0 stdin, 1 stdout, 2 stderr, 3 exit status JSON, 4 resize JSON, 5 stdin EOF)' }, default: (op['responses'] as Record<string, unknown>)['default'] };
    }
    if (r.action === 'apply' || r.action === 'create') {
      op['requestBody'] = { required: true, content: { 'application/json': { schema: { $ref: `#/components/schemas/${r.objectKind}Manifest` } } } };
    }
    paths[path] = { ...(paths[path] ?? {}), [r.method.toLowerCase()]: op };
  }
  cached = {
    openapi: '3.1.0',
    info: { title: 'Carapace API', version: '1', description: 'Containers and VMs under one control plane.' },
    paths,
    components: {
      schemas: {
        // Every kind that can be applied (the request bodies of its PUT and POST routes).
        ...Object.fromEntries(Object.entries(MANIFEST_SCHEMAS).map(([kind, schema]) => [`${kind}Manifest`, schemaOf(schema)])),
        ...Object.fromEntries(Object.entries(NETWORK_STATUS).map(([kind, schema]) => [`${kind}Network`, schema])),
        Error: {
          type: 'object',
          properties: {
            error: {
              type: 'object',
              properties: {
                code: { type: 'string', enum: Object.keys(ERROR_CATALOGUE) },
                message: { type: 'string' },
                details: { type: 'array', items: { type: 'object', properties: { path: { type: 'string' }, message: { type: 'string' } } } },
              },
            },
          },
        },
      },
    },
  };
  return cached;
}
