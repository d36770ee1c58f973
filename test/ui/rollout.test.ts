/**
 * A service's rollout in the dashboard, in a real browser: Debian's Chromium (headless)
 * driven by playwright-core against a real all-in-one in this process (API, controller, host
 * agent, SQLite) running real runc containers from a real local registry. A 2-replica
 * host-tier service with a readiness probe has its env changed through the API: its details
 * show the rollout progressing (revision 2, fewer than 2 replicas updated,
 * NewReplicasRolling) and then complete, live from the services watch; the history lists
 * both revisions with the user who made them and what changed. A tenant-admin undoes to
 * revision 1 (after the confirmation): revision 3 with revision 1's template, and the API
 * agrees; an undo to a revision no longer kept shows CARAPACE_E_REVISION_NOT_FOUND; pause,
 * resume and restart act. A tenant viewer sees the state and history and no buttons, and
 * the API refuses its undo. The page's strict CSP holds throughout.
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
import type { Service } from '../../src/model/objects.js';
import type { RolloutReport } from '../../src/model/rollout.js';
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
const netPrefix = 'cur';
let dir: string;
let stateDir: string;
let registry: RunningRegistry;
let aio: RunningAllInOne;
let image = '';
const browsers: BrowserContext[] = [];
/** Script errors and CSP violations of every page (checked after each test). */
const pageErrors: string[] = [];
let adminToken = '';
let viewerToken = '';
const failedRequests: string[] = [];
/** How the dashboard names the tenant-admin in the history: its token's name when the viewer of the page may list it, else the audit actor id. */
let adminActor = '';
const savedConfigEnv = process.env['CARAPACE_CONFIG'];

const { api } = apiClient(() => aio);

/** Serves `$VERSION` on :8080 (the readiness probe's page). */
const WEB = 'mkdir -p /www && echo "$VERSION" > /www/index.html && exec httpd -f -p 8080 -h /www';

function web(version: string): object {
  return {
    apiVersion: 'carapace/v1',
    kind: 'Service',
    metadata: { name: 'web', tenant: 'acme' },
    spec: {
      image,
      isolation: 'host',
      replicas: 2,
      cpu: 0.05,
      memory: '32Mi',
      command: ['sh', '-c', WEB],
      env: { VERSION: version },
      ports: [{ containerPort: 8080 }],
      readinessProbe: { httpGet: { path: '/', port: 8080 }, periodSeconds: 1 },
    },
  };
}

const report = (): Promise<RolloutReport> => api<RolloutReport>('GET', '/v1/tenants/acme/services/web/rollout');

async function rolledOut(revision: number): Promise<RolloutReport> {
  return until(
    `acme/web rolled out at revision ${revision}`,
    async () => {
      const r = await report();
      return r.complete && r.revision === revision && r.readyReplicas === 2 ? r : undefined;
    },
    120_000,
  );
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-ui-rollout-'));
  stateDir = join(dir, 'state');
  process.env['CARAPACE_CONFIG'] = join(dir, 'cli-config.json'); // the first start saves the admin token there, not in the user's config
  registry = await startRegistry({ dir: join(dir, 'registry') });
  image = (await buildBusyboxImage({ registry: registry.address, repository: 'ui/busybox', tag: '1' })).reference;
  aio = await startAllInOne({ stateDir, port: await freePort(), logger, hostName: 'node-1', netPrefix, stopGraceMs: 2_000 });
  await api('PUT', '/v1/tenants/acme', { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: {} });
  adminToken = (await api<{ token: string }>('POST', '/v1/tokens', { name: 'acme admin', role: 'tenant-admin', tenant: 'acme' })).token;
  viewerToken = (await api<{ token: string }>('POST', '/v1/tokens', { name: 'acme viewer', role: 'tenant-viewer', tenant: 'acme' })).token;
  const me = await api<{ tokenId: string }>('GET', '/v1/whoami', undefined, adminToken);
  const listed = await api<{ items: { id: string; name: string }[] }>('GET', '/v1/tokens', undefined, adminToken);
  adminActor = listed.items.find((t) => t.id === me.tokenId)?.name ?? `token:${me.tokenId}`;
  // Made by the tenant-admin: revision 1's record names it.
  await api('PUT', '/v1/tenants/acme/services/web', web('v1'), adminToken);
  await rolledOut(1);
}, 240_000);

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

