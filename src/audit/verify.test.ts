import { generateKeyPairSync } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson } from './canonical.js';
import { buildLog, entry, prng } from './fixtures.js';
import { type AuditHead, type AuditRecord, GENESIS_HASH, buildRecord, computeRecordHash } from './record.js';
import { recordKey } from '../model/keys.js';
import { type AuditCheckpoint, type ProblemKind, type VerifyInput, signCheckpoint, verifyLog } from './verify.js';

const N = 6000;
const EVERY = 100;
const log = buildLog(N, EVERY);
const base = (): VerifyInput => ({ records: log.records, checkpoints: log.checkpoints, head: log.head, publicKey: log.publicKey });
const kinds = (r: { problems: { kind: ProblemKind }[] }): Set<ProblemKind> => new Set(r.problems.map((p) => p.kind));

/** Verify the window of records around index k (0-based), anchored on the record before it: detection is per record, and this keeps 20,000 verifications fast. */
function verifyWindow(records: readonly unknown[], k: number): ReturnType<typeof verifyLog> {
  const lo = Math.max(0, k - 2);
  const hi = Math.min(N, k + 3);
  const anchor = records[lo - 1] as AuditRecord | undefined; // untouched: only index k is changed by the callers
  const from: AuditHead = anchor ? { seq: anchor.seq, hash: anchor.hash } : { seq: 0, hash: GENESIS_HASH };
  const last = log.records[hi - 1]!;
  return verifyLog({ records: records.slice(lo, hi), checkpoints: [], head: { seq: last.seq, hash: last.hash }, publicKey: log.publicKey, from });
}

