/**
 * The CLI's HTTP client: one place that knows the server address, turns transport failures
 * into one clear line (CARAPACE_E_SERVER_UNREACHABLE), and error bodies into CliError.
 */
import { readFileSync } from 'node:fs';
import { Agent, request } from 'undici';
import { WebSocket, type ClientOptions } from 'ws';
import { CarapaceError, type ErrorBody } from '../model/errors.js';
import { fingerprintOf } from '../pki/x509.js';
import { pemCertificates } from '../pki/serving.js';
import { cliConfigPath, readCliConfig } from '../server/cli-config.js';
import { tlsFailure } from './tls.js';
import { isLoopbackHost } from '../model/netaddr.js';

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

export { readCliConfig, type CliConfig } from '../server/cli-config.js';

/** How this client trusts an https server: a CA (PEM) and where it was pinned, for messages. */
interface Pin {
  ca: string;
  fingerprint: string;
  source: string;
}

export class ApiClient {
  readonly base: string;
  private readonly token: string | undefined;
  private readonly pin: Pin | undefined;
  private readonly pinProblem: CliError | undefined;
  private dispatcher: Agent | undefined;
  private warned = false;

  /**
   * Flags win over the environment, which wins over the config file. The CA pinned for an
   * https server: `pinned` (`carapace login`), else `caFile` (--ca-file), else
   * $CARAPACE_CA_FILE, else the config file's.
   */
  constructor(server: string | undefined, token?: string, caFile?: string, pinned?: { ca: string; source: string }) {
    const cfg = readCliConfig();
    const s = (server ?? process.env['CARAPACE_SERVER'] ?? cfg.server ?? DEFAULT_SERVER).replace(/\/+$/, '');
    this.base = /^https?:\/\//.test(s) ? s : `http://${s}`;
    this.token = token ?? process.env['CARAPACE_TOKEN'] ?? cfg.token;
    const file = caFile ?? process.env['CARAPACE_CA_FILE'];
    try {
      this.pin = pinned ? { ca: pinned.ca, fingerprint: pemCertificates(pinned.ca).map(fingerprintOf).join(', '), source: pinned.source } : file !== undefined && file !== '' ? pinFromFile(file, caFile !== undefined ? '--ca-file' : 'CARAPACE_CA_FILE') : pinFromConfig(cfg.ca, cfg.caFingerprint);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      this.pinProblem = e;
    }
  }

  /**
   * What a connection to the server needs: for https, the pinned CA (or the refusal: no CA
   * pinned, a bad CA file); for http to another machine, a warning once.
   */
  private trust(): Pin | undefined {
    const url = new URL(this.base);
    if (url.protocol === 'http:') {
      if (!this.warned && !isLoopbackHost(url.hostname)) {
        this.warned = true;
        process.stderr.write(`warning: ${this.base} is plain HTTP to another machine: the token crosses the network in clear; use the server's https:// address\n`);
      }
      return undefined;
    }
    if (this.pinProblem) throw this.pinProblem;
    if (!this.pin) {
      throw new CliError(
        'CARAPACE_E_TLS_NOT_PINNED',
        `no CA is pinned for ${this.base}, and this CLI never trusts a server it cannot verify: run \`carapace login ${this.base} --ca-fingerprint SHA256\` with the fingerprint \`carapace server\` printed, or give --ca-file (CARAPACE_CA_FILE)`,
      );
    }
    return this.pin;
  }

  /** A failed TLS check as its one-line refusal; other transport failures as CARAPACE_E_SERVER_UNREACHABLE. */
  async transportError(e: unknown): Promise<CliError> {
    if (e instanceof CliError) return e;
    if (this.pin) {
      const refused = await tlsFailure(e, this.base, this.pin);
      if (refused) return refused;
    }
    const code = (e as { code?: string }).code ?? '';
    const why = code === 'ECONNREFUSED' ? 'connection refused' : code === 'ENOTFOUND' ? 'unknown host' : code === 'UND_ERR_SOCKET' && this.base.startsWith('http:') ? `${(e as Error).message}: a server that speaks HTTPS closes plain-HTTP connections, try https://` : ((e as Error).message ?? 'failed');
    return new CliError('CARAPACE_E_SERVER_UNREACHABLE', `cannot reach the Carapace server at ${this.base} (${why}); is \`carapace up\` running? Set --server or CARAPACE_SERVER`);
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

  /**
   * Opens a WebSocket to `path` (exec, port-forward), authenticated like every request and
   * verified against the same pinned CA (the handshake fails before the token is sent).
   * Transport errors come as the socket's 'error' event: pass them to `transportError`.
   */
  websocket(path: string): WebSocket {
    const pin = this.trust();
    const opts: ClientOptions = {
      headers: this.token ? { authorization: `Bearer ${this.token}` } : {},
      maxPayload: 1024 * 1024,
      handshakeTimeout: 30_000,
      ...(pin ? { ca: pin.ca, rejectUnauthorized: true } : {}),
    };
    return new WebSocket(`${this.base.replace(/^http/, 'ws')}${path}`, opts);
  }

  /** Sends a request and returns the raw response (for streams). */
  async raw(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Awaited<ReturnType<typeof request>>> {
    const pin = this.trust();
    if (pin) this.dispatcher ??= new Agent({ connect: { ca: pin.ca, rejectUnauthorized: true } });
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
        ...(this.dispatcher ? { dispatcher: this.dispatcher } : {}),
        ...(signal ? { signal } : {}),
      });
    } catch (e) {
      if (e instanceof CarapaceError) throw e;
      if ((e as Error).name === 'AbortError') throw e;
      throw await this.transportError(e);
    }
  }
}

/** The CA of a PEM file given by flag or environment. */
export function pinFromFile(file: string, source: string): Pin {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new CliError('CARAPACE_E_TLS_NOT_PINNED', `cannot read the CA file ${file} (${source}): ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, [{ path: source, message: 'unreadable' }]); // fs errors are ErrnoExceptions
  }
  const certs = pemCertificates(text);
  if (certs.length === 0) throw new CliError('CARAPACE_E_TLS_NOT_PINNED', `${file} (${source}) holds no PEM certificate`, [{ path: source, message: 'no -----BEGIN CERTIFICATE----- block' }]);
  return { ca: certs.join(''), fingerprint: certs.map(fingerprintOf).join(', '), source: `${source} ${file}` };
}

/** The CA the config file pins; its PEM and fingerprint must agree (a file edited by hand may not). */
function pinFromConfig(ca: string | undefined, fingerprint: string | undefined): Pin | undefined {
  if (ca === undefined) return undefined;
  const certs = pemCertificates(ca);
  const actual = certs[0] !== undefined ? fingerprintOf(certs[0]) : '';
  if (certs.length === 0 || (fingerprint !== undefined && actual !== fingerprint.toLowerCase())) {
    throw new CliError('CARAPACE_E_TLS_UNVERIFIED', `the CA pinned in ${cliConfigPath()} does not match its caFingerprint (${fingerprint ?? 'none'}): run \`carapace login\` again`);
  }
  return { ca: certs[0] as string, fingerprint: actual, source: `the config file ${cliConfigPath()}` }; // checked non-empty above
}
