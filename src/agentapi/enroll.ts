/**
 * The agent's side of joining a cluster: fetch the CA over TLS without trusting it, check it
 * against the fingerprint in the join token (so a man in the middle is refused before any
 * secret is sent), send the token and a CSR (the private key never leaves the host), and keep
 * the certificate in STATE_DIR/pki (key 0600). Later starts reuse it; it is renewed over the
 * authenticated channel when a third of its life is left.
 */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Agent, request } from 'undici';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import { parseJoinToken } from '../pki/agents.js';
import { certIdentity, fingerprintOf, newCsr } from '../pki/x509.js';
import type { RemoteStore } from './remote-store.js';

/** What an agent keeps to talk to its cluster. */
export interface AgentCredentials {
  server: string;
  ca: string;
  cert: string;
  key: string;
}

const dirOf = (stateDir: string): string => join(stateDir, 'pki');

/** The credentials saved by an earlier join, or undefined. */
export async function loadCredentials(stateDir: string): Promise<AgentCredentials | undefined> {
  try {
    const d = dirOf(stateDir);
    const [server, ca, cert, key] = await Promise.all(['server', 'ca.crt', 'agent.crt', 'agent.key'].map((f) => readFile(join(d, f), 'utf8')));
    return { server: (server ?? '').trim(), ca: ca ?? '', cert: cert ?? '', key: key ?? '' };
  } catch {
    return undefined;
  }
}

async function save(stateDir: string, c: AgentCredentials): Promise<void> {
  const d = dirOf(stateDir);
  await mkdir(d, { recursive: true, mode: 0o700 });
  await writeFile(join(d, 'agent.key'), c.key, { mode: 0o600 });
  await chmod(join(d, 'agent.key'), 0o600);
  await writeFile(join(d, 'agent.crt'), c.cert);
  await writeFile(join(d, 'ca.crt'), c.ca);
  await writeFile(join(d, 'server'), `${c.server}\n`);
}

function apiError(status: number, text: string): CarapaceError {
  const e = (JSON.parse(text || '{}') as { error?: { code?: string; message?: string } }).error;
  const code = e?.code === 'CARAPACE_E_BAD_JOIN_TOKEN' || e?.code === 'CARAPACE_E_FORBIDDEN' ? e.code : 'CARAPACE_E_UNAVAILABLE';
  return new CarapaceError(code, `the server refused to let this host join (${status}): ${e?.message ?? text.slice(0, 200)}`);
}

/** Joins the cluster at `server` (`https://HOST:PORT`) as `host` with a join token. */
export async function joinCluster(o: { server: string; token: string; host: string; stateDir: string }): Promise<AgentCredentials> {
  const t = parseJoinToken(o.token);
  const server = o.server.replace(/\/+$/, '');
  if (!/^https:\/\//.test(server)) throw new CarapaceError('CARAPACE_E_BAD_QUERY', '--join needs an https:// address: agents never talk to the control plane in plain text', [{ path: '--join', message: 'must start with https://' }]);
  // 1. The CA, unverified: checked against the token's fingerprint before it is used.
  const blind = new Agent({ connect: { rejectUnauthorized: false } });
  let ca: string;
  try {
    const r = await request(`${server}/agent/v1/ca`, { dispatcher: blind, headersTimeout: 10_000, bodyTimeout: 10_000 });
    ca = await r.body.text();
  } catch (e) {
    throw new CarapaceError('CARAPACE_E_SERVER_UNREACHABLE', `cannot reach ${server}: ${(e as Error).message}`);
  } finally {
    await blind.close();
  }
  if (!ca.includes('BEGIN CERTIFICATE') || fingerprintOf(ca) !== t.caFingerprint) {
    throw new CarapaceError('CARAPACE_E_BAD_JOIN_TOKEN', `the server at ${server} does not present this cluster's CA (its fingerprint differs from the join token's): refusing to join`);
  }
  // 2. Join over a connection that trusts only that CA.
  const { keyPem, csrPem } = await newCsr(`host:${o.host}`);
  const pinned = new Agent({ connect: { ca, rejectUnauthorized: true } });
  try {
    const r = await request(`${server}/agent/v1/join`, { method: 'POST', dispatcher: pinned, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tokenId: t.id, secret: t.secret, host: o.host, csr: csrPem }), headersTimeout: 15_000, bodyTimeout: 15_000 });
    const text = await r.body.text();
    if (r.statusCode >= 400) throw apiError(r.statusCode, text);
    const j = JSON.parse(text) as { certificate: string; ca: string };
    const creds: AgentCredentials = { server, ca, cert: j.certificate, key: keyPem };
    await save(o.stateDir, creds);
    return creds;
  } finally {
    await pinned.close();
  }
}

/** Renews the certificate when a third of its life is left; checks hourly (`checkMs`) until `signal` aborts. */
export async function keepCertificateFresh(o: { stateDir: string; store: RemoteStore; creds: AgentCredentials; logger: Logger; signal: AbortSignal; checkMs?: number }): Promise<void> {
  let creds = o.creds;
  while (!o.signal.aborted) {
    const { notAfter } = certIdentity(creds.cert);
    const left = Date.parse(notAfter) - Date.now();
    if (left < (30 * 86_400_000) / 3) {
      try {
        creds = await renew(creds);
        await save(o.stateDir, creds);
        o.store.updateCredentials(creds.cert, creds.key);
        o.logger.info({ notAfter: certIdentity(creds.cert).notAfter }, 'agent certificate renewed');
      } catch (err) {
        o.logger.warn({ err }, 'certificate renewal failed; retrying');
      }
    }
    await delay(o.checkMs ?? 3_600_000, undefined, { signal: o.signal }).catch(() => undefined); // aborted: the loop ends
  }
}

/** Asks for a new certificate with a new key, authenticated by the current one. */
export async function renew(creds: AgentCredentials): Promise<AgentCredentials> {
  const { commonName } = certIdentity(creds.cert);
  const { keyPem, csrPem } = await newCsr(commonName);
  const d = new Agent({ connect: { ca: creds.ca, cert: creds.cert, key: creds.key, rejectUnauthorized: true } });
  try {
    const r = await request(`${creds.server}/agent/v1/renew`, { method: 'POST', dispatcher: d, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ csr: csrPem }) });
    const text = await r.body.text();
    if (r.statusCode >= 400) throw apiError(r.statusCode, text);
    return { ...creds, cert: (JSON.parse(text) as { certificate: string }).certificate, key: keyPem };
  } finally {
    await d.close();
  }
}
