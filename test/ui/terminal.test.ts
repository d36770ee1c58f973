/**
 * The dashboard's terminal in a real browser: Debian's Chromium (headless) driven by
 * playwright-core against a real all-in-one in this process (API, controller, host agent,
 * SQLite) running a real runc container from a real local registry. A tenant-admin opens a
 * terminal on a host-tier instance: typed keys reach a shell (`echo hi`), the window's size
 * reaches the container (`stty size` before and after a resize), Ctrl-C interrupts a running
 * `sleep 100`, `exit 3` shows exit code 3, the session is audited with its command line. The
 * page's strict CSP holds (xterm.js's style elements carry the page's nonce; no violation is
 * reported) and the token never appears in the WebSocket's URL. A tenant viewer is offered
 * no terminal and the API refuses it; a forged token in the subprotocol is refused; a refusal
 * after the handshake is shown in the terminal.
 *
 * Needs `npm run build` (the dashboard is served from dist/ui) and /usr/bin/chromium.
 */
/// <reference lib="dom" />
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startAllInOne, type RunningAllInOne } from '../../src/allinone/allinone.js';
import { buildBusyboxImage, freePort, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Instance } from '../../src/model/objects.js';
import { createRuncDriver } from '../../src/runtime/index.js';
import { createTenantNetworking } from '../../src/network/tenant-networking.js';
import { until } from '../../src/proc/until.js';
import { apiClient } from '../api-client.js';

const ROOT = join(import.meta.dirname, '..', '..');
// The README's screenshot is refreshed on request (CARAPACE_UPDATE_SCREENSHOTS=1), as in dashboard.test.ts.
const SHOTS = process.env['CARAPACE_UPDATE_SCREENSHOTS'] === '1' ? join(ROOT, 'docs', 'screenshots') : join(tmpdir(), 'carapace-screenshots');
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

