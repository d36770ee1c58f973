/**
 * The audit library's public surface: a hash-chained, checkpoint-signed audit log over the
 * Store (see README.md). Import from here.
 */
export { canonicalJson } from './canonical.js';
export {
  type AuditActor, type AuditEntry, type AuditHead, type AuditRecord, type AuditTarget,
  AUDIT_PREFIX, CHECKPOINT_PREFIX, GENESIS_HASH, HEAD_KEY, SIGNING_KEYS_PREFIX,
  buildRecord, checkpointKey, computeRecordHash, normalizeEntry, recordKey, seqOfRecordKey, signingKeyKey,
} from './record.js';
export { type AuditKeyPair, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, keyIdOf, loadOrCreateKeyPair, toPublicKey } from './keys.js';
export {
  type AuditCheckpoint, type ProblemKind, type VerifyInput, type VerifyProblem, type VerifyResult,
  checkpointMessage, isAuditRecord, signCheckpoint, verifyLog,
  /** The pure verifier under the name the design uses: `verify({records, checkpoints, head, publicKey})`. */
  verifyLog as verify,
} from './verify.js';
export { type ExportFilter, type ExportOptions, CSV_COLUMNS, csvField, exportLines, formatExport, recordFilter, toCsvLine, toJsonLine } from './export.js';
export {
  type AuditLogOptions, type AuditSnapshot, type RegisteredKey, type MutationOps, type PreparedAudit, type PreparedAuditBatch,
  AuditLog, isAuditConflict,
} from './log.js';
