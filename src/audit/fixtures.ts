/**
 * Test fixtures for the audit tests: deterministic entries and an in-memory chained log.
 * Test-only (imported by *.test.ts); not part of the library surface.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import type { AuditEntry, AuditHead, AuditRecord } from './record.js';
import { buildRecord } from './record.js';
import { type AuditCheckpoint, signCheckpoint } from './verify.js';

/** The project's seeded PRNG (mulberry32, from sim/) so fixtures and samples are reproducible. */
export { rng as prng } from '../sim/sim.js';

const ACTIONS = ['apply', 'delete', 'cell.created', 'instance.placed', 'quota.refused', 'failover'];
const TENANTS = ['acme', 'globex', 'initech'];

/** Entry number i: varied actors, tenants, optional fields, unicode and CSV-hostile text. */
export function entry(i: number): AuditEntry {
  const tenant = TENANTS[i % TENANTS.length]!; // index is in range by modulo
  const system = i % 7 === 0;
  const e: AuditEntry = {
    time: new Date(Date.UTC(2025, 0, 1) + i * 1000).toISOString(),
    actor: system ? { kind: 'system', id: 'scheduler' } : { kind: 'user', id: `user-${i % 13}`, tenant },
    action: ACTIONS[i % ACTIONS.length]!, // index is in range by modulo
    target: { kind: i % 2 ? 'Service' : 'Job', tenant, name: `svc-${i}${i % 11 === 0 ? ',"quoted"\nname' : ''}` },
    outcome: i % 5 === 0 ? 'failure' : 'success',
  };
  if (i % 3 === 0) e.source = `10.0.${i % 256}.${(i * 7) % 256}`;
  if (i % 4 === 0) e.detail = { replicas: i % 9, image: `reg/app:${i}`, note: i % 8 === 0 ? 'größe ✓' : null, tags: ['a', i] };
  return e;
}

/** A chained in-memory log of `n` records with a signed checkpoint every `every` records. */
export function buildLog(n: number, every: number, keys = generateKeyPairSync('ed25519')): {
  records: AuditRecord[];
  checkpoints: AuditCheckpoint[];
  head: AuditHead;
  privateKey: KeyObject;
  publicKey: KeyObject;
} {
  const records: AuditRecord[] = [];
  const checkpoints: AuditCheckpoint[] = [];
  let head: AuditHead | undefined;
  for (let i = 1; i <= n; i++) {
    const r = buildRecord(head, entry(i));
    records.push(r);
    head = { seq: r.seq, hash: r.hash };
    if (r.seq % every === 0) checkpoints.push(signCheckpoint(head, r.time, keys.privateKey, keys.publicKey));
  }
  if (!head) throw new Error('buildLog needs n >= 1');
  return { records, checkpoints, head, privateKey: keys.privateKey, publicKey: keys.publicKey };
}
