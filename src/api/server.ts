/**
 * The HTTP edge (fastify). Parses requests strictly into Actions, runs them through the
 * ControlPlane, and renders results and errors. Every error leaves as
 * `{error: {code, message, details}}` with the catalogue's status; nothing a client sends can
 * produce a 500 unless there is a bug (and then the code is CARAPACE_E_INTERNAL).
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import YAML from 'yaml';
import { CarapaceError } from '../model/errors.js';
import { parseManifest } from '../model/manifest.js';
import { KINDS, type Instance, type Kind } from '../model/objects.js';
import { AGENT_CERT_PREFIX, JOIN_TOKEN_PREFIX, kindPrefix, seqOfRecordKey } from '../model/keys.js';
import type { ControlPlane, ActionResult } from '../core/control-plane.js';
import type { Store } from '../store/store.js';
import { CompactedError, rawJsonOf, StoreClosedError, StoreUnavailableError, type WatchEvent } from '../store/store.js';
import { StreamWriter } from './stream-writer.js';
import { FrameCache, WatchHubs } from './watch-hub.js';
import type { LogLine, LogOptions } from '../runtime/driver.js';
import { ROUTES, type RouteDef } from '../model/routes.js';
import { versionInfo } from '../model/version.js';
import { openApiDocument } from './openapi.js';
import { metrics } from '../metrics/metrics.js';
import { admit, type Authenticator } from '../auth/admit.js';
import { canSee, filterList, owningTenant, type Principal } from '../auth/rbac.js';
import { listTokens } from '../auth/tokens.js';
import type { Env, RolloutOp } from '../core/actions.js';
import { rolloutReport } from '../core/rollout-report.js';
import type { AuditEntry } from '../audit/record.js';
import { zodIssues } from '../model/manifest.js';
import { NewTokenSchema, ReencryptKeysSchema, ReencryptSchema, VerifyAgainstSchema } from './bodies.js';
import type { AuditLog } from '../audit/log.js';
import { toPublicKey } from '../audit/keys.js';
import { contextFor, type AuditContext } from '../core/audit-context.js';
import { usageReport } from '../core/usage-report.js';
import type { AgentCertRecord, JoinTokenRecord } from '../pki/agents.js';
import { formatReport } from '../usage/format.js';
import { registerUi } from './ui.js';
import { bearerFromProtocols, CHANNEL, encodeFrame, EXEC_PROTOCOL, offersProtocol, parseExecQuery, type ExecOptions } from '../exec/frames.js';
import { relayPorts, wsPort, type ExecPort } from '../exec/session.js';
import { parsePortQuery } from '../exec/forward.js';
import { WsUpgrades } from '../exec/ws-upgrade.js';

/**
 * Where instance logs come from, and where exec sessions run (server/server.ts: the local
 * agent for its own host, other hosts' agents through the agent API).
 */
