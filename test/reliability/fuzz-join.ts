/**
 * Fuzzing the agent join path and the agent API (src/agentapi) over real TLS with the
 * cluster's own CA and a real SQLite store:
 *
 * - joins: bodies generated from the join schema and mutated (real and forged token ids and
 *   secrets, real CSRs, garbage and foreign PEM, hostile host names), never a 5xx, every
 *   refusal coded; a certificate is issued only for a valid token, to `host:<the host asked>`;
 * - client certificates: none, self-signed, from another CA, from this CA for names that are
 *   not joined hosts, and superseded ones: never anything but 401/403;
 * - store calls of a joined agent (get, list, put, delete, txn) with random keys near and
 *   far from its scope and random values (copies of real objects with fields changed, hostile
 *   JSON): never a 5xx; afterwards nothing outside its scope changed (other hosts' objects,
 *   tenants, tokens, the audit log, the PKI), and the spec of its own objects did not move.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { pino } from 'pino';
import { Agent, request } from 'undici';
import { buildAgentApi } from '../../src/agentapi/server.js';
import { AuditLog } from '../../src/audit/log.js';
import { createJoinToken } from '../../src/core/agent-trust.js';
import { bootstrapToken } from '../../src/core/api-tokens.js';
import { SYSTEM } from '../../src/core/audit-context.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { parseJoinToken } from '../../src/pki/agents.js';
import { newKeyLine, parseKeyring } from '../../src/keyring/keyring.js';
import { certIdentity, ensureClusterCa, issueCertificate, issueServerCertificate, newCsr } from '../../src/pki/x509.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Entry } from '../../src/store/store.js';
import { HOSTILE_STRING, mutate, deepJson } from './arbitraries.js';
import { errorProblem, Tally } from './fuzz.js';
import { quiet, type Log } from './harness.js';

const now = (): string => new Date().toISOString();

function md(name: string, tenant?: string): Record<string, unknown> {
  return { name, uid: `uid-${name}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: now(), updatedAt: now(), ...(tenant ? { tenant } : {}) };
}

/** Objects on this host (h1) and another (h2), and things no agent may touch. */
function seedObjects(): Record<string, unknown> {
  const container = { image: 'r/x:1', env: {}, cpu: 0.1, memory: 64, pids: 1024, readOnlyRootfs: false, isolation: 'host', group: 'default', ports: [] };
  const inst = (name: string, host: string, cell?: string): unknown => ({ kind: 'Instance', metadata: md(name, 'acme'), spec: { owner: { kind: 'Service', name: 'web', uid: 'svc' }, index: 0, container, restartPolicy: 'Always', maxRestarts: -1, host, ...(cell ? { cell } : {}), ownerGeneration: 1 }, status: { phase: 'Running', restarts: 0, ready: true } });
  const cell = (name: string, host: string): unknown => ({ kind: 'Cell', metadata: md(name), spec: { tenant: 'acme', group: 'default', host, cpu: 2, memoryMiB: 2048 }, status: { phase: 'Ready' } });
  const machine = (name: string, host: string): unknown => ({ kind: 'Machine', metadata: md(name, 'acme'), spec: { kernel: 'host', cpu: 1, memory: 256, ports: [], restartPolicy: 'Always', running: true }, status: { phase: 'Running', host, restarts: 0 } });
  const host = (name: string): unknown => ({ kind: 'Host', metadata: md(name), spec: { labels: {}, unschedulable: false }, status: { state: 'Ready', lastHeartbeatAt: now(), isolation: ['host'], capacity: { cpu: 4, memoryMiB: 4096 }, agentVersion: 'fz' } });
  return {
    'instances/acme/mine': inst('mine', 'h1'),
    'instances/acme/theirs': inst('theirs', 'h2'),
    'instances/acme/incell': inst('incell', 'h1', 'c-mine'),
    'cells/c-mine': cell('c-mine', 'h1'),
    'cells/c-theirs': cell('c-theirs', 'h2'),
    'machines/acme/m-mine': machine('m-mine', 'h1'),
    'machines/acme/m-theirs': machine('m-theirs', 'h2'),
    'hosts/h1': host('h1'),
    'hosts/h2': host('h2'),
    'leases/hosts/h2': { host: 'h2', renewedAt: now(), holder: 'x' },
    'tenants/acme': { kind: 'Tenant', metadata: md('acme'), spec: {} },
    'services/acme/web': { kind: 'Service', metadata: md('web', 'acme'), spec: { image: 'r/x:1', replicas: 1 }, status: { ready: 1, observedGeneration: 1 } },
    'usage/open/instances/acme/mine': { id: 'open-mine', subject: { kind: 'instance', tenant: 'acme', name: 'mine', uid: 'uid-mine' }, cpu: 0.1, memoryMiB: 64, start: now() },
    'usage/open/instances/acme/theirs': { id: 'open-theirs', subject: { kind: 'instance', tenant: 'acme', name: 'theirs', uid: 'uid-theirs' }, cpu: 0.1, memoryMiB: 64, start: now() },
  };
}

