/**
 * Signed checkpoints and the verifier. Pure: given the records, checkpoints and head (read
 * from a store, an export or a backup) and the public key, say whether the log is intact and
 * where it is not. Never throws on tampered input: every defect becomes a problem.
 */
import { sign as edSign, verify as edVerify, type KeyObject } from 'node:crypto';
import { canonicalJson } from './canonical.js';
import { keyIdOf, toPublicKey } from './keys.js';
import { type AuditHead, type AuditRecord, GENESIS_HASH, computeRecordHash } from './record.js';
import { recordKey } from '../model/keys.js';

/** A signed statement "the record at `seq` has hash `hash`", stored under `audit/checkpoints/<seq>`. */
export interface AuditCheckpoint {
  seq: number;
  hash: string;
  /** When it was signed (caller-supplied ISO 8601 time). */
  time: string;
  /** Which key signed it (see keyIdOf). */
  keyId: string;
  /** Base64 Ed25519 signature over checkpointMessage(). */
  signature: string;
}

/** The bytes a checkpoint signature covers: a domain tag plus every field but the signature. */
export function checkpointMessage(cp: Omit<AuditCheckpoint, 'signature'>): Buffer {
  // The domain tag keeps a checkpoint signature from being replayed as any other signed message.
  return Buffer.from(canonicalJson({ domain: 'carapace.audit.checkpoint/v1', seq: cp.seq, hash: cp.hash, time: cp.time, keyId: cp.keyId }), 'utf8');
}

/** Sign a checkpoint for the record `head` names. Pure apart from the signing itself (Ed25519 is deterministic). */
export function signCheckpoint(head: AuditHead, time: string, privateKey: KeyObject, publicKey: KeyObject): AuditCheckpoint {
  const body = { seq: head.seq, hash: head.hash, time, keyId: keyIdOf(publicKey) };
  return { ...body, signature: edSign(null, checkpointMessage(body), privateKey).toString('base64') };
}

/** Why a log failed verification. */
export type ProblemKind = 'hash' | 'chain' | 'gap' | 'order' | 'truncated' | 'signature';

/** One defect, at the seq where it shows. */
export interface VerifyProblem {
  seq: number;
  kind: ProblemKind;
  message: string;
}

/** What `verifyLog` reads. */
export interface VerifyInput {
  /**
   * The records in stored (key) order. Each is a parsed record or its stored JSON text;
   * anything malformed is reported, not thrown.
   */
  records: readonly unknown[];
  /** The store key each record was read from, parallel to `records`; checks key = seq. */
  recordKeys?: readonly string[];
  /** Every checkpoint available (from the store and from any copies kept elsewhere). */
  checkpoints: readonly unknown[];
  /** The head as stored; undefined when it is missing. */
  head: unknown;
  /**
   * The Ed25519 public key (KeyObject or SPKI PEM), or every key trusted to sign checkpoints
   * when several control-plane servers append to one log (each signs with its own key).
   */
  publicKey: KeyObject | string | readonly (KeyObject | string)[];
  /**
   * A trusted starting point (e.g. a checkpoint verified earlier): `records` begin right after
   * `from.seq` and the first must link to `from.hash`. Checkpoints at or below it are skipped.
   * Omit to verify from seq 1 (genesis).
   */
  from?: AuditHead;
}

/** The verdict. */
export interface VerifyResult {
  ok: boolean;
  /** How many records were examined. */
  records: number;
  /** The last seq seen (from.seq, or 0, when there were no records). */
  lastSeq: number;
  /** The highest seq covered by a valid checkpoint, 0 when none. */
  checkpointedSeq: number;
  problems: VerifyProblem[];
}

const HEX64 = /^[0-9a-f]{64}$/;

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isSeq(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 1;
}

/**
 * Verify a whole log from seq 1. Detects: a changed byte in any field of any record ('hash'),
 * a record that does not link to its predecessor ('chain'), missing records ('gap'), records
 * out of order or under the wrong key ('order'), a removed tail — records the head or a
 * signed checkpoint names are missing, or a head that does not match the last record
 * ('truncated'), and checkpoints that are not validly signed by `publicKey` (or one of the
 * keys, when several are trusted) ('signature').
 * A tail removed together with its head and every checkpoint after the cut is only caught
 * by a checkpoint kept outside the store: pass copies in `checkpoints`.
 */