describe('verifyLog over 6,000 records', () => {
  it('accepts the clean log, from genesis and from a trusted checkpoint', () => {
    const t0 = performance.now();
    const r = verifyLog(base());
    const ms = performance.now() - t0;
    console.log(`pure verify of ${N} records + ${log.checkpoints.length} checkpoints: ${ms.toFixed(0)} ms`);
    expect(r).toEqual({ ok: true, records: N, lastSeq: N, checkpointedSeq: N, problems: [] });
    const cp = log.checkpoints[29]!;
    const tail = verifyLog({ ...base(), records: log.records.slice(cp.seq), from: { seq: cp.seq, hash: cp.hash } });
    expect(tail.ok).toBe(true);
    expect(tail.records).toBe(N - cp.seq);
    // Stored text is accepted as well as parsed records, and stored key order is checked.
    const asText = log.records.map((x) => JSON.stringify(x));
    expect(verifyLog({ ...base(), records: asText, recordKeys: log.records.map((x) => recordKey(x.seq)) }).ok).toBe(true);
  });

  it('detects every single-bit flip at every byte of 50 random stored records', () => {
    const rnd = prng(42);
    const picks = new Set<number>([0, N - 1]);
    while (picks.size < 50) picks.add(Math.floor(rnd() * N));
    let flips = 0;
    for (const k of picks) {
      const bytes = Buffer.from(JSON.stringify(log.records[k]), 'utf8');
      for (let pos = 0; pos < bytes.length; pos++) {
        for (const mask of [0x01]) {
          const b = Buffer.from(bytes);
          b[pos] = b[pos]! ^ mask; // pos < length
          const records: unknown[] = log.records.slice();
          records[k] = b.toString('utf8');
          const r = verifyWindow(records, k);
          flips++;
          if (r.ok || !kinds(r).has('hash')) throw new Error(`flip not detected: record index ${k}, byte ${pos}, mask ${mask}: ${JSON.stringify(r.problems)}`);
        }
      }
    }
    console.log(`byte flips checked: ${flips}, all detected`);
    expect(flips).toBeGreaterThan(50 * 100);
  });

  it('detects a changed, added or removed value in every field of 50 random records', () => {
    const rnd = prng(7);
    let changes = 0;
    const mutations = (v: unknown): unknown[] => {
      if (typeof v === 'string') return [v + 'x', v.slice(1), v.toUpperCase() === v ? v.toLowerCase() + '!' : v.toUpperCase(), ''];
      if (typeof v === 'number') return [v + 1, -v - 1, String(v)];
      if (typeof v === 'boolean') return [!v];
      if (v === null) return [0, ''];
      return [];
    };
    // Every leaf path of a record, with a setter on a deep copy.
    const leaves = (x: unknown, path: (string | number)[] = []): (string | number)[][] =>
      x !== null && typeof x === 'object'
        ? Object.entries(x).flatMap(([key, y]) => leaves(y, [...path, Array.isArray(x) ? Number(key) : key]))
        : [path];
    for (let n = 0; n < 50; n++) {
      const k = Math.floor(rnd() * N);
      const orig = log.records[k]!;
      const apply = (edit: (o: Record<string, unknown>) => void): void => {
        const copy = JSON.parse(JSON.stringify(orig)) as Record<string, unknown>; // a record is a JSON object
        edit(copy);
        const records: unknown[] = log.records.slice();
        records[k] = copy;
        const r = verifyWindow(records, k);
        changes++;
        if (r.ok) throw new Error(`field change not detected in record ${orig.seq}: ${JSON.stringify(copy)}`);
      };
      for (const path of leaves(orig)) {
        const parentPath = path.slice(0, -1);
        const last = path[path.length - 1]!;
        const parentOf = (o: Record<string, unknown>): Record<string | number, unknown> =>
          parentPath.reduce<Record<string | number, unknown>>((acc, p) => acc[p] as Record<string | number, unknown>, o);
        const value = parentPath.reduce<unknown>((acc, p) => (acc as Record<string | number, unknown>)[p], orig as unknown);
        const leaf = (value as Record<string | number, unknown>)[last];
        for (const m of mutations(leaf)) apply((o) => void (parentOf(o)[last] = m));
        if (!Array.isArray(value)) apply((o) => void delete parentOf(o)[last]);
      }
      apply((o) => void (o.extra = 'injected'));
      apply((o) => void ((o.actor as Record<string, unknown>).tenant = 'other-tenant'));
    }
    console.log(`field changes checked: ${changes}, all detected`);
    expect(changes).toBeGreaterThan(50 * 20);
  });

  it('detects random byte flips anywhere in the full log (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: N - 1 }), fc.nat(), fc.integer({ min: 1, max: 255 }), (k, at, mask) => {
        const bytes = Buffer.from(JSON.stringify(log.records[k]), 'utf8');
        const pos = at % bytes.length;
        bytes[pos] = bytes[pos]! ^ mask; // pos < length
        const records: unknown[] = log.records.slice();
        records[k] = bytes.toString('utf8');
        const r = verifyLog({ ...base(), records });
        expect(r.ok).toBe(false);
        expect(kinds(r).has('hash')).toBe(true);
      }),
      { numRuns: 15 },
    );
  });

  it('detects deleted records (property)', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 0, max: N - 1 }), { minLength: 1, maxLength: 5 }), (drop) => {
        const gone = new Set(drop);
        const records = log.records.filter((_, i) => !gone.has(i));
        const r = verifyLog({ ...base(), records });
        expect(r.ok).toBe(false);
        const first = Math.min(...drop) + 1; // seq of the first deleted record
        if (first === N) expect(kinds(r).has('truncated')).toBe(true);
        else expect(r.problems.some((p) => p.kind === 'gap' && p.seq === first)).toBe(true);
      }),
      { numRuns: 12 },
    );
  });

  it('detects two records swapped (property), by seq order and by stored key', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: N - 1 }), fc.integer({ min: 0, max: N - 1 }), (i, j) => {
        fc.pre(i !== j);
        const records = log.records.slice();
        [records[i], records[j]] = [records[j]!, records[i]!];
        const r = verifyLog({ ...base(), records });
        expect(r.ok).toBe(false);
        expect(kinds(r).has('order')).toBe(true);
        const keys = log.records.map((x) => recordKey(x.seq)); // keys stay, values swapped: as in the store
        expect(verifyLog({ ...base(), records, recordKeys: keys }).problems.some((p) => p.kind === 'order' && p.seq === log.records[j]!.seq)).toBe(true);
      }),
      { numRuns: 8 },
    );
  });

  it('detects a truncated tail: by the head, by the last checkpoint when the head was cut too, and by an external checkpoint copy', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 500 }), (cut) => {
        const records = log.records.slice(0, N - cut);
        const last = records[records.length - 1]!;
        // Head left in place: it names a record that is gone.
        const r1 = verifyLog({ ...base(), records });
        expect(r1.problems.some((p) => p.kind === 'truncated' && p.seq === N)).toBe(true);
        // Head rewritten to the new end: the signed checkpoint at N still names the removed tail.
        const r2 = verifyLog({ ...base(), records, head: { seq: last.seq, hash: last.hash } });
        expect(r2.problems.some((p) => p.kind === 'truncated' && p.seq === N)).toBe(true);
        // Checkpoints after the cut deleted too: only a copy kept elsewhere can tell.
        const kept = log.checkpoints.filter((c) => c.seq <= last.seq);
        const r3 = verifyLog({ ...base(), records, head: { seq: last.seq, hash: last.hash }, checkpoints: kept });
        expect(r3.ok).toBe(true); // the documented limit of an in-store checkpoint
        const external = log.checkpoints[log.checkpoints.length - 1]!;
        const r4 = verifyLog({ ...base(), records, head: { seq: last.seq, hash: last.hash }, checkpoints: [...kept, external] });
        expect(r4.problems.some((p) => p.kind === 'truncated')).toBe(true);
      }),
      { numRuns: 6 },
    );
    // A missing head, and an empty log whose head survived.
    expect(kinds(verifyLog({ ...base(), head: undefined })).has('truncated')).toBe(true);
    expect(kinds(verifyLog({ ...base(), records: [], checkpoints: [] })).has('truncated')).toBe(true);
  });

  it('detects forged checkpoints and a rewritten (re-hashed) log', () => {
    const cps = log.checkpoints;
    const at = 10;
    const forge = (edit: (c: AuditCheckpoint) => AuditCheckpoint): ReturnType<typeof verifyLog> =>
      verifyLog({ ...base(), checkpoints: cps.map((c, i) => (i === at ? edit({ ...c }) : c)) });
    const target = cps[at]!;
    for (const r of [
      forge((c) => ({ ...c, hash: log.records[c.seq]!.hash })),
      forge((c) => ({ ...c, seq: c.seq + 1 })),
      forge((c) => ({ ...c, time: '2030-01-01T00:00:00.000Z' })),
      forge((c) => {
        const sig = Buffer.from(c.signature, 'base64');
        sig[0] = (sig[0] ?? 0) ^ 1; // one bit flipped (setting the byte to 1 changed nothing in 1 run of 256)
        return { ...c, signature: sig.toString('base64') };
      }),
      forge((c) => ({ ...c, signature: 'not base64 at all' })),
    ]) {
      expect(r.problems.some((p) => p.kind === 'signature')).toBe(true);
    }
    // Signed by another key: named as such, and also when it claims our key id.
    const other = generateKeyPairSync('ed25519');
    const foreign = signCheckpoint({ seq: target.seq, hash: target.hash }, target.time, other.privateKey, other.publicKey);
    expect(forge(() => foreign).problems.some((p) => p.kind === 'signature' && /names key/.test(p.message))).toBe(true);
    expect(forge(() => ({ ...foreign, keyId: target.keyId })).problems.some((p) => p.kind === 'signature' && /invalid signature/.test(p.message))).toBe(true);
    // Verifying with the wrong public key rejects every checkpoint.
    expect(verifyLog({ ...base(), publicKey: other.publicKey }).problems.filter((p) => p.kind === 'signature')).toHaveLength(cps.length);

    // The whole log rewritten from record 1234 on with valid hashes (an attacker without the
    // private key): internally consistent, but the signed checkpoints no longer match.
    const rewritten: AuditRecord[] = log.records.slice(0, 1233);
    let head: AuditHead = { seq: 1233, hash: rewritten[1232]!.hash };
    for (let i = 1234; i <= N; i++) {
      const e = entry(i);
      const r = buildRecord(head, i === 1234 ? { ...e, outcome: e.outcome === 'success' ? 'failure' : 'success' } : e);
      rewritten.push(r);
      head = { seq: r.seq, hash: r.hash };
    }
    const rr = verifyLog({ ...base(), records: rewritten, head });
    expect(rr.ok).toBe(false);
    expect(rr.problems.filter((p) => p.kind === 'chain').map((p) => p.seq)).toEqual(cps.filter((c) => c.seq >= 1234).map((c) => c.seq));
  });

  it('reports malformed input instead of throwing', () => {
    const records: unknown[] = log.records.slice(0, 10);
    records[3] = 42;
    records[4] = { seq: 'five' };
    records[5] = null;
    const r = verifyLog({ records, checkpoints: [null, { seq: 1 }], head: 'x', publicKey: 'not a key' });
    expect(r.ok).toBe(false);
    expect(kinds(r)).toEqual(new Set(['hash', 'truncated', 'signature']));
    expect(computeRecordHash(log.records[0]!)).toBe(log.records[0]!.hash);
    expect(canonicalJson({ ...log.records[0]!, hash: undefined })).not.toContain('"hash"');
  });
});
