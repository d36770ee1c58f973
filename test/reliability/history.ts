/**
 * A checked history: concurrent clients issue random operations on a few Tenant objects
 * (create, apply with and without compare-and-set, apply of an unchanged value, delete with
 * and without a version, get, list) against real `carapace server` processes while faults
 * are injected: kill -9 of a server and its restart, and (etcd) kill -9 of the etcd member
 * and its restart on the same data. Every call and its answer is recorded with its times;
 * the history is then checked against the sequential model (linearizability.ts).
 *
 * Tenants are the object here because nothing but clients writes them, so the model is the
 * whole truth (services also get status writes from the controller). Keys are few so clients
 * collide often, and per-key histories stay small enough to check exhaustively.
 *
 * - sqlite: one `carapace server --store sqlite:…` (a single process owns the file).
 * - etcd: two `carapace server` processes over one etcd (TLS with client certificates); each call goes to either server.
 */
import { join } from 'node:path';
import { startTlsEtcd } from '../../src/pki/testing/etcd-pki.js';
import type { EtcdProcess } from '../../src/store/testing/etcd.js';
import { freePort, Server, tempDir } from '../e2e/helpers.js';
import { newKeyLine } from '../../src/keyring/keyring.js';
import { call, quiet, Random, sleep, Unsent, type Log, type Reply } from './harness.js';
import { checkHistory, type Call, type Operation, type Outcome } from './linearizability.js';

export interface HistoryOptions {
  store: 'sqlite' | 'etcd';
  /** Concurrent clients (each issues one call at a time). */
  clients: number;
  /** Tenant objects the clients share. */
  keys: number;
  /** Calls in all (lists count once); the final reads come on top. */
  ops: number;
  /** Faults spread over the run (etcd: alternately a server and the etcd member). */
  faults: number;
  seed: number;
  log?: Log;
}

export interface HistoryResult {
  store: 'sqlite' | 'etcd';
  /** Operations recorded and checked (a list counts once per key). */
  ops: number;
  /** Calls whose outcome is unknown (network error, timeout, 5xx). */
  unknown: number;
  /** Calls refused at connect (server down): never sent, not in the history. */
  unsent: number;
  /** 500 answers (a bug, never expected; 503 is an honest "unavailable"). */
  internalErrors: number;
  faults: string[];
  violations: string[];
  checkMs: number;
  durationMs: number;
}

const tenant = (name: string, displayName: string, rv?: number): unknown => ({
  apiVersion: 'carapace/v1',
  kind: 'Tenant',
  metadata: { name, ...(rv !== undefined ? { resourceVersion: rv } : {}) },
  spec: { displayName },
});

/** Maps an answer to the model's outcome, or a string when the answer is not one the API may give. */
function outcomeOf(c: Call, r: Reply): Outcome | string {
  const code = r.json?.error?.code as string | undefined;
  if (r.status >= 500) return { type: 'unknown' };
  if (r.status >= 200 && r.status < 300) {
    if (c.f === 'delete') return { type: 'deleted' };
    const value = r.json?.spec?.displayName;
    const rv = r.json?.metadata?.resourceVersion;
    if (typeof value !== 'string' || typeof rv !== 'number') return `answer without displayName or resourceVersion: ${JSON.stringify(r.json).slice(0, 200)}`;
    return { type: 'ok', value, rv };
  }
  if (r.status === 404 && code === 'CARAPACE_E_NOT_FOUND') return c.f === 'delete' ? { type: 'notfound' } : { type: 'absent' };
  if (r.status === 409 && code === 'CARAPACE_E_CONFLICT') return { type: 'conflict' };
  if (r.status === 409 && code === 'CARAPACE_E_ALREADY_EXISTS') return { type: 'exists' };
  return `unexpected answer ${r.status} ${JSON.stringify(r.json).slice(0, 300)}`;
}

