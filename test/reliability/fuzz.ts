/**
 * Fuzzing with generated and mutated inputs, counted case by case (a failure is recorded and
 * the run goes on, so the report says how many failed, not just the first):
 *
 * - `api`: manifests generated from the zod schemas and mutations of them, plus token
 *   bodies, query strings and paths, sent through the real API in-process (fastify inject,
 *   real SQLite, audit log, authentication). Never a 5xx; every error has a catalogue code
 *   with its status and, for input errors, a field path; the API agrees with the parser
 *   (same code and paths for a document the parser refuses, no input error for one it
 *   accepts), and an accepted write stores exactly the parser's normalised spec.
 * - `parser`: the same documents through `parseManifest` and multi-document YAML through the
 *   CLI's `parseManifestText`: a manifest or a coded error with field paths, never another
 *   exception; what it returns parses again to itself.
 * - `guest`: the cell protocol (guest-protocol.ts): both parsers, the host's channel and the
 *   guest agent fed generated and mutated lines.
 * - `join`: the agent API (agent-join.ts): joins with random bodies, tokens and CSRs, random
 *   client certificates, and a joined agent's store calls with random keys and values.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { pino } from 'pino';
import YAML from 'yaml';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { newKeyLine, parseKeyring } from '../../src/keyring/keyring.js';
import { storedSecretSpec } from '../../src/model/secrets.js';
import { ROUTES } from '../../src/model/routes.js';
import { AuditLog } from '../../src/audit/log.js';
import { authenticate } from '../../src/auth/tokens.js';
import { bootstrapToken } from '../../src/core/api-tokens.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { parseManifestText } from '../../src/cli/apply.js';
import { CliError } from '../../src/cli/client.js';
import { CarapaceError, ERROR_CATALOGUE } from '../../src/model/errors.js';
import { parseManifest } from '../../src/model/manifest.js';
import { KINDS } from '../../src/model/objects.js';
import { MANIFEST_SCHEMAS, type ApplyKind } from '../../src/model/schemas.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { fromZod, HOSTILE_STRING, mutate, type Mutated } from './arbitraries.js';
import { quiet, type Log } from './harness.js';

/** Codes about the content of a field: they must name at least one field path. */
export const FIELD_CODES = new Set([
  'CARAPACE_E_VALIDATION',
  'CARAPACE_E_UNKNOWN_KIND',
  'CARAPACE_E_UNSUPPORTED_API_VERSION',
  'CARAPACE_E_NAME_MISMATCH',
  'CARAPACE_E_BAD_QUERY',
  'CARAPACE_E_TENANT_NOT_FOUND',
  'CARAPACE_E_IMMUTABLE_FIELD',
  'CARAPACE_E_ISOLATION_UNAVAILABLE',
  'CARAPACE_E_POLICY_VIOLATION',
  'CARAPACE_E_QUOTA_EXCEEDED',
]);

/** Counts of one fuzzed part. */
export interface PartResult {
  cases: number;
  failures: number;
  /** The first failures, described. */
  examples: string[];
}

/** Records failures of a part; keeps the first few descriptions. */
export class Tally implements PartResult {
  cases = 0;
  failures = 0;
  examples: string[] = [];
  /** Accepted (2xx) cases, per part where it means something. */
  accepted = 0;
  readonly codes = new Map<string, number>();

  fail(what: string): void {
    this.failures++;
    if (this.examples.length < 15) this.examples.push(what.slice(0, 600));
  }

  result(): PartResult {
    return { cases: this.cases, failures: this.failures, examples: this.examples };
  }
}

