/**
 * The agent API: how agents on other machines reach the control plane. HTTPS only, on its own
 * port; every call but fetching the CA certificate and joining needs a client certificate
 * issued by the cluster CA to `host:<name>` whose serial is the one on record for that host
 * (so re-joined, renewed, revoked, expired or foreign certificates are refused).
 *
 * Agents see the cluster through a narrow Store (remote-store.ts): get, list, watch, put,
 * delete and txn, each checked against scope.ts (an agent reads and changes only what is
 * placed on its own host). Writes to its objects are compare-and-set against the version the
 * check saw, so nothing can slip between the check and the write. The agent code is the same
 * whether it talks to a local store or to this API, and so are those writes: an agent's
 * statuses and usage records are not audited on either path. Joining and renewing change the
 * cluster's trust in a host: their certificate records are the core's actions (recordAgentCert),
 * each with its audit record.
 */
import type { TLSSocket } from 'node:tls';
import type { Server as HttpsServer } from 'node:https';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import { CarapaceError } from '../model/errors.js';
import { CompactedError, ConflictError, isWellFormed, StoreClosedError, StoreUnavailableError, type Entry, type Store, type TxnOp } from '../store/store.js';
import { agentCertProblem, AGENT_CERT_DAYS, checkJoinToken, type AgentCertRecord } from '../pki/agents.js';
import type { ControlPlane } from '../core/control-plane.js';
import { certIdentity, issueCertificate, type ClusterCa } from '../pki/x509.js';
import { isWorkloadKey, mayListPrefix, mayRead, writeProblem } from './scope.js';
import { agentCertKey, INTERVALS_PREFIX, OPEN_PREFIX, ownerOfOpenAllocation } from '../model/keys.js';
import { finished } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import type { LogHub } from './logs.js';
import { WsUpgrades } from '../exec/ws-upgrade.js';
import { wsPort } from '../exec/session.js';
import { Resources } from '../core/resources.js';
import { instanceMaterial } from '../core/secrets.js';
import type { Keyring } from '../keyring/keyring.js';
import { NameSchema } from '../model/schemas.js';

export interface AgentApiOptions {
  store: Store;
  /** Where the writes a request causes beyond an agent's own objects go (certificate records, with their audit records). */
  controlPlane: ControlPlane;
  /** Where log requests for this server's API readers go out and agents' uploads come in. */
  logs?: LogHub;
  ca: ClusterCa;
  /** This server's TLS certificate (issued by the CA). */
  tls: { certPem: string; keyPem: string };
  logger: Logger;
  now?: () => Date;
  /** The cluster's secret keys, to decrypt the secrets of instances for their agents (absent: instances using secrets are answered CARAPACE_E_SECRETS_KEYRING_MISSING). */
  keyring?: Keyring;
}

const HostName = z.string().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'a host name: lower-case letters, digits and dashes');
const JoinBody = z.strictObject({ tokenId: z.string().regex(/^[0-9a-f]{8}$/), secret: z.string().min(16).max(64), host: HostName, csr: z.string().min(50).max(8192) });
const RenewBody = z.strictObject({ csr: z.string().min(50).max(8192) });
/**
 * Values an agent writes (statuses, records, samples) are a few levels deep. JSON.parse takes
 * any depth but the store's JSON.stringify overflows the stack on deep ones, so they are
 * refused here with a field path instead of failing inside the store.
 */
const MAX_VALUE_DEPTH = 64;

/** True when `v` is nested at most `max` levels (checked without recursion). */
function depthWithin(v: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[v, 0]];
  while (stack.length > 0) {
    const [x, d] = stack.pop() as [unknown, number]; // non-empty
    if (x === null || typeof x !== 'object') continue;
    if (d >= max) return false;
    for (const child of Object.values(x)) stack.push([child, d + 1]);
  }
  return true;
}
const Value = z.unknown().refine((v) => depthWithin(v, MAX_VALUE_DEPTH), `must be nested at most ${MAX_VALUE_DEPTH} levels deep`);
const Expect = z.union([z.strictObject({ version: z.number().int().min(0) }), z.strictObject({ absent: z.literal(true) })]).optional();
// Checked here as the store checks it, so a bad key is a 400 rather than the store's TypeError.
const Key = z.string().min(1).max(1024).refine(isWellFormed, 'must be well-formed Unicode (no lone surrogates)');
const OpSchema = z.union([
  z.strictObject({ op: z.literal('put'), key: Key, value: Value, expect: Expect }),
  z.strictObject({ op: z.literal('delete'), key: Key, expect: Expect }),
]);

