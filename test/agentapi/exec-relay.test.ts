/**
 * Exec sessions relayed to an agent on another host, over the real agent API (mutual TLS with
 * the cluster's CA, the agent's request stream, its WebSocket back to the server) and the real
 * public API: the client's frames reach the agent and the agent's come back, with a terminal
 * (resize, exit code) and without (stdout, stderr, stdin, exit code). The agent's end runs
 * the command on this machine instead of in a container: what is under test is the relay
 * (the drivers' exec is test/e2e/exec.test.ts). An instance on a host that is not connected
 * is answered with CARAPACE_E_UNAVAILABLE.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
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
import { CHANNEL, decodeFrame, encodeFrame, execQuery, parseStatus, type ExecOptions, type ExecStatus } from '../../src/exec/frames.js';
import { spawnExec } from '../../src/exec/process.js';
import { serveExec } from '../../src/exec/session.js';

let dir: string;
let store: Store;
let server: RunningControlServer;
const agentStop = new AbortController();
let agentLoop: Promise<void>;
const ran: string[][] = [];

function instance(name: string, host: string): Instance {
  const now = new Date().toISOString();
  return {
    kind: 'Instance',
    metadata: { name, tenant: 'acme', uid: `uid-${name}`, labels: {}, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now },
    spec: { owner: { kind: 'Service', name: 'web', uid: 'svc' }, index: 0, host, container: { image: 'x', env: {}, cpu: 0.1, memory: 64, pids: 1024, readOnlyRootfs: false, isolation: 'host', group: 'default', ports: [] } },
    status: { phase: 'Running', restarts: 0, ready: true, containerId: `c-${name}` },
  } as unknown as Instance; // the fields exec reads (phase, container id, host); the rest is irrelevant here
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-exec-relay-'));
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
        exec: async (_tenant: string, _name: string, opts: ExecOptions, port) => {
          ran.push(opts.command);
          await serveExec(spawnExec(opts.command, opts), port, async () => undefined);
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
  await rm(dir, { recursive: true, force: true });
});

/** Runs a session through the public API; `drive` sends frames once it is open. */
async function session(name: string, opts: ExecOptions, drive: (send: (c: number, p?: string) => void, out: () => string) => Promise<void> | void = () => undefined): Promise<{ out: string; err: string; status?: ExecStatus }> {
  const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/tenants/acme/instances/${name}/exec?${execQuery(opts)}`, { headers: { authorization: `Bearer ${server.adminToken}` } });
  let out = '';
  let err = '';
  let status: ExecStatus | undefined;
  ws.on('message', (d: Buffer) => {
    const f = decodeFrame(d);
    if (f?.channel === CHANNEL.stdout) out += Buffer.from(f.payload).toString();
    if (f?.channel === CHANNEL.stderr) err += Buffer.from(f.payload).toString();
    if (f?.channel === CHANNEL.status) status = parseStatus(f.payload);
  });
  const closed = new Promise((r) => ws.once('close', r));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('unexpected-response', (_q, res) => reject(new Error(`refused: ${res.statusCode ?? 0}`)));
  });
  await drive((c, p) => ws.send(encodeFrame(c as 0, p), { binary: true }), () => out);
  await closed;
  return { out, err, ...(status ? { status } : {}) };
}

async function until(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('exec relayed to an agent on another host', () => {
  it('reaches the agent once its request stream is open', async () => {
    // The agent connects in the background: until then a session is refused as unavailable.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await session('near', { command: ['true'], tty: false, stdin: false });
      if (r.status && 'exitCode' in r.status) {
        expect(r.status.exitCode).toBe(0);
        break;
      }
      expect(r.status).toMatchObject({ error: { code: 'CARAPACE_E_UNAVAILABLE' } });
      if (Date.now() > deadline) throw new Error('the agent never connected');
      await new Promise((res) => setTimeout(res, 100));
    }
  });

  it('without a terminal: stdout, stderr, piped stdin and the exit code come through', async () => {
    const r = await session('near', { command: ['/bin/sh', '-c', 'echo hi; echo oops >&2; cat; exit 4'], tty: false, stdin: true }, (send) => {
      send(CHANNEL.stdin, 'piped\n');
      send(CHANNEL.eof);
    });
    expect(r).toEqual({ out: 'hi\npiped\n', err: 'oops\n', status: { exitCode: 4 } });
    expect(ran).toContainEqual(['/bin/sh', '-c', 'echo hi; echo oops >&2; cat; exit 4']);
  }, 30_000);

  it('with a terminal: the size given, a resize, and exit 3', async () => {
    const r = await session('near', { command: ['/bin/sh'], tty: true, stdin: true, cols: 90, rows: 30 }, async (send, out) => {
      send(CHANNEL.stdin, 'stty size\n');
      await until('the first size', () => out().includes('30 90'));
      send(CHANNEL.resize, JSON.stringify({ cols: 100, rows: 40 }));
      send(CHANNEL.stdin, 'stty size\n');
      await until('the new size', () => out().includes('40 100'));
      send(CHANNEL.stdin, 'exit 3\n');
    });
    expect(r.status).toEqual({ exitCode: 3 });
  }, 30_000);

  it('ends a session for a host that is not connected with CARAPACE_E_UNAVAILABLE', async () => {
    const r = await session('far', { command: ['true'], tty: false, stdin: false });
    expect(r.status).toEqual({ error: { code: 'CARAPACE_E_UNAVAILABLE', message: expect.stringContaining('host h2 is not connected') } });
  });
});
