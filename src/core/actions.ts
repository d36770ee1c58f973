/**
 * What a client can ask of the control plane, as data (a discriminated union). The HTTP
 * layer parses requests strictly into these; the core never sees HTTP.
 */
import type { Kind } from '../model/objects.js';
import type { Manifest } from '../model/schemas.js';

export type Action =
  /** Create or update from a manifest; `createOnly` refuses to overwrite. */
  | { type: 'apply'; manifest: Manifest; createOnly?: boolean }
  | { type: 'get'; kind: Kind; name: string; tenant?: string }
  /** All objects of a kind; `tenant` narrows tenant-scoped kinds. */
  | { type: 'list'; kind: Kind; tenant?: string }
  /** Delete (or, for instances, stop and replace); `resourceVersion` makes it conditional. */
  | { type: 'delete'; kind: Kind; name: string; tenant?: string; resourceVersion?: number }
  /** Operator actions on a host: stop placing there, move its work away, or undo both. */
  | { type: 'hostOp'; op: 'cordon' | 'uncordon' | 'drain'; name: string };

/** Source of time and identity for deterministic writes (tests pass fixed ones). */
export interface Env {
  /** RFC 3339 timestamp. */
  now(): string;
  /** A fresh unique id (uids of objects). */
  newId(): string;
}
