/**
 * The agent API over real TLS with the cluster's own CA, a real server and a real SQLite
 * store: joining with a token (and refusing bad tokens and impostor servers), what a joined
 * agent may read and write (only its own host's things), foreign, revoked, replaced and
 * missing client certificates refused, plain text refused, renewal, and a watch that ends
 * when its host is revoked.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { joinCluster, renew, type AgentCredentials } from '../../src/agentapi/enroll.js';
import { RemoteStore, RemoteStoreError } from '../../src/agentapi/remote-store.js';
import { ConflictError } from '../../src/store/store.js';
import { createJoinToken } from '../../src/core/agent-trust.js';
import { SYSTEM } from '../../src/core/audit-context.js';
import { parseJoinToken } from '../../src/pki/agents.js';
import { ensureClusterCa, newCsr, issueCertificate } from '../../src/pki/x509.js';
import { Resources } from '../../src/core/resources.js';
import { newKeyLine, parseKeyring } from '../../src/keyring/keyring.js';
import type { Host, Instance } from '../../src/model/objects.js';

let dir: string;
let store: Store;
let server: RunningControlServer;
let token = '';
let h1: AgentCredentials;
let remote: RemoteStore;
const env = { now: () => new Date().toISOString(), newId: () => Math.random().toString(36).slice(2) };

function instance(name: string, host: string): Instance {
  const now = env.now();
  return {
    kind: 'Instance',
    metadata: { name, tenant: 'acme', uid: `uid-${name}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
    spec: { owner: { kind: 'Service', name: 'web', uid: 'svc' }, index: 0, host, container: { image: 'x', env: {}, cpu: 0.1, memory: 64, pids: 1024, readOnlyRootfs: false, isolation: 'host', group: 'default', ports: [] } },
    status: { phase: 'Pending', restarts: 0, ready: false },
  } as unknown as Instance; // the fields the scope rules read; the rest is irrelevant here
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-agentapi-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  server = await startControlServer({ store, stateDir: join(dir, 'server'), port: 0, logger: pino({ level: 'silent' }), saveCliConfig: false, agentApi: { port: 0, listen: '127.0.0.1' } });
  token = (await readFile(join(dir, 'server', 'join-token'), 'utf8')).trim();
  const r = new Resources(store);
  await r.write(instance('mine', 'h1'), 0);
  await r.write(instance('theirs', 'h2'), 0);
  h1 = await joinCluster({ server: server.agentApiUrl ?? '', token, host: 'h1', stateDir: join(dir, 'h1') });
  remote = new RemoteStore({ server: h1.server, ca: h1.ca, cert: h1.cert, key: h1.key });
}, 60_000);

afterAll(async () => {
  await remote?.close();
  await server?.close();
  await store?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('joining', () => {
  it('refuses a wrong secret, a malformed token and a server whose CA is not the one pinned', async () => {
    const bad = token.replace(/\.[A-Za-z0-9_-]+$/, '.AAAAAAAAAAAAAAAAAAAAAAAA');
    await expect(joinCluster({ server: server.agentApiUrl ?? '', token: bad, host: 'x1', stateDir: join(dir, 'x1') })).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_JOIN_TOKEN' });
    await expect(joinCluster({ server: server.agentApiUrl ?? '', token: 'nonsense', host: 'x1', stateDir: join(dir, 'x1') })).rejects.toMatchObject({ code: 'CARAPACE_E_BAD_JOIN_TOKEN' });
    // A token of another cluster (another CA fingerprint): the agent refuses before sending the secret.
    const other = await openSqliteStore({ path: ':memory:' });
    const otherCa = await ensureClusterCa(other, parseKeyring(newKeyLine()));
    const foreign = await createJoinToken(new Resources(other), SYSTEM, { caFingerprint: otherCa.fingerprint, now: new Date(), ttlMs: 60_000 });
    await expect(joinCluster({ server: server.agentApiUrl ?? '', token: foreign.token, host: 'x1', stateDir: join(dir, 'x1') })).rejects.toThrow(/does not present this cluster's CA/);
    await other.close();
    await expect(joinCluster({ server: (server.agentApiUrl ?? '').replace('https', 'http'), token, host: 'x1', stateDir: join(dir, 'x1') })).rejects.toThrow(/https/);
    // An expired token.
    const old = await createJoinToken(new Resources(store), SYSTEM, { caFingerprint: server.caFingerprint, now: new Date(Date.now() - 3_600_000), ttlMs: 60_000 });
    await expect(joinCluster({ server: server.agentApiUrl ?? '', token: old.token, host: 'x1', stateDir: join(dir, 'x1') })).rejects.toThrow(/expired/);
  });
});

describe('a joined agent', () => {
  it('sees only what is placed on its host', async () => {
    const l = await remote.list<Instance>('instances/');
    expect(l.items.map((e) => e.value.metadata.name)).toEqual(['mine']);
    expect(await remote.get('instances/acme/theirs')).toBeUndefined();
    expect(await remote.get('instances/acme/mine')).toBeDefined();
    await expect(remote.list('tokens/')).rejects.toBeInstanceOf(RemoteStoreError);
    await expect(remote.get('pki/ca')).resolves.toBeUndefined();
    await expect(remote.get('audit/head')).resolves.toBeUndefined();
    // A key that is not well-formed Unicode (the store refuses it) is a bad request, not a crash.
    for (const call of [() => remote.get('instances/\ud800'), () => remote.delete('instances/acme/\udfff'), () => remote.list('instances/\ud800')]) {
      await expect(call()).rejects.toMatchObject({ status: 400, code: 'CARAPACE_E_VALIDATION' });
    }
  });

  it('answers an unknown endpoint with a coded 404', async () => {
    const d = new Agent({ connect: { ca: h1.ca, cert: h1.cert, key: h1.key } });
    const r = await request(`${server.agentApiUrl ?? ''}/agent/v1/nothing`, { method: 'POST', dispatcher: d, body: '{}', headers: { 'content-type': 'application/json' } });
    expect(r.statusCode).toBe(404);
    expect(((await r.body.json()) as { error: { code: string } }).error.code).toBe('CARAPACE_E_ROUTE_NOT_FOUND');
    await d.close();
  });

  it('refuses a value nested too deeply to store (JSON parses it, the store could not encode it)', async () => {
    const d = new Agent({ connect: { ca: h1.ca, cert: h1.cert, key: h1.key } });
    const deep = `${'['.repeat(20_000)}${']'.repeat(20_000)}`;
    for (const [path, body] of [
      ['put', `{"key":"leases/hosts/h1","value":${deep}}`],
      ['txn', `{"ops":[{"op":"put","key":"leases/hosts/h1","value":${deep}}]}`],
    ] as const) {
      const r = await request(`${server.agentApiUrl ?? ''}/agent/v1/store/${path}`, { method: 'POST', dispatcher: d, body, headers: { 'content-type': 'application/json' } });
      expect([path, r.statusCode, ((await r.body.json()) as { error: { code: string } }).error.code]).toEqual([path, 400, 'CARAPACE_E_VALIDATION']);
    }
    await d.close();
  });

  it('writes its own status, and nothing else', async () => {
    const r = new Resources(remote);
    const updated = await r.mutate('Instance', 'mine', 'acme', (i) => ((i.status = { ...i.status, phase: 'Running' }), i));
    expect(updated?.status.phase).toBe('Running');
    // Its spec, another host's objects, tenants, the audit log, tokens: refused.
    await expect(r.mutate('Instance', 'mine', 'acme', (i) => ((i.spec.container.cpu = 8), i))).rejects.toThrow(/cannot change the spec/);
    const theirs = (await new Resources(store).get('Instance', 'theirs', 'acme'))!; // written in beforeAll
    await expect(remote.put('instances/acme/theirs', { ...theirs, status: { ...theirs.status, phase: 'Failed' } })).rejects.toThrow(/not placed on this host/);
    await expect(remote.put('tenants/acme', { kind: 'Tenant' })).rejects.toThrow(/agents cannot write tenants/);
    await expect(remote.put('audit/head', {})).rejects.toThrow(/agents cannot write audit/);
    await expect(remote.delete('instances/acme/mine')).rejects.toThrow(/has not asked to delete/);
    // Compare-and-set still works through the API.
    await expect(remote.put('instances/acme/mine', updated, { version: 1 })).rejects.toBeInstanceOf(ConflictError);
    // Its host record and lease are its own; another host's are not.
    const host: Host = {
      kind: 'Host',
      metadata: { name: 'h1', uid: 'h1', labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() },
      spec: { labels: {}, unschedulable: false },
      status: { state: 'Ready', lastHeartbeatAt: env.now(), isolation: ['host'], capacity: { cpu: 2, memoryMiB: 2048 }, agentVersion: 't' },
    };
    await r.write(host, 0);
    await expect(r.mutate('Host', 'h1', undefined, (h) => ((h.spec.unschedulable = true), h))).rejects.toThrow(/cannot change its host's spec/);
    await expect(remote.put('hosts/h2', { ...host, metadata: { ...host.metadata, name: 'h2' } })).rejects.toThrow(/agents cannot write hosts/);
    await remote.put('leases/hosts/h1', { host: 'h1', renewedAt: env.now(), holder: 'x' });
    await expect(remote.put('leases/hosts/h2', { host: 'h2' })).rejects.toThrow(/agents cannot write leases/);
  });

  it('refuses missing, foreign, replaced and revoked certificates, and plain text', async () => {
    const url = `${server.agentApiUrl ?? ''}/agent/v1/store/revision`;
    const call = async (d: Agent): Promise<number> => (await request(url, { method: 'POST', dispatcher: d, body: '{}', headers: { 'content-type': 'application/json' } })).statusCode;
    expect(await call(new Agent({ connect: { ca: h1.ca } }))).toBe(401);
    // A certificate for host:h1 from another CA.
    const other = await openSqliteStore({ path: ':memory:' });
    const otherCa = await ensureClusterCa(other, parseKeyring(newKeyLine()));
    const { keyPem, csrPem } = await newCsr('host:h1');
    const forged = await issueCertificate(otherCa, { csrPem, commonName: 'host:h1', usage: 'client', validityDays: 1 });
    expect(await call(new Agent({ connect: { ca: h1.ca, cert: forged.certPem, key: keyPem } }))).toBe(403);
    await other.close();
    // Plain HTTP to the TLS port gets nothing usable.
    const port = Number(new URL(server.agentApiUrl ?? '').port);
    const plain = await new Promise<string>((resolve) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/agent/v1/store/revision', method: 'POST' }, (res) => resolve(`status ${res.statusCode}`));
      req.on('error', (e) => resolve(`error ${e.message}`));
      req.end('{}');
    });
    expect(plain).not.toMatch(/status 2\d\d/);
    // Renewal: the new certificate works, the old one is refused.
    const fresh = await renew(h1);
    expect(await call(new Agent({ connect: { ca: fresh.ca, cert: fresh.cert, key: fresh.key } }))).toBe(200);
    expect(await call(new Agent({ connect: { ca: h1.ca, cert: h1.cert, key: h1.key } }))).toBe(403);
    remote.updateCredentials(fresh.cert, fresh.key);
    // A watch is open when the host is revoked: it ends, and new calls are refused.
    const ac = new AbortController();
    const events: string[] = [];
    const watching = (async () => {
      try {
        for await (const e of remote.watch('instances/', await remote.revision(), ac.signal)) events.push(e.key);
        return 'ended';
      } catch (e) {
        return `broke: ${(e as Error).message}`;
      }
    })();
    const adminUrl = server.url;
    const revoked = await fetch(`${adminUrl}/v1/agent-certs/h1/revoke`, { method: 'POST', headers: { authorization: `Bearer ${server.adminToken}` } });
    expect(revoked.status).toBe(200);
    const outcome = await Promise.race([watching, new Promise((r) => setTimeout(() => r('still open'), 12_000))]);
    ac.abort();
    expect(outcome).toMatch(/broke|ended/);
    expect(await call(new Agent({ connect: { ca: fresh.ca, cert: fresh.cert, key: fresh.key } }))).toBe(403);
    // A revoked host cannot simply join again with a token; forgetting it allows that.
    await expect(joinCluster({ server: server.agentApiUrl ?? '', token, host: 'h1', stateDir: join(dir, 'h1b') })).rejects.toThrow(/revoked/);
    expect((await fetch(`${adminUrl}/v1/agent-certs/h1`, { method: 'DELETE', headers: { authorization: `Bearer ${server.adminToken}` } })).status).toBe(200);
    await joinCluster({ server: server.agentApiUrl ?? '', token, host: 'h1', stateDir: join(dir, 'h1c') });
    // Every trust change is in the audit log, with who made it; no join token secret is.
    const audit = await (await fetch(`${adminUrl}/v1/audit/records`, { headers: { authorization: `Bearer ${server.adminToken}` } })).text();
    const records = audit.trim().split('\n').map((l) => JSON.parse(l) as { action: string; actor: { kind: string; id: string }; target: { kind: string; name: string }; detail?: { via?: string } });
    const joinTokenId = parseJoinToken(token).id;
    expect(records.find((r) => r.action === 'join-token.created' && r.target.name === joinTokenId)?.actor).toEqual({ kind: 'system', id: 'carapace' });
    const h1Trust = records.filter((r) => r.target.kind === 'AgentCert' && r.target.name === 'h1').map((r) => `${r.action}${r.detail?.via ? `(${r.detail.via})` : ''} by ${r.actor.id}`);
    expect(h1Trust).toEqual([
      `agent-cert.issued(join) by join-token:${joinTokenId}`,
      'agent-cert.issued(renew) by host:h1',
      `agent-cert.revoked by token:${server.adminToken.slice(4).split('.')[0]}`,
      `agent-cert.forgotten by token:${server.adminToken.slice(4).split('.')[0]}`,
      `agent-cert.issued(join) by join-token:${joinTokenId}`,
    ]);
    expect(audit).not.toContain(parseJoinToken(token).secret);
  }, 60_000);
});