/** Checks an error body against the catalogue; returns what is wrong, or undefined. */
export function errorProblem(status: number, body: string): string | undefined {
  if (status >= 500) return `answered ${status}: ${body.slice(0, 300)}`;
  if (status < 400) return undefined;
  let e: { error?: { code?: unknown; message?: unknown; details?: unknown } };
  try {
    e = JSON.parse(body) as typeof e;
  } catch {
    return `error ${status} without a JSON body: ${body.slice(0, 200)}`;
  }
  const code = e.error?.code;
  if (typeof code !== 'string' || !(code in ERROR_CATALOGUE)) return `error ${status} with no catalogue code: ${body.slice(0, 300)}`;
  const want = ERROR_CATALOGUE[code as keyof typeof ERROR_CATALOGUE].status;
  if (want !== status) return `${code} answered with ${status}, the catalogue says ${want}`;
  if (typeof e.error?.message !== 'string' || e.error.message === '') return `${code} without a message`;
  const details = e.error.details;
  if (!Array.isArray(details)) return `${code} without a details list`;
  for (const d of details as { path?: unknown; message?: unknown }[]) {
    if (typeof d.path !== 'string' || d.path === '' || typeof d.message !== 'string') return `${code} has a detail without a field path or message: ${JSON.stringify(d).slice(0, 200)}`;
  }
  if (FIELD_CODES.has(code) && details.length === 0) return `${code} names no field path: ${body.slice(0, 300)}`;
  return undefined;
}

// ---------------------------------------------------------------- documents

const APPLY_KINDS = Object.keys(MANIFEST_SCHEMAS) as ApplyKind[];
const NAMES = ['a', 'b', 'web'];
const TENANTS = ['fz', 'fzq'];

/** A manifest of `kind` generated from its schema, often named from a small pool so writes collide. */
function manifestArb(kind: ApplyKind): fc.Arbitrary<unknown> {
  const cached = MANIFEST_ARBS.get(kind);
  if (cached) return cached;
  const arb = fc.tuple(fromZod(MANIFEST_SCHEMAS[kind]), fc.constantFrom(...NAMES), fc.constantFrom(...TENANTS), fc.boolean()).map(([doc, name, tenant, pooled]) => {
    const d = doc as { metadata?: Record<string, unknown> };
    if (!pooled || typeof d.metadata !== 'object' || d.metadata === null) return doc;
    return { ...d, metadata: { ...d.metadata, name: kind === 'Tenant' ? tenant : name, ...(kind !== 'Tenant' ? { tenant } : {}), resourceVersion: undefined } };
  }).map((doc) => JSON.parse(JSON.stringify(doc)) as unknown); // as JSON: no undefined fields
  MANIFEST_ARBS.set(kind, arb);
  return arb;
}
/** Built once per kind: building one (JSON Schema export, regex arbitraries) costs far more than drawing from it. */
const MANIFEST_ARBS = new Map<ApplyKind, fc.Arbitrary<unknown>>();

/** A document: valid by the schema's JSON view, or one mutation of one (sometimes two). */
export const documentArb: fc.Arbitrary<{ kind: ApplyKind; m: Mutated }> = fc
  .constantFrom(...APPLY_KINDS)
  .chain((kind) =>
    manifestArb(kind).chain((doc) =>
      fc.oneof(
        { weight: 3, arbitrary: fc.constant<Mutated>({ doc, what: 'generated' }) },
        { weight: 5, arbitrary: mutate(doc) },
        { weight: 2, arbitrary: mutate(doc).chain((m) => (m.raw === undefined ? mutate(m.doc).map((m2) => ({ ...m2, what: `${m.what}; ${m2.what}` })) : fc.constant(m))) },
      ).map((m) => ({ kind, m })),
    ),
  );

/** What the parser says about a document: the spec it would be stored with, or its code and paths. */
function parserVerdict(doc: unknown): { ok: true; spec: unknown } | { ok: false; code: string; paths: string[] } {
  try {
    const m = parseManifest(doc, 'request body');
    // A Secret's values are sealed: it is stored and answered with its keys and sizes only.
    return { ok: true, spec: m.kind === 'Secret' ? storedSecretSpec(m.spec) : m.spec };
  } catch (e) {
    if (e instanceof CarapaceError) return { ok: false, code: e.code, paths: e.details.map((d) => d.path) };
    throw e;
  }
}

// ---------------------------------------------------------------- parser