export interface LogSource {
  logs(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine>;
  /** A machine's serial console, one line per LogLine (stream `stdout`). */
  machineLogs?(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine>;
  /**
   * Runs an exec session in an instance (already checked and audited by the core) over
   * `port`; resolves when it ended. Every failure is the session's last (status) frame.
   */
  exec?(tenant: string, name: string, opts: ExecOptions, port: ExecPort): Promise<void>;
  /**
   * Connects to `port` of an instance's workload (on its host: here, or through its agent)
   * and resolves with the connection as a port of forward frames (exec/forward.ts), once the
   * workload accepted it. Throws CarapaceError: CARAPACE_E_NOT_FOUND,
   * CARAPACE_E_INSTANCE_NOT_RUNNING, CARAPACE_E_PORT_FORWARD_UNSUPPORTED,
   * CARAPACE_E_PORT_UNREACHABLE, CARAPACE_E_UNAVAILABLE (its host cannot be reached).
   */
  portForward?(tenant: string, name: string, port: number): Promise<ExecPort>;
}

export interface ApiOptions {
  controlPlane: ControlPlane;
  store: Store;
  logs: LogSource;
  logger: Logger;
  /** Turns bearer tokens into principals (a TokenCache in the server). */
  auth: Authenticator;
  /** The clock of reports' default window. */
  env: Env;
  /** The audit log, for export, verification and the event stream (the core writes it: successes with their mutation, refusals through ControlPlane.recordRefusal). */
  audit?: AuditLog;
  /** Largest request body accepted. */
  bodyLimit?: number;
  /** The built dashboard served at /ui (default: dist/ui of this install). */
  uiDir?: string;
  /** Extra fields of `/healthz` (e.g. `{leader: true}` on the control-plane leader); called per request. */
  health?: () => Record<string, unknown>;
  /** Serve HTTPS with this key and certificate chain (PEM, leaf first); absent: plain HTTP. */
  https?: { key: string; cert: string };
}

type Params = { tenant?: string; name?: string };

/** Who is calling and what the response must be narrowed to, per request. */
interface Admitted {
  principal?: Principal;
  postFilter?: 'items' | 'object' | 'events';
}
const admissions = new WeakMap<FastifyRequest, Admitted>();

/**
 * Streams (SSE, followed logs) open per app. Closing the app ends them first: otherwise one
 * connected watcher (a dashboard, `get --watch`) would hold a graceful shutdown forever.
 */
const openStreams = new WeakMap<ApiOptions, Set<AbortController>>();

/** Shared watches of one app, for stream clients that follow "from now" (watch-hub.ts). */
const watchHubs = new WeakMap<ApiOptions, WatchHubs>();

function hubsOf(o: ApiOptions): WatchHubs {
  let h = watchHubs.get(o);
  if (!h) watchHubs.set(o, (h = new WatchHubs(o.store, o.logger)));
  return h;
}

/** A resume point the client gave (`?resourceVersion=` or `Last-Event-ID`), or undefined to follow from now. */
function resumeFrom(q: Query, req: FastifyRequest): number | undefined {
  const lastId = req.headers['last-event-id'];
  return intParam(q, 'resourceVersion') ?? (typeof lastId === 'string' && /^\d+$/.test(lastId) ? Number(lastId) : undefined);
}

/**
 * Feeds `handle` every change under `prefix`: from the shared hub when following from now,
 * else from a watch of its own starting after `resume`. Resolves when `ac` aborts or the
 * watch ends; rejects with the watch's error. `started(from)` says where it starts.
 */
async function follow(o: ApiOptions, prefix: string, resume: number | undefined, ac: AbortController, handle: (e: WatchEvent<unknown>) => void, started: (from: number) => void): Promise<void> {
  if (resume !== undefined) {
    started(resume);
    for await (const e of o.store.watch<unknown>(prefix, resume, ac.signal)) handle(e);
    return;
  }
  let failed: Error | undefined;
  const { leave } = await hubsOf(o).for(prefix).join({
    deliver: handle,
    fail: (err) => {
      failed = err;
      ac.abort();
    },
    joined: started,
  });
  try {
    await new Promise<void>((resolve) => {
      if (ac.signal.aborted) resolve();
      else ac.signal.addEventListener('abort', () => resolve(), { once: true });
    });
  } finally {
    leave();
  }
  if (failed) throw failed;
}

/** SSE frames of watch events, formatted once per shared event. */
const watchFrames = new FrameCache((e) => `id: ${e.revision}\nevent: ${e.type}\ndata: ${rawJsonOf(e) ?? JSON.stringify(e.value)}\n\n`);
const auditFrames = new FrameCache((e) => `id: ${e.revision}\nevent: audit\ndata: ${rawJsonOf(e) ?? JSON.stringify(e.value)}\n\n`);

/** An abort signal for one stream: aborted when the client goes away or the server closes. */
function streamController(o: ApiOptions, reply: FastifyReply, ac = new AbortController()): { ac: AbortController; release: () => void } {
  const open = openStreams.get(o);
  open?.add(ac);
  reply.raw.on('close', () => ac.abort());
  return { ac, release: () => open?.delete(ac) };
}

/** Who a request is for (its principal, audit actor and source), for the core's actions. */
function auditContext(req: FastifyRequest): AuditContext {
  return contextFor(admissions.get(req)?.principal, req.ip);
}

/** The result of an action, which must be of `type` (the action decides it: anything else is a bug). */
function resultOf<T extends ActionResult['type']>(r: ActionResult, type: T): Extract<ActionResult, { type: T }> {
  if (r.type !== type) throw new CarapaceError('CARAPACE_E_INTERNAL', `an action answered ${r.type}, not ${type}`);
  return r as Extract<ActionResult, { type: T }>; // checked just above
}
type Query = Record<string, string | undefined>;

function intParam(q: Query, name: string): number | undefined {
  const v = q[name];
  if (v === undefined || v === '') return undefined;
  if (!/^\d{1,15}$/.test(v)) throw new CarapaceError('CARAPACE_E_BAD_QUERY', `query parameter ${name} must be a non-negative integer`, [{ path: `query.${name}`, message: 'must be a non-negative integer' }]);
  return Number(v);
}

function boolParam(q: Query, name: string): boolean {
  const v = q[name];
  if (v === undefined || v === '' || v === 'false' || v === '0') return false;
  if (v === 'true' || v === '1') return true;
  throw new CarapaceError('CARAPACE_E_BAD_QUERY', `query parameter ${name} must be true or false`, [{ path: `query.${name}`, message: 'must be true or false' }]);
}

function render(result: ActionResult): unknown {
  switch (result.type) {
    case 'object':
      return result.object;
    case 'list':
      return { items: result.items, resourceVersion: result.revision };
    case 'deleted':
      return { deleted: { kind: result.kind, name: result.name, ...(result.tenant ? { tenant: result.tenant } : {}) } };
    case 'token':
      return { ...(result.secret !== undefined ? { token: result.secret } : {}), ...result.info };
    case 'joinToken':
      return { token: result.token, id: result.id, expiresAt: result.expiresAt };
    case 'agentCert':
      return result.record;
    case 'exec':
    case 'portForward':
      return result.instance;
    case 'reencrypted':
      return { keyId: result.keyId, reencrypted: result.reencrypted, current: result.current };
    case 'keysReencrypted':
      return result.result;
  }
}

/** Maps fastify's own errors (bad JSON, wrong content type, too large) to catalogue codes. */
function toCarapaceError(err: unknown): CarapaceError {
  if (err instanceof CarapaceError) return err;
  // The store is down or shutting down: the client may retry (a write's outcome is unknown).
  if (err instanceof StoreUnavailableError || err instanceof StoreClosedError) return new CarapaceError('CARAPACE_E_UNAVAILABLE', `the store is unavailable; retry later (${err.message})`);
  const e = err as { code?: string; statusCode?: number; message?: string }; // fastify errors carry code/statusCode
  switch (e.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new CarapaceError('CARAPACE_E_MALFORMED_BODY', `request body is not valid JSON: ${e.message ?? ''}`.trim());
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new CarapaceError('CARAPACE_E_UNSUPPORTED_MEDIA_TYPE', 'request body must be application/json (or application/yaml)');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new CarapaceError('CARAPACE_E_BODY_TOO_LARGE', 'request body is too large');
  }
  if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) {
    return new CarapaceError('CARAPACE_E_MALFORMED_BODY', e.message ?? 'bad request');
  }
  return new CarapaceError('CARAPACE_E_INTERNAL', 'internal error; see the server log');
}

/**
 * What a refused request was about, for its audit record (which needs a name): the name in
 * the URL, else the one in a manifest body (a create), else "-" (a collection route refused
 * before or without a body naming anything). Records of refused creates were lost when the
 * name was left empty.
 */
function refusedName(p: Params | undefined, body: unknown): string {
  if (p?.name) return p.name;
  const named = (body as { metadata?: { name?: unknown } } | null | undefined)?.metadata?.name; // any parsed body; only a string is used
  return typeof named === 'string' && named !== '' ? named.slice(0, 253) : '-';
}

/** Builds the fastify app (not listening); `listen` is the caller's. */
export function buildApi(o: ApiOptions): FastifyInstance {
  // pino's Logger is what FastifyBaseLogger describes (fastify is built on pino).
  const app = Fastify({
    loggerInstance: o.logger.child({ component: 'api' }) as FastifyBaseLogger,
    bodyLimit: o.bodyLimit ?? 1024 * 1024,
    ...(o.https ? { https: { key: o.https.key, cert: o.https.cert, minVersion: 'TLSv1.2' as const } } : {}),
    // No per-request lines: the API logs what it does (and errors), not every GET.
    logController: new LogController({ disableRequestLogging: true }),
    // Errors fastify raises before routing (e.g. a malformed %-escape in the URL).
    frameworkErrors: (err, _req, reply) => {
      const ce =
        err.code === 'FST_ERR_BAD_URL'
          ? new CarapaceError('CARAPACE_E_ROUTE_NOT_FOUND', 'the URL is not valid (bad %-escape)')
          : err.code === 'FST_ERR_MAX_PARAM_LENGTH'
            ? new CarapaceError('CARAPACE_E_ROUTE_NOT_FOUND', 'a name in the URL is too long (names are at most 63 characters): no endpoint or object matches')
            : toCarapaceError(err);
      // The reply here is typed for route schemas we do not declare; the body is our error JSON.
      void (reply as unknown as FastifyReply).status(ce.status).send(ce.toJSON());
    },
  });
  const streams = new Set<AbortController>();
  openStreams.set(o, streams);
  const upgrades = new WsUpgrades(app, [EXEC_PROTOCOL]);
  upgradesOf.set(o, upgrades);
  app.addHook('preClose', async () => {
    for (const ac of streams) ac.abort();
  });
  // Only JSON and YAML bodies are understood; plain text is refused with 415, not parsed.
  app.removeContentTypeParser('text/plain');

  app.addContentTypeParser(['application/yaml', 'application/x-yaml', 'text/yaml'], { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, YAML.parse(body as string)); // parseAs: 'string' hands a string
    } catch (e) {
      done(new CarapaceError('CARAPACE_E_MALFORMED_BODY', `request body is not valid YAML: ${(e as Error).message.split('\n')[0] ?? ''}`), undefined);
    }
  });

  app.setErrorHandler(async (err, req, reply) => {
    const ce = toCarapaceError(err);
    if (ce.code === 'CARAPACE_E_INTERNAL') req.log.error({ err, url: req.url, method: req.method }, 'internal error');
    const session = SESSION_URLS.get(req.routeOptions.url ?? '');
    if (req.method !== 'GET' || session) {
      // Refused mutations (and exec sessions and port-forwards: GETs that run code or reach
      // into a workload) are audited too (who tried
      // what, and why it failed); best effort: nothing was changed, so a failing audit write
      // must not turn the refusal into a 500.
      const p = req.params as Params; // filled by routing (may be empty for unmatched routes)
      const target = { kind: req.routeOptions.url ?? req.url.split('?')[0] ?? '', name: refusedName(p, req.body), ...(p?.tenant ? { tenant: p.tenant } : {}) };
      await o.controlPlane
        .recordRefusal(auditContext(req), session ?? (req.method === 'DELETE' ? 'delete' : 'apply'), target, ce)
        .catch((e: unknown) => req.log.warn({ err: e }, 'could not audit a refused request'));
    }
    if (session === 'instance.exec' && upgrades.wants(req) && offersProtocol(req.headers['sec-websocket-protocol'], EXEC_PROTOCOL)) return refuseInSession(upgrades, req, reply, ce);
    return reply.status(ce.status).send(ce.toJSON());
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0] ?? '';
    const known = ROUTES.some((r) => matches(r.url, path));
    const ce = known
      ? new CarapaceError('CARAPACE_E_METHOD_NOT_ALLOWED', `${req.method} is not allowed on ${path}`)
      : new CarapaceError('CARAPACE_E_ROUTE_NOT_FOUND', `no endpoint ${req.method} ${path}`);
    void reply.status(ce.status).send(ce.toJSON());
  });

  app.addHook('onResponse', async (req, reply) => {
    metrics.apiRequests.inc({ method: req.method, route: req.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) });
  });
  for (const route of ROUTES) {
    app.route({
      method: route.method,
      url: route.url,
      // An off-store audit copy holds a checkpoint per minute or per 100 records: years of them.
      ...(route.method === 'POST' && route.url === '/v1/audit/verify' ? { bodyLimit: 256 * 1024 * 1024 } : {}),
      // Before the body is parsed: an unauthenticated caller learns nothing from validation.
      onRequest: async (req: FastifyRequest) => {
        const a = await admit(o.auth, route, authorizationOf(req, route, upgrades), req.params as Params, req.query as Query); // fastify fills params/query
        // Recorded before the decision so a refused request is audited with who tried it.
        admissions.set(req, { ...(a.principal ? { principal: a.principal } : {}), ...(a.decision.allowed && a.decision.postFilter ? { postFilter: a.decision.postFilter } : {}) });
        if (!a.decision.allowed) throw new CarapaceError(a.decision.code, a.decision.message);
      },
      handler: async (req: FastifyRequest, reply: FastifyReply) => handle(o, route, req, reply),
    });
  }
  // The dashboard's static files: public, outside the route table (they carry no data).
  registerUi(app, o.uiDir);
  return app;
}

