/**
 * The exec endpoint as a browser reaches it: the bearer token as a WebSocket subprotocol
 * (browsers cannot set an Authorization header on a WebSocket; a token in the URL would be
 * logged), the handshake answered with the exec protocol's name only, and refusals as the
 * session's status frame (a browser cannot read a refused handshake's body). A client that
 * offers no subprotocol (the CLI) still gets refusals as HTTP errors. Over a real listening
 * server, SQLite store and audit log; no runtime: every request here is refused, and the
 * code says at which step (a not-found instance means the token was accepted).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/server.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import { AuditLog } from '../../src/audit/log.js';
import { authenticate } from '../../src/auth/tokens.js';
import { bootstrapToken, issueToken } from '../../src/core/api-tokens.js';
import { contextFor } from '../../src/core/audit-context.js';
import type { Store } from '../../src/store/store.js';
import { bearerProtocol, CHANNEL, decodeFrame, EXEC_PROTOCOL, parseStatus, type ExecStatus } from '../../src/exec/frames.js';

let dir: string;
let store: Store;
let audit: AuditLog;
let app: FastifyInstance;
let base = '';
let admin = '';
let viewer = '';
const env = { now: () => new Date().toISOString(), newId: () => `id${Math.random().toString(36).slice(2)}` };
const PATH = '/v1/tenants/acme/instances/nosuch-0/exec?command=sh&tty=true&stdin=true';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-exec-subprotocol-'));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  const resources = new Resources(store, audit, env);
  const logs = {
    logs: async function* () {},
    exec: () => Promise.reject(new Error('no session may start in this test')),
  };
  app = buildApi({ controlPlane: new ControlPlane(resources, env), store, logs, logger: pino({ level: 'silent' }), auth: { authenticate: (t) => authenticate(store, t) }, env, audit });
  base = (await app.listen({ port: 0, host: '127.0.0.1' })).replace(/^http/, 'ws');
  admin = (await bootstrapToken(resources, { id: 'root', name: 'root', now: env.now() }))!.token; // a fresh store
  const root = contextFor({ tokenId: 'root', name: 'root', role: 'cluster-admin' });
  await issueToken(resources, root, { id: 'acmeadmin', name: 'acme admin', role: 'tenant-admin', tenant: 'acme', now: env.now() });
  viewer = (await issueToken(resources, root, { id: 'tv', name: 'acme viewer', role: 'tenant-viewer', tenant: 'acme', now: env.now() })).token;
});

afterAll(async () => {
  await app?.close();
  await store?.close();
  await rm(dir, { recursive: true, force: true });
});

/** Opens the exec WebSocket offering `protocols`; resolves with the protocol the server chose, the status frame and the close code. */
function session(protocols: string[], headers: Record<string, string> = {}): Promise<{ protocol: string; status?: ExecStatus; close: number } | { refused: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base}${PATH}`, protocols, { headers });
    let status: ExecStatus | undefined;
    ws.on('message', (data, binary) => {
      const f = binary ? decodeFrame(data as Buffer) : undefined; // ws hands binary messages as Buffers
      if (f?.channel === CHANNEL.status) status = parseStatus(f.payload);
    });
    ws.on('close', (code) => resolve({ protocol: ws.protocol, ...(status ? { status } : {}), close: code }));
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString('utf8')));
      res.on('end', () => resolve({ refused: res.statusCode ?? 0, body }));
    });
    ws.on('error', reject);
  });
}

const code = (s: Awaited<ReturnType<typeof session>>): string | undefined => ('status' in s && s.status && 'error' in s.status ? s.status.error.code : undefined);

describe('exec with the token as a WebSocket subprotocol', () => {
  it('accepts the token from the subprotocol and answers with the exec protocol only', async () => {
    const s = await session([EXEC_PROTOCOL, bearerProtocol(admin)]);
    // Authenticated and authorised: the refusal is the missing instance, after the handshake.
    expect(s).toMatchObject({ protocol: EXEC_PROTOCOL, close: 1000 });
    expect(code(s)).toBe('CARAPACE_E_NOT_FOUND');
    // The token first in the offer: the server still never echoes it.
    const reversed = await session([bearerProtocol(admin), EXEC_PROTOCOL]);
    expect([('protocol' in reversed && reversed.protocol) || '', code(reversed)]).toEqual([EXEC_PROTOCOL, 'CARAPACE_E_NOT_FOUND']);
  });

  it('refuses a forged token, no token and a viewer in the session, and audits the refusals', async () => {
    const forged = await session([EXEC_PROTOCOL, bearerProtocol(`${admin.slice(0, -4)}AAAA`)]);
    expect(code(forged)).toBe('CARAPACE_E_UNAUTHENTICATED');
    expect(code(await session([EXEC_PROTOCOL, bearerProtocol('not a token')]))).toBe('CARAPACE_E_UNAUTHENTICATED');
    expect(code(await session([EXEC_PROTOCOL, 'base64url.bearer.authorization.carapace.dev.!!']))).toBe('CARAPACE_E_UNAUTHENTICATED');
    expect(code(await session([EXEC_PROTOCOL]))).toBe('CARAPACE_E_UNAUTHENTICATED');
    const asViewer = await session([EXEC_PROTOCOL, bearerProtocol(viewer)]);
    expect(code(asViewer)).toBe('CARAPACE_E_FORBIDDEN');
    const records = (await audit.export({ format: 'jsonl' }))
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { action: string; outcome: string; actor: { id: string }; target: { name: string } }); // one audit record per line
    expect(records.filter((r) => r.action === 'instance.exec' && r.outcome === 'failure' && r.actor.id === 'token:tv' && r.target.name === 'nosuch-0')).toHaveLength(1);
  });

  it('keeps HTTP refusals for a client that offers no subprotocol (the CLI), and needs the exec protocol to read a token', async () => {
    expect(await session([], { authorization: `Bearer ${viewer}` })).toMatchObject({ refused: 403, body: expect.stringContaining('CARAPACE_E_FORBIDDEN') });
    // A token subprotocol without the exec protocol is read, but the handshake cannot name a
    // protocol the client offered: ws refuses it, and the refusal is HTTP.
    const lone = await session([bearerProtocol(viewer)]);
    expect(lone).toMatchObject({ refused: 403 });
    expect(await session([], {})).toMatchObject({ refused: 401 });
  });

  it('reads a subprotocol token on exec routes only', async () => {
    // Any route may be asked with an Upgrade header; only exec takes a token from it.
    const r = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`${base}/v1/tenants/acme/services`, [EXEC_PROTOCOL, bearerProtocol(admin)]);
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('open', () => reject(new Error('a list route completed a WebSocket handshake')));
      ws.on('error', reject);
    });
    expect(r).toBe(401);
  });
});
