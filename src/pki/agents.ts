/**
 * Join tokens and agent certificates.
 *
 * A join token (`carapace join-token create`, or the one `carapace server` prints at first
 * start) is `K1<ca-fingerprint>::<id>.<secret>`: the fingerprint lets a joining agent check it
 * talks to this cluster before it trusts anything (kubeadm's CA pinning, k3s's token shape);
 * only a hash of the secret is stored. With a valid token an agent gets a client certificate
 * for `host:<name>`, issued by the cluster CA; the registry (`pki/agents/<host>`) keeps the
 * one serial that is valid for each host, so re-joining or renewing replaces the old
 * certificate and revoking refuses it at once, without a CRL.
 *
 * This module holds the shapes, parsing and checks; writing join tokens and certificate
 * records (with their audit records) is core/agent-trust.ts's.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { CarapaceError } from '../model/errors.js';
import { joinTokenKey } from '../model/keys.js';
import type { Store } from '../store/store.js';
import { normalSerial } from './x509.js';

/** How long agent certificates are valid; agents renew when a third of it is left. */
export const AGENT_CERT_DAYS = 30;

export interface JoinTokenRecord {
  id: string;
  /** sha256 of the secret, hex. */
  hash: string;
  createdAt: string;
  expiresAt: string;
  description: string;
}

export interface AgentCertRecord {
  host: string;
  /** The only serial accepted for this host (normalised hex). */
  serial: string;
  notAfter: string;
  issuedAt: string;
  revokedAt?: string;
}

const hashOf = (secret: string): string => createHash('sha256').update(secret).digest('hex');

/** A new join token and the record to store (at `key`, create-only); nothing is written. */
export function newJoinToken(o: { caFingerprint: string; now: Date; ttlMs: number; description?: string }): { token: string; record: JoinTokenRecord; key: string } {
  const id = randomBytes(4).toString('hex');
  const secret = randomBytes(24).toString('base64url');
  const record: JoinTokenRecord = { id, hash: hashOf(secret), createdAt: o.now.toISOString(), expiresAt: new Date(o.now.getTime() + o.ttlMs).toISOString(), description: o.description ?? '' };
  return { token: `K1${o.caFingerprint}::${id}.${secret}`, record, key: joinTokenKey(id) };
}

/** The parts of a join token, or a clear error. */
export function parseJoinToken(token: string): { caFingerprint: string; id: string; secret: string } {
  const m = /^K1([0-9a-f]{64})::([0-9a-f]{8})\.([A-Za-z0-9_-]{16,64})$/.exec(token.trim());
  if (!m) throw new CarapaceError('CARAPACE_E_BAD_JOIN_TOKEN', 'the join token is malformed (expected K1<ca sha256>::<id>.<secret>, as `carapace join-token create` prints it)');
  return { caFingerprint: m[1] as string, id: m[2] as string, secret: m[3] as string }; // all three groups match
}

/** Checks a join token's id and secret against the store; throws CARAPACE_E_BAD_JOIN_TOKEN. */
export async function checkJoinToken(store: Store, id: string, secret: string, now: Date): Promise<JoinTokenRecord> {
  const rec = (await store.get<JoinTokenRecord>(joinTokenKey(id)))?.value;
  const ok = rec !== undefined && timingSafeEqual(Buffer.from(rec.hash, 'hex'), Buffer.from(hashOf(secret), 'hex'));
  if (!ok) throw new CarapaceError('CARAPACE_E_BAD_JOIN_TOKEN', 'the join token is not known to this cluster');
  if (Date.parse(rec.expiresAt) <= now.getTime()) throw new CarapaceError('CARAPACE_E_BAD_JOIN_TOKEN', `the join token expired at ${rec.expiresAt}; create a new one with carapace join-token create`);
  return rec;
}

/** Why a presented agent certificate is not acceptable, or undefined when it is. */
export function agentCertProblem(rec: AgentCertRecord | undefined, serial: string, now: Date): string | undefined {
  if (!rec) return 'this host has no certificate on record (it never joined, or was forgotten)';
  if (rec.revokedAt) return `this host's certificate was revoked at ${rec.revokedAt}`;
  if (rec.serial !== normalSerial(serial)) return 'this certificate was replaced (the host re-joined or renewed); use the newest one';
  if (Date.parse(rec.notAfter) <= now.getTime()) return 'this certificate expired';
  return undefined;
}