function matches(pattern: string, path: string): boolean {
  const a = pattern.split('/');
  const b = path.split('/');
  return a.length === b.length && a.every((seg, i) => seg.startsWith(':') || seg === b[i]);
}

async function handle(o: ApiOptions, route: RouteDef, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const p = req.params as Params; // fastify fills params from the route's :tenant/:name
  const q = req.query as Query; // querystring parsed to strings
  if (route.kind === 'meta') {
    if (route.url === '/healthz') return { ok: true, ...o.health?.() };
    if (route.url === '/metrics') {
      void reply.header('content-type', metrics.registry.contentType);
      return metrics.registry.metrics();
    }
    return openApiDocument();
  }
  const who = admissions.get(req) ?? {};
  if (route.kind === 'tokens') return handleTokens(o, route, req, reply);
  if (route.kind === 'whoami') return whoami(who.principal);
  if (route.kind === 'version') return versionInfo();
  if (route.kind === 'audit' && route.url === '/v1/events') return streamEvents(o, q, req, reply, who.principal);
  if (route.kind === 'audit') return handleAudit(o, route, req, q, reply, who.principal);
  if (route.kind === 'usage') return handleUsage(o, q, reply, who.principal);
  if (route.kind === 'pki') return handlePki(o, route, req, reply, q);
  if (route.kind === 'secrets' && route.url === '/v1/keys/reencrypt') {
    const parsed = ReencryptKeysSchema.safeParse(req.body ?? {});
    if (!parsed.success) throw new CarapaceError('CARAPACE_E_VALIDATION', 'invalid re-encryption request', zodIssues(parsed.error));
    return render(await o.controlPlane.handle({ type: 'reencryptKeys' }, auditContext(req)));
  }
  if (route.kind === 'secrets') {
    const parsed = ReencryptSchema.safeParse(req.body ?? {});
    if (!parsed.success) throw new CarapaceError('CARAPACE_E_VALIDATION', 'invalid re-encryption request', zodIssues(parsed.error));
    const t = parsed.data.tenant;
    return render(await o.controlPlane.handle({ type: 'reencryptSecrets', ...(t !== undefined ? { tenant: t } : {}) }, auditContext(req)));
  }
  if (route.kind === 'rollout') return handleRollout(o, route, req, q);
  if (route.kind === 'hostOp') {
    const op = route.url.slice(route.url.lastIndexOf('/') + 1) as 'cordon' | 'uncordon' | 'drain'; // the route table lists exactly these three
    return render(await o.controlPlane.handle({ type: 'hostOp', op, name: p.name ?? '' }, auditContext(req)));
  }
  const kind = route.objectKind as Kind; // every non-meta route names its kind
  if (route.kind === 'logs') return streamLogs(o, kind === 'Machine' ? 'Machine' : 'Instance', p, q, reply);
  if (route.kind === 'exec') return runExec(o, req, reply);
  if (route.kind === 'portforward') return runPortForward(o, req, reply);
  if (route.kind === 'watch') return streamWatch(o, kind, q, req, reply, who);
  const cp = o.controlPlane;
  const narrow = (r: ActionResult): ActionResult => {
    if (r.type === 'list' && who.postFilter === 'items' && who.principal) return { ...r, items: filterList(who.principal, kind, r.items) };
    if (r.type === 'object' && who.postFilter === 'object' && who.principal && !canSee(who.principal, r.object)) {
      // Not "forbidden": another tenant's object must not even be confirmed to exist.
      throw new CarapaceError('CARAPACE_E_NOT_FOUND', `${kind.toLowerCase()} "${p.name ?? ''}" not found`);
    }
    return r;
  };
  switch (route.action) {
    case 'list':
      return render(narrow(await cp.handle({ type: 'list', kind, ...(p.tenant !== undefined ? { tenant: p.tenant } : {}) })));
    case 'listAll':
      return render(narrow(await cp.handle({ type: 'list', kind })));
    case 'get':
      return render(narrow(await cp.handle({ type: 'get', kind, name: p.name ?? '', ...(p.tenant !== undefined ? { tenant: p.tenant } : {}) })));
    case 'delete': {
      const rv = intParam(q, 'resourceVersion');
      return render(
        await cp.handle({ type: 'delete', kind, name: p.name ?? '', ...(p.tenant !== undefined ? { tenant: p.tenant } : {}), ...(rv !== undefined ? { resourceVersion: rv } : {}) }, auditContext(req)),
      );
    }
    case 'apply':
    case 'create': {
      const manifest = parseManifest(req.body ?? null, 'request body');
      if (manifest.kind !== kind) {
        throw new CarapaceError('CARAPACE_E_NAME_MISMATCH', `this endpoint takes a ${kind} manifest, got ${manifest.kind}`, [{ path: 'kind', message: `must be ${kind}` }]);
      }
      if (p.name !== undefined && manifest.metadata.name !== p.name) {
        throw new CarapaceError('CARAPACE_E_NAME_MISMATCH', `metadata.name "${manifest.metadata.name}" differs from the name in the URL "${p.name}"`, [
          { path: 'metadata.name', message: `must be "${p.name}"` },
        ]);
      }
      if (p.tenant !== undefined && 'tenant' in manifest.metadata && manifest.metadata.tenant !== p.tenant) {
        throw new CarapaceError('CARAPACE_E_NAME_MISMATCH', `metadata.tenant "${manifest.metadata.tenant}" differs from the tenant in the URL "${p.tenant}"`, [
          { path: 'metadata.tenant', message: `must be "${p.tenant}"` },
        ]);
      }
      const result = await cp.handle({ type: 'apply', manifest, createOnly: route.action === 'create' }, auditContext(req));
      if (result.type === 'object' && result.created) void reply.status(201);
      // RFC 7234-style warnings, as Kubernetes sends them: the CLI prints them.
      if (result.type === 'object' && result.warnings?.length) void reply.header('warning', result.warnings.map((w) => `299 - ${JSON.stringify(w)}`).join(', '));
      return render(result);
    }
    default:
      throw new CarapaceError('CARAPACE_E_INTERNAL', 'route without an action');
  }
}

