import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import ts from 'typescript';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { describeStoreContract } from './contract.js';
import {
  MIGRATIONS,
  openSqliteStore,
  prefixEnd,
  SCHEMA_VERSION,
  SchemaTooNewError,
  StoreClosedError,
  WatchOverflowError,
  type SqliteStore,
} from './sqlite.js';
import { CompactedError, type WatchEvent } from './store.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..');

const tempDirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'carapace-store-'));
  tempDirs.push(d);
  return d;
}
afterAll(async () => {
  await Promise.all(tempDirs.map((d) => rm(d, { recursive: true, force: true })));
});

describeStoreContract('sqlite', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'carapace-store-contract-'));
  const store = await openSqliteStore({ path: join(dir, 'store.db') });
  return {
    store,
    compact: (revision) => store.compact(revision),
    cleanup: async () => {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

describe('sqlite store specifics', () => {
  const open: SqliteStore[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.close()));
  });
  async function fresh(opts: { historyLimit?: number; watchBufferLimit?: number } = {}): Promise<{ store: SqliteStore; path: string }> {
    const path = join(await tempDir(), 'store.db');
    const store = await openSqliteStore({ path, ...opts });
    open.push(store);
    return { store, path };
  }

  it('prefixEnd bounds exactly the strings with the prefix', () => {
    expect(prefixEnd('')).toBeUndefined();
    expect(prefixEnd('a/')).toBe('a0');
    expect(prefixEnd('a\u{10FFFF}')).toBe('b');
    expect(prefixEnd('\u{D7FF}')).toBe('\u{E000}');
    expect(prefixEnd('\u{10FFFF}')).toBeUndefined();
  });

  it('keeps the file in WAL mode', async () => {
    const { path } = await fresh();
    const db = new Database(path, { readonly: true });
    try {
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      db.close();
    }
  });

  it('compacts history automatically to the last historyLimit revisions', async () => {
    const { store } = await fresh({ historyLimit: 5 });
    for (let i = 0; i < 12; i++) await store.put(`k/${i % 3}`, i);
    const ac = new AbortController();
    const it0 = store.watch('k/', 0, ac.signal)[Symbol.asyncIterator]();
    await expect(it0.next()).rejects.toBeInstanceOf(CompactedError);
    await expect(store.watch('k/', 6, ac.signal)[Symbol.asyncIterator]().next()).rejects.toThrow(/revision 6 was compacted \(oldest kept is 8\)/);
    const got: number[] = [];
    for await (const ev of store.watch<number>('k/', 7, ac.signal)) {
      got.push(ev.value);
      if (got.length === 5) break;
    }
    expect(got).toEqual([7, 8, 9, 10, 11]);
  });

  it('ends a watcher that falls too far behind with WatchOverflowError, without blocking writers', async () => {
    const { store } = await fresh({ watchBufferLimit: 10 });
    const ac = new AbortController();
    const it = store.watch<number>('k/', 0, ac.signal)[Symbol.asyncIterator]();
    const first = it.next(); // subscribes (nothing to replay) and waits
    await store.put('k/0', 0);
    expect((await first).value).toMatchObject({ value: 0 });
    for (let i = 1; i <= 30; i++) await store.put(`k/${i}`, i); // never blocks on the watcher
    expect(await store.revision()).toBe(31);
    const seen: number[] = [];
    const err = await (async () => {
      try {
        for (;;) {
          const r = await it.next();
          if (r.done) return undefined;
          seen.push(r.value.value);
        }
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(WatchOverflowError);
    expect(seen).toEqual([]); // the queue is dropped: the client must re-list
    ac.abort();
  });

  it('rejects calls after close and fails running watches', async () => {
    const { store } = await fresh();
    await store.put('k', 1);
    const ac = new AbortController();
    const it = store.watch('', 1, ac.signal)[Symbol.asyncIterator]();
    const pending = it.next();
    await store.close();
    await expect(pending).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.get('k')).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.put('k', 2)).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.list('')).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.revision()).rejects.toBeInstanceOf(StoreClosedError);
    await expect(store.watch('', 0, ac.signal)[Symbol.asyncIterator]().next()).rejects.toBeInstanceOf(StoreClosedError);
    await store.close(); // idempotent
  });

  it('rejects bad keys and values without writing', async () => {
    const { store } = await fresh();
    await expect(store.put('', 1)).rejects.toBeInstanceOf(TypeError);
    await expect(store.put('a\uD800b', 1)).rejects.toThrow(/well-formed/);
    await expect(store.put('k', undefined)).rejects.toThrow(/JSON/);
    await expect(store.txn([{ op: 'put', key: 'ok', value: 1 }, { op: 'put', key: 'k', value: () => 1 }])).rejects.toThrow(/JSON/);
    expect(await store.revision()).toBe(0);
    expect(await store.get('ok')).toBeUndefined();
  });

  it('reopening keeps data, revision and history', async () => {
    const { store, path } = await fresh();
    await store.put('a', { x: 1 });
    const v = await store.put('b', [1, 2]);
    await store.close();
    const again = await openSqliteStore({ path });
    open.push(again);
    expect(await again.revision()).toBe(v);
    expect(await again.get('b')).toEqual({ key: 'b', value: [1, 2], version: v, createRevision: v });
    const evs: WatchEvent[] = [];
    for await (const ev of again.watch('', 0, new AbortController().signal)) {
      evs.push(ev);
      if (evs.length === 2) break;
    }
    expect(evs.map((e) => e.key)).toEqual(['a', 'b']);
    expect(await again.put('c', 3)).toBe(v + 1);
  });

  it('migrates a database from an older schema, keeping its data', async () => {
    const path = join(await tempDir(), 'old.db');
    const db = new Database(path);
    const first = MIGRATIONS[0]!; // the list is never empty
    db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL)');
    db.exec(first.sql);
    db.prepare('INSERT INTO schema_migrations VALUES (?, ?)').run(first.version, first.name);
    db.prepare("INSERT INTO kv VALUES ('old', '{\"v\":1}', 1, 1)").run();
    db.prepare("UPDATE meta SET value = 1 WHERE name = 'revision'").run();
    db.close();
    const store = await openSqliteStore({ path });
    open.push(store);
    expect(await store.get('old')).toEqual({ key: 'old', value: { v: 1 }, version: 1, createRevision: 1 });
    expect(await store.put('new', 2)).toBe(2);
    const check = new Database(path, { readonly: true });
    try {
      const versions = check.prepare('SELECT version FROM schema_migrations ORDER BY version').pluck().all();
      expect(versions).toEqual(MIGRATIONS.map((m) => m.version));
      expect(SCHEMA_VERSION).toBe(versions.at(-1));
      // Migration 2's guard is live: raw non-JSON writes are refused by the database itself.
      expect(() => check.prepare("UPDATE kv SET value = 'not json'").run()).toThrow();
    } finally {
      check.close();
    }
  });

  it('refuses a database written by a newer schema, leaving it untouched', async () => {
    const { store, path } = await fresh();
    await store.put('k', 1);
    await store.close();
    const db = new Database(path);
    db.prepare('INSERT INTO schema_migrations VALUES (?, ?)').run(SCHEMA_VERSION + 1, 'from the future');
    db.close();
    await expect(openSqliteStore({ path })).rejects.toBeInstanceOf(SchemaTooNewError);
    await expect(openSqliteStore({ path })).rejects.toThrow(/newer than this build supports/);
    const check = new Database(path, { readonly: true });
    try {
      expect(check.prepare("SELECT value FROM kv WHERE key = 'k'").pluck().get()).toBe('1');
    } finally {
      check.close();
    }
  });

  it('txnApplied: the write is readable at once; its watchers and durable follow the WAL sync, in commit order', async () => {
    const { store } = await fresh();
    const from = await store.revision();
    const ac = new AbortController();
    const seen: number[] = [];
    const watching = (async () => {
      for await (const e of store.watch('p/', from, ac.signal)) {
        seen.push(e.revision);
        if (seen.length === 3) return;
      }
    })();
    const a = await store.txnApplied([{ op: 'put', key: 'p/a', value: 1 }]);
    expect((await store.get('p/a'))?.version).toBe(a.revision);
    // The sync runs on the thread pool: nothing can have completed it within these microtasks.
    expect(seen).toEqual([]);
    // Commits made while a sync runs share the next one; all are answered in order.
    const [b, c] = await Promise.all([store.put('p/b', 1), store.txnApplied([{ op: 'put', key: 'p/c', value: 1 }]).then(async (r) => (await r.durable, r.revision))]);
    await a.durable;
    await watching;
    ac.abort();
    expect([b, c]).toEqual([a.revision + 1, a.revision + 2]);
    expect(seen).toEqual([a.revision, a.revision + 1, a.revision + 2]);
  });

  it('measures put throughput, each write synced (single puts and txns of 100)', async () => {
    const { store } = await fresh();
    const singles = 300;
    let t = performance.now();
    for (let i = 0; i < singles; i++) await store.put(`single/${i}`, { i, pad: 'x'.repeat(200) });
    const singleRate = singles / ((performance.now() - t) / 1000);
    const txns = 30;
    t = performance.now();
    for (let j = 0; j < txns; j++) {
      await store.txn(Array.from({ length: 100 }, (_, i) => ({ op: 'put' as const, key: `batch/${j}/${i}`, value: { i, pad: 'x'.repeat(200) } })));
    }
    const batchRate = (txns * 100) / ((performance.now() - t) / 1000);
    console.log(`sqlite store throughput: ${singleRate.toFixed(0)} single puts/s, ${batchRate.toFixed(0)} puts/s in txns of 100`);
    expect((await store.list('single/')).items).toHaveLength(singles);
    expect((await store.list('batch/')).items).toHaveLength(txns * 100);
    expect(await store.revision()).toBe(singles + txns);
  });
});

