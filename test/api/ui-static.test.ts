/**
 * What the API server adds for the dashboard: the built files at /ui (public, strict CSP,
 * nothing outside the UI directory, a clear 404 when it is not built), `GET /v1/whoami` for
 * every role, and a shutdown that does not wait for open event streams (a connected dashboard
 * must not hold `carapace up` open after SIGTERM).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { pino } from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApi, type ApiOptions } from '../../src/api/server.js';
import { ControlPlane } from '../../src/core/control-plane.js';
import { Resources } from '../../src/core/resources.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import { AuditLog } from '../../src/audit/log.js';
import { authenticate } from '../../src/auth/tokens.js';
import { bootstrapToken, issueToken } from '../../src/core/api-tokens.js';
import { contextFor } from '../../src/core/audit-context.js';
import type { Store } from '../../src/store/store.js';

let dir: string;
let store: Store;
let opts: ApiOptions;
let app: FastifyInstance;
let admin = '';
let viewer = '';
const env = { now: () => new Date().toISOString(), newId: () => `id${Math.random().toString(36).slice(2)}` };
const BIG = `console.log(${JSON.stringify('x'.repeat(5000))});\n`;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'carapace-ui-static-'));
  const ui = join(dir, 'ui');
  await mkdir(join(ui, 'assets'), { recursive: true });
  await writeFile(join(ui, 'index.html'), '<!doctype html><meta name="carapace-style-nonce" content="__CARAPACE_STYLE_NONCE__"><script type="module" src="/ui/assets/app-1.js"></script>');
  await writeFile(join(ui, 'assets', 'app-1.js'), BIG);
  await writeFile(join(dir, 'secret.txt'), 'outside the UI directory');
  store = await openSqliteStore({ path: join(dir, 'store.db') });
  const audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  const resources = new Resources(store, audit, env);
  opts = { controlPlane: new ControlPlane(resources, env), store, logs: { logs: async function* () {} }, logger: pino({ level: 'silent' }), auth: { authenticate: (t) => authenticate(store, t) }, env, audit, uiDir: ui };
  app = buildApi(opts);
  await app.ready();
  admin = (await bootstrapToken(resources, { id: 'root', name: 'root', now: env.now() }))!.token; // a fresh store
  viewer = (await issueToken(resources, contextFor({ tokenId: 'root', name: 'root', role: 'cluster-admin' }), { id: 'tv', name: 'acme viewer', role: 'tenant-viewer', tenant: 'acme', now: env.now() })).token;
});

afterAll(async () => {
  await app.close();
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

describe('the dashboard files at /ui', () => {
  it('serves the app without a token, with a strict content security policy', async () => {
    const r = await app.inject({ url: '/ui/' });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(r.headers['content-security-policy']).toMatch(/default-src 'none'; script-src 'self'; style-src 'self'/);
    expect(r.headers['content-security-policy']).toContain("frame-ancestors 'none'");
    expect(r.headers['x-content-type-options']).toBe('nosniff');
    expect(r.headers['cache-control']).toBe('no-cache');
    expect(r.body).toContain('/ui/assets/app-1.js');
    // Style elements need the page's nonce (the terminal's xterm.js writes some); scripts never
    // run inline. A fresh nonce per response, in the policy and in the page.
    const csp = String(r.headers['content-security-policy']);
    expect(csp).not.toContain('unsafe-inline');
    const nonce = /style-src 'self' 'nonce-([A-Za-z0-9+/=]{24})'/.exec(csp)?.[1];
    expect(nonce).toBeDefined();
    expect(r.body).toContain(`content="${nonce ?? '-'}"`);
    const again = await app.inject({ url: '/ui/' });
    expect(again.headers['content-security-policy']).not.toContain(nonce ?? '-');
    const asset = await app.inject({ url: '/ui/assets/app-1.js' });
    expect(asset.headers['content-security-policy']).toMatch(/style-src 'self';/);
    const redirect = await app.inject({ url: '/ui' });
    expect([redirect.statusCode, redirect.headers['location']]).toEqual([302, '/ui/']);
  });

  it('serves hashed assets for a year, gzipped when the browser accepts it', async () => {
    const plain = await app.inject({ url: '/ui/assets/app-1.js' });
    expect(plain.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(plain.headers['cache-control']).toContain('immutable');
    expect(plain.body).toBe(BIG);
    const z = await app.inject({ url: '/ui/assets/app-1.js', headers: { 'accept-encoding': 'gzip, br' } });
    expect(z.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(z.rawPayload).toString()).toBe(BIG);
    expect(z.rawPayload.length).toBeLessThan(BIG.length / 10);
  });

  it('never serves a file outside the UI directory, and answers unknown files with the API error shape', async () => {
    for (const url of ['/ui/../secret.txt', '/ui/%2e%2e/secret.txt', '/ui/assets/%2e%2e/%2e%2e/secret.txt', '/ui/..%2fsecret.txt', '/ui/nope.js', '/ui/assets/']) {
      const r = await app.inject({ url });
      expect(r.statusCode, url).toBe(404);
      expect(r.body, url).not.toContain('outside the UI directory');
      expect(r.json().error.code, url).toBe('CARAPACE_E_ROUTE_NOT_FOUND');
    }
    const post = await app.inject({ method: 'POST', url: '/ui/', payload: {} });
    expect(post.statusCode).toBe(404);
    // The API is unchanged: /v1 still needs a token.
    expect((await app.inject({ url: '/v1/services' })).statusCode).toBe(401);
  });

  it('says how to build the dashboard when it is missing', async () => {
    const bare = buildApi({ ...opts, uiDir: join(dir, 'not-built') });
    const r = await bare.inject({ url: '/ui/' });
    expect(r.statusCode).toBe(404);
    expect(r.json().error.message).toContain('run npm run build');
    await bare.close();
  });
});

describe('GET /v1/whoami', () => {
  it("returns the caller's own token (never its secret) for every role, and 401 without one", async () => {
    const a = await app.inject({ url: '/v1/whoami', headers: { authorization: `Bearer ${admin}` } });
    expect(a.json()).toEqual({ tokenId: 'root', name: 'root', role: 'cluster-admin' });
    const v = await app.inject({ url: '/v1/whoami', headers: { authorization: `Bearer ${viewer}` } });
    expect(v.json()).toEqual({ tokenId: 'tv', name: 'acme viewer', role: 'tenant-viewer', tenant: 'acme' });
    expect(v.body).not.toContain(viewer.split('.')[1]);
    expect((await app.inject({ url: '/v1/whoami' })).statusCode).toBe(401);
    expect((await app.inject({ url: '/v1/whoami', headers: { authorization: 'Bearer cpt_root.wrong' } })).statusCode).toBe(401);
  });
});

describe('shutdown with open streams', () => {
  it('closes promptly while event streams and watches are connected', async () => {
    const live = buildApi(opts);
    const base = await live.listen({ port: 0, host: '127.0.0.1' });
    const streams = await Promise.all(
      ['/v1/events', '/v1/watch/instances', '/v1/watch/services'].map((p) => request(`${base}${p}`, { headers: { authorization: `Bearer ${admin}` } })),
    );
    for (const s of streams) expect(s.statusCode).toBe(200);
    const ended = streams.map((s) => s.body.text().then(() => true).catch(() => true));
    const t0 = Date.now();
    await live.close();
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(await Promise.all(ended)).toEqual([true, true, true]);
  });
});
