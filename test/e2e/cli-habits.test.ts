/**
 * The CLI's everyday habits through the real binary against a real control server in this
 * process (SQLite store, audit log, controller; no host agent: services stay unplaced, which
 * is all these need): `version` (both sides, and the client alone when the server cannot be
 * asked), `-o name` and names given back as KIND/TENANT/NAME, `get --help` listing the model's
 * kinds, `get --watch` printing changes as they happen and ending on Ctrl-C, shell completion
 * loaded into the real bash, and bad command lines refused with stable codes.
 * Requires `npm run build`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KIND_ALIASES, KINDS } from '../../src/model/objects.js';
import { run } from '../../src/proc/run.js';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { CLI, cli, eventually, freePort, ROOT, tempDir, tokens } from './helpers.js';

let tmp: Awaited<ReturnType<typeof tempDir>>;
let store: Store;
let server: RunningControlServer;
const stop = new AbortController();
let running: Promise<void>;

beforeAll(async () => {
  tmp = await tempDir('carapace-cli-habits-');
  store = await openSqliteStore({ path: join(tmp.dir, 'store.db') });
  server = await startControlServer({ store, stateDir: join(tmp.dir, 'server'), port: 0, logger: pino({ level: 'silent' }), saveCliConfig: false });
  running = server.run(stop.signal);
  tokens.set(server.url, server.adminToken); // cli() sends it
}, 60_000);

afterAll(async () => {
  stop.abort();
  await running;
  await server.close();
  await store.close();
  await tmp.cleanup();
});

/** A service manifest (host tier: nothing runs it here, the controller only records it). */
function service(tenant: string, name: string, replicas: number): string {
  return `apiVersion: carapace/v1\nkind: Service\nmetadata: {name: ${name}, tenant: ${tenant}}\nspec: {image: "127.0.0.1:5000/web:1", isolation: host, replicas: ${replicas}}\n`;
}

async function apply(yaml: string): Promise<void> {
  const r = await cli(server.url, ['apply', '-f', '-'], yaml);
  expect(r.code, r.stderr).toBe(0);
}

/** The CLI as a long-running child (a watch), with its output lines collected as they come. */
function watcher(args: string[]): { proc: ChildProcess; lines: string[]; stderr: () => string; exited: Promise<number | null> } {
  const proc = spawn(process.execPath, [CLI, ...args], {
    env: { PATH: process.env['PATH'] ?? '', CARAPACE_SERVER: server.url, CARAPACE_TOKEN: server.adminToken, CARAPACE_CONFIG: '/nonexistent/carapace-config.json' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let buf = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop() ?? '';
    lines.push(...parts);
  });
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  return { proc, lines, stderr: () => err, exited };
}

/** Waits until one of `lines` matches `re` (after index `from`), returning its index. */
async function lineMatching(lines: string[], re: RegExp, from = 0, what = String(re)): Promise<number> {
  return eventually(async () => {
    const i = lines.findIndex((l, n) => n >= from && re.test(l));
    return i >= 0 ? i + 1 : false; // +1: 0 is a found index, not "not yet"
  }, 20_000, `${what} in:\n${lines.join('\n')}`).then((i) => i - 1);
}

describe('carapace version', () => {
  it("prints the client's version and the server's with the API version", async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = await cli(server.url, ['version']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`Client Version: ${pkg.version}\nServer Version: ${pkg.version}\nAPI Version: carapace/v1\n`);
    const j = await cli(server.url, ['version', '-o', 'json']);
    expect(JSON.parse(j.stdout)).toEqual({ clientVersion: { version: pkg.version, apiVersion: 'carapace/v1' }, serverVersion: { version: pkg.version, apiVersion: 'carapace/v1' } });
  });

  it('prints the client side, then why the server side is missing, and exits 1', async () => {
    const nobody = `http://127.0.0.1:${await freePort()}`;
    const r = await cli(nobody, ['version']);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^Client Version: \d+\.\d+\.\d+\n$/);
    expect(r.stderr).toMatch(/^error CARAPACE_E_SERVER_UNREACHABLE: cannot reach the Carapace server at http:\/\/127\.0\.0\.1:\d+ \(connection refused\)/);
    // The server's version is for valid tokens only.
    const anon = await cli(server.url, ['--token', 'cpt_nope', 'version']);
    expect(anon.code).toBe(1);
    expect(anon.stderr).toMatch(/^error CARAPACE_E_UNAUTHENTICATED: /);
    const own = await cli(nobody, ['version', '--client']);
    expect(own.code, own.stderr).toBe(0);
    expect(own.stdout).toMatch(/^Client Version: \d+\.\d+\.\d+\nAPI Version: carapace\/v1\n$/);
  });
});