const KEY_PREFIXES = ['instances/acme/', 'cells/', 'machines/acme/', 'hosts/', 'leases/hosts/', 'usage/open/instances/acme/', 'usage/intervals/', 'usage/samples/2026-01-01/', 'tenants/', 'tokens/', 'audit/', 'pki/', 'pki/agents/', 'services/acme/', 'election/', ''];
const KEY_NAMES = ['mine', 'theirs', 'incell', 'c-mine', 'c-theirs', 'm-mine', 'm-theirs', 'h1', 'h2', 'acme', 'web', 'head', '000000000001', '1-h1', '1-h2', 'new', ''];
const keyArb = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.constantFrom(...KEY_PREFIXES), fc.constantFrom(...KEY_NAMES)).map(([p, n]) => `${p}${n}`) },
  { weight: 1, arbitrary: HOSTILE_STRING },
  { weight: 1, arbitrary: fc.constantFrom('x'.repeat(1025), '../tokens/x', 'instances/acme/mine/../../tokens', '\u0000') },
);

/** Joined-agent store bodies: values are real objects with changes, or hostile JSON. */
function storeCallArb(objects: Record<string, unknown>): fc.Arbitrary<{ path: string; body: string; what: string }> {
  const values = Object.values(objects);
  const changed = fc.constantFrom(...values).chain((v) =>
    fc.oneof(
      mutate(v).map((m) => m.raw ?? JSON.stringify(m.doc ?? null)),
      fc.constantFrom('h1', 'h2', '').map((h) => JSON.stringify({ ...(v as object), spec: { ...((v as { spec?: object }).spec ?? {}), host: h } })),
      fc.constant(JSON.stringify({ ...(v as object), metadata: { ...((v as { metadata?: object }).metadata ?? {}), deletionRequestedAt: now() } })),
      fc.constant(JSON.stringify({ ...(v as object), status: { phase: 'Failed', host: 'h1' } })),
    ),
  );
  const value = fc.oneof(changed, fc.jsonValue({ maxDepth: 3 }).map((j) => JSON.stringify(j)), fc.constantFrom(deepJson(20_000, 'array'), deepJson(20_000, 'object')));
  const expect = fc.oneof(fc.constant(undefined), fc.record({ version: fc.integer({ min: 0, max: 100 }) }), fc.constant({ absent: true }), fc.jsonValue({ maxDepth: 1 }));
  const withExpect = (e: unknown): string => (e === undefined ? '' : `,"expect":${JSON.stringify(e)}`);
  return fc.oneof(
    keyArb.map((key) => ({ path: '/agent/v1/store/get', body: JSON.stringify({ key }), what: `get ${key}` })),
    keyArb.map((prefix) => ({ path: '/agent/v1/store/list', body: JSON.stringify({ prefix }), what: `list ${prefix}` })),
    fc.tuple(keyArb, value, expect).map(([key, v, e]) => ({ path: '/agent/v1/store/put', body: `{"key":${JSON.stringify(key)},"value":${v}${withExpect(e)}}`, what: `put ${key}` })),
    fc.tuple(keyArb, expect).map(([key, e]) => ({ path: '/agent/v1/store/delete', body: `{"key":${JSON.stringify(key)}${withExpect(e)}}`, what: `delete ${key}` })),
    fc.array(fc.tuple(fc.constantFrom('put', 'delete', 'get'), keyArb, value, expect), { minLength: 0, maxLength: 4 }).map((ops) => ({
      path: '/agent/v1/store/txn',
      body: `{"ops":[${ops.map(([op, key, v, e]) => `{"op":"${op}","key":${JSON.stringify(key)}${op === 'put' ? `,"value":${v}` : ''}${withExpect(e)}}`).join(',')}]}`,
      what: `txn ${ops.map(([op, key]) => `${op} ${key}`).join('; ')}`,
    })),
    fc.tuple(fc.constantFrom('/agent/v1/store/get', '/agent/v1/store/put', '/agent/v1/store/txn', '/agent/v1/store/revision', '/agent/v1/renew', '/agent/v1/nothing'), fc.jsonValue({ maxDepth: 3 })).map(([path, j]) => ({ path, body: JSON.stringify(j), what: `${path} with ${JSON.stringify(j).slice(0, 60)}` })),
  );
}