if (!existsSync(join(ROOT, 'dist', 'ui', 'index.html'))) throw new Error('dist/ui is missing: run npm run build first');
if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/install.sh does)`);

const logger = pino({ level: process.env['CARAPACE_TEST_LOG'] ?? 'silent' });
const netPrefix = 'cte';
let dir: string;
let stateDir: string;
let registry: RunningRegistry;
let aio: RunningAllInOne;
const browsers: BrowserContext[] = [];
/** Script errors and CSP violations of every page (checked after each test), and the URLs of its WebSockets. */
const pageErrors: string[] = [];
const socketUrls: string[] = [];
let adminToken = '';
let viewerToken = '';
const savedConfigEnv = process.env['CARAPACE_CONFIG'];

const { api } = apiClient(() => aio);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-ui-term-'));
  stateDir = join(dir, 'state');
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json'); // the first start saves the admin token there, not in the user's config
  registry = await startRegistry({ dir: join(dir, 'registry') });
  const image = (await buildBusyboxImage({ registry: registry.address, repository: 'ui/busybox', tag: '1' })).reference;
  aio = await startAllInOne({ stateDir, port: await freePort(), logger, hostName: 'node-1', netPrefix, stopGraceMs: 2_000 });
  await api('PUT', '/v1/tenants/acme', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} });
  await api('PUT', '/v1/tenants/acme/services/shell', {
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name: 'shell', tenant: 'acme' },
    spec: { image, isolation: 'host', cpu: 0.1, memory: '32Mi', command: ['sleep', '3600'] },
  });
  adminToken = (await api<{ token: string }>('POST', '/v1/tokens', { name: 'acme admin', role: 'tenant-admin', tenant: 'acme' })).token;
  viewerToken = (await api<{ token: string }>('POST', '/v1/tokens', { name: 'acme viewer', role: 'tenant-viewer', tenant: 'acme' })).token;
  await until('acme/shell-0 Running', async () => ((await api<Instance>('GET', '/v1/tenants/acme/instances/shell-0')).status.phase === 'Running' ? true : undefined), 120_000);
}, 180_000);

afterEach(() => {
  expect(pageErrors.splice(0)).toEqual([]);
});

afterAll(async () => {
  for (const b of browsers.splice(0)) await b.close().catch(() => undefined);
  await aio?.stop();
  const d = createRuncDriver({ stateDir: join(stateDir, 'runtime', 'runc'), logger });
  for (const c of await d.recover().catch(() => [])) {
    await d.stop(c.id, 0).catch(() => undefined);
    await d.destroy(c.id).catch(() => undefined);
  }
  await createTenantNetworking({ stateDir: join(stateDir, 'network'), logger, prefix: netPrefix }).removeAll().catch(() => undefined);
  await registry?.stop();
  await rm(dir, { recursive: true, force: true });
  if (savedConfigEnv === undefined) delete process.env['CARAPACE_CONFIG'];
  else process.env['CARAPACE_CONFIG'] = savedConfigEnv;
}, 120_000);

/** A browser of its own (fresh profile) for one user. */
async function openBrowser(): Promise<Page> {
  const profile = await mkdtemp(join(dir, 'chromium-profile-'));
  const ctx = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, viewport: { width: 1280, height: 800 } });
  browsers.push(ctx);
  // Every CSP violation the page reports (the console may word them differently).
  await ctx.addInitScript(() => {
    const seen: string[] = [];
    (window as unknown as { cspViolations: string[] }).cspViolations = seen; // read back by cspViolations()
    document.addEventListener('securitypolicyviolation', (e) => seen.push(`${e.effectiveDirective} ${e.blockedURI}`));
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // Chromium reports a blocked style or script on the console.
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) pageErrors.push(m.text());
  });
  page.on('websocket', (ws) => socketUrls.push(ws.url()));
  return page;
}

async function signIn(page: Page, token: string): Promise<void> {
  await page.goto(`${aio.url}/ui/`);
  await page.fill('#token', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('header.top', { timeout: 15_000 });
}

/** Opens the instance's details from the topology. */
async function openInstance(page: Page, key: string): Promise<void> {
  await page.click(`[data-instance="${key}"][data-phase="Running"]`);
  await page.waitForSelector(`[data-details="${key}"]`);
}

/** The terminal's visible lines, trimmed at the end (xterm.js renders rows as DOM text; spaces may be non-breaking). */
async function screen(page: Page): Promise<string[]> {
  const text = await page.locator('.terminal-box .xterm-rows').innerText();
  return text.split('\n').map((l) => l.replace(/\u00a0/g, ' ').trimEnd());
}

/** Types `line` and Enter, again every 1.5 s, until a line of the screen is exactly `expected`; 30 s at most. */
async function askUntil(page: Page, line: string, expected: string, before?: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    // Keys typed before the shell set up its terminal may be flushed (as for a user typing before the prompt).
    await before?.();
    await page.keyboard.type(line);
    await page.keyboard.press('Enter');
    const seen = await until(`"${expected}" on the terminal`, async () => ((await screen(page)).includes(expected) ? true : undefined), 1_500).catch(() => false);
    if (seen) return;
    if (Date.now() > deadline) throw new Error(`the terminal never showed a line ${JSON.stringify(expected)}; it showed:\n${(await screen(page)).join('\n')}`);
  }
}

/** The CSP violations the page reported so far. */
const cspViolations = (page: Page): Promise<string[]> => page.evaluate(() => [...(window as unknown as { cspViolations: string[] }).cspViolations]);

const size = async (page: Page): Promise<{ cols: number; rows: number }> => {
  const s = (await page.getAttribute('[data-terminal]', 'data-size')) ?? '';
  const [cols, rows] = s.split('x').map(Number);
  return { cols: cols ?? 0, rows: rows ?? 0 };
};

/** Opens the exec WebSocket from the page as a browser would, with `token` as the subprotocol; the answered protocol and the first frame. */
function rawSession(page: Page, token: string): Promise<{ protocol: string; channel: number; text: string }> {
  return page.evaluate(async (t) => {
    const b64 = btoa(String.fromCharCode(...new TextEncoder().encode(t)))
      .replace(/\+/g, '-')
      .replace(/\//g, '_')
      .replace(/=+$/, '');
    const ws = new WebSocket(`ws://${location.host}/v1/tenants/acme/instances/shell-0/exec?command=sh&tty=true&stdin=true`, ['v1.exec.carapace.dev', `base64url.bearer.authorization.carapace.dev.${b64}`]);
    ws.binaryType = 'arraybuffer';
    return new Promise<{ protocol: string; channel: number; text: string }>((resolve, reject) => {
      ws.onmessage = (m: MessageEvent<ArrayBuffer>) => {
        const f = new Uint8Array(m.data);
        resolve({ protocol: ws.protocol, channel: f[0] ?? -1, text: new TextDecoder().decode(f.subarray(1)) });
        ws.close();
      };
      ws.onclose = (e) => reject(new Error(`closed (${e.code}) before any frame`));
    });
  }, token);
}

