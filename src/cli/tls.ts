/**
 * How the CLI trusts an https server: only through a pinned CA (the config file's, or
 * `--ca-file`), never the system's roots and never blindly. Here: the chain a server presents
 * (read without trusting it and without sending anything, for `carapace login` and for saying
 * why a verification failed), and the one-line refusal for each failed check.
 */
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { connect, type DetailedPeerCertificate } from 'node:tls';
import { fingerprintOf } from '../pki/x509.js';
import { CliError } from './client.js';

/** One certificate a server presented: PEM, sha256 of its DER (hex), and whether it is a CA that signed itself. */
export interface PresentedCert {
  pem: string;
  fingerprint: string;
  subject: string;
  selfSignedCa: boolean;
}

function toPem(der: Buffer): string {
  return `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;
}

/**
 * The certificates the server at `url` presents, leaf first. The connection trusts nothing and
 * is closed once the handshake is done: no request, no token is ever sent on it.
 */
export function presentedChain(url: URL, timeoutMs = 10_000): Promise<PresentedCert[]> {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port: Number(url.port || 443), rejectUnauthorized: false, ...(isIP(host) === 0 ? { servername: host } : {}), timeout: timeoutMs });
    sock.once('timeout', () => sock.destroy(new Error(`no TLS handshake within ${timeoutMs} ms`)));
    sock.once('error', reject);
    sock.once('secureConnect', () => {
      const out: PresentedCert[] = [];
      const seen = new Set<string>();
      let c: DetailedPeerCertificate | undefined = sock.getPeerCertificate(true);
      while (c?.raw && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        const x = new X509Certificate(c.raw);
        const pem = toPem(c.raw);
        out.push({ pem, fingerprint: fingerprintOf(pem), subject: x.subject.replace(/\n/g, ', '), selfSignedCa: x.ca && x.checkIssued(x) });
        c = c.issuerCertificate;
      }
      sock.destroy();
      resolve(out);
    });
  });
}

/** Node's certificate verification codes that mean "not signed by a CA we trust". */
const UNKNOWN_CA = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'INVALID_CA', 'CERT_REJECTED']);

/** The error object's code, or its cause's (undici and ws pass socket errors as they are, fetch wraps them). */
function codeOf(e: unknown): string {
  const o = e as { code?: unknown; cause?: { code?: unknown } } | undefined;
  return typeof o?.code === 'string' ? o.code : typeof o?.cause?.code === 'string' ? o.cause.code : '';
}

/**
 * The refusal for a transport error that is a failed TLS check, or undefined when `e` is not
 * one. For an unknown CA it looks at what the server presents to say whether it is another CA
 * (fingerprint mismatch) or no CA at all.
 */
export async function tlsFailure(e: unknown, base: string, pinned: { fingerprint: string; source: string }): Promise<CliError | undefined> {
  const code = codeOf(e);
  const msg = (e as Error | undefined)?.message ?? String(e);
  const refuse = (why: string): CliError => new CliError('CARAPACE_E_TLS_UNVERIFIED', `refusing ${base}: ${why}; nothing was sent`);
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return refuse(`host name not in the certificate (${msg.replace(/^Hostname\/IP does not match certificate's altnames: /, '')}); use an address the certificate names, or have the server add it (--advertise)`);
  if (code === 'CERT_HAS_EXPIRED') return refuse('the server certificate has expired');
  if (code === 'CERT_NOT_YET_VALID') return refuse('the server certificate is not valid yet (check the clocks)');
  if (code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER' || /wrong version number|packet length too long/i.test(msg)) return refuse('the server does not speak TLS (is it a plain-HTTP all-in-one? use http:// for loopback only)');
  if (!UNKNOWN_CA.has(code)) return undefined;
  const chain = await presentedChain(new URL(base)).catch(() => [] as PresentedCert[]);
  const cas = chain.filter((c) => c.selfSignedCa);
  if (cas.length > 0 && !cas.some((c) => c.fingerprint === pinned.fingerprint)) {
    return refuse(`CA fingerprint mismatch: the server presents a CA with sha256 ${cas.map((c) => c.fingerprint).join(', ')}, ${pinned.source} pins ${pinned.fingerprint} (another cluster, or someone in between)`);
  }
  return refuse(`unknown CA: the server certificate (${chain[0]?.subject ?? 'unknown subject'}) is not signed by the CA ${pinned.source} pins (sha256 ${pinned.fingerprint})`);
}
