/**
 * The CLI's HTTP client: one place that knows the server address, turns transport failures
 * into one clear line (CARAPACE_E_SERVER_UNREACHABLE), and error bodies into CliError.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { WebSocket } from 'ws';
import { CarapaceError, type ErrorBody } from '../model/errors.js';

export const DEFAULT_SERVER = 'http://127.0.0.1:7070';

/** An error the CLI prints as one line and exits non-zero with. */
export class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details: { path: string; message: string }[] = [],
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** What `carapace up` saved for the CLI on this machine (0600): server address and token. */
export interface CliConfig {
  server?: string;
  token?: string;
}

/** $CARAPACE_CONFIG or ~/.config/carapace/config.json; missing or unreadable means empty. */
export function readCliConfig(): CliConfig {
  const path = process.env['CARAPACE_CONFIG'] ?? join(homedir(), '.config', 'carapace', 'config.json');
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    if (typeof v !== 'object' || v === null) return {};
    const o = v as Record<string, unknown>; // checked to be an object
    return { ...(typeof o['server'] === 'string' ? { server: o['server'] } : {}), ...(typeof o['token'] === 'string' ? { token: o['token'] } : {}) };
  } catch {
    return {};
  }
}

export class ApiClient {
  readonly base: string;
  private readonly token: string | undefined;

  /** Flags win over the environment, which wins over the config file. */
  constructor(server: string | undefined, token?: string) {
    const cfg = readCliConfig();
    const s = (server ?? process.env['CARAPACE_SERVER'] ?? cfg.server ?? DEFAULT_SERVER).replace(/\/+$/, '');
    this.base = /^https?:\/\//.test(s) ? s : `http://${s}`;
    this.token = token ?? process.env['CARAPACE_TOKEN'] ?? cfg.token;
  }

  /** Sends a request and returns the parsed JSON body; throws CliError on any failure. */
  async call<T>(method: 'GET' | 'PUT' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> {
    const res = await this.raw(method, path, body);
    const warning = res.headers['warning'];
    if (typeof warning === 'string') for (const m of warning.matchAll(/299 - ("(?:[^"\\]|\\.)*")/g)) process.stderr.write(`warning: ${JSON.parse(m[1] ?? '""') as string}\n`);
    const text = await res.body.text();
    let parsed: unknown;
    try {
      parsed = text === '' ? undefined : JSON.parse(text);
    } catch {
      throw new CliError('CARAPACE_E_INTERNAL', `server at ${this.base} answered ${res.statusCode} with a body that is not JSON`);
    }
    if (res.statusCode >= 400) {
      const e = (parsed as Partial<ErrorBody> | undefined)?.error;
      throw new CliError(e?.code ?? 'CARAPACE_E_INTERNAL', e?.message ?? `server answered ${res.statusCode}`, e?.details ?? []);
    }
    return parsed as T; // the server's documented response shape for this path
  }

  /** Opens a WebSocket to `path` (exec), authenticated like every request. */
  websocket(path: string): WebSocket {
    return new WebSocket(`${this.base.replace(/^http/, 'ws')}${path}`, {
      headers: this.token ? { authorization: `Bearer ${this.token}` } : {},
      maxPayload: 1024 * 1024,
      handshakeTimeout: 30_000,
    });
  }

  /** Sends a request and returns the raw response (for streams). */
  async raw(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Awaited<ReturnType<typeof request>>> {
    try {
      return await request(`${this.base}${path}`, {
        method: method as 'GET', // one of the HTTP methods this client sends
        headers: {
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
        },
        body: body === undefined ? null : JSON.stringify(body),
        headersTimeout: 30_000,
        bodyTimeout: 0,
        ...(signal ? { signal } : {}),
      });
    } catch (e) {
      if (e instanceof CarapaceError) throw e;
      const code = (e as { code?: string }).code ?? '';
      const why = code === 'ECONNREFUSED' ? 'connection refused' : code === 'ENOTFOUND' ? 'unknown host' : ((e as Error).message ?? 'failed');
      throw new CliError('CARAPACE_E_SERVER_UNREACHABLE', `cannot reach the Carapace server at ${this.base} (${why}); is \`carapace up\` running? Set --server or CARAPACE_SERVER`);
    }
  }
}
