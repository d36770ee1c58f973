/**
 * Credentials through the real CLI, as a new user would manage them, against a real control
 * server (SQLite store, audit log; no host agent needed): a token created and then revoked by
 * the name it was given is in `audit export` (which takes `--since 10m` like every other time
 * option), a name that several live tokens share is refused with their ids, and a join token's
 * creation is audited without its secret. Requires `npm run build`.
 */
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { cli, tempDir, tokens } from './helpers.js';

let tmp: Awaited<ReturnType<typeof tempDir>>;
let store: Store;
let server: RunningControlServer;
const stop = new AbortController();
let running: Promise<void>;

beforeAll(async () => {
  tmp = await tempDir('carapace-credentials-cli-');
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

/** The records `audit export` prints, parsed. */
function jsonl(text: string): { action: string; outcome: string; target: { kind: string; name: string }; detail?: Record<string, unknown> }[] {
  return text
    .trim()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as ReturnType<typeof jsonl>[number]);
}

describe('credentials through the CLI', () => {
  it('audits `token create` and `token revoke NAME`, and `audit export --since 10m` shows both', async () => {
    const created = await cli(server.url, ['token', 'create', '--name', 'ci deploy', '--role', 'tenant-viewer', '--tenant', 'acme']);
    expect(created.code, created.stderr).toBe(0);
    const id = /^token (\S+) \(tenant-viewer of tenant acme\) created/.exec(created.stdout)?.[1] ?? '';
    const secret = created.stdout.trim().split('\n').at(-1) ?? '';
    expect(secret).toMatch(/^cpt_/);

    const revoked = await cli(server.url, ['token', 'revoke', 'ci deploy']);
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(revoked.stdout).toMatch(new RegExp(`^token ${id} \\(ci deploy\\) revoked at `));

    const exported = await cli(server.url, ['audit', 'export', '--since', '10m']);
    expect(exported.code, exported.stderr).toBe(0);
    const mine = jsonl(exported.stdout).filter((r) => r.target.kind === 'Token' && r.target.name === id);
    expect(mine.map((r) => `${r.action}:${r.outcome}`)).toEqual(['token.created:success', 'token.revoked:success']);
    expect(mine[0]?.detail).toEqual({ name: 'ci deploy', role: 'tenant-viewer', tenant: 'acme' });
    expect(exported.stdout).not.toContain(secret.split('.')[1]);
    // Nothing was refused on the way.
    expect(jsonl(exported.stdout).filter((r) => r.outcome === 'failure')).toEqual([]);
  });

  it('refuses a name several live tokens share, listing their ids', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await cli(server.url, ['token', 'create', '--name', 'nightly', '--role', 'cluster-admin']);
      expect(r.code, r.stderr).toBe(0);
      ids.push(/^token (\S+) /.exec(r.stdout)?.[1] ?? '');
    }
    const refused = await cli(server.url, ['token', 'revoke', 'nightly']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('error CARAPACE_E_AMBIGUOUS_NAME');
    for (const id of ids) expect(refused.stderr).toContain(id);
    const one = await cli(server.url, ['token', 'revoke', ids[0] ?? '']);
    expect(one.code, one.stderr).toBe(0);
    const list = await cli(server.url, ['token', 'list', '-o', 'json']);
    const live = (JSON.parse(list.stdout) as { items: { id: string; name: string; revokedAt?: string }[] }).items.filter((t) => t.name === 'nightly' && !t.revokedAt).map((t) => t.id);
    expect(live).toEqual([ids[1]]);
  });

  it('takes the same time forms in every command, and audits a join token without its secret', async () => {
    const joined = await cli(server.url, ['join-token', 'create', '--ttl', '90s', '--description', 'rack 7']);
    expect(joined.code, joined.stderr).toBe(0);
    const token = joined.stdout.trim();
    expect(token).toMatch(/^K1[0-9a-f]{64}::[0-9a-f]{8}\./);
    expect(joined.stderr).toMatch(/valid until/);

    const csv = await cli(server.url, ['audit', 'export', '--since', '1h', '--until', 'now', '--format', 'csv']);
    expect(csv.code, csv.stderr).toBe(0);
    expect(csv.stdout).toContain('join-token.created');
    expect(csv.stdout).not.toContain(token.split('.')[1]);

    expect((await cli(server.url, ['report', 'usage', '--since', '10m', '-o', 'json'])).code).toBe(0);
    for (const args of [
      ['audit', 'export', '--since', 'yesterday'],
      ['report', 'usage', '--since', '10'],
      ['join-token', 'create', '--ttl', '10x'],
    ]) {
      const r = await cli(server.url, args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(/^error CARAPACE_E_BAD_QUERY: /);
      expect(r.stderr).toMatch(/ {2}--(since|ttl): /);
    }
  });
});