describe('get -o name, names as KIND/TENANT/NAME, get --help', () => {
  it('prints kind/TENANT/NAME lines that get, describe and delete take back', async () => {
    await apply(`apiVersion: carapace/v1\nkind: Tenant\nmetadata: {name: names}\n---\n${service('names', 'web', 1)}---\n${service('names', 'api', 1)}`);
    const list = await cli(server.url, ['get', 'services', '-t', 'names', '-o', 'name']);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.trim().split('\n').sort()).toEqual(['service/names/api', 'service/names/web']);
    expect((await cli(server.url, ['get', 'tenants', '-o', 'name'])).stdout).toContain('tenant/names\n');
    const one = await cli(server.url, ['get', 'service/names/web', '-o', 'name']);
    expect(one.stdout).toBe('service/names/web\n');
    expect((await cli(server.url, ['describe', 'service/names/web'])).stdout).toMatch(/^Kind:\s+Service\nName:\s+web\nTenant:\s+names\n/m);
    const gone = await cli(server.url, ['delete', 'service/names/api']);
    expect(gone.stdout).toBe('service/names/api deleted\n');
    // Nothing to list prints nothing (not an empty line) and succeeds.
    const none = await cli(server.url, ['get', 'jobs', '-t', 'names', '-o', 'name']);
    expect(none).toMatchObject({ code: 0, stdout: '' });
  });

  it('get --help lists every kind of the model, with its other words', async () => {
    const r = await cli(server.url, ['get', '--help']);
    expect(r.code).toBe(0);
    const kindsPart = r.stdout.slice(r.stdout.indexOf('Kinds:'));
    for (const [kind, { plural }] of Object.entries(KINDS)) expect(kindsPart).toMatch(new RegExp(`\\n {2}${plural}\\s+${kind.toLowerCase()}[,\\s]`));
    for (const alias of Object.keys(KIND_ALIASES)) expect(kindsPart).toMatch(new RegExp(`, ${alias}\\b`));
  });

  it('refuses bad command lines with stable codes', async () => {
    const badFormat = await cli(server.url, ['get', 'services', '-o', 'xml']);
    expect(badFormat.code).toBe(1);
    expect(badFormat.stderr).toMatch(/^error CARAPACE_E_USAGE: option '-o, --output <format>' argument 'xml' is invalid\. Allowed choices are table, wide, json, yaml, name\./);
    const badKind = await cli(server.url, ['get', 'pods']);
    expect(badKind.code).toBe(1);
    expect(badKind.stderr).toMatch(/^error CARAPACE_E_UNKNOWN_KIND: unknown kind "pods" \(known: tenants, .*\)\n {2}kind: not a kind/);
    const both = await cli(server.url, ['get', 'service/names/web', 'web']);
    expect(both.code).toBe(1);
    expect(both.stderr).toMatch(/^error CARAPACE_E_USAGE: give KIND NAME or KIND\/NAME, not both/);
    const unknown = await cli(server.url, ['versoin']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^error CARAPACE_E_USAGE: unknown command 'versoin'/);
    const shell = await cli(server.url, ['completion', 'fish']);
    expect(shell.code).toBe(1);
    expect(shell.stderr).toMatch(/^error CARAPACE_E_USAGE: command-argument value 'fish' is invalid for argument 'shell'\. Allowed choices are bash, zsh\./);
  });
});