/** `parseManifest` and `parseManifestText` on generated and mutated documents. */
export function fuzzParser(n: number, seed: number): Tally {
  const t = new Tally();
  const docs = fc.sample(documentArb, { numRuns: n, seed });
  for (const { m } of docs) {
    t.cases++;
    let doc: unknown = m.doc;
    if (m.raw !== undefined) {
      try {
        doc = JSON.parse(m.raw);
      } catch {
        doc = m.raw; // not JSON: the parser gets the text itself
      }
    }
    try {
      const out = parseManifest(doc);
      t.accepted++;
      // Normalised output is canonical: it parses again to itself.
      const again = parseManifest(JSON.parse(JSON.stringify(out)));
      if (!isDeepStrictEqual(again, out)) t.fail(`${m.what}: parsing the parser's own output changed it: ${JSON.stringify(out).slice(0, 200)} -> ${JSON.stringify(again).slice(0, 200)}`);
    } catch (e) {
      if (!(e instanceof CarapaceError)) t.fail(`${m.what}: parseManifest threw ${String(e).slice(0, 200)}`);
      else if (e.details.length === 0 || e.details.some((d) => d.path === '')) t.fail(`${m.what}: ${e.code} without field paths`);
    }
  }
  // Multi-document YAML as the CLI reads it, including YAML's own hazards.
  const yamlArb = fc.oneof(
    fc.array(documentArb, { minLength: 1, maxLength: 3 }).map((ds) => ds.map(({ m }) => (m.raw !== undefined ? m.raw : YAML.stringify(m.doc))).join('\n---\n')),
    fc.constantFrom(
      'a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n',
      'kind: !!binary aGVsbG8=\n',
      'replicas: .inf\n',
      'replicas: .nan\n',
      '--- !!set\n? a\n',
      'apiVersion: carapace/v1\nkind: Service\nmetadata: {name: x, tenant: y}\nspec: {image: r/x:1, replicas: 0x10}\n',
      '%YAML 1.1\n---\non: yes\n',
      '\t- tab',
      '<<: *missing\n',
      'a: 1\na: 2\n',
    ),
    HOSTILE_STRING,
  );
  for (const text of fc.sample(yamlArb, { numRuns: Math.max(1, Math.floor(n / 10)), seed: seed + 1 })) {
    t.cases++;
    try {
      parseManifestText(text, 'fuzz.yaml');
      t.accepted++;
    } catch (e) {
      if (!(e instanceof CliError) || !(e.code in ERROR_CATALOGUE)) t.fail(`parseManifestText threw ${String(e).slice(0, 200)} for ${JSON.stringify(text).slice(0, 200)}`);
      else if (FIELD_CODES.has(e.code) && e.details.length === 0 && !/no manifests found/.test(e.message)) t.fail(`parseManifestText: ${e.code} without field paths for ${JSON.stringify(text).slice(0, 200)}`);
    }
  }
  return t;
}

// ---------------------------------------------------------------- API

/** An in-process API over an in-memory SQLite store with an audit log, as the server builds it. */
export async function fuzzableApi(): Promise<{ app: FastifyInstance; store: Store; admin: string; close: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-fuzz-'));
  const store = await openSqliteStore({ path: ':memory:' });
  let n = 0;
  const env = { now: () => new Date().toISOString(), newId: () => `fuzz-${++n}` };
  const audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  const resources = new Resources(store, audit, env);
  const app = buildApi({
    // With a keyring, as `carapace up` runs: Secrets are stored, not refused (503) for want of one.
    controlPlane: new ControlPlane(resources, env, undefined, parseKeyring(newKeyLine())),
    store,
    // No containers here: logs of instances and machine consoles are empty (the server reads real ones).
    logs: { logs: async function* () {}, machineLogs: async function* () {} },
    logger: pino({ level: 'silent' }),
    auth: { authenticate: (tok: string | undefined) => authenticate(store, tok) },
    env,
    audit,
  });
  await app.ready();
  const admin = (await bootstrapToken(resources, { id: 'fuzzadmin', name: 'fuzz admin', now: env.now() }))?.token ?? '';
  return {
    app,
    store,
    admin,
    close: async () => {
      await app.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A value as the store keeps it: JSON, where -0 is 0 (a YAML `-0` quota parses to -0 and is
 * stored as the same number 0; isDeepStrictEqual tells them apart, the API need not).
 */
const asStored = (v: unknown): unknown => JSON.parse(JSON.stringify(v)) as unknown; // safe: round trip of a JSON-able value

interface ApiCase {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE';
  url: string;
  body?: string;
  contentType?: string;
  /** For manifest bodies: the document exactly as the server will parse it. */
  doc?: unknown;
  what: string;
}

/** A string as one URL path segment (lone surrogates, which have no UTF-8 form, become U+FFFD). */
const segment = (s: string): string => encodeURIComponent(wellFormed(s)) || 'x';

/** Lone surrogates replaced by U+FFFD (String.prototype.toWellFormed, which ES2023's lib lacks). */
function wellFormed(s: string): string {
  return s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

const pathPart = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...NAMES, ...TENANTS) },
  { weight: 2, arbitrary: fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,70}[a-z0-9])?$/) },
  { weight: 2, arbitrary: HOSTILE_STRING.map(segment) },
  { weight: 1, arbitrary: fc.constantFrom('%ZZ', '%', '..', '.', '%2e%2e', '%2F', 'a%00b', 'x'.repeat(5000)) },
);