describe('the terminal in the dashboard', () => {
  it('runs a shell in a host-tier container: typing, resize, Ctrl-C, exit code, audit', async () => {
    const page = await openBrowser();
    await signIn(page, adminToken);
    await openInstance(page, 'acme/shell-0');
    await page.click('[data-open-terminal]');
    await page.waitForSelector('[data-terminal-status="open"]', { timeout: 20_000 });
    await page.click('.terminal-box');

    await askUntil(page, 'echo hi', 'hi');
    // xterm.js's own style elements carry the page's nonce (the CSP allows no other inline style).
    const styles = await page.evaluate(() => [...document.querySelectorAll('.terminal-box style')].map((e) => (e as HTMLStyleElement).nonce ?? ''));
    expect(styles.length).toBeGreaterThan(0);
    expect(styles.every((n) => n.length >= 16)).toBe(true);

    // The terminal's size is the container's, and follows the window.
    const first = await size(page);
    expect(first.cols).toBeGreaterThan(20);
    await askUntil(page, 'stty size', `${first.rows} ${first.cols}`);
    await page.setViewportSize({ width: 900, height: 560 });
    await until('the terminal to fit the smaller window', async () => ((await size(page)).cols < first.cols ? true : undefined));
    const second = await size(page);
    expect(second.rows).toBeLessThan(first.rows);
    await askUntil(page, 'stty size', `${second.rows} ${second.cols}`);

    // Ctrl-C reaches sleep (the quotes keep the markers out of the echo of the typed line).
    await page.keyboard.type("clear; echo sl''eeping; sleep 100; echo sl''ept");
    await page.keyboard.press('Enter');
    await until('sleeping', async () => ((await screen(page)).includes('sleeping') ? true : undefined), 15_000);
    const interrupted = Date.now();
    // Again until it shows: 'sleeping' shows before the shell has made sleep the terminal's
    // foreground process, and an interrupt flushes the line typed with it.
    await askUntil(page, "echo af''ter", 'after', () => page.keyboard.press('Control+c'));
    expect(Date.now() - interrupted).toBeLessThan(60_000);
    expect(await screen(page)).not.toContain('slept');

    await page.keyboard.type('exit 3');
    await page.keyboard.press('Enter');
    await page.waitForSelector('[data-terminal-status="ended"]', { timeout: 15_000 });
    expect(await page.textContent('[data-terminal-status]')).toBe('exited with code 3');
    // xterm.js renders writes at the next animation frame: the status may show first.
    await until('the exit code on the terminal', async () => ((await screen(page)).includes('[exited with code 3]') ? true : undefined), 10_000);
    await mkdir(SHOTS, { recursive: true });
    await page.screenshot({ path: join(SHOTS, 'terminal.png') });

    // The policy held through the session; and it is enforced: a style element without the
    // nonce (made past the page's createElement) is refused and reported.
    expect(await cspViolations(page)).toEqual([]);
    await page.evaluate(() => {
      const el = document.createElementNS('http://www.w3.org/1999/xhtml', 'style');
      el.textContent = 'body { outline: 1px solid red; }';
      document.head.appendChild(el);
    });
    await until('the control violation to be reported', async () => ((await cspViolations(page)).length > 0 ? true : undefined), 5_000);
    expect(await cspViolations(page)).toEqual([expect.stringMatching(/^style-src-elem inline$/)]);
    pageErrors.splice(0); // the control's console line

    // The token went as a subprotocol, never in the URL.
    expect(socketUrls.length).toBeGreaterThan(0);
    for (const u of socketUrls) expect(u).not.toContain(adminToken.slice(-12));
    // Audited as the CLI's exec: the command line, by whom; never the bytes typed.
    const audit = await (await fetch(`${aio.url}/v1/audit/records?format=jsonl`, { headers: { authorization: `Bearer ${aio.adminToken}` } })).text();
    const execs = audit
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { action: string; outcome: string; target: { name: string }; detail?: { command?: string[]; tty?: boolean } }) // one record per line
      .filter((r) => r.action === 'instance.exec' && r.outcome === 'success');
    expect(execs.map((r) => [r.target.name, r.detail?.command, r.detail?.tty])).toEqual([['shell-0', ['sh'], true]]);
    expect(audit).not.toContain('sleeping');

    // A refusal after the handshake is shown in the terminal: a command past the API's limits.
    await page.fill('input[aria-label="Command to run"]', Array.from({ length: 300 }, () => 'x').join(' '));
    await page.click('.terminal-command button[type=submit]');
    await until('the refusal in the terminal', async () => ((await page.textContent('[data-terminal-status]'))?.startsWith('CARAPACE_E_BAD_QUERY') ? true : undefined), 15_000);
    await until('the refusal on the terminal', async () => ((await screen(page)).join('\n').includes('CARAPACE_E_BAD_QUERY') ? true : undefined), 10_000);
    await page.click('button[aria-label="Close the terminal"]');
    await page.waitForSelector('[data-terminal]', { state: 'detached' });
  }, 180_000);

  it('offers a viewer no terminal, and the API refuses a viewer and a forged token', async () => {
    const page = await openBrowser();
    await signIn(page, viewerToken);
    await openInstance(page, 'acme/shell-0');
    await page.waitForSelector('[data-details="acme/shell-0"] .facts');
    expect(await page.locator('[data-open-terminal]').count()).toBe(0);

    const asViewer = await rawSession(page, viewerToken);
    expect(asViewer).toMatchObject({ protocol: 'v1.exec.carapace.dev', channel: 3 });
    expect(JSON.parse(asViewer.text)).toMatchObject({ error: { code: 'CARAPACE_E_FORBIDDEN' } });

    const forged = await rawSession(page, `${adminToken.slice(0, -6)}AAAAAA`);
    expect(forged).toMatchObject({ protocol: 'v1.exec.carapace.dev', channel: 3 });
    expect(JSON.parse(forged.text)).toMatchObject({ error: { code: 'CARAPACE_E_UNAUTHENTICATED' } });
  }, 60_000);
});