describe('get --watch', () => {
  it('prints the table, then a line per change as it happens, only of what was asked, until Ctrl-C', async () => {
    await apply(`apiVersion: carapace/v1\nkind: Tenant\nmetadata: {name: acme}\n---\napiVersion: carapace/v1\nkind: Tenant\nmetadata: {name: globex}\n---\n${service('acme', 'web', 1)}`);
    const table = watcher(['get', 'services', '-t', 'acme', '--watch']);
    const one = watcher(['get', 'service/acme/web', '-w', '-o', 'json']);
    try {
      await lineMatching(table.lines, /^EVENT\s+TENANT\s+NAME\s+READY\s+ISOLATION\s+IMAGE\s+AGE$/);
      await lineMatching(table.lines, /^ADDED\s+acme\s+web\s+0\/1\s+host\s/);
      await eventually(async () => one.lines.length >= 1, 20_000, 'the single-object watch to start');

      // Changes made after the listing: each shows up, in order, while the command runs.
      await apply(service('acme', 'api', 1));
      const added = await lineMatching(table.lines, /^ADDED\s+acme\s+api\s+0\/1\s/);
      await apply(service('acme', 'web', 3));
      const modified = await lineMatching(table.lines, /^MODIFIED\s+acme\s+web\s+0\/3\s/, added);
      await apply(service('globex', 'web', 2)); // another tenant's: not asked for
      const del = await cli(server.url, ['delete', 'service', 'acme/api']);
      expect(del.code, del.stderr).toBe(0);
      const deleted = await lineMatching(table.lines, /^DELETED\s+acme\s+api\s/, modified);
      // The columns stay where the header put them.
      const header = table.lines[0] ?? '';
      expect(table.lines[deleted]?.indexOf('acme')).toBe(header.indexOf('TENANT'));
      expect(table.lines.filter((l) => /globex/.test(l))).toEqual([]);

      // The one-object watch saw web only: its listing, then the change to 3 replicas.
      const events = await eventually(async () => {
        const evs = one.lines.map((l) => JSON.parse(l) as { type: string; object: { metadata: { name: string; tenant: string }; spec: { replicas: number } } });
        return evs.some((e) => e.type === 'MODIFIED' && e.object.spec.replicas === 3) ? evs : false;
      }, 20_000, 'the change to web in the one-object watch');
      expect(events[0]).toMatchObject({ type: 'ADDED', object: { metadata: { name: 'web', tenant: 'acme' }, spec: { replicas: 1 } } });
      expect(events.filter((e) => e.object.metadata.name !== 'web' || e.object.metadata.tenant !== 'acme')).toEqual([]);
      expect(events.slice(1).map((e) => e.type)).toEqual(events.slice(1).map(() => 'MODIFIED'));

      // Ctrl-C ends both, as a normal end.
      table.proc.kill('SIGINT');
      one.proc.kill('SIGINT');
      const codes = await Promise.race([Promise.all([table.exited, one.exited]), new Promise((r) => setTimeout(() => r('still running 10 s after SIGINT'), 10_000))]);
      expect(codes, table.stderr() + one.stderr()).toEqual([0, 0]);
      expect(table.stderr()).toBe('');
    } finally {
      table.proc.kill('SIGKILL');
      one.proc.kill('SIGKILL');
    }
  });

  it('refuses to watch an object that does not exist', async () => {
    const r = await cli(server.url, ['get', 'service', 'acme/nope', '--watch'], undefined, 20_000);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error CARAPACE_E_NOT_FOUND: service "acme\/nope" not found/);
  });
});

describe('shell completion', () => {
  it('loads into bash and completes commands, kinds, flags and object names from the server', async () => {
    await apply(`apiVersion: carapace/v1\nkind: Tenant\nmetadata: {name: comp}\n---\n${service('comp', 'db', 1)}`);
    // `carapace` on the PATH, as an installed CLI is, talking to this server.
    const bin = join(tmp.dir, 'bin');
    await run('mkdir', ['-p', bin]);
    await writeFile(join(bin, 'carapace'), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`);
    await chmod(join(bin, 'carapace'), 0o755);
    const env = { PATH: `${bin}:${process.env['PATH'] ?? ''}`, CARAPACE_SERVER: server.url, CARAPACE_TOKEN: server.adminToken, CARAPACE_CONFIG: '/nonexistent/carapace-config.json' };
    const bash = async (script: string): Promise<string> => {
      const r = await run('bash', ['-c', script], { env, timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(0);
      return r.stdout;
    };
    expect((await bash('source <(carapace completion bash); complete -p carapace')).trim()).toBe('complete -F _carapace carapace');
    const offers = async (...words: string[]): Promise<string[]> =>
      (await bash(`source <(carapace completion bash); COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _carapace; printf '%s\\n' "\${COMPREPLY[@]}"`))
        .split('\n')
        .filter((l) => l !== '')
        .sort();
    expect(await offers('carapace', 'get', '')).toEqual(Object.values(KINDS).map((k) => k.plural).sort());
    for (const cmd of ['describe', 'delete']) expect(await offers('carapace', cmd, 'vol')).toEqual(['volumes', 'volumesnapshots']);
    expect(await offers('carapace', 've')).toEqual(['version']);
    expect(await offers('carapace', 'comp')).toEqual(['completion']);
    expect(await offers('carapace', 'completion', '')).toEqual(['bash', 'zsh']);
    expect(await offers('carapace', 'get', 'services', '-')).toEqual(expect.arrayContaining(['-o', '--output', '-w', '--watch', '-t', '--tenant', '--server', '--token', '--help']));
    expect(await offers('carapace', 'get', 'services', '-o', '')).toEqual(['json', 'name', 'table', 'wide', 'yaml']);
    expect(await offers('carapace', 'token', '')).toEqual(['create', 'list', 'revoke']);
    // Names come from the server, as get/describe/delete take them.
    expect(await offers('carapace', 'get', 'services', 'comp/')).toEqual(['comp/db']);
    expect(await offers('carapace', 'describe', 'tenant', 'co')).toEqual(['comp']);
    const zsh = await cli(server.url, ['completion', 'zsh']);
    expect(zsh.code).toBe(0);
    expect(zsh.stdout).toMatch(/^#compdef carapace\n/);
  });
});
