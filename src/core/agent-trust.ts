/**
 * The writes of the cluster's trust in its agents: join tokens (created by an operator, or
 * the first one by the server at start), the record of the one valid certificate of each
 * host (written when an agent joins or renews), and revoking or forgetting that record. Each
 * commits with its audit record in one store transaction (Resources.commitRecords).
 * The shapes, parsing and checks are pki/agents.ts's; issuing certificates is pki/x509.ts's.
 *
 * Audit records name join tokens by id and certificates by host and serial; a join token's
 * secret (or its hash) never goes into one.
 */
import { CarapaceError } from '../model/errors.js';
import { newJoinToken, type AgentCertRecord, type JoinTokenRecord } from '../pki/agents.js';
import { agentCertKey } from '../model/keys.js';
import { normalSerial } from '../pki/x509.js';
import type { AuditEntry } from '../audit/record.js';
import { ConflictError, type TxnOp } from '../store/store.js';
import { auditEntry, type AuditContext } from './audit-context.js';
import type { Resources } from './resources.js';

/** A join token just created: the token itself (shown once) and its record as stored (with the secret's hash: not for showing). */
export interface CreatedJoinToken {
  token: string;
  record: JoinTokenRecord;
}


/** Creates a join token valid for `ttlMs`; the full token string is returned once and never stored. */
export async function createJoinToken(resources: Resources, ctx: AuditContext, o: { caFingerprint: string; now: Date; ttlMs: number; description?: string }): Promise<CreatedJoinToken> {
  const t = newJoinToken(o);
  const detail = { expiresAt: t.record.expiresAt, ...(t.record.description !== '' ? { description: t.record.description } : {}) };
  await resources.commitRecords([{ op: 'put', key: t.key, value: t.record, expect: { absent: true } }], auditEntry(ctx, t.record.createdAt, 'join-token.created', { kind: 'JoinToken', name: t.record.id }, 'success', detail));
  return { token: t.token, record: t.record };
}

/**
 * Records `serial` as the one valid certificate of `host` (replacing any earlier one), when
 * its agent joined with a join token or renewed its certificate (`via`). Refuses a host whose
 * certificate was revoked (CARAPACE_E_FORBIDDEN): an operator must forget it first, so a
 * leaked join token cannot resurrect a host taken out on purpose.
 */
export async function recordAgentCert(resources: Resources, ctx: AuditContext, o: { host: string; serial: string; notAfter: string; now: Date; via: 'join' | 'renew' }): Promise<AgentCertRecord> {
  const key = agentCertKey(o.host);
  for (let attempt = 0; attempt < 5; attempt++) {
    const cur = await resources.store.get<AgentCertRecord>(key);
    if (cur?.value.revokedAt) throw new CarapaceError('CARAPACE_E_FORBIDDEN', `host ${o.host}'s certificate was revoked at ${cur.value.revokedAt}; forget it (carapace agent-cert forget ${o.host}) before it joins again`);
    const rec: AgentCertRecord = { host: o.host, serial: normalSerial(o.serial), notAfter: o.notAfter, issuedAt: o.now.toISOString() };
    try {
      await resources.commitRecords(
        [{ op: 'put', key, value: rec, expect: cur ? { version: cur.version } : { absent: true } }],
        auditEntry(ctx, rec.issuedAt, 'agent-cert.issued', { kind: 'AgentCert', name: o.host }, 'success', { serial: rec.serial, notAfter: rec.notAfter, via: o.via }),
      );
      return rec;
    } catch (e) {
      if (!(e instanceof ConflictError && e.key === key)) throw e;
    }
  }
  throw new CarapaceError('CARAPACE_E_CONFLICT', `host ${o.host}'s certificate record keeps changing; retry`);
}

/** The certificate record of `host`, or CARAPACE_E_NOT_FOUND. */
async function certOf(resources: Resources, host: string): Promise<{ value: AgentCertRecord; version: number }> {
  const cur = await resources.store.get<AgentCertRecord>(agentCertKey(host));
  if (!cur) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `host "${host}" has no agent certificate on record`);
  return cur;
}

/**
 * Revokes `host`'s certificate: the agent API refuses it at once. Idempotent (a revoked
 * record is returned unchanged, nothing written). CARAPACE_E_CONFLICT when the record changed
 * meanwhile (the host renewed): the operator runs it again.
 */
export async function revokeAgentCert(resources: Resources, ctx: AuditContext, host: string, now: Date): Promise<AgentCertRecord> {
  const cur = await certOf(resources, host);
  if (cur.value.revokedAt) return cur.value;
  const at = now.toISOString();
  const rec: AgentCertRecord = { ...cur.value, revokedAt: at };
  await commitCert(resources, host, [{ op: 'put', key: agentCertKey(host), value: rec, expect: { version: cur.version } }], auditEntry(ctx, at, 'agent-cert.revoked', { kind: 'AgentCert', name: host }, 'success', { serial: rec.serial }));
  return rec;
}

/** Forgets `host`'s certificate record, so the host may join again with a new join token. */
export async function forgetAgentCert(resources: Resources, ctx: AuditContext, host: string, now: Date): Promise<void> {
  const cur = await certOf(resources, host);
  await commitCert(resources, host, [{ op: 'delete', key: agentCertKey(host), expect: { version: cur.version } }], auditEntry(ctx, now.toISOString(), 'agent-cert.forgotten', { kind: 'AgentCert', name: host }, 'success', { serial: cur.value.serial }));
}

/** Commits a change of one certificate record; a concurrent change of it is CARAPACE_E_CONFLICT. */
async function commitCert(resources: Resources, host: string, ops: TxnOp[], entry: AuditEntry): Promise<void> {
  try {
    await resources.commitRecords(ops, entry);
  } catch (e) {
    if (e instanceof ConflictError && e.key === agentCertKey(host)) throw new CarapaceError('CARAPACE_E_CONFLICT', `host ${host}'s certificate record changed meanwhile (it renewed or was changed by someone else); retry`);
    throw e;
  }
}
