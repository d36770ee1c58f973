/**
 * Off-store audit copies through the real CLI (issue 18): a control server over SQLite appends
 * every checkpoint it signs to `--audit-copy` files; a store writer who cuts the log's tail,
 * writes a tail of their own and re-signs it with a key they register passes `audit verify`
 * (the store alone cannot tell) and fails `audit verify --against FILE`. A copy cut inside a
 * line or changed is refused with its file and line. Requires `npm run build`.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateKeyPair } from '../../src/audit/keys.js';
import { buildRecord, type AuditHead, type AuditRecord } from '../../src/audit/record.js';
import { signCheckpoint } from '../../src/audit/verify.js';
import { CHECKPOINT_PREFIX, HEAD_KEY, recordKey, signingKeyKey } from '../../src/model/keys.js';
import { startControlServer, type RunningControlServer } from '../../src/server/server.js';
import { openSqliteStore } from '../../src/store/sqlite.js';
import type { Store } from '../../src/store/store.js';
import { cli, tempDir, tokens } from './helpers.js';

let tmp: Awaited<ReturnType<typeof tempDir>>;
let store: Store;
let server: RunningControlServer;
let stop: AbortController;
let running: Promise<void>;
let dbPath: string;
let copies: string[];

async function startServer(): Promise<void> {
  store = await openSqliteStore({ path: dbPath });
  server = await startControlServer({ store, stateDir: join(tmp.dir, 'server'), port: 0, logger: pino({ level: 'silent' }), saveCliConfig: false, auditCopies: copies });
  stop = new AbortController();
  running = server.run(stop.signal);
  const token = (await readFile(join(tmp.dir, 'server', 'admin-token'), 'utf8')).trim();
  tokens.set(server.url, token); // cli() sends it
}

async function stopServer(): Promise<void> {
  stop.abort();
  await running;
  await server.close();
  await store.close();
}

beforeAll(async () => {
  tmp = await tempDir('carapace-audit-copy-');
  dbPath = join(tmp.dir, 'store.db');
  copies = [join(tmp.dir, 'copy-a.jsonl'), join(tmp.dir, 'copy-b.jsonl')];
  await startServer();
}, 60_000);

afterAll(async () => {
  await stopServer().catch(() => undefined);
  await tmp.cleanup();
});

describe('audit verify --against an off-store copy', () => {
  it('passes on an intact log, catches a re-signed rewrite of the tail the store alone accepts, and refuses a damaged copy', async () => {
    // Work through the CLI: 8 tokens made and revoked (16 audited mutations), then a checkpoint.
    for (let i = 0; i < 8; i++) {
      const made = await cli(server.url, ['token', 'create', '--name', `t${i}`, '--role', 'tenant-viewer', '--tenant', 'acme']);
      expect(made.code, made.stderr).toBe(0);
      expect((await cli(server.url, ['token', 'revoke', `t${i}`])).code).toBe(0);
    }
    const cp = await server.audit.checkpoint(new Date().toISOString());
    const cutAt = Math.floor((cp?.seq ?? 0) / 2);
    // Both copies hold the checkpoint of the head, byte for byte the same lines.
    const [a, b] = await Promise.all(copies.map((f) => readFile(f, 'utf8')));
    expect(a).toContain(`"seq":${cp?.seq}`);
    expect(b).toBe(a);

    const ok = await cli(server.url, ['audit', 'verify', '--against', copies[0] ?? '']);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(new RegExp(`^audit log OK: .*against 1 off-store checkpoint\\(s\\) up to seq ${cp?.seq} in `));

    // The store writer, with the server stopped: cut the tail after `cutAt`, write a tail of
    // their own, a head, and a checkpoint of it signed by a key they register.
    await stopServer();
    const db = new Database(dbPath);
    const rows = db.prepare("SELECT key, value FROM kv WHERE key >= 'audit/0' AND key < 'audit/9'").all() as { key: string; value: string }[];
    const records = rows.map((r) => JSON.parse(r.value) as AuditRecord);
    const last = records.at(-1)?.seq ?? 0;
    expect(last).toBeGreaterThan(cutAt);
    const del = db.prepare('DELETE FROM kv WHERE key = ?');
    for (let s = cutAt + 1; s <= last; s++) del.run(recordKey(s));
    for (const row of db.prepare('SELECT key FROM kv WHERE key >= ? AND key < ?').all(CHECKPOINT_PREFIX, `${CHECKPOINT_PREFIX}\uffff`) as { key: string }[]) {
      if (Number(row.key.slice(CHECKPOINT_PREFIX.length)) > cutAt) del.run(row.key);
    }
    let head: AuditHead = { seq: cutAt, hash: records[cutAt - 1]?.hash ?? '' };
    const ins = db.prepare('INSERT INTO kv (key, value, version, create_revision) VALUES (?, ?, 1, 1)');
    for (let s = cutAt + 1; s <= cutAt + 3; s++) {
      const r = buildRecord(head, { time: new Date().toISOString(), actor: { kind: 'user', id: 'nobody' }, action: 'apply', target: { kind: 'Tenant', name: 'quiet' }, outcome: 'success' });
      ins.run(recordKey(s), JSON.stringify(r));
      head = { seq: r.seq, hash: r.hash };
    }
    db.prepare('UPDATE kv SET value = ? WHERE key = ?').run(JSON.stringify(head), HEAD_KEY);
    const theirs = await loadOrCreateKeyPair(join(tmp.dir, 'attacker-keys'));
    ins.run(`${CHECKPOINT_PREFIX}${String(head.seq).padStart(12, '0')}`, JSON.stringify(signCheckpoint(head, new Date().toISOString(), theirs.privateKey, theirs.publicKey)));
    ins.run(signingKeyKey(theirs.keyId), JSON.stringify({ keyId: theirs.keyId, publicKey: theirs.publicKeyPem }));
    db.close();
    await startServer();

    const alone = await cli(server.url, ['audit', 'verify']);
    expect(alone.code, alone.stdout).toBe(0); // the store alone cannot tell
    const caught = await cli(server.url, ['audit', 'verify', '--against', ...copies]);
    expect(caught.code).toBe(1);
    expect(caught.stdout).toMatch(/^audit log FAILED verification/);
    expect(caught.stdout).toMatch(new RegExp(`seq ${cp?.seq}: (truncated|chain): `));

    // A copy cut inside its last line, and one with a line changed: refused, naming file and line.
    const lines = (a ?? '').trimEnd().split('\n');
    const cut = join(tmp.dir, 'cut.jsonl');
    await writeFile(cut, (a ?? '').slice(0, -10));
    const r1 = await cli(server.url, ['audit', 'verify', '--against', cut]);
    expect(r1.code).toBe(1);
    expect(r1.stderr).toContain(`error CARAPACE_E_AUDIT_COPY_TRUNCATED: ${cut} line ${lines.length}`);
    const changed = join(tmp.dir, 'changed.jsonl');
    await writeFile(changed, `${lines.map((l, i) => (i === lines.length - 1 ? l.replace(/"seq":(\d+)/, (_m, s: string) => `"seq":${Number(s) - 1}`) : l)).join('\n')}\n`);
    const r2 = await cli(server.url, ['audit', 'verify', '--against', changed]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toContain(`error CARAPACE_E_AUDIT_COPY_TAMPERED: ${changed} line ${lines.length}`);
  }, 180_000);
});