/**
 * The request's Authorization header; for a WebSocket upgrade of an exec route without one,
 * the bearer token a browser sends as a subprotocol (exec/frames.ts `bearerProtocol`):
 * browsers cannot set headers on a WebSocket, and a token in the URL would be written to
 * logs. The header wins when both are there; other routes read the header only.
 */
function authorizationOf(req: FastifyRequest, route: RouteDef, upgrades: WsUpgrades): string | undefined {
  if (req.headers.authorization !== undefined || route.kind !== 'exec' || !upgrades.wants(req)) return req.headers.authorization;
  const token = bearerFromProtocols(req.headers['sec-websocket-protocol']);
  return token === undefined ? undefined : `Bearer ${token}`;
}

/**
 * A refused exec request of a client that speaks EXEC_PROTOCOL (a browser): the handshake
 * completes and the refusal is the session's status frame, `{error: {code, message}}`, then
 * the session closes. A browser's WebSocket sees no status or body of a refused handshake,
 * so its terminal could not say why. Nothing runs: the refusal was decided (and audited)
 * before this.
 */
async function refuseInSession(upgrades: WsUpgrades, req: FastifyRequest, reply: FastifyReply, ce: CarapaceError): Promise<void> {
  const ws = await upgrades.accept(req, reply).catch(() => undefined);
  if (!ws) return;
  ws.send(encodeFrame(CHANNEL.status, JSON.stringify({ error: { code: ce.code, message: ce.message } })), { binary: true }, () => ws.close(1000));
}

