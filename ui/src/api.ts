/**
 * The dashboard's only way to the server: the /v1 API with the user's bearer token, exactly
 * as the CLI uses it. Errors keep the API's `{code, message, details[{path, message}]}` so
 * views can show them at the field. Streams (SSE, NDJSON) are read with fetch() so the token
 * travels in the Authorization header, never in a URL.
 */
import { SseParser, type SseEvent } from './sse';

export type Role = 'cluster-admin' | 'tenant-admin' | 'tenant-viewer';

/** GET /v1/whoami */
export interface WhoAmI {
  tokenId: string;
  name: string;
  role: Role;
  tenant?: string;
}

export interface FieldIssue {
  path: string;
  message: string;
}

/** An error answer of the API (or a network failure, code CARAPACE_E_NETWORK). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: FieldIssue[] = [],
  ) {
    super(message);
  }
}

async function errorOf(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  try {
    // The API's error shape; anything else is reported as it came.
    const e = (JSON.parse(text) as { error?: { code?: string; message?: string; details?: FieldIssue[] } }).error;
    if (e?.code) return new ApiError(res.status, e.code, e.message ?? e.code, Array.isArray(e.details) ? e.details : []);
  } catch {
    // not JSON
  }
  return new ApiError(res.status, `HTTP_${res.status}`, text.slice(0, 300) || res.statusText);
}

export interface RequestOptions {
  method?: 'GET' | 'PUT' | 'POST' | 'DELETE';
  /** A string is sent as is (with `contentType`); anything else as JSON. */
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
}

/** One signed-in session's API client. */
export class Api {
  constructor(
    readonly token: string,
    /** Called when the server says the token is no longer valid (revoked while signed in). */
    private readonly onUnauthenticated: () => void = () => undefined,
  ) {}

  /** Sends a request; throws ApiError for any non-2xx answer. */
  async request(path: string, o: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    let body: string | undefined;
    if (o.body !== undefined) {
      body = typeof o.body === 'string' ? o.body : JSON.stringify(o.body);
      headers['content-type'] = o.contentType ?? (typeof o.body === 'string' ? 'application/yaml' : 'application/json');
    }
    let res: Response;
    try {
      res = await fetch(path, { method: o.method ?? 'GET', headers, ...(body !== undefined ? { body } : {}), ...(o.signal ? { signal: o.signal } : {}), cache: 'no-store' });
    } catch (e) {
      if (o.signal?.aborted) throw e;
      throw new ApiError(0, 'CARAPACE_E_NETWORK', `cannot reach the server: ${(e as Error).message}`);
    }
    if (!res.ok) {
      const err = await errorOf(res);
      if (err.status === 401) this.onUnauthenticated();
      throw err;
    }
    return res;
  }

  /** GET (or another method) answering JSON. */
  async json<T>(path: string, o: RequestOptions = {}): Promise<T> {
    const res = await this.request(path, o);
    return (await res.json()) as T; // `as`: the API's documented response shape for this path
  }

  async text(path: string, o: RequestOptions = {}): Promise<string> {
    return (await this.request(path, o)).text();
  }

  /**
   * Follows an SSE endpoint until it ends or `signal` aborts, calling `onOpen` once the server
   * accepted it and `onEvent` per event. Resolves when the server closes the stream; rejects
   * on an error answer.
   */
  async sse(path: string, onEvent: (e: SseEvent) => void, signal: AbortSignal, onOpen?: () => void): Promise<void> {
    const res = await this.request(path, { signal });
    onOpen?.();
    const reader = res.body?.getReader();
    if (!reader) return;
    const parser = new SseParser();
    const dec = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const ev of parser.push(dec.decode(value, { stream: true }))) onEvent(ev);
      }
    } finally {
      reader.releaseLock();
    }
  }

  /** Follows an NDJSON endpoint (logs), calling `onLine` per parsed line. */
  async ndjson<T>(path: string, onLine: (v: T) => void, signal: AbortSignal): Promise<void> {
    const res = await this.request(path, { signal });
    const reader = res.body?.getReader();
    if (!reader) return;
    const dec = new TextDecoder();
    let buf = '';
    const flush = (final: boolean): void => {
      const lines = buf.split('\n');
      buf = final ? '' : (lines.pop() ?? '');
      for (const l of lines) if (l.trim() !== '') onLine(JSON.parse(l) as T); // `as`: one NDJSON record of this endpoint
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      flush(false);
    }
    flush(true);
  }
}

/** Asks the server who a token belongs to; throws ApiError (401) for a bad token. */
export async function whoami(token: string): Promise<WhoAmI> {
  return new Api(token).json<WhoAmI>('/v1/whoami');
}

/** URL path segment, escaped. */
export const seg = encodeURIComponent;
