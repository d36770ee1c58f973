/**
 * The audit record, its hash and the chain. Pure: no store, no clock, no randomness; the
 * caller passes the time and every id in, and the log (log.ts) assigns `seq` and `prevHash`
 * from the head it read.
 */
import { createHash } from 'node:crypto';
import { canonicalJson } from './canonical.js';

/** Who did it: a user (id from authentication, with the tenant they acted in) or a system component. */
export interface AuditActor {
  kind: 'user' | 'system';
  /** The user id, or the component name for system actors (e.g. `scheduler`, `cell-controller`). */
  id: string;
  tenant?: string;
}

/** What it was done to: the object's kind, tenant (absent for cluster-scoped objects) and name. */
export interface AuditTarget {
  kind: string;
  tenant?: string;
  name: string;
}

/**
 * What the caller records: everything except the chain fields. `time` is an ISO 8601 time
 * chosen by the caller (deterministic writes); `detail` is any JSON object (no secrets).
 */
export interface AuditEntry {
  time: string;
  actor: AuditActor;
  /** The remote address of the request, when it came over the network. */
  source?: string;
  /** What happened, e.g. `apply`, `delete`, `cell.created`, `instance.placed`, `quota.refused`, `failover`. */
  action: string;
  target: AuditTarget;
  outcome: 'success' | 'failure';
  detail?: Record<string, unknown>;
}

/** One stored audit record: the entry plus its place in the chain. */
export interface AuditRecord extends AuditEntry {
  /** 1, 2, 3, ... with no gaps. */
  seq: number;
  /** The `hash` of record seq-1, or GENESIS_HASH for seq 1. */
  prevHash: string;
  /** sha256 (hex) of the canonical JSON of this record without `hash`. */
  hash: string;
}

/** The chain position the next record links to; stored under HEAD_KEY. */
export interface AuditHead {
  seq: number;
  hash: string;
}

/** The prevHash of the first record. */
export const GENESIS_HASH = '0'.repeat(64);

/** sha256 hex of a string's UTF-8 bytes. */
export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/**
 * The hash a record must carry: sha256 of the canonical JSON of every field but `hash`.
 * Works on anything object-shaped, so the verifier can hash tampered or malformed input.
 */
export function computeRecordHash(record: object): string {
  const { hash: _hash, ...rest } = record as Record<string, unknown>; // any object spreads; `hash` is the one field left out
  return sha256Hex(canonicalJson(rest));
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function nonEmpty(v: unknown, what: string): void {
  if (typeof v !== 'string' || v.length === 0) throw new TypeError(`audit entry ${what} must be a non-empty string`);
}

/**
 * Check an entry's shape and return a normalized copy: exactly the known fields, optional
 * ones omitted when undefined, `detail` passed through a JSON round trip so the record the
 * store hands back later is byte-for-byte the one that was hashed. Throws a TypeError for a
 * programming error (bad shape); callers are Carapace code, not users.
 */
export function normalizeEntry(entry: AuditEntry): AuditEntry {
  if (!isPlainObject(entry)) throw new TypeError('audit entry must be an object');
  if (typeof entry.time !== 'string' || !ISO_TIME.test(entry.time) || Number.isNaN(Date.parse(entry.time))) {
    throw new TypeError('audit entry time must be an ISO 8601 date-time string');
  }
  const a = entry.actor;
  if (!isPlainObject(a) || (a.kind !== 'user' && a.kind !== 'system')) throw new TypeError("audit entry actor.kind must be 'user' or 'system'");
  nonEmpty(a.id, 'actor.id');
  if (a.tenant !== undefined) nonEmpty(a.tenant, 'actor.tenant');
  if (entry.source !== undefined) nonEmpty(entry.source, 'source');
  nonEmpty(entry.action, 'action');
  const t = entry.target;
  if (!isPlainObject(t)) throw new TypeError('audit entry target must be an object');
  nonEmpty(t.kind, 'target.kind');
  nonEmpty(t.name, 'target.name');
  if (t.tenant !== undefined) nonEmpty(t.tenant, 'target.tenant');
  if (entry.outcome !== 'success' && entry.outcome !== 'failure') throw new TypeError("audit entry outcome must be 'success' or 'failure'");
  let detail: Record<string, unknown> | undefined;
  if (entry.detail !== undefined) {
    if (!isPlainObject(entry.detail)) throw new TypeError('audit entry detail must be a JSON object');
    canonicalJson(entry.detail); // throws on what JSON cannot carry (NaN, bigint, cycles) instead of storing a changed value
    detail = JSON.parse(JSON.stringify(entry.detail)) as Record<string, unknown>; // round trip of a plain object yields a plain object
  }
  const out: AuditEntry = {
    time: entry.time,
    actor: { kind: a.kind, id: a.id, ...(a.tenant !== undefined ? { tenant: a.tenant } : {}) },
    ...(entry.source !== undefined ? { source: entry.source } : {}),
    action: entry.action,
    target: { kind: t.kind, ...(t.tenant !== undefined ? { tenant: t.tenant } : {}), name: t.name },
    outcome: entry.outcome,
    ...(detail !== undefined ? { detail } : {}),
  };
  return out;
}

/**
 * Build the record that follows `prev` (undefined: the log is empty, this is seq 1).
 * Pure and deterministic: the same head and entry always give the same record and hash.
 */
export function buildRecord(prev: AuditHead | undefined, entry: AuditEntry): AuditRecord {
  const e = normalizeEntry(entry);
  const body = { seq: (prev?.seq ?? 0) + 1, ...e, prevHash: prev?.hash ?? GENESIS_HASH };
  return { ...body, hash: computeRecordHash(body) };
}
