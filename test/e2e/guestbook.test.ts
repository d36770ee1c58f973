/**
 * The bundled guestbook (examples/guestbook.yaml), applied for real so the example cannot rot:
 * `carapace up` (a child process, tenant networks on), its images built into a real registry
 * by the same code the quick start runs (guestbook-images.ts), and the manifest file itself,
 * with only the registry address and the published port changed. Through the published port
 * of `web` (runc) the page shows what `db` (PostgreSQL in a cell, on a volume) holds, asked
 * through `api` (gVisor) by service name. The count survives the re-creation of the db
 * instance (the volume goes back to the host and into the cell again) and a rotation of the
 * Secret (onChange: restart: db sets the new password, api gets it as env). One VM.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildGuestbookImages, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import type { Instance } from '../../src/model/objects.js';
import type { Volume } from '../../src/model/volumes.js';
import { cli, destroyAll, eventually, freePort, ROOT, Server, tempDir } from './helpers.js';

/** Network objects of their own: another agent's (a quick start's `c`) are left alone. */
const NET_PREFIX = 'cgb';
const PASSWORD = 'guestbook-example-password';
const ROTATED = "rotated-pw-'quoted'-9c1e";

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
let port: number;
let manifestFile: string;

async function list<T>(kind: string): Promise<T[]> {
  const r = await cli(server.url, ['get', kind, '-t', 'initech', '-o', 'json']);
  if (r.code !== 0) throw new Error(`get ${kind}: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { items: T[] }).items; // `as`: the list shape of `get -o json`
}

const instance = async (name: string): Promise<Instance | undefined> => (await list<Instance>('instances')).find((i) => i.metadata.name === name);

/** The page, when it answers 200; what it says (tags dropped) and its raw HTML. */
async function page(): Promise<{ visits: number; text: string; html: string } | undefined> {
  const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(20_000) });
  const html = await r.text();
  if (r.status !== 200) throw new Error(`page answered ${r.status}: ${html}`);
  const m = /<p id="visits">Visit number <b>(\d+)<\/b>/.exec(html);
  if (m?.[1] === undefined) throw new Error(`no visit count in ${html}`);
  return { visits: Number(m[1]), text: html.replace(/<[^>]*>/g, ''), html };
}

/** The text of `<p id="path">`: who served the page and where the data is. */
const pathOf = (html: string): string => /<p id="path">(.*)<\/p>/.exec(html)?.[1] ?? '';

beforeAll(async () => {
  tmp = await tempDir('carapace-guestbook-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  await buildGuestbookImages(registry.address);
  port = await freePort();
  const text = (await readFile(join(ROOT, 'examples', 'guestbook.yaml'), 'utf8')).replaceAll('127.0.0.1:5000', registry.address).replace('hostPort: 8090', `hostPort: ${port}`);
  expect(text).toContain(`hostPort: ${port}`);
  manifestFile = join(tmp.dir, 'guestbook.yaml');
  await writeFile(manifestFile, text);
  server = new Server(join(tmp.dir, 'state'), await freePort(), ['--net-prefix', NET_PREFIX, '--accel', 'tcg'], { CARAPACE_PROBE_TIME_SCALE: '0.5' });
  await server.start();
}, 300_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'), { prefix: NET_PREFIX });
  await registry?.stop();
  await tmp?.cleanup();
}, 120_000);

describe('the guestbook example', () => {
  it('runs web (runc), api (gVisor) and db (PostgreSQL in a cell, on a volume, with a secret); the page shows what the database holds', async () => {
    const r = await cli(server.url, ['apply', '-f', manifestFile, '--wait', '--timeout', '480'], undefined, 500_000);
    expect(r.code, `${r.stdout}${r.stderr}\n--- server log ---\n${server.log.split('\n').filter((l) => /"level":(40|50)/.test(l)).slice(-30).join('\n')}`).toBe(0);
    const insts = await list<Instance>('instances');
    const tier = (n: string): string | undefined => insts.find((i) => i.metadata.name === n)?.spec.container.isolation;
    expect([tier('web-0'), tier('api-0'), tier('db-0')]).toEqual(['host', 'sandbox', 'cell']);
    expect(insts.find((i) => i.metadata.name === 'db-0')?.spec.cell).toBeTruthy();
    const vol = (await list<Volume>('volumes')).find((v) => v.metadata.name === 'pgdata');
    expect(vol?.status).toMatchObject({ phase: 'Bound', host: 'e2e', attachedTo: ['db-0'] });
    // The secret's value is write-only: `get` shows its key and size.
    const secrets = await cli(server.url, ['get', 'secrets', '-t', 'initech', '-o', 'json']);
    expect(secrets.stdout).toContain('"password"');
    expect(secrets.stdout).not.toContain(PASSWORD);

    // Right after --wait the service addresses may still be joining: the first good answer.
    const first = await eventually(page, 60_000, 'the page through the published port');
    const second = await page();
    expect(second?.visits).toBe(first.visits + 1);
    const path = pathOf(second?.html ?? '');
    expect(path).toMatch(/^Page by web-0 \(web\), count and notes from api-0 \(api at http:\/\/api:8080\), kept in PostgreSQL 15\.\d+ .* at 10\.\d+\.\d+\.\d+, up since .* UTC \(db\)\.$/);

    // A note with characters that matter to SQL, the URL encoding and HTML, through the form.
    const note = `it's <b>"bold"</b> & 100% 'quoted'`;
    const sign = await fetch(`http://127.0.0.1:${port}/cgi-bin/sign`, { method: 'POST', body: new URLSearchParams({ text: note }), redirect: 'manual' });
    expect(sign.status, await sign.text()).toBe(303);
    const withNote = await page();
    expect(withNote?.html).toContain(`<li>it's &lt;b&gt;&quot;bold&quot;&lt;/b&gt; &amp; 100% 'quoted' <small>(`);
    // An empty note: the api refuses it (400), the web says so.
    const empty = await fetch(`http://127.0.0.1:${port}/cgi-bin/sign`, { method: 'POST', body: new URLSearchParams({ text: '' }), redirect: 'manual' });
    expect(empty.status).toBe(502);
    expect(await empty.text()).toMatch(/the api refused the note: .*400 Bad Request/);
  }, 600_000);

  it('keeps the data when the db instance is re-created: its volume goes back to the host and into the cell again', async () => {
    const before = await page();
    const old = await instance('db-0');
    expect(old?.status.phase).toBe('Running');
    expect((await cli(server.url, ['delete', 'instance', 'initech/db-0'])).code).toBe(0);
    await eventually(async () => {
      const now = await instance('db-0');
      return now !== undefined && now.metadata.uid !== old?.metadata.uid && now.status.phase === 'Running' && now.status.ready === true;
    }, 300_000, 'a new db-0 running and ready');
    const after = await eventually(page, 120_000, 'the page again, from the new db instance');
    expect(after.visits).toBe((before?.visits ?? 0) + 1);
    expect(after.html).toContain('&lt;b&gt;&quot;bold&quot;');
    // Another postmaster: the "up since" moved.
    expect(pathOf(after.html)).not.toBe(pathOf(before?.html ?? ''));
    const logs = await cli(server.url, ['logs', 'initech/db-0']);
    expect(logs.stdout).toContain('entrypoint: postgres password set from /run/secrets/db/password');
    expect(logs.stdout + logs.stderr).not.toContain(PASSWORD);
  }, 420_000);

  it('rotates the password: a changed Secret (onChange: restart) restarts db, which sets it, and api, which uses it', async () => {
    const before = await page();
    const dbBefore = await instance('db-0');
    const text = (await readFile(manifestFile, 'utf8')).replace(`password: ${PASSWORD}`, `password: "${ROTATED}"`);
    const rotated = join(tmp.dir, 'rotated.yaml');
    await writeFile(rotated, text);
    const r = await cli(server.url, ['apply', '-f', rotated], undefined, 60_000);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    // The db's container restarts (same instance, another container); the count goes on.
    await eventually(async () => {
      const now = await instance('db-0');
      return now !== undefined && now.status.containerId !== dbBefore?.status.containerId && now.status.ready === true;
    }, 300_000, 'db restarted with the rotated secret');
    const after = await eventually(page, 180_000, 'the page with the rotated password');
    expect(after.visits).toBeGreaterThan(before?.visits ?? 0);
    const logs = await cli(server.url, ['logs', 'initech/db-0']);
    expect(logs.stdout + logs.stderr).not.toContain(ROTATED);
  }, 540_000);
});
