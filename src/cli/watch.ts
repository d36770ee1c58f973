/**
 * `get --watch`: list, print, then follow the kind's watch stream (`GET /v1/watch/KIND`,
 * Server-Sent Events) from the list's revision, so no change between the two is lost or
 * printed twice, and print each change (WatchPrinter, format.ts) until `signal` aborts
 * (Ctrl-C). The dashboard reads the same streams with the same parser (model/sse.ts).
 */
import { KINDS, type AnyObject, type Kind } from '../model/objects.js';
import { SseParser } from '../model/sse.js';
import { CliError, type ApiClient } from './client.js';
import { WatchPrinter, type OUTPUT_FORMATS } from './format.js';

/** What to watch: every object of the kind (of one tenant), or one object. */
export interface WatchScope {
  tenant?: string;
  name?: string;
}

/**
 * Prints the current objects, then every change, through `write` (one call per line).
 * Resolves when `signal` aborts; throws CliError when the list or the stream fails, or when
 * the server ends the stream (a restart: the command says so instead of waiting forever).
 */
export async function watchObjects(c: ApiClient, kind: Kind, scope: WatchScope, output: (typeof OUTPUT_FORMATS)[number], write: (line: string) => void, signal: AbortSignal): Promise<void> {
  const { plural, scoped } = KINDS[kind];
  const tenant = scoped ? scope.tenant : undefined;
  const list = await c.call<{ items: AnyObject[]; resourceVersion: number }>('GET', tenant !== undefined ? `/v1/tenants/${encodeURIComponent(tenant)}/${plural}` : `/v1/${plural}`);
  const wanted = (o: AnyObject): boolean => scope.name === undefined || (o.metadata.name === scope.name && (tenant === undefined || o.metadata.tenant === tenant));
  const items = list.items.filter(wanted);
  if (scope.name !== undefined && items.length === 0) {
    throw new CliError('CARAPACE_E_NOT_FOUND', `${kind.toLowerCase()} "${tenant !== undefined ? `${tenant}/` : ''}${scope.name}" not found`);
  }
  const printer = new WatchPrinter(kind, output);
  for (const line of printer.start(items)) write(line);

  const q = new URLSearchParams({ resourceVersion: String(list.resourceVersion) });
  if (tenant !== undefined) q.set('tenant', tenant);
  const parser = new SseParser();
  try {
    const res = await c.raw('GET', `/v1/watch/${plural}?${q.toString()}`, undefined, signal);
    if (res.statusCode >= 400) {
      const body = (await res.body.json().catch(() => undefined)) as { error?: { code: string; message: string; details?: { path: string; message: string }[] } } | undefined; // the API's error body
      throw new CliError(body?.error?.code ?? 'CARAPACE_E_INTERNAL', body?.error?.message ?? `server answered ${res.statusCode}`, body?.error?.details ?? []);
    }
    const decoder = new TextDecoder();
    for await (const chunk of res.body) {
      // undici yields Buffers; `stream: true` keeps a character split across chunks whole.
      for (const ev of parser.push(decoder.decode(chunk as Buffer, { stream: true }))) {
        if (ev.event === 'error') {
          const e = JSON.parse(ev.data) as { code?: string; message?: string }; // the stream's error event
          throw new CliError(e.code ?? 'CARAPACE_E_UNAVAILABLE', `the watch failed: ${e.message ?? 'no reason given'}`);
        }
        if (ev.event !== 'put' && ev.event !== 'delete') continue;
        const o = JSON.parse(ev.data) as AnyObject; // a stored object of this kind, as the list returns them
        if (wanted(o)) for (const line of printer.change(ev.event, o)) write(line);
      }
    }
  } catch (e) {
    // Ctrl-C ends the request mid-stream (or mid-connect): that is the normal way out.
    if (signal.aborted) return;
    throw e;
  }
  if (signal.aborted) return;
  throw new CliError('CARAPACE_E_UNAVAILABLE', `the server ended the watch (last revision seen: ${parser.id ?? list.resourceVersion}); run the command again`);
}
