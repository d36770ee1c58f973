/**
 * Off-store copies of the audit checkpoints. A store writer (anyone holding the etcd or SQLite
 * files) can cut the log's tail, rewrite the head and delete the checkpoints after the cut, or
 * register a key of their own and re-sign a rewritten tail: the store then verifies. A copy of
 * every checkpoint this server signs, appended to a file the operator keeps elsewhere (an
 * append-only file, `chattr +a`, a mount on another machine, a WORM bucket's sync folder),
 * catches both: `carapace audit verify --against FILE` checks the store's records against it.
 *
 * The file is JSON lines, each `{"v":1,...,"prev":H}` where H is the sha256 of the previous
 * line's text (64 zeros for the first), so a line changed, removed or inserted in the middle
 * breaks the chain. Lines are `kind: "key"` (a signing key's id and SPKI PEM, written before
 * the first checkpoint it signs) and `kind: "checkpoint"` (a signed checkpoint). A copy cut at
 * a line boundary is an older copy and still valid evidence; a cut inside a line is reported.
 */
import { createHash, verify as edVerify } from 'node:crypto';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { canonicalJson } from './canonical.js';
import { keyIdOf, toPublicKey } from './keys.js';
import { type AuditCheckpoint, checkpointMessage } from './verify.js';
import { CarapaceError } from '../model/errors.js';

const GENESIS = '0'.repeat(64);

/** One line of a copy file. */
type CopyLine = { v: 1; kind: 'key'; keyId: string; publicKey: string; time: string; prev: string } | { v: 1; kind: 'checkpoint'; checkpoint: AuditCheckpoint; prev: string };

/** What a valid copy holds: its checkpoints and the keys that signed them. */
export interface ParsedAuditCopy {
  checkpoints: AuditCheckpoint[];
  /** SPKI PEM of every key line, in file order. */
  publicKeys: string[];
  /** The highest checkpointed seq (0 for a copy with no checkpoint yet). */
  lastSeq: number;
  /** sha256 of the last line: the `prev` of the next line appended. */
  tail: string;
}

function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCheckpoint(v: unknown): v is AuditCheckpoint {
  return isObj(v) && typeof v.seq === 'number' && Number.isSafeInteger(v.seq) && v.seq >= 1 && typeof v.hash === 'string' && typeof v.time === 'string' && typeof v.keyId === 'string' && typeof v.signature === 'string';
}

/**
 * Parses and checks a copy's text (pure): every line JSON of a known kind, linked to the line
 * before, every checkpoint signed by a key named in an earlier line. `where` names the file in
 * errors. Throws CARAPACE_E_AUDIT_COPY_TRUNCATED (empty, or cut inside a line) or
 * CARAPACE_E_AUDIT_COPY_TAMPERED (with the line number as the field path).
 */
