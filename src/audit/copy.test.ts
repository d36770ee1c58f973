import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { isCarapaceError } from '../model/errors.js';
import { openSqliteStore } from '../store/sqlite.js';
import { AuditCopyWriter, parseAuditCopy, readAuditCopy } from './copy.js';
import { entry } from './fixtures.js';
import { loadOrCreateKeyPair } from './keys.js';
import { AuditLog } from './log.js';
import { type AuditHead, type AuditRecord, buildRecord } from './record.js';
import { CHECKPOINT_PREFIX, HEAD_KEY, recordKey } from '../model/keys.js';
import { signCheckpoint } from './verify.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'carapace-audit-copy-'));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return isCarapaceError(e) ? `${e.code} ${e.details[0]?.path ?? ''}` : `not a CarapaceError: ${String(e)}`;
  }
  return 'no error';
}

/** A copy with `n` checkpoints of a made-up log, written through the writer. */
async function writtenCopy(n: number): Promise<{ path: string; text: string }> {
  const dir = tempDir();
  const keys = await loadOrCreateKeyPair(join(dir, 'keys'));
  const path = join(dir, 'copy.jsonl');
  const w = await AuditCopyWriter.open(path, keys, '2026-01-01T00:00:00.000Z');
  let head: AuditHead | undefined;
  for (let i = 1; i <= n; i++) {
    const r = buildRecord(head, entry(i));
    head = { seq: r.seq, hash: r.hash };
    await w.append(signCheckpoint(head, `2026-01-01T00:00:0${i % 10}.000Z`, keys.privateKey, keys.publicKey));
  }
  await w.close();
  return { path, text: readFileSync(path, 'utf8') };
}

