/**
 * The dashboard over HTTPS, in a real browser: Debian's Chromium (headless) driven by
 * playwright-core against a real `carapace server` process, whose API (and dashboard) is HTTPS
 * with a certificate from the cluster CA. Chromium does not know that CA; instead of turning
 * certificate checks off (ignoreHTTPSErrors) it is told to accept exactly this server's key:
 * `--ignore-certificate-errors-spki-list` with the base64 sha256 of the leaf's public key,
 * read from the server only after the leaf was verified against the CA in STATE_DIR/api-ca.crt.
 * The page signs in, follows live changes (its event streams are fetch() over HTTPS), opens a
 * WebSocket to the exec endpoint the way the terminal does (wss: from an https page), sets no
 * cookie, and asks for nothing over plain HTTP.
 *
 * Needs `npm run build` (the dashboard is served from dist/ui) and /usr/bin/chromium.
 */
/// <reference lib="dom" />
import { createHash, X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:tls';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiFetch, freePort, Server, tempDir, tokens, ROOT } from '../e2e/helpers.js';
import { bearerProtocol, EXEC_PROTOCOL } from '../../src/exec/frames.js';

const CHROMIUM = '/usr/bin/chromium';
if (!existsSync(join(ROOT, 'dist', 'ui', 'index.html'))) throw new Error('dist/ui is missing: run npm run build first');
if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/install.sh does)`);

let tmp: { dir: string; cleanup: () => Promise<void> };
let server: Server;
let token: string;
let ctx: BrowserContext | undefined;

/** The leaf the server presents, verified against `ca` (chain, host name 127.0.0.1, validity) by the handshake itself. */
function verifiedLeaf(port: number, ca: string): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port, ca, rejectUnauthorized: true });
    sock.once('error', reject);
    sock.once('secureConnect', () => {
      const raw = sock.getPeerCertificate().raw;
      sock.destroy();
      resolve(new X509Certificate(raw));
    });
  });
}

beforeAll(async () => {
  tmp = await tempDir('carapace-ui-https-');
  server = new Server(join(tmp.dir, 'server'), await freePort(), ['--no-agent-api'], {}, 'server');
  await server.start();
  token = tokens.get(server.url) ?? '';
}, 60_000);

afterAll(async () => {
  await ctx?.close().catch(() => undefined);
  await server?.stop();
  await tmp?.cleanup();
});

const put = async (path: string, body: object): Promise<number> =>
  (await apiFetch(`${server.url}${path}`, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })).status;

describe('the dashboard over HTTPS', () => {
  it('signs in, follows live changes, opens wss: sessions, sets no cookie and asks for nothing over http', async () => {
    expect(server.url).toMatch(/^https:/);
    const leaf = await verifiedLeaf(server.port, await readFile(join(server.stateDir, 'api-ca.crt'), 'utf8'));
    const spki = createHash('sha256').update(leaf.publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
    ctx = await chromium.launchPersistentContext(join(tmp.dir, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      // The one key accepted without a known CA: this server's (never ignoreHTTPSErrors).
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--ignore-certificate-errors-spki-list=${spki}`],
      viewport: { width: 1280, height: 800 },
    });
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    const errors: string[] = [];
    const requested: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('request', (r) => requested.push(r.url()));
    page.on('requestfailed', (r) => errors.push(`${r.url()}: ${r.failure()?.errorText ?? 'failed'}`));

    await page.goto(`${server.url}/ui/`);
    expect(await page.evaluate(() => window.location.protocol)).toBe('https:');
    await page.fill('#token', token);
    await page.click('button[type=submit]');
    await page.waitForSelector('header.top', { timeout: 15_000 });
    expect(await page.textContent('.who')).toContain('cluster-admin');
    // The event streams are up (over HTTPS), and a change made elsewhere shows without a reload.
    await page.waitForSelector('[data-live="live"]', { timeout: 15_000 });
    await page.evaluate(() => (window.location.hash = '#/tenants'));
    expect(await put('/v1/tenants/late', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'late' } })).toBeLessThan(300);
    await page.waitForSelector('[data-tenant="late"]', { timeout: 15_000 });

    // The terminal's WebSocket URL, built the same way (ui/src/terminal.ts): wss: from an https
    // page; the handshake completes over TLS and the refusal comes in the session.
    const ws = await page.evaluate(
      async ({ protocols }) => {
        const url = new URL('/v1/tenants/late/instances/none/exec?command=true', window.location.href);
        url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
        return new Promise<{ url: string; opened: boolean; code: number }>((resolve) => {
          const s = new WebSocket(url, protocols);
          let opened = false;
          s.onopen = () => (opened = true);
          s.onclose = (e) => resolve({ url: url.href, opened, code: e.code });
        });
      },
      { protocols: [EXEC_PROTOCOL, bearerProtocol(token)] },
    );
    expect(ws.url).toMatch(/^wss:\/\/127\.0\.0\.1:\d+\//);
    expect(ws.opened).toBe(true);

    // No cookie at all (the token lives in sessionStorage), so none needs the Secure flag; and
    // every request of the page went over HTTPS (or is a data: or blob: URL of the page itself).
    expect(await ctx.cookies()).toEqual([]);
    expect(requested.filter((u) => !/^(https|wss|data|blob):/.test(u))).toEqual([]);
    expect(requested.some((u) => u.startsWith(`${server.url}/v1/`))).toBe(true);
    expect(errors.filter((e) => !/ERR_ABORTED/.test(e))).toEqual([]);
  }, 120_000);
});