describe('sqlite store durability under kill -9', () => {
  let dir: string;
  const children = new Set<ChildProcess>();

  /**
   * The child runs plain node, which cannot load TypeScript on Node 20: transpile the store's
   * two modules (types erased, no type check) next to the script, and link node_modules so
   * `better-sqlite3` resolves. Independent of whether anyone has built dist/.
   */
  beforeAll(async () => {
    dir = await tempDir();
    await mkdir(join(dir, 'store'));
    for (const name of ['store.ts', 'sqlite.ts']) {
      const src = await readFile(join(here, name), 'utf8');
      const out = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 } });
      await writeFile(join(dir, 'store', name.replace(/\.ts$/, '.js')), out.outputText);
    }
    await writeFile(join(dir, 'package.json'), '{"type":"module"}\n');
    await symlink(join(repoRoot, 'node_modules'), join(dir, 'node_modules'), 'dir');
    await writeFile(
      join(dir, 'writer.mjs'),
      `import { openSqliteStore } from './store/sqlite.js';
const [path, start] = process.argv.slice(2);
const store = await openSqliteStore({ path });
for (let i = Number(start); ; i++) {
  if (i % 7 === 6) {
    await store.put('d/' + i, { i });
    const d = await store.delete('d/' + i);
    process.stdout.write('del ' + i + ' ' + d + '\\n');
  } else if (i % 5 === 4) {
    const { revision } = await store.txn([{ op: 'put', key: 'k/' + i, value: { i } }, { op: 'put', key: 't/' + i, value: { i } }]);
    process.stdout.write('txn ' + i + ' ' + revision + '\\n');
  } else {
    const v = await store.put('k/' + i, { i });
    process.stdout.write('put ' + i + ' ' + v + '\\n');
  }
}
`,
    );
  });
  afterEach(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    children.clear();
  });

  /** Run the writer until it has acknowledged `acks` writes, then SIGKILL it; returns the acknowledged lines. */
  async function runAndKill(path: string, start: number, acks: number): Promise<string[][]> {
    const child = spawn(process.execPath, [join(dir, 'writer.mjs'), path, String(start)], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let buf = '';
    let stderr = '';
    const lines: string[][] = [];
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`writer too slow: ${lines.length} acks; stderr: ${stderr}`)), 30_000);
      child.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          lines.push(buf.slice(0, nl).split(' '));
          buf = buf.slice(nl + 1);
        }
        if (lines.length >= acks) {
          clearTimeout(timer);
          child.kill('SIGKILL');
          resolve();
        }
      });
      child.on('exit', (code, signal) => {
        if (lines.length < acks) {
          clearTimeout(timer);
          reject(new Error(`writer exited early (${code ?? signal}): ${stderr}`));
        }
      });
    });
    await exited;
    expect(child.signalCode).toBe('SIGKILL');
    return lines;
  }

  it('every acknowledged write survives SIGKILL at a random point, and the revision never goes back', async () => {
    const path = join(dir, 'durable.db');
    let start = 0;
    let lastRevision = 0;
    for (let round = 0; round < 3; round++) {
      const acks = 20 + Math.floor(Math.random() * 200);
      const lines = await runAndKill(path, start, acks);
      const store = await openSqliteStore({ path });
      try {
        const rev = await store.revision();
        let maxAck = 0;
        for (const [kind, iText, vText] of lines) {
          const i = Number(iText);
          const v = Number(vText);
          maxAck = Math.max(maxAck, v);
          if (kind === 'del') {
            expect(await store.get(`d/${i}`)).toBeUndefined();
          } else {
            expect(await store.get(`k/${i}`)).toMatchObject({ value: { i }, version: v });
            if (kind === 'txn') expect(await store.get(`t/${i}`)).toMatchObject({ value: { i }, version: v });
          }
        }
        expect(rev).toBeGreaterThanOrEqual(maxAck);
        expect(rev).toBeGreaterThan(lastRevision);
        lastRevision = rev;
        // Keys written after the last line we read may exist; start the next round past them.
        start = Number(lines.at(-1)?.[1] ?? start) + 1000;
      } finally {
        await store.close();
      }
    }
  });
});