/**
 * Routes that open exec sessions or forwarded connections, with the audit action of their
 * refusals (audited although they are GETs).
 */
const SESSION_URLS = new Map<string, string>(
  ROUTES.flatMap((r): [string, string][] => (r.kind === 'exec' ? [[r.url, 'instance.exec']] : r.kind === 'portforward' ? [[r.url, 'instance.portforward']] : [])),
);

/** WebSocket upgrades of one app. */
const upgradesOf = new WeakMap<ApiOptions, WsUpgrades>();

/**
 * `GET /v1/tenants/:tenant/instances/:name/exec`: a WebSocket carrying exec frames
 * (exec/frames.ts). Everything that can refuse runs before the handshake, so a refusal is an
 * ordinary HTTP error with its code: RBAC (onRequest: tenant-admin and up, own tenant), the
 * query (command, tty, stdin, size), the upgrade itself, and the core's exec action (the
 * instance runs; the audit record with the command line is written, or no session). The
 * session runs on the instance's host (LogSource.exec: here, or relayed to its agent).
 */
async function runExec(o: ApiOptions, req: FastifyRequest, reply: FastifyReply): Promise<void> {
  const p = req.params as Params; // fastify fills :tenant and :name
  const opts = parseExecQuery(new URLSearchParams(req.url.split('?')[1] ?? ''));
  const upgrades = upgradesOf.get(o);
  if (!upgrades?.wants(req)) throw new CarapaceError('CARAPACE_E_UPGRADE_REQUIRED', 'exec is a WebSocket endpoint: send an upgrade request (carapace exec does)');
  const run = o.logs.exec?.bind(o.logs);
  if (!run) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', 'this server cannot run exec sessions');
  const tenant = p.tenant ?? '';
  const name = p.name ?? '';
  resultOf(await o.controlPlane.handle({ type: 'exec', tenant, name, command: opts.command, tty: opts.tty, stdin: opts.stdin }, auditContext(req)), 'exec');
  const ws = await upgrades.accept(req, reply);
  const port = wsPort(ws);
  // The reply is hijacked: nothing may reach fastify's error handler from here on.
  await run(tenant, name, opts, port).catch((err: unknown) => {
    req.log.error({ err }, 'exec session failed');
    port.close();
  });
}

/**
 * `GET /v1/tenants/:tenant/instances/:name/portforward?port=N`: a WebSocket carrying one TCP
 * connection to the instance's port (exec/forward.ts frames). As with exec, every refusal
 * comes before the handshake as an ordinary HTTP error: RBAC (onRequest: tenant-admin and
 * up, own tenant), the port (400 at `query.port`), the upgrade (426), then the connection
 * itself: it is made on the instance's host first (LogSource.portForward: here, or through its
 * agent), so a refused port is 502 CARAPACE_E_PORT_UNREACHABLE rather than a socket that
 * opens and dies; then the core's action checks the instance again and writes the
 * `instance.portforward` record (no record, no bytes: the connection is closed unused), and
 * only then the handshake and the relay.
 */
async function runPortForward(o: ApiOptions, req: FastifyRequest, reply: FastifyReply): Promise<void> {
  const p = req.params as Params; // fastify fills :tenant and :name
  const port = parsePortQuery(new URLSearchParams(req.url.split('?')[1] ?? ''));
  const upgrades = upgradesOf.get(o);
  if (!upgrades?.wants(req)) throw new CarapaceError('CARAPACE_E_UPGRADE_REQUIRED', 'port-forward is a WebSocket endpoint: send an upgrade request (carapace port-forward does)');
  const dial = o.logs.portForward?.bind(o.logs);
  if (!dial) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', 'this server cannot forward ports');
  const tenant = p.tenant ?? '';
  const name = p.name ?? '';
  const conn = await dial(tenant, name, port);
  try {
    resultOf(await o.controlPlane.handle({ type: 'portForward', tenant, name, port }, auditContext(req)), 'portForward');
  } catch (err) {
    conn.close();
    throw err;
  }
  // The reply is hijacked from here on: nothing may reach fastify's error handler.
  const ws = await upgrades.accept(req, reply).catch(() => undefined);
  if (!ws) {
    conn.close();
    return;
  }
  await relayPorts(wsPort(ws), conn);
}

async function streamLogs(o: ApiOptions, kind: 'Instance' | 'Machine', p: Params, q: Query, reply: FastifyReply): Promise<void> {
  const follow = boolParam(q, 'follow');
  const tail = intParam(q, 'tail');
  const tenant = p.tenant ?? '';
  const name = p.name ?? '';
  // Resolve before streaming, so "not found" is a proper error response, not a cut stream.
  await o.controlPlane.handle({ type: 'get', kind, tenant, name });
  const source = kind === 'Machine' ? o.logs.machineLogs?.bind(o.logs) : o.logs.logs.bind(o.logs);
  if (!source) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', 'this server cannot read machine consoles');
  const { ac, release } = streamController(o, reply);
  reply.hijack();
  reply.raw.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
  try {
    for await (const line of source(tenant, name, { follow, signal: ac.signal, ...(tail !== undefined ? { tail } : {}) })) {
      if (!reply.raw.write(`${JSON.stringify(line)}\n`)) await new Promise((r) => reply.raw.once('drain', r));
    }
  } catch (err) {
    if (!ac.signal.aborted) reply.raw.write(`${JSON.stringify({ error: { code: 'CARAPACE_E_UNAVAILABLE', message: (err as Error).message } })}\n`);
  }
  release();
  reply.raw.end();
}