export function verifyLog(input: VerifyInput): VerifyResult {
  const problems: VerifyProblem[] = [];
  const add = (seq: number, kind: ProblemKind, message: string): void => {
    problems.push({ seq, kind, message });
  };
  /** seq -> stored hash of every record whose own hash checked out. */
  const good = new Map<number, string>();
  const from = input.from;
  let prevSeq = from?.seq ?? 0;
  let prevHash: string | undefined = from?.hash ?? GENESIS_HASH;
  let lastSeq = prevSeq;
  let lastHash: string | undefined = from?.hash;

  input.records.forEach((raw, i) => {
    let rec: unknown = raw;
    const expectSeq = prevSeq + 1;
    if (typeof raw === 'string') {
      try {
        rec = JSON.parse(raw);
      } catch {
        add(expectSeq, 'hash', `record at position ${i} is not valid JSON`);
        prevSeq = expectSeq;
        prevHash = undefined; // unknown: the next record's link cannot be checked
        return;
      }
    }
    if (!isObj(rec) || !isSeq(rec.seq) || typeof rec.hash !== 'string' || typeof rec.prevHash !== 'string') {
      add(expectSeq, 'hash', `record at position ${i} is malformed (seq, prevHash or hash missing or invalid)`);
      prevSeq = expectSeq;
      prevHash = undefined;
      return;
    }
    const seq = rec.seq;
    const key = input.recordKeys?.[i];
    if (key !== undefined && key !== recordKey(seq)) add(seq, 'order', `record ${seq} is stored under ${key}`);
    let computed: string | undefined;
    try {
      computed = computeRecordHash(rec);
    } catch {
      computed = undefined; // only reachable for values JSON cannot produce; reported below
    }
    const hashOk = computed === rec.hash && HEX64.test(rec.hash);
    if (!hashOk) add(seq, 'hash', `record ${seq} does not match its hash (its content was changed)`);
    else good.set(seq, rec.hash);
    if (seq <= prevSeq) {
      add(seq, 'order', `record ${seq} comes after record ${prevSeq}`);
    } else if (seq > expectSeq) {
      add(expectSeq, 'gap', seq - expectSeq === 1 ? `record ${expectSeq} is missing` : `records ${expectSeq}..${seq - 1} are missing`);
    } else if (prevHash !== undefined && rec.prevHash !== prevHash) {
      add(seq, 'chain', `record ${seq} does not link to record ${prevSeq}`);
    }
    prevSeq = seq;
    prevHash = rec.hash;
    if (seq >= lastSeq) {
      lastSeq = seq;
      lastHash = rec.hash;
    }
  });

  const head = input.head;
  if (head === undefined || head === null) {
    if (input.records.length > 0) add(lastSeq, 'truncated', 'the head is missing');
  } else if (!isObj(head) || typeof head.seq !== 'number' || typeof head.hash !== 'string') {
    add(lastSeq, 'truncated', 'the head is malformed');
  } else if (head.seq > lastSeq) {
    add(head.seq, 'truncated', `the head names record ${head.seq} but the log ends at ${lastSeq}`);
  } else if (head.seq < lastSeq) {
    add(head.seq, 'truncated', `the head names record ${head.seq} but the log continues to ${lastSeq}`);
  } else if (head.hash !== lastHash) {
    add(head.seq, 'chain', `the head's hash does not match record ${head.seq}`);
  }

  /** Trusted keys by key id. */
  const keys = new Map<string, KeyObject>();
  for (const k of Array.isArray(input.publicKey) ? (input.publicKey as readonly (KeyObject | string)[]) : [input.publicKey as KeyObject | string]) {
    try {
      const publicKey = toPublicKey(k);
      keys.set(keyIdOf(publicKey), publicKey);
    } catch (e) {
      add(0, 'signature', `the public key is unusable: ${(e as Error).message}`); // node:crypto throws Error instances
    }
  }
  const trusted = [...keys.keys()].join(', ');
  let checkpointedSeq = 0;
  for (const cp of input.checkpoints) {
    if (!isObj(cp) || !isSeq(cp.seq) || typeof cp.hash !== 'string' || typeof cp.time !== 'string' || typeof cp.keyId !== 'string' || typeof cp.signature !== 'string') {
      add(isObj(cp) && isSeq(cp.seq) ? cp.seq : 0, 'signature', 'a checkpoint is malformed');
      continue;
    }
    if (keys.size === 0) continue;
    if (from && cp.seq <= from.seq) continue; // before the trusted start: not part of this verification
    const publicKey = keys.get(cp.keyId);
    if (!publicKey) {
      add(cp.seq, 'signature', `checkpoint ${cp.seq} names key ${cp.keyId}, not ${keys.size === 1 ? 'the verifying key' : 'one of the verifying keys'} ${trusted}`);
      continue;
    }
    let valid: boolean;
    try {
      const body = { seq: cp.seq, hash: cp.hash, time: cp.time, keyId: cp.keyId };
      valid = edVerify(null, checkpointMessage(body), publicKey, Buffer.from(cp.signature, 'base64'));
    } catch {
      valid = false;
    }
    if (!valid) {
      add(cp.seq, 'signature', `checkpoint ${cp.seq} has an invalid signature`);
      continue;
    }
    if (cp.seq > lastSeq) {
      add(cp.seq, 'truncated', `signed checkpoint ${cp.seq} is beyond the end of the log (${lastSeq}): the tail was removed`);
      continue;
    }
    const stored = good.get(cp.seq);
    if (stored === undefined) {
      // Missing or tampered: the record's own problem is already reported; say the checkpoint saw it too.
      add(cp.seq, 'chain', `signed checkpoint ${cp.seq} names a record that is missing or damaged`);
    } else if (stored !== cp.hash) {
      add(cp.seq, 'chain', `record ${cp.seq} differs from signed checkpoint ${cp.seq} (the log was rewritten)`);
    } else {
      checkpointedSeq = Math.max(checkpointedSeq, cp.seq);
    }
  }

  return { ok: problems.length === 0, records: input.records.length, lastSeq, checkpointedSeq, problems };
}

/** Type guard used by readers that need the record fields after verification. */
export function isAuditRecord(v: unknown): v is AuditRecord {
  return isObj(v) && isSeq(v.seq) && typeof v.hash === 'string' && typeof v.prevHash === 'string' && typeof v.time === 'string';
}