const queryValue = fc.oneof(fc.constantFrom('', '0', '1', '-1', 'true', 'false', 'abc', '1e3', '99999999999999999999', '2026-01-01T00:00:00Z', 'yesterday', 'tenant', 'csv', 'jsonl', 'json', 'table', 'group', 'cell'), HOSTILE_STRING.map(wellFormed));
const queryArb = fc.dictionary(fc.constantFrom('resourceVersion', 'tail', 'follow', 'since', 'until', 'by', 'format', 'tenant', 'ttlSeconds', 'description', 'timestamps', 'x'), queryValue, { maxKeys: 3 });

/** Routes that answer without streaming (watch and event streams would hold inject open). */
const FINITE_ROUTES = ROUTES.filter((r) => r.kind !== 'watch' && r.url !== '/v1/events');

/** Requests: manifests on their routes (and on wrong ones), token bodies, queries and paths. */
const apiCaseArb: fc.Arbitrary<ApiCase> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.tuple(documentArb, fc.constantFrom('put', 'put', 'put', 'post', 'other'), fc.constantFrom<'json' | 'yaml'>('json', 'json', 'json', 'yaml'), fc.constantFrom(...APPLY_KINDS), pathPart).map(([{ kind, m }, route, transport, otherKind, otherName]): ApiCase => {
      const d = m.doc as { metadata?: { name?: unknown; tenant?: unknown } } | undefined;
      const name = typeof d?.metadata?.name === 'string' && d.metadata.name !== '' ? segment(d.metadata.name) : otherName;
      const tenant = typeof d?.metadata?.tenant === 'string' && d.metadata.tenant !== '' ? segment(d.metadata.tenant) : 'fz';
      const k = route === 'other' ? otherKind : kind;
      const plural = KINDS[k].plural;
      const collection = KINDS[k].scoped ? `/v1/tenants/${tenant}/${plural}` : `/v1/${plural}`;
      const url = route === 'post' ? collection : `${collection}/${route === 'other' ? otherName : name}`;
      let body: string;
      let doc: unknown;
      if (m.raw !== undefined) body = m.raw;
      else if (transport === 'yaml') {
        body = YAML.stringify(m.doc ?? null);
        try {
          doc = YAML.parse(body);
        } catch {
          doc = undefined;
        }
      } else {
        body = JSON.stringify(m.doc ?? null);
        doc = JSON.parse(body);
      }
      return { method: route === 'post' ? 'POST' : 'PUT', url, body, contentType: transport === 'yaml' && m.raw === undefined ? 'application/yaml' : 'application/json', doc, what: `${kind} ${m.what} via ${route} ${transport}` };
    }),
  },
  {
    weight: 1,
    arbitrary: fc
      .record({ name: fc.oneof(fc.string({ maxLength: 120 }), HOSTILE_STRING), role: fc.oneof(fc.constantFrom('cluster-admin', 'tenant-admin', 'tenant-viewer'), fc.string({ maxLength: 20 })), tenant: fc.oneof(fc.constantFrom(...TENANTS), fc.string({ maxLength: 70 })) }, { requiredKeys: [] })
      .chain((doc) => fc.oneof(fc.constant<Mutated>({ doc, what: 'token body' }), mutate(doc)))
      .map((m): ApiCase => ({ method: 'POST', url: '/v1/tokens', body: m.raw ?? JSON.stringify(m.doc ?? null), contentType: 'application/json', what: `token ${m.what}` })),
  },
  {
    weight: 3,
    arbitrary: fc.tuple(fc.constantFrom(...FINITE_ROUTES), pathPart, pathPart, queryArb, fc.constantFrom('PUT', 'POST', 'GET', 'DELETE', 'PATCH')).map(([r, a, b, q, m]): ApiCase => {
      const url = r.url.replace(':tenant', a).replace(':name', b);
      const qs = new URLSearchParams(q).toString();
      const method = (m === 'PATCH' ? r.method : m) as ApiCase['method'];
      return { method, url: `${url}${qs ? `?${qs}` : ''}`, ...(method === 'PUT' || method === 'POST' ? { body: '{}', contentType: 'application/json' } : {}), what: `${method} ${r.url} with ${JSON.stringify(q)}` };
    }),
  },
);

