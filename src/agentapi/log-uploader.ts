/**
 * The agent's side of remote logs (see logs.ts): keeps a request stream open to the server's
 * agent API and, for each request, uploads the asked-for lines of a local instance or machine
 * as an NDJSON body until they end or the server stops reading.
 */
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { Agent, request } from 'undici';
import type { LogLine, LogOptions } from '../runtime/driver.js';
import type { LogRequest } from './logs.js';

/** Where the lines come from (the HostAgent). */
export interface LocalLogs {
  logs(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine>;
  machineLogs?(tenant: string, name: string, opts: LogOptions): AsyncIterable<LogLine>;
}

export interface LogUploaderOptions {
  server: string;
  tls: () => { ca: string; cert: string; key: string };
  local: LocalLogs;
  logger: Logger;
}

/** Serves log requests until `signal` aborts; reconnects with backoff when the stream breaks. */
export async function serveLogRequests(o: LogUploaderOptions, signal: AbortSignal): Promise<void> {
  const log = o.logger.child({ component: 'log-uploader' });
  for (let pause = 500; !signal.aborted; pause = Math.min(pause * 2, 10_000)) {
    const tls = o.tls();
    const dispatcher = new Agent({ connect: { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: true } });
    try {
      const res = await request(`${o.server}/agent/v1/log-requests`, { dispatcher, signal, bodyTimeout: 30_000 });
      if (res.statusCode !== 200) throw new Error(`log requests answered ${res.statusCode}`);
      pause = 500;
      let buf = '';
      for await (const chunk of res.body) {
        buf += String(chunk);
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const r = JSON.parse(line || '{}') as Partial<LogRequest>;
          if (typeof r.id === 'string' && typeof r.tenant === 'string' && typeof r.name === 'string') void upload(o, dispatcher, r as LogRequest, log);
        }
      }
    } catch (err) {
      if (signal.aborted) break;
      log.warn({ err, retryInMs: pause }, 'log request stream broke');
    }
    await delay(pause, undefined, { signal }).catch(() => undefined);
  }
}

async function upload(o: LogUploaderOptions, dispatcher: Agent, r: LogRequest, log: Logger): Promise<void> {
  const ac = new AbortController();
  const opts: LogOptions = { follow: r.follow, signal: ac.signal, ...(r.tail !== undefined ? { tail: r.tail } : {}) };
  const source = r.kind === 'machine' ? o.local.machineLogs?.(r.tenant, r.name, opts) : o.local.logs(r.tenant, r.name, opts);
  async function* lines(): AsyncIterable<string> {
    if (!source) return;
    for await (const l of source) yield `${JSON.stringify(l)}\n`;
  }
  try {
    const res = await request(`${o.server}/agent/v1/log-streams/${r.id}`, { method: 'POST', dispatcher, headers: { 'content-type': 'application/x-ndjson' }, body: Readable.from(lines()), signal: ac.signal });
    await res.body.dump();
  } catch (err) {
    log.debug({ err, request: r.id }, 'log upload ended');
  } finally {
    ac.abort();
  }
}
