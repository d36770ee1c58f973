/**
 * Who a mutation is for, and the audit entries the core writes on its behalf. Every action
 * of the core carries one AuditContext; the HTTP edge builds it from the authenticated
 * principal (contextFor), the control plane's own loops use SYSTEM. Pure.
 */
import type { AuditActor, AuditEntry, AuditTarget } from '../audit/record.js';
import type { Principal } from '../auth/rbac.js';

/** Who a mutation is for, and from where: the audit log's actor and source. */
export interface AuditContext {
  actor: AuditActor;
  source?: string;
  /**
   * The authenticated caller, for the actions whose own rules depend on who asks (a role
   * may only grant or revoke the tokens it could create). Absent for the system.
   */
  principal?: Principal;
}

/** Mutations the control plane makes on its own behalf. */
export const SYSTEM: AuditContext = { actor: { kind: 'system', id: 'carapace' } };

/** The context of a request by `principal` (undefined: no valid token) from `source` (its remote address). */
export function contextFor(principal: Principal | undefined, source?: string): AuditContext {
  return {
    actor: principal ? { kind: 'user', id: `token:${principal.tokenId}`, ...(principal.tenant ? { tenant: principal.tenant } : {}) } : { kind: 'user', id: 'anonymous' },
    ...(source !== undefined ? { source } : {}),
    ...(principal ? { principal } : {}),
  };
}

/**
 * The audit entry of one mutation for `ctx` at `time`. `detail` must never hold a secret, a
 * secret's hash or a join token: it is exported to tenants and tools.
 */
export function auditEntry(ctx: AuditContext, time: string, action: string, target: AuditTarget, outcome: 'success' | 'failure' = 'success', detail?: Record<string, unknown>): AuditEntry {
  return {
    time,
    actor: ctx.actor,
    ...(ctx.source ? { source: ctx.source } : {}),
    action,
    target,
    outcome,
    ...(detail ? { detail } : {}),
  };
}