/** Sends generated requests through the real API in-process and checks every answer. */
export async function fuzzApi(n: number, seed: number, log: Log = quiet): Promise<Tally> {
  const t = new Tally();
  const api = await fuzzableApi();
  const auth = { authorization: `Bearer ${api.admin}` };
  try {
    // Tenants the documents name: one plain, one with quota and policy (so those refusals are exercised).
    await api.app.inject({ method: 'PUT', url: '/v1/tenants/fz', headers: auth, payload: { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'fz' } } });
    await api.app.inject({ method: 'PUT', url: '/v1/tenants/fzq', headers: auth, payload: { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'fzq' }, spec: { quota: { cpu: 2, memory: '1Gi', instances: 5, machines: 1, cells: 1 }, allowedRegistries: ['127.0.0.1:5000'], minIsolation: 'sandbox' } } });
    const started = performance.now();
    const batch = 500;
    for (let done = 0; done < n; done += batch) {
      const cases = fc.sample(apiCaseArb, { numRuns: Math.min(batch, n - done), seed: seed + done });
      for (const c of cases) {
        t.cases++;
        const r = await api.app.inject({ method: c.method, url: c.url, headers: { ...auth, ...(c.contentType ? { 'content-type': c.contentType } : {}) }, ...(c.body !== undefined ? { payload: c.body } : {}) });
        const problem = errorProblem(r.statusCode, r.body);
        if (problem) {
          t.fail(`${c.what}: ${c.method} ${c.url.slice(0, 120)}: ${problem}`);
          continue;
        }
        if (r.statusCode < 300) t.accepted++;
        else {
          const code = (JSON.parse(r.body) as { error: { code: string } }).error.code;
          t.codes.set(code, (t.codes.get(code) ?? 0) + 1);
        }
        if (c.doc === undefined || (c.body?.length ?? 0) > 1024 * 1024) continue;
        // A URL nothing routes (an empty or bad name in it) never reaches the parser.
        if (r.statusCode === 404 && /CARAPACE_E_ROUTE_NOT_FOUND/.test(r.body)) continue;
        // The API and the parser agree.
        const v = parserVerdict(c.doc);
        if (!v.ok) {
          const got = r.statusCode >= 400 ? (JSON.parse(r.body) as { error: { code: string; details: { path: string }[] } }).error : undefined;
          if (!got || got.code !== v.code || !isDeepStrictEqual(got.details.map((d) => d.path), v.paths)) t.fail(`${c.what}: the parser says ${v.code} at ${v.paths.join(', ')}, the API answered ${r.statusCode} ${r.body.slice(0, 300)}`);
        } else if (r.statusCode >= 400) {
          const code = (JSON.parse(r.body) as { error: { code: string } }).error.code;
          if (code === 'CARAPACE_E_VALIDATION' || code === 'CARAPACE_E_UNKNOWN_KIND' || code === 'CARAPACE_E_UNSUPPORTED_API_VERSION') t.fail(`${c.what}: the parser accepts it, the API answered ${r.body.slice(0, 300)}`);
        } else if (!isDeepStrictEqual((JSON.parse(r.body) as { spec: unknown }).spec, asStored(v.spec))) {
          t.fail(`${c.what}: stored spec ${r.body.slice(0, 300)} differs from the parser's ${JSON.stringify(v.spec).slice(0, 300)}`);
        }
      }
      log(`fuzz: api ${t.cases}/${n} cases, ${t.failures} failures, ${t.accepted} accepted (${((performance.now() - started) / 1000).toFixed(0)} s)`);
    }
  } finally {
    await api.close();
  }
  return t;
}
