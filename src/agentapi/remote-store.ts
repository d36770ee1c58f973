/**
 * The Store an agent uses when it joined a cluster: every call goes to the agent API over
 * HTTPS with the agent's client certificate, and the server's certificate is checked against
 * the cluster CA (never the system roots). Same semantics as a local store for what the
 * agent may see (scope.ts): compare-and-set conflicts come back as ConflictError, compacted
 * watches as CompactedError; an unreachable server is an ordinary error the agent's loops
 * retry, while its containers and VMs keep running.
 */
import { Agent, request, type Dispatcher } from 'undici';
import { CompactedError, ConflictError, type Entry, type Expectation, type ListResult, type Store, type TxnOp, type TxnResult, type WatchEvent } from '../store/store.js';
import { ndjsonLines } from './ndjson.js';
import type { InstanceMaterial } from '../core/secrets.js';

export interface RemoteStoreOptions {
  /** `https://HOST:PORT` of a server's agent API. */
  server: string;
  ca: string;
  cert: string;
  key: string;
  /** Deadline of each call (not of watches), ms. Default 10,000. */
  timeoutMs?: number;
}

/** An error the server answered with (scope refusals, validation). */
export class RemoteStoreError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'RemoteStoreError';
  }
}

export class RemoteStore implements Store {
  private dispatcher: Agent;
  private closed = false;

  constructor(private o: RemoteStoreOptions) {
    this.dispatcher = this.makeAgent(o);
  }

  private makeAgent(o: RemoteStoreOptions): Agent {
    return new Agent({ connect: { ca: o.ca, cert: o.cert, key: o.key, rejectUnauthorized: true }, keepAliveTimeout: 30_000 });
  }

  /** Swaps in a renewed certificate for new connections. */
  updateCredentials(cert: string, key: string): void {
    const old = this.dispatcher;
    this.o = { ...this.o, cert, key };
    this.dispatcher = this.makeAgent(this.o);
    void old.close().catch(() => undefined);
  }

  /** POSTs to `/agent/v1/<area>/<path>` (area `store` unless said). */
  private async call<T>(path: string, body: unknown, area = 'store'): Promise<T> {
    if (this.closed) throw new Error('the store is closed');
    const res = await request(`${this.o.server}/agent/v1/${area}/${path}`, {
      method: 'POST',
      dispatcher: this.dispatcher,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      headersTimeout: this.o.timeoutMs ?? 10_000,
      bodyTimeout: this.o.timeoutMs ?? 10_000,
    });
    const text = await res.body.text();
    const json = (text ? JSON.parse(text) : {}) as T & { conflict?: { key: string; actualVersion: number }; compacted?: { requested: number; compactedTo: number }; error?: { code: string; message: string } };
    if (res.statusCode === 409 && json.conflict) throw new ConflictError(json.conflict.key, json.conflict.actualVersion);
    if (res.statusCode === 410 && json.compacted) throw new CompactedError(json.compacted.requested, json.compacted.compactedTo);
    if (res.statusCode >= 400) throw new RemoteStoreError(res.statusCode, json.error?.code ?? 'CARAPACE_E_INTERNAL', json.error?.message ?? `agent API answered ${res.statusCode}`);
    return json;
  }

  async get<T>(key: string): Promise<Entry<T> | undefined> {
    return (await this.call<{ entry: Entry<T> | null }>('get', { key })).entry ?? undefined;
  }

  async list<T>(prefix: string): Promise<ListResult<T>> {
    return this.call<ListResult<T>>('list', { prefix });
  }

  async put(key: string, value: unknown, expect?: Expectation): Promise<number> {
    return (await this.call<{ version: number }>('put', { key, value, ...(expect ? { expect } : {}) })).version;
  }

  async delete(key: string, expect?: Expectation): Promise<number | undefined> {
    return (await this.call<{ revision: number | null }>('delete', { key, ...(expect ? { expect } : {}) })).revision ?? undefined;
  }

  async txn(ops: TxnOp[]): Promise<TxnResult> {
    return this.call<TxnResult>('txn', { ops });
  }

  /**
   * The decrypted Secret and Config data of one instance placed on this host (its mounts'
   * files and its envFrom values, with content versions): the agent API refuses any other
   * instance. Never log what it returns.
   */
  async instanceMaterial(tenant: string, name: string): Promise<InstanceMaterial> {
    return this.call<InstanceMaterial>('material', { tenant, name }, 'instances');
  }

  async revision(): Promise<number> {
    return (await this.call<{ revision: number }>('revision', {})).revision;
  }

  async *watch<T>(prefix: string, afterRevision: number, signal: AbortSignal): AsyncIterable<WatchEvent<T>> {
    const ac = new AbortController();
    const onAbort = (): void => ac.abort();
    signal.addEventListener('abort', onAbort, { once: true });
    // No event and no heartbeat for this long: the connection is dead (a cut link sends no FIN).
    let idle: NodeJS.Timeout | undefined;
    const touch = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => ac.abort(), 15_000);
    };
    try {
      touch();
      const res: Dispatcher.ResponseData = await request(`${this.o.server}/agent/v1/store/watch?prefix=${encodeURIComponent(prefix)}&after=${afterRevision}`, { method: 'GET', dispatcher: this.dispatcher, signal: ac.signal });
      if (res.statusCode >= 400) {
        const json = JSON.parse(await res.body.text()) as { compacted?: { requested: number; compactedTo: number }; error?: { code: string; message: string } };
        if (json.compacted) throw new CompactedError(json.compacted.requested, json.compacted.compactedTo);
        throw new RemoteStoreError(res.statusCode, json.error?.code ?? 'CARAPACE_E_INTERNAL', json.error?.message ?? `watch answered ${res.statusCode}`);
      }
      for await (const value of ndjsonLines(res.body, touch)) {
        const m = value as WatchEvent<T> & { start?: number; ping?: boolean; compacted?: { requested: number; compactedTo: number }; error?: { message: string } }; // safe: the agent API's watch frames
        if (m.compacted) throw new CompactedError(m.compacted.requested, m.compacted.compactedTo);
        if (m.error) throw new Error(`watch ended by the server: ${m.error.message}`);
        if (m.start !== undefined || m.ping) continue;
        yield { type: m.type, key: m.key, value: m.value, revision: m.revision };
      }
      if (!signal.aborted) throw new Error('the agent API closed the watch');
    } catch (e) {
      if (signal.aborted) return;
      if (ac.signal.aborted) throw new Error('the agent API went silent; reconnecting', { cause: e });
      throw e;
    } finally {
      clearTimeout(idle);
      signal.removeEventListener('abort', onAbort);
      ac.abort();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.dispatcher.close();
  }
}