describe('off-store audit copy file', () => {
  it('is a key line and one line per checkpoint, each linked to the one before; reopening adds no key line', async () => {
    const { path, text } = await writtenCopy(5);
    const lines = text.trimEnd().split('\n');
    expect(lines).toHaveLength(6);
    const parsed = parseAuditCopy(text, path);
    expect(parsed.checkpoints.map((c) => c.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(parsed.lastSeq).toBe(5);
    expect(parsed.publicKeys).toHaveLength(1);
    // The same key reopens the copy and appends after it, keeping the chain.
    const keys = await loadOrCreateKeyPair(join(path, '..', 'keys'));
    const w = await AuditCopyWriter.open(path, keys, '2026-01-02T00:00:00.000Z');
    await w.append(signCheckpoint({ seq: 6, hash: 'a'.repeat(64) }, '2026-01-02T00:00:00.000Z', keys.privateKey, keys.publicKey));
    await w.close();
    expect((await readAuditCopy(path)).checkpoints.map((c) => c.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(readFileSync(path, 'utf8').trimEnd().split('\n')).toHaveLength(7);
    // A second server's key gets its own key line in the same chain.
    const other = await loadOrCreateKeyPair(join(tempDir(), 'keys'));
    const w2 = await AuditCopyWriter.open(path, other, '2026-01-03T00:00:00.000Z');
    await w2.append(signCheckpoint({ seq: 7, hash: 'b'.repeat(64) }, '2026-01-03T00:00:00.000Z', other.privateKey, other.publicKey));
    await w2.close();
    const both = await readAuditCopy(path);
    expect(both.publicKeys).toHaveLength(2);
    expect(both.lastSeq).toBe(7);
  });

  it('refuses a copy cut inside a line, an empty one, a changed, removed or inserted line, and a forged signature, naming the line', async () => {
    const { path, text } = await writtenCopy(4);
    const lines = text.trimEnd().split('\n');
    expect(codeOf(() => parseAuditCopy(text.slice(0, -20), path))).toBe(`CARAPACE_E_AUDIT_COPY_TRUNCATED ${path}:5`);
    expect(codeOf(() => parseAuditCopy('', path))).toBe(`CARAPACE_E_AUDIT_COPY_TRUNCATED ${path}:1`);
    // Cut at a line boundary: an older copy, still valid.
    expect(parseAuditCopy(`${lines.slice(0, 3).join('\n')}\n`, path).lastSeq).toBe(2);
    // A checkpoint's hash changed: its signature no longer verifies.
    const changed = [...lines];
    changed[2] = (changed[2] ?? '').replace(/"hash":"[0-9a-f]{8}/, '"hash":"00000000');
    expect(changed[2]).not.toBe(lines[2]);
    expect(codeOf(() => parseAuditCopy(`${changed.join('\n')}\n`, path))).toBe(`CARAPACE_E_AUDIT_COPY_TAMPERED ${path}:3`);
    // An unsigned field changed (the key line's time): the next line no longer links to it.
    const relinked = [...lines];
    relinked[0] = (relinked[0] ?? '').replace(/"time":"2026/, '"time":"2027');
    expect(relinked[0]).not.toBe(lines[0]);
    expect(codeOf(() => parseAuditCopy(`${relinked.join('\n')}\n`, path))).toBe(`CARAPACE_E_AUDIT_COPY_TAMPERED ${path}:2`);
    // The same change on the last line: caught too.
    const last = [...lines];
    last[4] = (last[4] ?? '').replace(/"hash":"[0-9a-f]{8}/, '"hash":"00000000');
    expect(codeOf(() => parseAuditCopy(`${last.join('\n')}\n`, path))).toBe(`CARAPACE_E_AUDIT_COPY_TAMPERED ${path}:5`);
    // A line removed, and a line inserted.
    expect(codeOf(() => parseAuditCopy(`${[lines[0], lines[1], lines[3], lines[4]].join('\n')}\n`, path))).toBe(`CARAPACE_E_AUDIT_COPY_TAMPERED ${path}:3`);
    expect(codeOf(() => parseAuditCopy(`${[lines[0], lines[1], lines[1], lines[2]].join('\n')}\n`, path))).toBe(`CARAPACE_E_AUDIT_COPY_TAMPERED ${path}:3`);
    expect(codeOf(() => parseAuditCopy('{"v":1,"kind":"checkpoint"\n', path))).toBe(`CARAPACE_E_AUDIT_COPY_TAMPERED ${path}:1`);
    // A writer refuses to append to a damaged copy rather than hide the damage.
    writeFileSync(path, `${changed.join('\n')}\n`);
    const keys = await loadOrCreateKeyPair(join(path, '..', 'keys'));
    await expect(AuditCopyWriter.open(path, keys, '2026-01-02T00:00:00.000Z')).rejects.toMatchObject({ code: 'CARAPACE_E_AUDIT_COPY_TAMPERED' });
    await expect(readAuditCopy(join(tempDir(), 'missing.jsonl'))).rejects.toMatchObject({ code: 'CARAPACE_E_AUDIT_COPY_UNREADABLE' });
    await expect(AuditCopyWriter.open(join(tempDir(), 'no', 'such', 'dir.jsonl'), keys, 'x')).rejects.toMatchObject({ code: 'CARAPACE_E_AUDIT_COPY_UNWRITABLE' });
  });

  it('catches a store writer who cut the tail and re-signed a rewritten one with a key of their own, which the store alone does not', async () => {
    const dir = tempDir();
    const path = join(dir, 'state.db');
    const copy = join(dir, 'copy.jsonl');
    const store = await openSqliteStore({ path });
    const log = await AuditLog.open({ store, keyDir: join(dir, 'keys'), checkpointEvery: 10, copies: [copy] });
    try {
      for (let i = 1; i <= 45; i++) await log.append(entry(i));
      await log.checkpoint('2026-01-01T00:01:00.000Z'); // the timed one, at the head
      const parsed = await readAuditCopy(copy);
      expect(parsed.checkpoints.map((c) => c.seq)).toEqual([10, 20, 30, 40, 45]);
      expect((await log.verify({ extraCheckpoints: parsed.checkpoints, extraKeys: parsed.publicKeys })).ok).toBe(true);

      // The attacker: removes records 26..45 and the checkpoints after 25, writes 26..30 of
      // their own, a head, and a checkpoint at 30 signed by a key they register in the store.
      const db = new Database(path);
      const recs = (await log.read()).records.map((r) => (typeof r === 'string' ? JSON.parse(r) : r) as AuditRecord);
      const del = db.prepare('DELETE FROM kv WHERE key = ?');
      for (let s = 26; s <= 45; s++) del.run(recordKey(s));
      for (const row of db.prepare('SELECT key FROM kv WHERE key >= ? AND key < ?').all(CHECKPOINT_PREFIX, `${CHECKPOINT_PREFIX}\uffff`) as { key: string }[]) {
        if (Number(row.key.slice(CHECKPOINT_PREFIX.length)) > 25) del.run(row.key);
      }
      let head: AuditHead = { seq: 25, hash: recs[24]!.hash };
      const put = db.prepare('UPDATE kv SET value = ? WHERE key = ?');
      const ins = db.prepare('INSERT INTO kv (key, value, version, create_revision) VALUES (?, ?, 1, 1)');
      for (let s = 26; s <= 30; s++) {
        const r = buildRecord(head, { ...entry(1000 + s), action: 'forged' });
        ins.run(recordKey(s), JSON.stringify(r));
        head = { seq: r.seq, hash: r.hash };
      }
      put.run(JSON.stringify(head), HEAD_KEY);
      const theirs = await loadOrCreateKeyPair(join(tempDir(), 'keys'));
      ins.run(`${CHECKPOINT_PREFIX}000000000030`, JSON.stringify(signCheckpoint(head, '2026-01-01T00:02:00.000Z', theirs.privateKey, theirs.publicKey)));
      ins.run(`audit/keys/${theirs.keyId}`, JSON.stringify({ keyId: theirs.keyId, publicKey: theirs.publicKeyPem }));
      db.close();

      const alone = await log.verify();
      expect(alone.ok, JSON.stringify(alone.problems)).toBe(true); // the store alone cannot tell
      const against = await log.verify({ extraCheckpoints: parsed.checkpoints, extraKeys: parsed.publicKeys });
      expect(against.ok).toBe(false);
      expect(against.problems).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ seq: 30, kind: 'chain' }), // record 30 differs from the copy's checkpoint 30
          expect.objectContaining({ seq: 40, kind: 'truncated' }),
          expect.objectContaining({ seq: 45, kind: 'truncated' }),
        ]),
      );
    } finally {
      await log.close();
      await store.close();
    }
  });
});