/** An HTTPS request with an optional client certificate; status and body text. */
async function post(dispatcher: Agent, url: string, body: string): Promise<{ status: number; text: string }> {
  const r = await request(url, { method: 'POST', dispatcher, body, headers: { 'content-type': 'application/json' }, headersTimeout: 15_000, bodyTimeout: 15_000 });
  return { status: r.statusCode, text: await r.body.text() };
}

/** The agent API's own non-error answers: a compare-and-set conflict and a compacted watch. */
function agentApiProblem(status: number, text: string): string | undefined {
  if (status === 409 && /^\{"conflict":\{"key":/.test(text)) return undefined;
  if (status === 410 && /^\{"compacted":/.test(text)) return undefined;
  return errorProblem(status, text);
}

export interface JoinFuzzSizes {
  joins: number;
  certs: number;
  storeCalls: number;
}

/** Runs the three parts; one Tally for all (cases counted per call). */
export async function fuzzJoinPath(n: JoinFuzzSizes, seed: number, log: Log = quiet): Promise<Tally> {
  const t = new Tally();
  const dir = await mkdtemp(join(tmpdir(), 'carapace-fz-join-'));
  const store = await openSqliteStore({ path: join(dir, 'store.db') });
  const ca = await ensureClusterCa(store, parseKeyring(newKeyLine()));
  const tls = await issueServerCertificate(ca, { commonName: 'carapace-server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  // Certificate records are written with their audit records, as the server does.
  const resources = new Resources(store, await AuditLog.open({ store, keyDir: join(dir, 'audit-keys') }));
  const controlPlane = new ControlPlane(resources, { now, newId: randomUUID });
  const app = buildAgentApi({ store, controlPlane, ca, tls, logger: pino({ level: 'silent' }) });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const addr = app.server.address();
  const base = `https://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  const anonymous = new Agent({ connect: { ca: ca.certPem } });
  const dispatchers: Agent[] = [anonymous];
  try {
    await bootstrapToken(resources, { id: 'fzadmin', name: 'admin', now: now() });
    const objects = seedObjects();
    for (const [k, v] of Object.entries(objects)) await store.put(k, v);
    const token = parseJoinToken((await createJoinToken(resources, SYSTEM, { caFingerprint: ca.fingerprint, now: new Date(), ttlMs: 3_600_000 })).token);
    const expired = parseJoinToken((await createJoinToken(resources, SYSTEM, { caFingerprint: ca.fingerprint, now: new Date(Date.now() - 7_200_000), ttlMs: 60_000 })).token);
    const csrs = await Promise.all(['host:j1', 'host:h2', 'tenant:acme', 'x'].map((cn) => newCsr(cn)));

    // 1. Joins.
    const joinBody = fc
      .record({
        tokenId: fc.oneof({ weight: 4, arbitrary: fc.constant(token.id) }, fc.constant(expired.id), fc.stringMatching(/^[0-9a-f]{8}$/), fc.string({ maxLength: 12 })),
        secret: fc.oneof({ weight: 4, arbitrary: fc.constant(token.secret) }, fc.constant(expired.secret), fc.stringMatching(/^[A-Za-z0-9_-]{16,64}$/), fc.string({ maxLength: 70 })),
        host: fc.oneof({ weight: 3, arbitrary: fc.constantFrom('j1', 'j2', 'j3', 'h2') }, fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/), HOSTILE_STRING),
        csr: fc.oneof({ weight: 3, arbitrary: fc.constantFrom(...csrs.map((c) => c.csrPem)) }, fc.constantFrom(...csrs.map((c) => c.csrPem.replace(/[A-Za-z]{8}\n/, 'AAAAAAAA\n'))), fc.string({ minLength: 50, maxLength: 300 }), fc.constant(`-----BEGIN CERTIFICATE REQUEST-----\n${'QUJD'.repeat(40)}\n-----END CERTIFICATE REQUEST-----\n`), fc.constant(ca.certPem)),
      }, { requiredKeys: ['tokenId', 'secret', 'host', 'csr'] })
      .chain((b) => fc.oneof({ weight: 3, arbitrary: fc.constant(JSON.stringify(b)) }, { weight: 2, arbitrary: mutate(b).map((m) => m.raw ?? JSON.stringify(m.doc ?? null)) }));
    for (const body of fc.sample(joinBody, { numRuns: n.joins, seed })) {
      t.cases++;
      const r = await post(anonymous, `${base}/agent/v1/join`, body);
      const problem = errorProblem(r.status, r.text);
      if (problem) {
        t.fail(`join ${body.slice(0, 150)}: ${problem}`);
        continue;
      }
      if (r.status >= 300) continue;
      t.accepted++;
      let b: { tokenId?: unknown; secret?: unknown; host?: unknown } = {};
      try {
        b = JSON.parse(body) as typeof b;
      } catch {
        // the server accepted something that is not JSON
      }
      const cn = certIdentity((JSON.parse(r.text) as { certificate: string }).certificate).commonName;
      if (b.tokenId !== token.id || b.secret !== token.secret) t.fail(`a certificate was issued without a valid join token: ${body.slice(0, 200)}`);
      if (cn !== `host:${String(b.host)}`) t.fail(`a join for host ${String(b.host)} got a certificate for ${cn}`);
    }
    log(`fuzz: joins ${t.cases} cases, ${t.failures} failures, ${t.accepted} certificates issued`);

    // 2. Client certificates: only the current certificate of a joined host gets in.
    const other = await openSqliteStore({ path: ':memory:' });
    const otherCa = await ensureClusterCa(other, parseKeyring(newKeyLine()));
    await other.close();
    const h1 = await newCsr('host:h1');
    const joined = JSON.parse((await post(anonymous, `${base}/agent/v1/join`, JSON.stringify({ tokenId: token.id, secret: token.secret, host: 'h1', csr: h1.csrPem }))).text) as { certificate: string };
    const stale = await newCsr('host:h1');
    const superseded = await issueCertificate(ca, { csrPem: stale.csrPem, commonName: 'host:h1', usage: 'client', validityDays: 1 });
    const kinds = ['foreign-ca', 'self-signed', 'unjoined-name', 'hostile-name', 'superseded'] as const;
    for (let i = 0; i < n.certs; i++) {
      const kind = kinds[i % kinds.length] as (typeof kinds)[number];
      let cert: string;
      let key: string;
      if (kind === 'self-signed') ({ certPem: cert, keyPem: key } = otherCa);
      else if (kind === 'superseded') ({ certPem: cert, keyPem: key } = { certPem: superseded.certPem, keyPem: stale.keyPem });
      else {
        const cn = kind === 'foreign-ca' ? 'host:h1' : kind === 'unjoined-name' ? `host:ghost${i}` : fc.sample(HOSTILE_STRING, { numRuns: 1, seed: seed + i })[0] ?? 'x';
        const c = await newCsr(cn.replace(/[,=+<>#;"\\]/g, '') || 'x');
        cert = (await issueCertificate(kind === 'foreign-ca' ? otherCa : ca, { csrPem: c.csrPem, commonName: cn, usage: 'client', validityDays: 1 })).certPem;
        key = c.keyPem;
      }
      const d = new Agent({ connect: { ca: ca.certPem, cert, key } });
      dispatchers.push(d);
      t.cases++;
      const r = await post(d, `${base}/agent/v1/store/list`, JSON.stringify({ prefix: 'instances/' })).catch((e: unknown) => ({ status: 0, text: String(e) }));
      if (r.status !== 401 && r.status !== 403) t.fail(`a ${kind} client certificate got ${r.status}: ${r.text.slice(0, 200)}`);
      else if (errorProblem(r.status, r.text)) t.fail(`a ${kind} client certificate: ${errorProblem(r.status, r.text) ?? ''}`);
    }
    log(`fuzz: client certificates ${n.certs} cases`);

    // 3. A joined agent's store calls.
    const agent = new Agent({ connect: { ca: ca.certPem, cert: joined.certificate, key: h1.keyPem } });
    dispatchers.push(agent);
    const before = new Map((await store.list('')).items.map((e) => [e.key, e] as const));
    for (const c of fc.sample(storeCallArb(objects), { numRuns: n.storeCalls, seed: seed + 7 })) {
      t.cases++;
      const r = await post(agent, `${base}${c.path}`, c.body);
      const problem = agentApiProblem(r.status, r.text);
      if (problem) t.fail(`${c.what}: ${problem}`);
      else if (r.status < 300) t.accepted++;
    }
    // Watches with random prefixes and revisions: refused with a code, or a stream (closed at once).
    const watchArb = fc.tuple(keyArb, fc.oneof(fc.integer({ min: -5, max: 1_000_000 }).map(String), fc.constantFrom('', 'x', '1e3', '99999999999999999999', '-0'), HOSTILE_STRING));
    for (const [prefix, after] of fc.sample(watchArb, { numRuns: Math.max(1, Math.floor(n.storeCalls / 20)), seed: seed + 11 })) {
      t.cases++;
      const ac = new AbortController();
      const url = `${base}/agent/v1/store/watch?prefix=${encodeURIComponent(prefix.replace(/[\ud800-\udfff]/g, '\ufffd'))}&after=${encodeURIComponent(after.replace(/[\ud800-\udfff]/g, '\ufffd'))}`;
      const r = await request(url, { dispatcher: agent, signal: ac.signal, headersTimeout: 15_000 });
      if (r.statusCode === 200) {
        t.accepted++;
        ac.abort();
        await r.body.text().catch(() => undefined);
        continue;
      }
      const problem = agentApiProblem(r.statusCode, await r.body.text());
      if (problem) t.fail(`watch ${prefix} after ${after}: ${problem}`);
    }
    // Nothing outside h1's scope changed; h1's own objects kept their spec, kind and identity.
    const after = new Map((await store.list('')).items.map((e) => [e.key, e] as const));
    const mine = (e: Entry | undefined): boolean => {
      const v = e?.value as { spec?: { host?: unknown }; status?: { host?: unknown } } | undefined;
      return v?.spec?.host === 'h1' || (e?.key.startsWith('machines/') === true && v?.status?.host === 'h1');
    };
    for (const [key, b] of before) {
      const a = after.get(key);
      if (key === 'hosts/h1' || key === 'leases/hosts/h1' || key.startsWith('pki/agents/h1') || key === 'pki/agents/j1') continue;
      if (key.startsWith('usage/open/') && mine(before.get(key.slice('usage/open/'.length)))) continue;
      if (mine(b)) {
        const bv = b.value as { kind?: unknown; metadata?: { uid?: unknown }; spec?: unknown };
        const av = a?.value as typeof bv | undefined;
        if (a && (!isDeepStrictEqual(av?.spec, bv.spec) || av?.kind !== bv.kind || av?.metadata?.uid !== bv.metadata?.uid)) t.fail(`the agent changed the spec or identity of its own ${key}`);
        continue;
      }
      if (!a || !isDeepStrictEqual(a.value, b.value)) t.fail(`the agent of h1 changed ${key}, which is not its own`);
    }
    for (const [key, a] of after) {
      if (before.has(key)) continue;
      const ownRecord = key.startsWith('usage/open/') && mine(after.get(key.slice('usage/open/'.length)) ?? before.get(key.slice('usage/open/'.length)));
      const allowed = ownRecord || key === 'leases/hosts/h1' || key === 'hosts/h1' || key.startsWith('usage/samples/') && key.endsWith('-h1') || key.startsWith('usage/intervals/') || key.startsWith('pki/agents/') || (key.startsWith('cells/') && (a.value as { spec?: { host?: unknown; warm?: unknown; tenant?: unknown } }).spec?.host === 'h1' && (a.value as { spec?: { warm?: unknown } }).spec?.warm === true);
      if (!allowed) t.fail(`the agent of h1 created ${key}: ${JSON.stringify(a.value).slice(0, 200)}`);
    }
    log(`fuzz: agent store calls ${n.storeCalls} cases; ${t.failures} failures in all`);
  } finally {
    for (const d of dispatchers) await d.close();
    await app.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
  return t;
}