/** A browser of its own (fresh profile) for one user; confirmations are accepted and kept in `dialogs`. */
async function openBrowser(dialogs: string[] = []): Promise<Page> {
  const profile = await mkdtemp(join(dir, 'chromium-profile-'));
  const ctx = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, viewport: { width: 1280, height: 800 } });
  browsers.push(ctx);
  await ctx.addInitScript(() => {
    const seen: string[] = [];
    (window as unknown as { cspViolations: string[] }).cspViolations = seen; // read back by cspViolations()
    document.addEventListener('securitypolicyviolation', (e) => seen.push(`${e.effectiveDirective} ${e.blockedURI}`));
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // What the page asked for and did not get, for the message of a wait that times out.
  page.on('requestfailed', (r) => failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText ?? 'failed'}`));
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) pageErrors.push(m.text());
  });
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.accept();
  });
  return page;
}

const cspViolations = (page: Page): Promise<string[]> => page.evaluate(() => [...(window as unknown as { cspViolations: string[] }).cspViolations]);

/** Signs in and opens acme/web's details from the Workloads view. */
async function openService(page: Page, token: string): Promise<void> {
  await page.goto(`${aio.url}/ui/#/workloads`);
  await page.fill('#token', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('header.top', { timeout: 15_000 });
  await page.click('[data-open-service="acme/web"]', { timeout: 30_000 }).catch(async (e: unknown) => {
    throw new Error(`${String(e)}\nthe page showed:\n${await page.innerText('body').catch(() => '?')}\nrequests that failed:\n${failedRequests.join('\n')}`);
  });
  await page.waitForSelector('[data-details="acme/web"] [data-rollout="acme/web"]');
}

/** Every state the rollout section showed (revision:reason:updated:ready), recorded in the page as the DOM changes. */
async function recordStates(page: Page): Promise<void> {
  await page.evaluate(() => {
    const seen: string[] = [];
    (window as unknown as { rolloutStates: string[] }).rolloutStates = seen; // read back by states()
    const el = document.querySelector('[data-rollout]');
    if (!el) throw new Error('no rollout section');
    const take = (): void => {
      const s = `${el.getAttribute('data-revision') ?? ''}:${el.getAttribute('data-reason') ?? ''}:${el.getAttribute('data-updated') ?? ''}:${el.getAttribute('data-ready') ?? ''}`;
      if (seen[seen.length - 1] !== s) seen.push(s);
    };
    take();
    new MutationObserver(take).observe(el, { attributes: true });
  });
}
const states = (page: Page): Promise<string[]> => page.evaluate(() => [...(window as unknown as { rolloutStates: string[] }).rolloutStates]);

/** The history table's rows: revision, current, who, template cell. */
async function historyRows(page: Page): Promise<{ revision: string; current: string; who: string; template: string }[]> {
  return page.$$eval('[data-revisions] tr[data-revision]', (rows) =>
    rows.map((r) => ({
      revision: r.getAttribute('data-revision') ?? '',
      current: r.getAttribute('data-current') ?? '',
      who: r.querySelector('[data-changed-by]')?.textContent ?? '',
      template: r.querySelectorAll('td')[3]?.textContent ?? '',
    })),
  );
}

/** Waits until the history table lists exactly `revisions` (newest first). */
async function historyIs(page: Page, revisions: string[]): Promise<{ revision: string; current: string; who: string; template: string }[]> {
  return until(
    `the history to list ${revisions.join(', ')}`,
    async () => {
      const rows = await historyRows(page);
      return rows.map((r) => r.revision).join(',') === revisions.join(',') ? rows : undefined;
    },
    30_000,
  );
}

const complete = (revision: number): string => `[data-rollout="acme/web"][data-revision="${revision}"][data-reason="RolloutComplete"][data-updated="2"][data-ready="2"]`;

describe('rollouts in the dashboard', () => {
  it('shows a rollout progressing and complete, its history with who, and undoes to a chosen revision', async () => {
    const dialogs: string[] = [];
    const page = await openBrowser(dialogs);
    await openService(page, adminToken);
    await page.waitForSelector(complete(1));
    await historyIs(page, ['1']);
    await recordStates(page);

    // The env changes through the API; the page follows the rollout by itself.
    await api('PUT', '/v1/tenants/acme/services/web', web('v2'), adminToken);
    await page.waitForSelector(complete(2), { timeout: 120_000 });
    const seen = await states(page);
    // Seen in between: revision 2 rolling with fewer than 2 replicas made from it.
    expect(seen.some((s) => /^2:NewReplicasRolling:[01]:/.test(s)), seen.join(' ')).toBe(true);
    expect(seen[seen.length - 1]).toBe('2:RolloutComplete:2:2');
    expect(await page.textContent('[data-condition-message]')).toMatch(/\S/);

    const rows = await historyIs(page, ['2', '1']);
    expect(rows.map((r) => [r.revision, r.current, r.who])).toEqual([
      ['2', 'true', adminActor],
      ['1', 'false', adminActor],
    ]);
    expect(rows[0]?.template).toContain('env ~VERSION');
    await mkdir(SHOTS, { recursive: true });
    await page.screenshot({ path: join(SHOTS, 'rollout.png') });

    // Undo to revision 1, confirmed: revision 3 with revision 1's template.
    expect(await page.locator('[data-undo-to="2"]').count()).toBe(0); // the current revision offers no undo
    await page.click('[data-undo-to="1"]');
    await page.waitForSelector(complete(3), { timeout: 120_000 });
    expect(dialogs.at(-1)).toMatch(/^Undo acme\/web to revision 1\?/);
    const after = await historyIs(page, ['3', '2']);
    expect(after[0]).toMatchObject({ revision: '3', current: 'true', who: adminActor });
    expect(after[0]?.template).toContain('env ~VERSION');
    const svc = await api<Service>('GET', '/v1/tenants/acme/services/web');
    expect(svc.spec.env).toEqual({ VERSION: 'v1' });
    const r3 = await report();
    expect(r3.revision).toBe(3);
    expect(r3.history.map((h) => h.revision)).toEqual([2, 3]);
    expect(r3.history[1]).toMatchObject({ revision: 3, current: true, action: 'service.rollout.undo', template: { env: { VERSION: 'v1' } } });

    // Revision 1 was taken over by 3: an undo to it is refused, with its code on the page.
    await page.fill('[data-undo-revision]', '1');
    await page.click('button[data-rollout-op="undo"]');
    await until('the refusal on the page', async () => ((await page.textContent('[data-rollout-error]').catch(() => null))?.startsWith('CARAPACE_E_REVISION_NOT_FOUND') ? true : undefined), 15_000);

    // Pause, resume, restart.
    await page.click('button[data-rollout-op="pause"]');
    await page.waitForSelector('[data-rollout="acme/web"][data-reason="Paused"]', { timeout: 30_000 });
    expect((await api<Service>('GET', '/v1/tenants/acme/services/web')).spec.rollout?.paused).toBe(true);
    await page.click('button[data-rollout-op="resume"]');
    await page.waitForSelector(complete(3), { timeout: 30_000 });
    await page.click('button[data-rollout-op="restart"]');
    await page.waitForSelector(complete(4), { timeout: 120_000 });
    const r4 = await report();
    expect(r4.history.at(-1)).toMatchObject({ revision: 4, cause: 'restart', current: true });
    expect((await historyIs(page, ['4', '3', '2']))[0]?.template).toContain('restart');
    expect(await page.locator('[data-rollout-error]').count()).toBe(0); // cleared by the next operation
    expect(dialogs).toHaveLength(5);
    expect(await cspViolations(page)).toEqual([]);
  }, 400_000);

  it('shows a viewer the state and history without buttons; the API refuses its undo', async () => {
    const page = await openBrowser();
    await openService(page, viewerToken);
    // Whatever the first case left (it ends complete at revision 4).
    const now = await rolledOut((await report()).revision ?? 0);
    await page.waitForSelector(complete(now.revision ?? 0));
    const rows = await historyIs(page, now.history.map((h) => String(h.revision)).reverse());
    expect(rows.every((r) => r.who !== '' && r.who !== 'unknown')).toBe(true);
    expect(await page.locator('[data-undo-to], [data-rollout-op], [data-undo-revision]').count()).toBe(0);
    const refused = await fetch(`${aio.url}/v1/tenants/acme/services/web/rollout/undo?toRevision=2`, { method: 'POST', headers: { authorization: `Bearer ${viewerToken}` } });
    expect(refused.status).toBe(403);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('CARAPACE_E_FORBIDDEN');
    expect(await cspViolations(page)).toEqual([]);
  }, 60_000);
});
