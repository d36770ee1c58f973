/**
 * `carapace login SERVER`: pins the CA of an https server in the CLI config, with the token to
 * use there. The CA is taken from the chain the server presents only when one of its
 * certificates has the fingerprint the user gives (`--ca-fingerprint`, as `carapace server`
 * printed it), or from a PEM file (`--ca-file`); then the server's certificate is verified
 * against it (chain, host name, validity) before the token is sent to check it. Nothing is
 * trusted on first sight.
 */
import { CarapaceError } from '../model/errors.js';
import { normalFingerprint } from '../pki/serving.js';
import { ApiClient, CliError, pinFromFile } from './client.js';
import { readCliConfig, writeCliConfig, type CliConfig } from '../server/cli-config.js';
import { presentedChain, type PresentedCert } from './tls.js';

export interface LoginOptions {
  server: string;
  caFingerprint?: string;
  /** --ca-file or CARAPACE_CA_FILE, with the name it came by (for messages). */
  caFile?: { file: string; source: string };
  token?: string;
}

/** What login saved, for the one line it prints. */
export interface LoginResult {
  path: string;
  server: string;
  caFingerprint?: string;
  who?: { name: string; role: string; tenant?: string };
}

/** `https://` unless a scheme is given; no trailing slash. */
export function loginUrl(server: string): string {
  const s = server.trim().replace(/\/+$/, '');
  return /^https?:\/\//i.test(s) ? s : `https://${s}`;
}

const list = (chain: PresentedCert[]): string => chain.map((c) => `${c.fingerprint} (${c.subject}${c.selfSignedCa ? ', CA' : ''})`).join('; ');

/** Runs the login; throws CliError with a stable code when it cannot pin or verify. */
export async function login(o: LoginOptions): Promise<LoginResult> {
  const server = loginUrl(o.server);
  const url = new URL(server);
  const cfg = readCliConfig();
  const token = o.token ?? (cfg.server === server ? cfg.token : undefined);
  let saved: CliConfig;
  let client: ApiClient;
  if (url.protocol === 'http:') {
    if (o.caFingerprint !== undefined) throw new CliError('CARAPACE_E_USAGE', `--ca-fingerprint needs an https:// server, got ${server}`, [{ path: '--ca-fingerprint', message: 'only for https' }]);
    client = new ApiClient(server, token, undefined); // warns on stderr when the address is not loopback
    saved = { server, ...(token !== undefined ? { token } : {}) };
  } else {
    let ca: string;
    let fingerprint: string;
    if (o.caFile) {
      const pin = pinFromFile(o.caFile.file, o.caFile.source);
      ca = pin.ca;
      fingerprint = pin.fingerprint.split(', ')[0] ?? '';
    } else {
      if (o.caFingerprint === undefined) {
        const chain = await presentedChain(url).catch((e: unknown) => {
          throw new CliError('CARAPACE_E_SERVER_UNREACHABLE', `cannot reach ${server}: ${(e as Error).message}`);
        });
        throw new CliError('CARAPACE_E_TLS_NOT_PINNED', `give --ca-fingerprint SHA256 (printed by \`carapace server\` at start) or --ca-file: the server presents ${list(chain)}; compare it with the fingerprint its operator printed, never trust it on sight`);
      }
      const want = normalFingerprint(o.caFingerprint);
      if (want === undefined) throw new CliError('CARAPACE_E_USAGE', `--ca-fingerprint must be a sha256 fingerprint (64 hex digits, colons allowed), got "${o.caFingerprint}"`, [{ path: '--ca-fingerprint', message: 'not 64 hex digits' }]);
      const chain = await presentedChain(url).catch((e: unknown) => {
        throw new CliError('CARAPACE_E_SERVER_UNREACHABLE', `cannot reach ${server}: ${(e as Error).message}`);
      });
      const match = chain.find((c) => c.fingerprint === want);
      if (!match) throw new CliError('CARAPACE_E_TLS_UNVERIFIED', `refusing ${server}: CA fingerprint mismatch: no certificate it presents has sha256 ${want} (it presents ${list(chain)}): another cluster, or someone in between; nothing was sent`);
      ca = match.pem;
      fingerprint = want;
    }
    // Verified like every later command: chain to this CA, host name, validity.
    client = new ApiClient(server, token, undefined, { ca, source: o.caFile ? `${o.caFile.source} ${o.caFile.file}` : '--ca-fingerprint' });
    saved = { server, ...(token !== undefined ? { token } : {}), caFingerprint: fingerprint, ca };
  }
  await client.call('GET', '/healthz');
  let who: LoginResult['who'];
  if (token !== undefined) {
    who = await client.call<{ name: string; role: string; tenant?: string }>('GET', '/v1/whoami').catch((e: unknown) => {
      if (e instanceof CliError || e instanceof CarapaceError) throw new CliError(e.code, `${server} does not accept this token: ${e.message}`);
      throw e;
    });
  }
  const path = await writeCliConfig(saved);
  return { path, server, ...(saved.caFingerprint !== undefined ? { caFingerprint: saved.caFingerprint } : {}), ...(who ? { who } : {}) };
}