/** Object kinds whose phase changes are lifecycle events, by store key prefix. */
const LIFECYCLE_PREFIXES: readonly [string, Kind][] = (['Instance', 'Cell', 'Machine', 'Host'] as const).map((k) => [kindPrefix(k), k]);

/** The lifecycle fields of an object: its phase (hosts: state) and why. */
function lifecycleOf(kind: Kind, value: unknown): { phase: string; reason?: string; message?: string; host?: string; cell?: string } | undefined {
  const v = value as { status?: { phase?: string; state?: string; reason?: string; message?: string; host?: string }; spec?: { host?: string; cell?: string } } | null; // stored objects; every field read is checked
  const phase = kind === 'Host' ? v?.status?.state : v?.status?.phase;
  if (typeof phase !== 'string') return undefined;
  const host = v?.spec?.host ?? v?.status?.host;
  return {
    phase,
    ...(typeof v?.status?.reason === 'string' ? { reason: v.status.reason } : {}),
    ...(typeof v?.status?.message === 'string' ? { message: v.status.message.slice(0, 300) } : {}),
    ...(typeof host === 'string' && host !== '' ? { host } : {}),
    ...(typeof v?.spec?.cell === 'string' && v.spec.cell !== '' ? { cell: v.spec.cell } : {}),
  };
}

/**
 * The event stream for management tools, as SSE, resumable by revision (`id:`):
 * - `audit`: every audit record as it is committed (API mutations, refusals, and the control
 *   plane's own actions such as cell.created, instance.placed, failover);
 * - `lifecycle`: phase changes of instances, cells, machines and hosts (`Pending` ->
 *   `Running` -> `Failed`...), and their deletion, with the reason.
 * A tenant token sees only its tenant's records and objects (never hosts); a cluster-admin
 * may narrow with ?tenant=.
 */
async function streamEvents(o: ApiOptions, q: Query, req: FastifyRequest, reply: FastifyReply, principal: Principal | undefined): Promise<void> {
  const resume = resumeFrom(q, req);
  const tenant = principal?.role === 'cluster-admin' ? q['tenant'] : principal?.tenant;
  const { ac, release } = streamController(o, reply);
  reply.hijack();
  reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  const out = new StreamWriter(reply.raw, () => {
    o.logger.warn({ stream: '/v1/events', backlogBytes: reply.raw.writableLength }, 'event stream client fell too far behind; stream cut');
    ac.abort();
  });
  const ping = setInterval(() => out.write(': ping\n\n'), 15_000);
  // Last phase sent per object key, so a status write that changes no phase sends nothing.
  const lastPhase = new Map<string, string>();
  const handle = (e: WatchEvent<unknown>): void => {
    if (seqOfRecordKey(e.key) !== undefined) {
      if (e.type !== 'put') return;
      // Only records (audit/<seq>), not the head or checkpoints.
      if (tenant !== undefined) {
        const r = e.value as { actor?: { tenant?: string }; target?: { tenant?: string } }; // an audit record
        if (r.actor?.tenant !== tenant && r.target?.tenant !== tenant) return;
      }
      out.write(auditFrames.frameOf(e));
      return;
    }
    const kind = LIFECYCLE_PREFIXES.find(([p]) => e.key.startsWith(p))?.[1];
    if (kind === undefined) return;
    const change = lifecycleChange(o.store, kind, e);
    if (tenant !== undefined && (kind === 'Host' || change.owner !== tenant)) return;
    if (principal?.role !== 'cluster-admin' && !canSee(principal, e.value)) return;
    const lc = change.lifecycle;
    if (!lc) return;
    const phase = e.type === 'delete' ? 'Deleted' : lc.phase;
    if (lastPhase.get(e.key) === phase) return;
    if (e.type === 'delete') lastPhase.delete(e.key);
    else lastPhase.set(e.key, phase);
    const ev = { kind, name: change.name, ...(change.owner ? { tenant: change.owner } : {}), ...lc, phase, revision: e.revision };
    out.write(`id: ${e.revision}\nevent: lifecycle\ndata: ${JSON.stringify(ev)}\n\n`);
  };
  try {
    await follow(o, '', resume, ac, handle, (from) => out.write(`: events from revision ${from}\n\n`));
  } catch (err) {
    // A watch ends quietly when the client goes; what gets here is a real failure.
    out.write(`event: error\ndata: ${JSON.stringify({ code: 'CARAPACE_E_UNAVAILABLE', message: (err as Error).message })}\n\n`);
  } finally {
    clearInterval(ping);
    release();
    out.flush();
    reply.raw.end();
  }
}

/** What the event stream needs of one stored change: computed once, shared by every client. */
interface LifecycleChange {
  owner: string | undefined;
  name: string;
  lifecycle: ReturnType<typeof lifecycleOf>;
}

/**
 * Every event-stream client sees the same changes; parsing and reading each one per client
 * made a thousand clients cost a thousand parses per write. The last few thousand changes'
 * readings are kept by revision and key (a change is immutable once committed).
 */
const lifecycleCaches = new WeakMap<Store, Map<string, LifecycleChange>>();
const LIFECYCLE_CACHE_SIZE = 4096;

