/**
 * fetch for tests and benchmarks against `carapace server`, whose API is HTTPS with a
 * certificate from the cluster CA. Each server writes that CA to STATE_DIR/api-ca.crt; once it
 * is registered for the server's origin (`trustStateDir`), `apiFetch` and `apiDispatcher`
 * verify that origin against it, host name checks included, as the CLI does. Plain http URLs
 * (an all-in-one on loopback, in-process servers) go through unchanged.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent, fetch as undiciFetch } from 'undici';

interface Trusted {
  ca: string;
  caFile: string;
  agent: Agent;
}

const trusted = new Map<string, Trusted>();

const originOf = (url: string): string => new URL(url).origin;

/**
 * Reads STATE_DIR/api-ca.crt and trusts it for `url`'s origin; false when the server has not
 * written it (yet). Call again after a restart: the file is rewritten at each start.
 */
export async function trustStateDir(url: string, stateDir: string): Promise<boolean> {
  const caFile = join(stateDir, 'api-ca.crt');
  const ca = await readFile(caFile, 'utf8').catch(() => undefined);
  if (ca === undefined) return false;
  const origin = originOf(url);
  const had = trusted.get(origin);
  if (had?.ca === ca) return true;
  trusted.set(origin, { ca, caFile, agent: new Agent({ connect: { ca, rejectUnauthorized: true } }) });
  if (had) void had.agent.close();
  return true;
}

/** The dispatcher that verifies `url`'s server against its CA; undefined for http or an origin not trusted yet. */
export function apiDispatcher(url: string): Agent | undefined {
  return url.startsWith('https:') ? trusted.get(originOf(url))?.agent : undefined;
}

/** The CA file trusted for `url`'s origin (for CARAPACE_CA_FILE of a CLI run), if any. */
export function apiCaFile(url: string): string | undefined {
  return url.startsWith('https:') ? trusted.get(originOf(url))?.caFile : undefined;
}

/** `fetch`, verifying https servers against the CA trusted for their origin. */
export async function apiFetch(url: string, init: RequestInit = {}): Promise<Response> {
  const dispatcher = apiDispatcher(url);
  if (!dispatcher) return fetch(url, init);
  // undici's fetch is the one Node's global fetch is built on; its Request and Response are
  // the same shapes (the global types are what tests use).
  return (await undiciFetch(url, { ...(init as Parameters<typeof undiciFetch>[1]), dispatcher })) as unknown as Response;
}
