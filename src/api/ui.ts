/**
 * Serves the web dashboard (built by Vite from `ui/` into `dist/ui`) at `/ui`. These are
 * public static files, outside the route table on purpose: they hold no data. Everything the
 * dashboard shows comes from the `/v1` API with the user's bearer token, under the same
 * authorisation as the CLI. Call `registerUi` once while building the fastify app.
 */
import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, extname, join, resolve, sep } from 'node:path';
import { gzipSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CarapaceError } from '../model/errors.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * Same-origin only, no inline scripts, nothing from other hosts: the bundle is
 * self-contained. (React sets styles through the CSSOM, which `style-src 'self'` allows.)
 * The page itself (index.html) also allows the `<style>` elements that carry its
 * per-response nonce (`uiCsp(nonce)`): the terminal (xterm.js) writes its theme and cell
 * sizes into style elements, and the page gives them the nonce (ui/src/terminal.ts).
 */
export const UI_CSP = uiCsp();

/** The policy, with `nonce` allowed for style elements when given (a fresh one per response of index.html). */
export function uiCsp(nonce?: string): string {
  return [
    "default-src 'none'",
    "script-src 'self'",
    nonce === undefined ? "style-src 'self'" : `style-src 'self' 'nonce-${nonce}'`,
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

/** The placeholder in ui/index.html that each response of it replaces with its nonce. */
export const NONCE_PLACEHOLDER = '__CARAPACE_STYLE_NONCE__';

/** The built dashboard next to this install: `<package root>/dist/ui`, found from this file (src/api or dist/src/api). */
export function defaultUiDir(): string | undefined {
  let dir = import.meta.dirname;
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, 'dist', 'ui');
    dir = dirname(dir);
  }
  return undefined;
}

/** Gzipped copies of files already served, by path and modification time. */
const gzipped = new Map<string, { mtimeMs: number; body: Buffer }>();

async function sendFile(req: FastifyRequest, reply: FastifyReply, root: string, rel: string): Promise<unknown> {
  const file = resolve(root, rel);
  // Never outside the UI directory, whatever the URL says (`..`, encoded slashes).
  if (file !== root && !file.startsWith(root + sep)) throw new CarapaceError('CARAPACE_E_ROUTE_NOT_FOUND', `no file ${req.url.split('?')[0] ?? ''}`);
  const st = await stat(file).catch(() => undefined);
  if (!st?.isFile()) {
    const hint = existsSync(join(root, 'index.html')) ? '' : ' (the dashboard is not built: run npm run build)';
    throw new CarapaceError('CARAPACE_E_ROUTE_NOT_FOUND', `no file ${req.url.split('?')[0] ?? ''}${hint}`);
  }
  const type = TYPES[extname(file)] ?? 'application/octet-stream';
  const page = file === resolve(root, 'index.html');
  // 128 random bits per response (CSP 3 asks for at least 128), base64 (nonce-source syntax).
  const nonce = page ? randomBytes(16).toString('base64') : undefined;
  void reply
    .header('content-type', type)
    .header('x-content-type-options', 'nosniff')
    .header('referrer-policy', 'no-referrer')
    .header('content-security-policy', uiCsp(nonce))
    // Assets carry a content hash in their names; index.html must be fetched again to see a new build.
    .header('cache-control', rel.startsWith(`assets${sep}`) || rel.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache');
  // The page is small and differs per response (its nonce): sent as is.
  if (nonce !== undefined) return reply.send((await readFile(file, 'utf8')).replaceAll(NONCE_PLACEHOLDER, nonce));
  const accepts = String(req.headers['accept-encoding'] ?? '').includes('gzip');
  if (accepts && /^(text\/|application\/json|image\/svg)/.test(type) && st.size > 1024) {
    let z = gzipped.get(file);
    if (!z || z.mtimeMs !== st.mtimeMs) {
      z = { mtimeMs: st.mtimeMs, body: gzipSync(await readFile(file)) };
      gzipped.set(file, z);
    }
    void reply.header('content-encoding', 'gzip').header('vary', 'accept-encoding');
    return reply.send(z.body);
  }
  return reply.send(await readFile(file));
}

/**
 * Adds `GET /ui` (redirect), `GET /ui/` (the app) and `GET /ui/*` (its files). With no built
 * dashboard the routes answer 404 with a hint, so the API works the same either way.
 */
export function registerUi(app: FastifyInstance, dir: string | undefined = defaultUiDir()): void {
  const root = resolve(dir ?? '/nonexistent-carapace-ui');
  app.get('/ui', async (_req, reply) => reply.redirect('/ui/', 302));
  app.get('/ui/*', async (req, reply) => {
    const rel = (req.params as { '*'?: string })['*'] ?? ''; // fastify names the wildcard '*'
    return sendFile(req, reply, root, rel === '' ? 'index.html' : rel);
  });
}