function lifecycleChange(store: Store, kind: Kind, e: { key: string; revision: number; value: unknown }): LifecycleChange {
  let lifecycleCache = lifecycleCaches.get(store);
  if (!lifecycleCache) lifecycleCaches.set(store, (lifecycleCache = new Map()));
  const id = `${e.revision}\u0000${e.key}`;
  const hit = lifecycleCache.get(id);
  if (hit) return hit;
  const md = (e.value as { metadata?: { name?: string } } | null)?.metadata; // stored objects carry metadata
  const c: LifecycleChange = { owner: owningTenant(e.value), name: md?.name ?? '', lifecycle: lifecycleOf(kind, e.value) };
  lifecycleCache.set(id, c);
  if (lifecycleCache.size > LIFECYCLE_CACHE_SIZE) {
    const oldest = lifecycleCache.keys().next().value;
    if (oldest !== undefined) lifecycleCache.delete(oldest);
  }
  return c;
}

/** Audit export (narrowed to the caller's tenant for tenant tokens) and verification. */
async function handleAudit(o: ApiOptions, route: RouteDef, req: FastifyRequest, q: Query, reply: FastifyReply, principal: Principal | undefined): Promise<unknown> {
  if (!o.audit) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', 'this server keeps no audit log');
  if (route.url === '/v1/audit/verify' && route.method === 'GET') return o.audit.verify();
  if (route.url === '/v1/audit/verify') {
    const parsed = VerifyAgainstSchema.safeParse(req.body ?? null);
    if (!parsed.success) throw new CarapaceError('CARAPACE_E_VALIDATION', 'invalid verification request', zodIssues(parsed.error));
    for (const [i, pem] of parsed.data.publicKeys.entries()) {
      try {
        toPublicKey(pem);
      } catch {
        throw new CarapaceError('CARAPACE_E_VALIDATION', 'invalid verification request', [{ path: `publicKeys.${i}`, message: 'not an Ed25519 public key (SPKI PEM)' }]);
      }
    }
    return o.audit.verify({ extraCheckpoints: parsed.data.checkpoints, extraKeys: parsed.data.publicKeys });
  }
  const format = q['format'] ?? 'jsonl';
  if (format !== 'jsonl' && format !== 'csv') throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'format must be jsonl or csv', [{ path: 'query.format', message: 'must be jsonl or csv' }]);
  for (const t of ['since', 'until'] as const) {
    const v = q[t];
    if (v !== undefined && Number.isNaN(Date.parse(v))) throw new CarapaceError('CARAPACE_E_BAD_QUERY', `${t} must be an ISO 8601 time`, [{ path: `query.${t}`, message: 'must be an ISO 8601 time' }]);
  }
  // A tenant token sees only its tenant's records, whatever it asks for.
  const tenant = principal?.role === 'cluster-admin' ? q['tenant'] : principal?.tenant;
  const text = await o.audit.export({ format, ...(q['since'] ? { since: q['since'] } : {}), ...(q['until'] ? { until: q['until'] } : {}), ...(tenant ? { tenant } : {}) });
  void reply.header('content-type', format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson');
  return text;
}

/**
 * A service's rollout: the report (its status joined with the audit log's records of who
 * made each revision), or an operation (undo, restart, pause, resume), a core action.
 */
async function handleRollout(o: ApiOptions, route: RouteDef, req: FastifyRequest, q: Query): Promise<unknown> {
  const p = req.params as Params;
  const tenant = p.tenant ?? '';
  const name = p.name ?? '';
  if (route.method === 'POST') {
    const op = route.url.slice(route.url.lastIndexOf('/') + 1) as RolloutOp; // the route table lists exactly ROLLOUT_OPS
    const to = op === 'undo' ? intParam(q, 'toRevision') : undefined;
    return render(await o.controlPlane.handle({ type: 'rollout', op, tenant, name, ...(to !== undefined ? { toRevision: to } : {}) }, auditContext(req)));
  }
  const s = resultOf(await o.controlPlane.handle({ type: 'get', kind: 'Service', name, tenant }), 'object').object;
  if (s.kind !== 'Service') throw new CarapaceError('CARAPACE_E_INTERNAL', 'a service read answered another kind');
  const oldest = (s.status.history ?? []).reduce<string | undefined>((m, h) => (m === undefined || h.createdAt < m ? h.createdAt : m), undefined);
  let records: AuditEntry[] = [];
  if (o.audit && oldest) {
    // The update record precedes the controller's noticing it: look an hour further back.
    const since = new Date(Date.parse(oldest) - 3_600_000).toISOString();
    const text = await o.audit.export({ format: 'jsonl', tenant, since });
    records = text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as AuditEntry); // the export writes one record per line
  }
  // The tenant's instances: the report names the service's replicas that wait for a place.
  const instances = resultOf(await o.controlPlane.handle({ type: 'list', kind: 'Instance', tenant }), 'list').items.filter((i): i is Instance => i.kind === 'Instance');
  return rolloutReport(s, records, instances);
}

/** Join tokens and agent certificates (cluster-admin; the route table says which). Writes are the core's actions. */
async function handlePki(o: ApiOptions, route: RouteDef, req: FastifyRequest, reply: FastifyReply, q: Query): Promise<unknown> {
  const name = (req.params as Params).name ?? '';
  const cp = o.controlPlane;
  if (route.url === '/v1/join-tokens' && route.method === 'POST') {
    const ttl = intParam(q, 'ttlSeconds') ?? 86_400;
    if (ttl < 60 || ttl > 30 * 86_400) throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'ttlSeconds must be from 60 to 2592000 (30 days)', [{ path: 'query.ttlSeconds', message: 'out of range' }]);
    const description = typeof q['description'] === 'string' ? q['description'].slice(0, 200) : '';
    const created = resultOf(await cp.handle({ type: 'createJoinToken', ttlSeconds: ttl, description }, auditContext(req)), 'joinToken');
    void reply.status(201);
    return render(created);
  }
  if (route.url === '/v1/join-tokens') return { items: (await o.store.list<JoinTokenRecord>(JOIN_TOKEN_PREFIX)).items.map((e) => ({ id: e.value.id, createdAt: e.value.createdAt, expiresAt: e.value.expiresAt, description: e.value.description })) };
  if (route.url === '/v1/agent-certs') return { items: (await o.store.list<AgentCertRecord>(AGENT_CERT_PREFIX)).items.map((e) => e.value) };
  if (route.method === 'DELETE') {
    resultOf(await cp.handle({ type: 'forgetAgentCert', host: name }, auditContext(req)), 'deleted');
    return { forgotten: name };
  }
  return render(resultOf(await cp.handle({ type: 'revokeAgentCert', host: name }, auditContext(req)), 'agentCert'));
}

