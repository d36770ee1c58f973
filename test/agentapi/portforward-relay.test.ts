/**
 * Port-forwards relayed to an agent on another host, over the real agent API (mutual TLS with
 * the cluster's CA, the agent's request stream, its WebSocket back to the server) and the real
 * public API: one WebSocket per TCP connection, bytes both ways, half-close passed on, two
 * connections at once, a refused port answered 502 CARAPACE_E_PORT_UNREACHABLE before the
 * handshake, a host that is not connected CARAPACE_E_UNAVAILABLE, and an audit record per
 * connection with the port. The agent's end dials a TCP server of this test on loopback
 * instead of a container (the drivers' side is test/e2e/port-forward.test.ts).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { joinCluster } from '../../src/agentapi/enroll.js';
import { serveLogRequests } from '../../src/agentapi/log-uploader.js';
import { Resources } from '../../src/core/resources.js';
import type { Instance } from '../../src/model/objects.js';
import { decodeFwdFrame, dialWorkload, FWD, fwdFrame, socketPort } from '../../src/exec/forward.js';

let dir: string;
let store: Store;
let server: RunningControlServer;
let echo: Server;
let echoPort = 0;
let closedPort = 0;
const agentStop = new AbortController();
let agentLoop: Promise<void>;
const dialled: { tenant: string; name: string; port: number }[] = [];

function instance(name: string, host: string): Instance {
  const now = new Date().toISOString();
  return {
    kind: 'Instance',
    metadata: { name, tenant: 'acme', uid: `uid-${name}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
    spec: { owner: { kind: 'Service', name: 'web', uid: 'svc' }, index: 0, host, container: { image: 'x', env: {}, cpu: 0.1, memory: 64, pids: 1024, readOnlyRootfs: false, isolation: 'host', group: 'default', ports: [] } },
    status: { phase: 'Running', restarts: 0, ready: true, containerId: `c-${name}` },
  } as unknown as Instance; // the fields port-forward reads (phase, container id, host); the rest is irrelevant here
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-pf-relay-'));
  // The "workload": reads until the client's half-close, then answers with what it read and ends.
  echo = createServer({ allowHalfOpen: true }, (s) => {
    let got = '';
    s.on('data', (d) => (got += String(d)));
    s.on('end', () => s.end(`echo:${got}`));
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  echoPort = (echo.address() as { port: number }).port; // a listening TCP server's address is an object
  const gone = createServer();
  await new Promise<void>((r) => gone.listen(0, '127.0.0.1', r));
  closedPort = (gone.address() as { port: number }).port; // as above
  await new Promise((r) => gone.close(r));
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  // No local agent: every instance is on another host, reached through the agent API.
  server = await startControlServer({ store, stateDir: join(dir, 'server'), port: 0, logger: pino({ level: 'silent' }), saveCliConfig: false, agentApi: { port: 0, listen: '127.0.0.1' } });
  const r = new Resources(store);
  await r.write(instance('near', 'h1'), 0);
  await r.write(instance('far', 'h2'), 0);
  const token = (await readFile(join(dir, 'server', 'join-token'), 'utf8')).trim();
  const h1 = await joinCluster({ server: server.agentApiUrl ?? '', token, host: 'h1', stateDir: join(dir, 'h1') });
  agentLoop = serveLogRequests(
    {
      server: h1.server,
      tls: () => ({ ca: h1.ca, cert: h1.cert, key: h1.key }),
      logger: pino({ level: 'silent' }),
      local: {
        logs: async function* () {},
        portForward: async (tenant: string, name: string, port: number) => {
          dialled.push({ tenant, name, port });
          return socketPort(await dialWorkload('127.0.0.1', port, `instance ${tenant}/${name}`));
        },
      },
    },
    agentStop.signal,
  );
}, 60_000);

afterAll(async () => {
  agentStop.abort();
  await agentLoop;
  await server?.close();
  await store?.close();
  echo?.close();
  await rm(dir, { recursive: true, force: true });
});

type Outcome = { refused: { status: number; code: string } } | { data: string; eof: boolean };

/** One forwarded connection through the public API: sends `text`, half-closes, reads until the end. */
async function connection(name: string, port: number, text: string): Promise<Outcome> {
  const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/tenants/acme/instances/${name}/portforward?port=${port}`, { headers: { authorization: `Bearer ${server.adminToken}` } });
  const opened = await new Promise<true | { status: number; code: string }>((resolve, reject) => {
    ws.once('open', () => resolve(true));
    ws.once('error', reject);
    ws.once('unexpected-response', (_q, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += String(d)));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: (JSON.parse(body) as { error: { code: string } }).error.code }));
    });
  });
  if (opened !== true) return { refused: opened };
  let data = '';
  let eof = false;
  ws.on('message', (d: Buffer) => {
    const f = decodeFwdFrame(d);
    if (f?.channel === FWD.data) data += Buffer.from(f.payload).toString();
    if (f?.channel === FWD.eof) eof = true;
  });
  const closed = new Promise((r) => ws.once('close', r));
  // In frames of at most 64 KiB: the workload answers only after the half-close, so all must arrive.
  for (let i = 0; i < text.length; i += 64 * 1024) ws.send(fwdFrame(FWD.data, text.slice(i, i + 64 * 1024)), { binary: true });
  ws.send(fwdFrame(FWD.eof), { binary: true });
  await closed;
  return { data, eof };
}

async function auditRecords(): Promise<{ action: string; outcome: string; target: { name: string }; detail?: { port?: number; host?: string; code?: string } }[]> {
  const res = await fetch(`${server.url}/v1/audit/records`, { headers: { authorization: `Bearer ${server.adminToken}` } });
  return (await res.text()).trim().split('\n').map((l) => JSON.parse(l) as never); // audit export lines, fields read by the tests
}

describe('port-forward relayed to an agent on another host', () => {
  it('reaches the workload once the agent is connected; bytes both ways, the half-close passed on', async () => {
    // The agent connects in the background: until then a connection is refused as unavailable.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await connection('near', echoPort, 'hello over the relay');
      if (!('refused' in r)) {
        expect(r).toEqual({ data: 'echo:hello over the relay', eof: true });
        break;
      }
      expect(r.refused).toEqual({ status: 503, code: 'CARAPACE_E_UNAVAILABLE' });
      if (Date.now() > deadline) throw new Error('the agent never connected');
      await new Promise((res) => setTimeout(res, 100));
    }
    expect(dialled).toContainEqual({ tenant: 'acme', name: 'near', port: echoPort });
  }, 30_000);

  it('carries two connections at once, each its own (one of 8 MiB each way, through the relays\' flow control)', async () => {
    const big = 'x'.repeat(8 * 1024 * 1024);
    const [a, b] = await Promise.all([connection('near', echoPort, `first-${big}`), connection('near', echoPort, 'second')]);
    expect(a).toEqual({ data: `echo:first-${big}`, eof: true });
    expect(b).toEqual({ data: 'echo:second', eof: true });
  }, 30_000);

  it('a refused port is 502 CARAPACE_E_PORT_UNREACHABLE before the handshake; a bad port 400', async () => {
    expect(await connection('near', closedPort, 'x')).toEqual({ refused: { status: 502, code: 'CARAPACE_E_PORT_UNREACHABLE' } });
    expect(await connection('near', 0, 'x')).toEqual({ refused: { status: 400, code: 'CARAPACE_E_BAD_QUERY' } });
  });

  it('a host that is not connected is CARAPACE_E_UNAVAILABLE', async () => {
    expect(await connection('far', echoPort, 'x')).toEqual({ refused: { status: 503, code: 'CARAPACE_E_UNAVAILABLE' } });
  });

  it('audits each connection with its port and host, and refusals with their code; never the bytes', async () => {
    const records = await auditRecords();
    const pf = records.filter((r) => r.action === 'instance.portforward');
    expect(pf).toContainEqual(expect.objectContaining({ outcome: 'success', target: expect.objectContaining({ name: 'near' }), detail: expect.objectContaining({ port: echoPort, host: 'h1' }) }));
    expect(pf).toContainEqual(expect.objectContaining({ outcome: 'failure', detail: expect.objectContaining({ code: 'CARAPACE_E_PORT_UNREACHABLE' }) }));
    // Three successful connections in the tests above (the first, then two at once).
    expect(pf.filter((r) => r.outcome === 'success')).toHaveLength(3);
    expect(JSON.stringify(records)).not.toContain('hello over the relay');
  });
});