export function parseAuditCopy(text: string, where = 'audit copy'): ParsedAuditCopy {
  const truncated = (line: number, why: string): CarapaceError => new CarapaceError('CARAPACE_E_AUDIT_COPY_TRUNCATED', `${where} line ${line}: ${why}`, [{ path: `${where}:${line}`, message: why }]);
  const tampered = (line: number, why: string): CarapaceError => new CarapaceError('CARAPACE_E_AUDIT_COPY_TAMPERED', `${where} line ${line}: ${why}`, [{ path: `${where}:${line}`, message: why }]);
  if (text === '') throw truncated(1, 'the copy is empty');
  const lines = text.split('\n');
  const last = lines.pop(); // '' when the text ends with a newline, as every complete copy does
  if (last !== '') throw truncated(lines.length + 1, 'the last line is cut short (no line end): the copy was truncated inside a line');
  const keys = new Map<string, { pem: string; key: ReturnType<typeof toPublicKey> }>();
  const checkpoints: AuditCheckpoint[] = [];
  let prev = GENESIS;
  let lastSeq = 0;
  lines.forEach((raw, i) => {
    const n = i + 1;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch {
      throw tampered(n, 'not a JSON line');
    }
    if (!isObj(v) || v.v !== 1) throw tampered(n, 'not a copy line (v must be 1)');
    if (v.prev !== prev) throw tampered(n, 'does not link to the line before it (a line was changed, removed or inserted)');
    if (v.kind === 'key') {
      if (typeof v.keyId !== 'string' || typeof v.publicKey !== 'string') throw tampered(n, 'a key line needs keyId and publicKey');
      let key;
      try {
        key = toPublicKey(v.publicKey);
      } catch {
        throw tampered(n, 'the public key is not an Ed25519 SPKI PEM');
      }
      if (keyIdOf(key) !== v.keyId) throw tampered(n, `key id ${v.keyId} is not the id of the key given`);
      keys.set(v.keyId, { pem: v.publicKey, key });
    } else if (v.kind === 'checkpoint') {
      const cp = v.checkpoint;
      if (!isCheckpoint(cp)) throw tampered(n, 'a checkpoint line needs a checkpoint {seq, hash, time, keyId, signature}');
      const signer = keys.get(cp.keyId);
      if (!signer) throw tampered(n, `checkpoint ${cp.seq} names key ${cp.keyId}, which no earlier line of the copy gives`);
      let valid: boolean;
      try {
        valid = edVerify(null, checkpointMessage(cp), signer.key, Buffer.from(cp.signature, 'base64'));
      } catch {
        valid = false;
      }
      if (!valid) throw tampered(n, `checkpoint ${cp.seq} has an invalid signature`);
      checkpoints.push({ seq: cp.seq, hash: cp.hash, time: cp.time, keyId: cp.keyId, signature: cp.signature });
      lastSeq = Math.max(lastSeq, cp.seq);
    } else {
      throw tampered(n, 'unknown line kind (key or checkpoint)');
    }
    prev = sha256Hex(raw);
  });
  return { checkpoints, publicKeys: [...keys.values()].map((k) => k.pem), lastSeq, tail: prev };
}

/** Reads and checks a copy file (the CLI's `audit verify --against FILE`). */
export async function readAuditCopy(path: string): Promise<ParsedAuditCopy> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new CarapaceError('CARAPACE_E_AUDIT_COPY_UNREADABLE', `cannot read the audit copy ${path}: ${(e as Error).message}`, [{ path, message: 'unreadable' }]); // fs errors are Errors
  }
  return parseAuditCopy(text, path);
}

/**
 * Appends the checkpoints one server signs to one copy file. Opened at start: an existing
 * copy is checked first (a damaged one stops the start: appending to it would hide the
 * damage; move it aside to begin a new copy), then the signing key's line is added unless
 * the copy already has it. Each line is one write on an O_APPEND descriptor followed by
 * fdatasync, serialized, so lines never interleave and a written line survives a crash.
 */
export class AuditCopyWriter {
  private tail: string;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    tail: string,
  ) {
    this.tail = tail;
  }

  static async open(path: string, key: { keyId: string; publicKeyPem: string }, now: string): Promise<AuditCopyWriter> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'a+', 0o600);
    } catch (e) {
      throw new CarapaceError('CARAPACE_E_AUDIT_COPY_UNWRITABLE', `cannot open the audit copy ${path} for appending: ${(e as Error).message}`, [{ path: '--audit-copy', message: path }]); // fs errors are Errors
    }
    try {
      const text = await fh.readFile('utf8');
      const parsed = text === '' ? undefined : parseAuditCopy(text, path);
      const w = new AuditCopyWriter(path, fh, parsed?.tail ?? GENESIS);
      const hasKey = parsed?.publicKeys.some((pem) => keyIdOf(toPublicKey(pem)) === key.keyId) ?? false;
      if (!hasKey) await w.write({ v: 1, kind: 'key', keyId: key.keyId, publicKey: key.publicKeyPem, time: now, prev: w.tail });
      return w;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Appends one checkpoint (after the ones appended before it). */
  append(cp: AuditCheckpoint): Promise<void> {
    const run = this.queue.then(() => this.write({ v: 1, kind: 'checkpoint', checkpoint: { seq: cp.seq, hash: cp.hash, time: cp.time, keyId: cp.keyId, signature: cp.signature }, prev: this.tail }));
    this.queue = run.catch(() => undefined); // a failed write is the caller's to report; later ones still go
    return run;
  }

  private async write(line: CopyLine): Promise<void> {
    const text = canonicalJson(line);
    await this.fh.write(`${text}\n`);
    await this.fh.datasync();
    this.tail = sha256Hex(text);
  }

  async close(): Promise<void> {
    await this.queue;
    await this.fh.close();
  }
}
