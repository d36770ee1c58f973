/**
 * What a client can ask of the control plane, as data (a discriminated union). The HTTP
 * layer parses requests strictly into these; the core never sees HTTP.
 */
import type { Kind } from '../model/objects.js';
import type { Manifest } from '../model/schemas.js';
import type { Role } from '../auth/rbac.js';

export type Action =
  /** Create or update from a manifest; `createOnly` refuses to overwrite. */
  | { type: 'apply'; manifest: Manifest; createOnly?: boolean }
  | { type: 'get'; kind: Kind; name: string; tenant?: string }
  /** All objects of a kind; `tenant` narrows tenant-scoped kinds. */
  | { type: 'list'; kind: Kind; tenant?: string }
  /** Delete (or, for instances, stop and replace); `resourceVersion` makes it conditional. */
  | { type: 'delete'; kind: Kind; name: string; tenant?: string; resourceVersion?: number }
  /** Operator actions on a host: stop placing there, move its work away, or undo both. */
  | { type: 'hostOp'; op: 'cordon' | 'uncordon' | 'drain'; name: string }
  /** Mint an API token for the caller to hand out (a role grants only what it has); the secret is in the result, once. */
  | { type: 'createToken'; name: string; role: Role; tenant?: string }
  /** Revoke an API token named by its id, or by its name when that names one live token. */
  | { type: 'revokeToken'; token: string }
  /** Create a join token for agents, valid for `ttlSeconds`; the token is in the result, once. */
  | { type: 'createJoinToken'; ttlSeconds: number; description: string }
  /** Record the certificate just issued to a host's agent, which joined with a join token or renewed. */
  | { type: 'recordAgentCert'; host: string; serial: string; notAfter: string; via: 'join' | 'renew' }
  /** Revoke a host's agent certificate (refused at once), or forget it (the host may join again). */
  | { type: 'revokeAgentCert' | 'forgetAgentCert'; host: string }
  /** Re-encrypt every Secret (or one tenant's) not sealed under the keyring's primary key (key rotation). */
  | { type: 'reencryptSecrets'; tenant?: string }
  | { type: 'reencryptKeys' }
  /**
   * Open an exec session in a running instance: checked and audited (with the command line,
   * never the session's bytes) before the session starts; the edge then runs the session.
   */
  | { type: 'exec'; tenant: string; name: string; command: string[]; tty: boolean; stdin: boolean }
  /**
   * Forward one TCP connection to `port` of a running instance: checked and audited (the
   * port, never the bytes) before the connection's bytes flow; the edge then relays them.
   */
  | { type: 'portForward'; tenant: string; name: string; port: number }
  /**
   * Rolling updates of a service (model/rollout.ts): `undo` writes an earlier revision's
   * template back (`toRevision`, default the one before the current), `restart` makes a new
   * revision of the same template, `pause`/`resume` set `spec.rollout.paused`. Each is a
   * spec change, audited `service.rollout.<op>`; the controller rolls it out.
   */
  | { type: 'rollout'; op: RolloutOp; tenant: string; name: string; toRevision?: number };

/** The rollout operations a client may ask for. */
export const ROLLOUT_OPS = ['undo', 'restart', 'pause', 'resume'] as const;
export type RolloutOp = (typeof ROLLOUT_OPS)[number];

/** Source of time and identity for deterministic writes (tests pass fixed ones). */
export interface Env {
  /** RFC 3339 timestamp. */
  now(): string;
  /** A fresh unique id (uids of objects). */
  newId(): string;
}