/** Runs one history with faults and checks it. */
export async function runCheckedHistory(o: HistoryOptions): Promise<HistoryResult> {
  const log = o.log ?? quiet;
  const rnd = new Random(o.seed);
  const tmp = await tempDir(`carapace-history-${o.store}-`);
  let etcd: EtcdProcess | undefined;
  const servers: Server[] = [];
  const started = performance.now();
  try {
    if (o.store === 'etcd') {
      etcd = await startTlsEtcd();
      // Servers of one store share one keyring (the CA key in etcd is sealed with it).
      const keyring = newKeyLine();
      for (const name of ['a', 'b']) servers.push(new Server(join(tmp.dir, name), await freePort(), [...etcd.storeArgs, '--no-agent-api'], { CARAPACE_LOG_LEVEL: 'warn', CARAPACE_KEYRING: keyring }, 'server'));
    } else {
      servers.push(new Server(join(tmp.dir, 'a'), await freePort(), ['--store', `sqlite:${join(tmp.dir, 'store.db')}`, '--no-agent-api'], { CARAPACE_LOG_LEVEL: 'warn' }, 'server'));
    }
    for (const s of servers) await s.start();
    const { readFile } = await import('node:fs/promises');
    const token = (await readFile(join(servers[0]!.stateDir, 'admin-token'), 'utf8')).trim(); // the first server minted it

    const keys = Array.from({ length: o.keys }, (_, i) => `k${i}`);
    const history: Operation[] = [];
    const protocol: string[] = [];
    let id = 0;
    let issued = 0;
    let unknown = 0;
    let unsent = 0;
    let internalErrors = 0;
    const record = (client: number, key: string, c: Call, outcome: Outcome, invokedAt: number, returnedAt: number): void => {
      if (outcome.type === 'unknown') unknown++;
      history.push({ id: id++, client, key, call: c, outcome, invokedAt, returnedAt: outcome.type === 'unknown' ? Infinity : returnedAt });
    };

    /** One call, recorded. Reads that fail are dropped (a read without an answer constrains nothing). */
    const perform = async (client: number, key: string, c: Call, server: Server): Promise<Outcome | undefined> => {
      const body = c.f === 'create' ? tenant(key, c.value) : c.f === 'apply' ? tenant(key, c.value, c.rv) : undefined;
      const [method, path] =
        c.f === 'create' ? ['POST', '/v1/tenants'] : c.f === 'apply' ? ['PUT', `/v1/tenants/${key}`] : c.f === 'delete' ? ['DELETE', `/v1/tenants/${key}${c.rv !== undefined ? `?resourceVersion=${c.rv}` : ''}`] : ['GET', `/v1/tenants/${key}`];
      const t0 = performance.now();
      let r: Reply;
      try {
        r = await call(server.url, token, method, path, body, 5_000);
      } catch (e) {
        if (e instanceof Unsent) {
          unsent++;
          issued--; // never sent: does not count as a call
          return undefined;
        }
        if (c.f !== 'get') record(client, key, c, { type: 'unknown' }, t0, Infinity);
        return undefined;
      }
      const t1 = performance.now();
      if (r.status === 500) internalErrors++;
      const out = outcomeOf(c, r);
      if (typeof out === 'string') {
        protocol.push(`client ${client} ${method} ${path}: ${out}`);
        return undefined;
      }
      if (out.type === 'unknown' && c.f === 'get') return undefined;
      record(client, key, c, out, t0, t1);
      return out;
    };

    /** A list, recorded as one read per key at the list's times. */
    const list = async (client: number, server: Server): Promise<void> => {
      const t0 = performance.now();
      let r: Reply;
      try {
        r = await call(server.url, token, 'GET', '/v1/tenants', undefined, 5_000);
      } catch (e) {
        if (e instanceof Unsent) {
          unsent++;
          issued--;
        }
        return;
      }
      const t1 = performance.now();
      if (r.status === 500) internalErrors++;
      if (r.status >= 500) return;
      if (r.status !== 200 || !Array.isArray(r.json?.items)) {
        protocol.push(`client ${client} list: unexpected answer ${r.status} ${JSON.stringify(r.json).slice(0, 200)}`);
        return;
      }
      const items = r.json.items as { metadata: { name: string; resourceVersion: number }; spec: { displayName?: string } }[];
      for (const key of keys) {
        const it = items.find((x) => x.metadata.name === key);
        record(client, key, { f: 'read' }, it ? { type: 'ok', value: it.spec.displayName ?? '', rv: it.metadata.resourceVersion } : { type: 'absent' }, t0, t1);
      }
    };

    const live = (): Server[] => servers.filter((s) => s.proc && s.proc.exitCode === null && s.proc.signalCode === null);
    const client = async (n: number): Promise<void> => {
      const r = new Random(o.seed * 1000 + n);
      const seen = new Map<string, { value: string; rv: number } | undefined>();
      let seq = 0;
      while (issued < o.ops) {
        issued++;
        const server = r.pick(live().length > 0 ? live() : servers);
        const key = r.pick(keys);
        const last = seen.get(key);
        const value = `c${n}.${seq++}`;
        const roll = r.float();
        let c: Call;
        if (roll < 0.1) {
          await list(n, server);
          continue;
        } else if (roll < 0.3) c = { f: 'get' };
        else if (roll < 0.42) c = { f: 'create', value };
        else if (roll < 0.55) c = { f: 'apply', value };
        else if (roll < 0.75) c = { f: 'apply', value, rv: r.chance(0.8) ? (last?.rv ?? 0) : r.between(1, 50) };
        else if (roll < 0.82) c = { f: 'apply', value: last?.value ?? value, ...(r.chance(0.5) && last ? { rv: last.rv } : {}) }; // often unchanged
        else if (roll < 0.9) c = { f: 'delete' };
        else c = { f: 'delete', rv: last?.rv ?? r.between(1, 50) };
        const out = await perform(n, key, c, server);
        if (out?.type === 'ok') seen.set(key, { value: out.value, rv: out.rv });
        else if (out?.type === 'absent' || out?.type === 'deleted' || out?.type === 'notfound') seen.delete(key);
        if (!out) await sleep(20); // a server is down: do not spin
      }
    };

    const faults: string[] = [];
    const injector = async (): Promise<void> => {
      for (let f = 1; f <= o.faults; f++) {
        const at = Math.floor((o.ops * f) / (o.faults + 1)) + rnd.between(-5, 5);
        while (issued < at && issued < o.ops) await sleep(5);
        if (issued >= o.ops) break;
        if (o.store === 'etcd' && f % 2 === 0 && etcd) {
          await etcd.kill('SIGKILL');
          faults.push(`kill -9 etcd after ${issued} calls`);
          await sleep(rnd.between(0, 500));
          await etcd.restart();
        } else {
          const victim = rnd.pick(servers);
          await victim.kill9();
          faults.push(`kill -9 server ${servers.indexOf(victim)} after ${issued} calls`);
          await sleep(rnd.between(0, 500));
          await victim.start();
        }
        log(`history(${o.store}): ${faults[faults.length - 1]}`);
      }
    };

    await Promise.all([injector(), ...Array.from({ length: o.clients }, (_, n) => client(n))]);
    // Everything healthy again, then a final read of every key: lost writes show here.
    for (const s of servers) if (!live().includes(s)) await s.start();
    for (const key of keys) {
      for (let attempt = 0; ; attempt++) {
        const out = await perform(o.clients, key, { f: 'get' }, servers[attempt % servers.length]!);
        if (out) break;
        if (attempt > 100) throw new Error(`final read of ${key} never answered`);
        await sleep(100);
      }
    }
    const t0 = performance.now();
    const checked = checkHistory(history);
    const checkMs = performance.now() - t0;
    // A 500 is a bug whatever the fault (a store outage is a 503): show the servers' reasons.
    if (internalErrors > 0) for (const s of servers) for (const l of s.log.split('\n').filter((x) => x.includes('"internal error"')).slice(0, 2)) protocol.push(`internal error: ${l.slice(0, 1000)}`);
    const violations = [...protocol, ...checked.violations];
    log(`history(${o.store}): ${history.length} operations (${unknown} unknown outcomes, ${unsent} refused at connect, ${internalErrors} internal errors), ${faults.length} faults, checked in ${checkMs.toFixed(0)} ms: ${violations.length} violations`);
    return { store: o.store, ops: history.length, unknown, unsent, internalErrors, faults, violations, checkMs, durationMs: performance.now() - started };
  } finally {
    for (const s of servers) await s.stop();
    await etcd?.stop();
    await tmp.cleanup();
  }
}