/** A time query parameter: ISO 8601, or undefined when absent. */
function timeParam(q: Query, name: string): number | undefined {
  const v = q[name];
  if (v === undefined || v === '') return undefined;
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new CarapaceError('CARAPACE_E_BAD_QUERY', `${name} must be an ISO 8601 time`, [{ path: `query.${name}`, message: 'must be an ISO 8601 time' }]);
  return t;
}

/** The usage report (default: the last 24 hours by tenant, as JSON), narrowed for tenant tokens. */
async function handleUsage(o: ApiOptions, q: Query, reply: FastifyReply, principal: Principal | undefined): Promise<unknown> {
  const by = q['by'] ?? 'tenant';
  if (by !== 'tenant' && by !== 'group' && by !== 'cell' && by !== 'volume') throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'by must be tenant, group, cell or volume', [{ path: 'query.by', message: 'must be tenant, group, cell or volume' }]);
  const format = q['format'] ?? 'json';
  if (format !== 'json' && format !== 'csv' && format !== 'table') throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'format must be json, csv or table', [{ path: 'query.format', message: 'must be json, csv or table' }]);
  const now = Date.parse(o.env.now());
  const until = timeParam(q, 'until') ?? now;
  const since = timeParam(q, 'since') ?? until - 86_400_000;
  // A tenant token sees only its tenant's usage, whatever it asks for.
  const tenant = principal?.role === 'cluster-admin' ? q['tenant'] : principal?.tenant;
  const rows = await usageReport(o.store, { since, until, now, by, ...(tenant ? { tenant } : {}) });
  const text = formatReport(rows, format);
  void reply.header('content-type', format === 'json' ? 'application/json; charset=utf-8' : format === 'csv' ? 'text/csv; charset=utf-8' : 'text/plain; charset=utf-8');
  return text;
}

/** The caller's own principal (never a secret): what the dashboard shows and which actions it offers. */
function whoami(p: Principal | undefined): unknown {
  if (!p) throw new CarapaceError('CARAPACE_E_UNAUTHENTICATED', 'a valid bearer token is required');
  return { tokenId: p.tokenId, name: p.name, role: p.role, ...(p.tenant !== undefined ? { tenant: p.tenant } : {}) };
}

/** Token management: the core's token actions refuse grants above the caller's role. */
async function handleTokens(o: ApiOptions, route: RouteDef, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const ctx = auditContext(req);
  if (route.method === 'GET') return { items: await listTokens(o.store, ctx.principal) };
  // :name is the token's id, or its name.
  if (route.method === 'DELETE') return { revoked: resultOf(await o.controlPlane.handle({ type: 'revokeToken', token: (req.params as Params).name ?? '' }, ctx), 'token').info };
  const parsed = NewTokenSchema.safeParse(req.body ?? null);
  if (!parsed.success) throw new CarapaceError('CARAPACE_E_VALIDATION', 'invalid token request', zodIssues(parsed.error));
  const b = parsed.data;
  const minted = resultOf(await o.controlPlane.handle({ type: 'createToken', name: b.name, role: b.role, ...(b.tenant !== undefined ? { tenant: b.tenant } : {}) }, ctx), 'token');
  void reply.status(201);
  return render(minted);
}

async function streamWatch(o: ApiOptions, kind: Kind, q: Query, req: FastifyRequest, reply: FastifyReply, who: Admitted = {}): Promise<void> {
  const tenant = q['tenant'];
  if (tenant !== undefined && !KINDS[kind].scoped) throw new CarapaceError('CARAPACE_E_BAD_QUERY', `${kind} is not tenant-scoped`, [{ path: 'query.tenant', message: 'not allowed for this kind' }]);
  const resume = resumeFrom(q, req);
  const prefix = kindPrefix(kind, tenant);
  if (resume !== undefined) {
    // A resume point may be compacted: find out before answering 200, so it is a clean error.
    const probe = new AbortController();
    const iter = o.store.watch<unknown>(prefix, resume, probe.signal)[Symbol.asyncIterator]();
    const first = iter.next();
    try {
      await Promise.race([first, new Promise((r) => setTimeout(r, 20))]);
    } catch (e) {
      if (e instanceof CompactedError) {
        throw new CarapaceError('CARAPACE_E_BAD_QUERY', `${e.message}; list again and watch from the list's resourceVersion`, [{ path: 'query.resourceVersion', message: 'compacted' }]);
      }
      throw e;
    } finally {
      probe.abort();
      first.catch(() => undefined); // ended by the abort
    }
  }
  const ac = new AbortController();
  const { release } = streamController(o, reply, ac);
  reply.hijack();
  reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  const out = new StreamWriter(reply.raw, () => {
    o.logger.warn({ stream: `/v1/watch/${KINDS[kind].plural}`, backlogBytes: reply.raw.writableLength }, 'watch client fell too far behind; stream cut');
    ac.abort();
  });
  const ping = setInterval(() => out.write(': ping\n\n'), 15_000);
  const handle = (e: WatchEvent<unknown>): void => {
    if (who.postFilter === 'events' && who.principal && !canSee(who.principal, e.value)) return;
    out.write(watchFrames.frameOf(e));
  };
  try {
    await follow(o, prefix, resume, ac, handle, (from) => out.write(`: watching ${KINDS[kind].plural} from revision ${from}\n\n`));
  } catch (err) {
    // A watch ends quietly when the client goes; what gets here is a real failure.
    out.write(`event: error\ndata: ${JSON.stringify({ code: 'CARAPACE_E_UNAVAILABLE', message: (err as Error).message })}\n\n`);
  } finally {
    clearInterval(ping);
    release();
    out.flush();
    reply.raw.end();
  }
}