/** Who is calling: the host of a valid client certificate. */
const callers = new WeakMap<FastifyRequest, string>();

/** Builds the agent API (not listening). */
export function buildAgentApi(o: AgentApiOptions): FastifyInstance<HttpsServer> {
  const now = o.now ?? (() => new Date());
  const log = o.logger.child({ component: 'agent-api' });
  const app = Fastify({
    loggerInstance: log as FastifyBaseLogger, // pino's Logger is what fastify's base logger describes
    bodyLimit: 4 * 1024 * 1024,
    // Client certificates are asked for but checked per route: joining needs none.
    https: { key: o.tls.keyPem, cert: o.tls.certPem, ca: o.ca.certPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' },
  });
  // Revocation takes effect within this long for new requests (and open watches recheck too).
  const recCache = new Map<string, { rec: AgentCertRecord | undefined; at: number }>();
  const record = async (host: string): Promise<AgentCertRecord | undefined> => {
    const hit = recCache.get(host);
    if (hit && Date.now() - hit.at < 2_000) return hit.rec;
    const rec = (await o.store.get<AgentCertRecord>(agentCertKey(host)))?.value;
    recCache.set(host, { rec, at: Date.now() });
    return rec;
  };
  const problemOf = async (req: FastifyRequest): Promise<{ host?: string; problem?: string }> => {
    const sock = req.raw.socket as TLSSocket; // the https server hands TLS sockets
    const peer = sock.getPeerCertificate?.();
    if (!peer || Object.keys(peer).length === 0) return { problem: 'a client certificate is required (join the cluster first)' };
    if (!sock.authorized) return { problem: `the client certificate is not from this cluster's CA (${String(sock.authorizationError)})` };
    const id = certIdentity(peer.raw);
    const m = /^host:([a-z0-9-]+)$/.exec(id.commonName);
    if (!m) return { problem: 'the client certificate is not an agent certificate' };
    const host = m[1] as string; // the group always matches
    const p = agentCertProblem(await record(host), id.serial, now());
    return p ? { host, problem: p } : { host };
  };

  app.setErrorHandler(async (err, req, reply) => {
    if (err instanceof ConflictError) return reply.status(409).send({ conflict: { key: err.key, actualVersion: err.actualVersion } });
    if (err instanceof CompactedError) return reply.status(410).send({ compacted: { requested: err.requested, compactedTo: err.compactedTo } });
    if (err instanceof CarapaceError) return reply.status(err.status).send(err.toJSON());
    if (err instanceof StoreUnavailableError || err instanceof StoreClosedError) return reply.status(503).send(new CarapaceError('CARAPACE_E_UNAVAILABLE', `the store is unavailable; retry later (${err.message})`).toJSON());
    const e = err as { statusCode?: number; message?: string }; // fastify's own errors
    if (e.statusCode !== undefined && e.statusCode < 500) return reply.status(400).send(new CarapaceError('CARAPACE_E_MALFORMED_BODY', e.message ?? 'bad request').toJSON());
    req.log.error({ err }, 'agent api error');
    return reply.status(500).send(new CarapaceError('CARAPACE_E_INTERNAL', 'internal error').toJSON());
  });

  // Unknown endpoints answer like the public API: a catalogue code, not fastify's default body.
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send(new CarapaceError('CARAPACE_E_ROUTE_NOT_FOUND', `no endpoint ${req.method} ${req.url.split('?')[0] ?? ''}`).toJSON());
  });

  const parse = <T>(schema: z.ZodType<T>, body: unknown): T => {
    const r = schema.safeParse(body);
    if (!r.success) throw new CarapaceError('CARAPACE_E_VALIDATION', 'invalid agent request', r.error.issues.map((i) => ({ path: i.path.join('.') || '(body)', message: i.message })));
    return r.data;
  };

  // ---- open routes ---------------------------------------------------------------------
  app.get('/agent/v1/ca', async (_req, reply) => reply.type('application/x-pem-file').send(o.ca.certPem));

  app.post('/agent/v1/join', async (req) => {
    const b = parse(JoinBody, req.body);
    await checkJoinToken(o.store, b.tokenId, b.secret, now());
    const issued = await issueCertificate(o.ca, { csrPem: b.csr, commonName: `host:${b.host}`, usage: 'client', validityDays: AGENT_CERT_DAYS, now: now() }).catch((e: unknown) => {
      throw new CarapaceError('CARAPACE_E_VALIDATION', `the certificate request is not valid: ${(e as Error).message}`, [{ path: 'csr', message: 'not a valid, self-signed PKCS#10 request' }]);
    });
    // Audited as the holder of the join token: whoever ran `carapace agent --join` with it.
    await o.controlPlane.handle({ type: 'recordAgentCert', host: b.host, serial: issued.serial, notAfter: issued.notAfter, via: 'join' }, { actor: { kind: 'user', id: `join-token:${b.tokenId}` }, source: req.ip });
    recCache.delete(b.host);
    log.info({ host: b.host, serial: issued.serial, notAfter: issued.notAfter }, 'agent joined');
    return { certificate: issued.certPem, ca: o.ca.certPem, notAfter: issued.notAfter };
  });

  // ---- authenticated routes -------------------------------------------------------------
  app.addHook('onRequest', async (req, reply) => {
    const path = req.url.split('?')[0] ?? '';
    if (path === '/agent/v1/ca' || path === '/agent/v1/join') return;
    const { host, problem } = await problemOf(req);
    if (problem || !host) {
      await reply.status(problem?.startsWith('a client certificate is required') ? 401 : 403).send(new CarapaceError(problem?.startsWith('a client certificate is required') ? 'CARAPACE_E_UNAUTHENTICATED' : 'CARAPACE_E_FORBIDDEN', problem ?? 'refused').toJSON());
      return;
    }
    callers.set(req, host);
  });
  const hostOf = (req: FastifyRequest): string => callers.get(req) ?? '';

  app.post('/agent/v1/renew', async (req) => {
    const host = hostOf(req);
    const b = parse(RenewBody, req.body);
    const issued = await issueCertificate(o.ca, { csrPem: b.csr, commonName: `host:${host}`, usage: 'client', validityDays: AGENT_CERT_DAYS, now: now() });
    await o.controlPlane.handle({ type: 'recordAgentCert', host, serial: issued.serial, notAfter: issued.notAfter, via: 'renew' }, { actor: { kind: 'system', id: `host:${host}` }, source: req.ip });
    recCache.delete(host);
    log.info({ host, serial: issued.serial }, 'agent certificate renewed');
    return { certificate: issued.certPem, ca: o.ca.certPem, notAfter: issued.notAfter };
  });

  /** The object a `usage/open/` record accounts for. */
  const ownerOf = async (key: string): Promise<unknown> => (key.startsWith(OPEN_PREFIX) ? (await o.store.get(ownerOfOpenAllocation(key)))?.value : undefined);
  const visible = async (host: string, e: { key: string; value: unknown }): Promise<boolean> => mayRead(host, e.key, e.value, await ownerOf(e.key));

  app.post('/agent/v1/store/get', async (req) => {
    const { key } = parse(z.strictObject({ key: Key }), req.body);
    const e = await o.store.get(key);
    return { entry: e && (await visible(hostOf(req), e)) ? e : null };
  });

  app.post('/agent/v1/store/list', async (req) => {
    const { prefix } = parse(z.strictObject({ prefix: Key }), req.body);
    const host = hostOf(req);
    if (!mayListPrefix(host, prefix)) throw new CarapaceError('CARAPACE_E_FORBIDDEN', `an agent cannot list ${prefix}`);
    const r = await o.store.list(prefix);
    const items: Entry[] = [];
    for (const e of r.items) if (await visible(host, e)) items.push(e);
    return { items, revision: r.revision };
  });

  app.post('/agent/v1/store/revision', async () => ({ revision: await o.store.revision() }));

  /** Checks one write and pins it to the version the check saw. */
  const checked = async (host: string, op: TxnOp, all: TxnOp[]): Promise<TxnOp> => {
    const cur = await o.store.get(op.key);
    const problem = writeProblem(host, { op: op.op, key: op.key, ...(op.op === 'put' ? { value: op.value } : {}), current: cur?.value, owner: await ownerOf(op.key) });
    if (problem) throw new CarapaceError('CARAPACE_E_FORBIDDEN', `${op.op} ${op.key}: ${problem}`);
    if (op.key.startsWith(INTERVALS_PREFIX)) {
      // A closed allocation record only as the close of one of this host's open records, in the same txn.
      const id = (op.op === 'put' ? (op.value as { id?: unknown } | null)?.id : undefined) ?? null; // a record carries its id
      let matched = false;
      for (const other of all) {
        if (!other.key.startsWith(OPEN_PREFIX)) continue;
        const open = await o.store.get<{ id?: unknown }>(other.key);
        if (open?.value.id === id && writeProblem(host, { op: other.op, key: other.key, current: open.value, owner: await ownerOf(other.key) }) === undefined) matched = true;
      }
      if (!matched) throw new CarapaceError('CARAPACE_E_FORBIDDEN', `put ${op.key}: a closed allocation record must close one of this host's open records`);
    }
    if (isWorkloadKey(op.key) && op.expect === undefined) return { ...op, expect: cur ? { version: cur.version } : { absent: true } };
    return op;
  };

  app.post('/agent/v1/store/put', async (req) => {
    const b = parse(z.strictObject({ key: Key, value: Value, expect: Expect }), req.body);
    const op = await checked(hostOf(req), { op: 'put', key: b.key, value: b.value, ...(b.expect ? { expect: b.expect } : {}) }, []);
    return { version: await o.store.put(op.key, op.op === 'put' ? op.value : undefined, op.expect) };
  });

  app.post('/agent/v1/store/delete', async (req) => {
    const b = parse(z.strictObject({ key: Key, expect: Expect }), req.body);
    const op = await checked(hostOf(req), { op: 'delete', key: b.key, ...(b.expect ? { expect: b.expect } : {}) }, []);
    return { revision: (await o.store.delete(op.key, op.expect)) ?? null };
  });

  app.post('/agent/v1/store/txn', async (req) => {
    const b = parse(z.strictObject({ ops: z.array(OpSchema).min(1).max(64) }), req.body);
    const host = hostOf(req);
    const ops = b.ops.map((x) => (x.op === 'put' ? { op: 'put' as const, key: x.key, value: x.value, ...(x.expect ? { expect: x.expect } : {}) } : { op: 'delete' as const, key: x.key, ...(x.expect ? { expect: x.expect } : {}) }));
    const pinned: TxnOp[] = [];
    for (const op of ops) pinned.push(await checked(host, op, ops));
    return o.store.txn(pinned);
  });

  /**
   * The decrypted secrets and configs of one instance, for the agent of the host it is placed
   * on and nobody else: 404 when the instance does not exist, 403 when it is placed on
   * another host (or on none). The answer is not logged (fastify logs no bodies here, and
   * nothing below logs it); it carries the content versions an agent compares to refresh
   * the files of `onChange: update` objects.
   */
  const objects = new Resources(o.store);
  app.post('/agent/v1/instances/material', async (req, reply) => {
    const b = parse(z.strictObject({ tenant: NameSchema, name: NameSchema }), req.body);
    const host = hostOf(req);
    const inst = await objects.get('Instance', b.name, b.tenant);
    if (!inst) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `instance "${b.name}" in tenant "${b.tenant}" not found`);
    if (inst.spec.host !== host) throw new CarapaceError('CARAPACE_E_FORBIDDEN', `instance "${b.name}" in tenant "${b.tenant}" is not placed on host "${host}"`);
    void reply.header('cache-control', 'no-store');
    return instanceMaterial(objects, o.keyring, inst);
  });

  // Logs: agents keep a request stream open and upload what is asked for (see logs.ts).
  app.addContentTypeParser('application/x-ndjson', (_req, payload, done) => done(null, payload));
  app.get('/agent/v1/log-requests', async (req: FastifyRequest, reply: FastifyReply) => {
    const hub = o.logs;
    if (!hub) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', 'this server does not relay logs');
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
    reply.raw.write('{"ready":true}\n');
    const detach = hub.attach(hostOf(req), (r) => reply.raw.write(`${JSON.stringify(r)}\n`));
    const beat = setInterval(() => reply.raw.write('{"ping":true}\n'), 10_000);
    await new Promise<void>((resolve) => reply.raw.on('close', resolve));
    clearInterval(beat);
    detach();
  });
  // Exec sessions on this agent's host: the agent answers an exec request (logs.ts) here.
  const upgrades = new WsUpgrades(app);
  app.get('/agent/v1/exec-sessions/:id', async (req: FastifyRequest, reply: FastifyReply) => {
    const id = (req.params as { id?: string }).id ?? ''; // fastify fills :id
    const host = hostOf(req);
    if (!upgrades.wants(req)) throw new CarapaceError('CARAPACE_E_UPGRADE_REQUIRED', 'exec sessions are WebSockets');
    if (!o.logs?.awaitsExec(host, id)) throw new CarapaceError('CARAPACE_E_NOT_FOUND', 'nobody is waiting for this exec session');
    const ws = await upgrades.accept(req, reply);
    const port = wsPort(ws);
    // Timed out between the check and the handshake: the agent's end closes (it kills the process).
    if (!o.logs.deliverExec(host, id, port)) port.close();
  });
  app.post('/agent/v1/log-streams/:id', async (req: FastifyRequest, reply: FastifyReply) => {
    const id = (req.params as { id?: string }).id ?? ''; // fastify fills :id
    const body = req.body as Readable; // the ndjson parser above passes the raw stream through
    if (!o.logs?.deliver(hostOf(req), id, body)) {
      body.resume();
      return reply.status(404).send(new CarapaceError('CARAPACE_E_NOT_FOUND', 'nobody is waiting for these logs').toJSON());
    }
    await finished(body).catch(() => undefined); // ends when the lines end or the reader went away
    return reply.status(204).send();
  });

  app.get('/agent/v1/store/watch', async (req: FastifyRequest, reply: FastifyReply) => {
    const q = req.query as { prefix?: string; after?: string }; // fastify parses the query string
    const host = hostOf(req);
    const prefix = q.prefix ?? '';
    const after = Number(q.after ?? '0');
    if (!isWellFormed(prefix)) throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'prefix must be well-formed Unicode', [{ path: 'query.prefix', message: 'no lone surrogates' }]);
    if (!mayListPrefix(host, prefix)) throw new CarapaceError('CARAPACE_E_FORBIDDEN', `an agent cannot watch ${prefix}`);
    if (!Number.isInteger(after) || after < 0) throw new CarapaceError('CARAPACE_E_BAD_QUERY', 'after must be a revision', [{ path: 'query.after', message: 'must be a non-negative integer' }]);
    const ac = new AbortController();
    const iter = o.store.watch(prefix, after, ac.signal)[Symbol.asyncIterator]();
    // The first event eagerly, so a compacted revision is a clean 410 rather than a cut stream.
    const first = iter.next();
    try {
      await Promise.race([first, new Promise((r) => setTimeout(r, 20))]);
    } catch (e) {
      ac.abort();
      throw e;
    }
    reply.raw.on('close', () => ac.abort());
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
    reply.raw.write(`${JSON.stringify({ start: after })}\n`);
    // Heartbeats let the agent notice a dead connection; rechecks end the stream of a revoked host.
    const beat = setInterval(() => {
      reply.raw.write('{"ping":true}\n');
      void problemOf(req).then((p) => {
        if (p.problem) ac.abort();
      });
    }, 5_000);
    try {
      let next: Promise<IteratorResult<{ type: string; key: string; value: unknown; revision: number }>> | undefined = first as never; // the same iterator's first result
      for (;;) {
        const r = await (next ?? iter.next());
        next = undefined;
        if (r.done) break;
        const e = r.value;
        if (!(await visible(host, e))) continue;
        if (!reply.raw.write(`${JSON.stringify(e)}\n`)) await new Promise((res) => reply.raw.once('drain', res));
      }
    } catch (err) {
      if (!ac.signal.aborted) {
        const body = err instanceof CompactedError ? { compacted: { requested: err.requested, compactedTo: err.compactedTo } } : { error: { code: 'CARAPACE_E_UNAVAILABLE', message: (err as Error).message } };
        reply.raw.write(`${JSON.stringify(body)}\n`);
      }
    } finally {
      clearInterval(beat);
      reply.raw.end();
    }
  });
  return app;
}
