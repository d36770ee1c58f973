/**
 * Typed access to stored objects over the versioned Store: everything above it works with
 * Tenant, Service, Instance… values, not keys (the key layout is model/'s).
 * `metadata.resourceVersion` is always the store version of the entry read (never trusted
 * from the stored JSON).
 */
import { CarapaceError } from '../model/errors.js';
import type { AnyObject, Kind, ObjectOfKind } from '../model/objects.js';
import { kindPrefix, objectKey, keyOf } from '../model/keys.js';
import { ConflictError, type Entry, type Store, type TxnOp } from '../store/store.js';
import type { AuditLog, MutationOps } from '../audit/log.js';
import type { AuditEntry } from '../audit/record.js';
import type { Env } from './actions.js';
import { allocationOps } from './allocations.js';

function withVersion<T extends AnyObject>(entry: Entry<T>): T {
  const obj = entry.value;
  obj.metadata.resourceVersion = entry.version;
  return obj;
}

/**
 * Typed object repository; safe to share across the control plane and the agent in one process.
 * Writes given an audit entry go through the audit log's commit: the record and the write land
 * in one store transaction, so an acknowledged mutation is always in the log, and a mutation
 * whose record cannot be written fails.
 */
export class Resources {
  /**
   * `env`, when given, turns on usage accounting: writes of instances, cells and machines
   * carry their allocation records (core/allocations.ts) in the same transaction, stamped
   * with `env.now()`. Omitted in tests that do not look at usage.
   */
  constructor(
    readonly store: Store,
    readonly audit?: AuditLog,
    private readonly env?: Env,
  ) {}

  /**
   * Applies one op, with its audit record and allocation records in the same transaction.
   * `after` is the object as the op leaves it (undefined for a delete).
   */
  private async commitOp(op: TxnOp, entry: AuditEntry | undefined, after: AnyObject | undefined): Promise<number> {
    const env = this.env;
    // Recomputed on every attempt of the audit commit: the open record may have moved.
    const withAllocations = async (): Promise<TxnOp[]> => (env ? [op, ...(await allocationOps(this.store, op.key, after, env.now(), () => env.newId()))] : [op]);
    if (entry && this.audit) return (await this.audit.commit(entry, withAllocations)).revision;
    const ops = await withAllocations();
    if (ops.length > 1) return (await this.store.txn(ops)).revision;
    if (op.op === 'put') return this.store.put(op.key, op.value, op.expect);
    const rev = await this.store.delete(op.key, op.expect);
    return rev ?? 0;
  }

  /**
   * Writes records that are not objects (API tokens, join tokens, agent certificates) with
   * their audit record in one transaction, as write() does for objects. `ops` may be a
   * function: it is run again for each attempt of the audit commit. A conflict on the
   * records' own keys is thrown as the store's ConflictError (the caller re-reads and decides).
   * Returns the revision of the transaction.
   */
  async commitRecords(ops: MutationOps, audit: AuditEntry): Promise<number> {
    if (this.audit) return (await this.audit.commit(audit, ops)).revision;
    return (await this.store.txn([...(typeof ops === 'function' ? await ops() : ops)])).revision;
  }

  /**
   * Records a refused request (outcome `failure`): who tried what, and why it was refused.
   * Nothing else is written. A no-op without an audit log.
   */
  async recordRefusal(audit: AuditEntry): Promise<void> {
    await this.audit?.append(audit);
  }

  /** The object, or undefined when absent. */
  async get<K extends Kind>(kind: K, name: string, tenant?: string): Promise<ObjectOfKind<K> | undefined> {
    const e = await this.store.get<ObjectOfKind<K>>(objectKey(kind, name, tenant));
    return e ? withVersion(e) : undefined;
  }

  /** The object, or CARAPACE_E_NOT_FOUND. */
  async mustGet<K extends Kind>(kind: K, name: string, tenant?: string): Promise<ObjectOfKind<K>> {
    const o = await this.get(kind, name, tenant);
    if (!o) {
      const where = tenant !== undefined ? ` in tenant "${tenant}"` : '';
      throw new CarapaceError('CARAPACE_E_NOT_FOUND', `${kind.toLowerCase()} "${name}"${where} not found`);
    }
    return o;
  }

  /** Every object of a kind, optionally of one tenant, with the revision the list is consistent with. */
  async list<K extends Kind>(kind: K, tenant?: string): Promise<{ items: ObjectOfKind<K>[]; revision: number }> {
    const r = await this.store.list<ObjectOfKind<K>>(kindPrefix(kind, tenant));
    return { items: r.items.map(withVersion), revision: r.revision };
  }

  /**
   * Writes an object with compare-and-set: `expectVersion` 0 means "must not exist",
   * a number means "must be at this version", undefined writes unconditionally.
   * Returns the object with its new resourceVersion. Conflicts become CARAPACE_E_CONFLICT
   * (or CARAPACE_E_ALREADY_EXISTS for create-only writes).
   */
  async write<T extends AnyObject>(obj: T, expectVersion?: number, audit?: AuditEntry): Promise<T> {
    const key = keyOf(obj);
    const expect = expectVersion === undefined ? undefined : expectVersion === 0 ? { absent: true as const } : { version: expectVersion };
    try {
      const version = await this.commitOp({ op: 'put', key, value: obj, ...(expect ? { expect } : {}) }, audit, obj);
      return { ...obj, metadata: { ...obj.metadata, resourceVersion: version } };
    } catch (e) {
      if (e instanceof ConflictError) {
        if (expectVersion === 0 && e.key === key) {
          throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `${obj.kind.toLowerCase()} "${obj.metadata.name}" already exists`);
        }
        throw new CarapaceError(
          'CARAPACE_E_CONFLICT',
          `${obj.kind.toLowerCase()} "${obj.metadata.name}" was changed by someone else (resourceVersion ${expectVersion ?? '?'} given, ${e.actualVersion} stored); re-read and retry`,
        );
      }
      throw e;
    }
  }

  /**
   * Writes several objects in ONE store transaction with their audit records (consecutive,
   * in the same transaction) and allocation records: all land or none does. `expectVersion`
   * per object as in `write` (0: must not exist). Returns the objects with their new
   * resourceVersion. A failed precondition is CARAPACE_E_CONFLICT naming the object (or
   * CARAPACE_E_ALREADY_EXISTS for a create-only write); nothing was written then. Keep a call
   * well under the store's transaction limit (etcd: 128 operations, counting these records).
   * `records`: writes of records that are not objects (a tenant network and its claim) that
   * must land with these objects; a failed precondition on one is CARAPACE_E_CONFLICT naming
   * its key.
   */
  async writeAll(writes: readonly { obj: AnyObject; expectVersion?: number }[], audits: readonly AuditEntry[] = [], records: readonly TxnOp[] = []): Promise<AnyObject[]> {
    if (writes.length === 0) return [];
    const env = this.env;
    const puts: TxnOp[] = [
      ...writes.map(({ obj, expectVersion }): TxnOp => ({
        op: 'put',
        key: keyOf(obj),
        value: obj,
        ...(expectVersion === undefined ? {} : { expect: expectVersion === 0 ? { absent: true as const } : { version: expectVersion } }),
      })),
      ...records,
    ];
    // Recomputed on every attempt of the audit commit: open allocation records may have moved.
    const ops = async (): Promise<TxnOp[]> => {
      if (!env) return puts;
      const extra = await Promise.all(writes.map(({ obj }) => allocationOps(this.store, keyOf(obj), obj, env.now(), () => env.newId())));
      return [...puts, ...extra.flat()];
    };
    let revision: number;
    try {
      if (audits.length > 0 && this.audit) revision = (await this.audit.commitBatch(audits, ops)).revision;
      else revision = (await this.store.txn(await ops())).revision;
    } catch (e) {
      if (e instanceof ConflictError) {
        const w = writes.find(({ obj }) => keyOf(obj) === e.key);
        if (w?.expectVersion === 0) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `${w.obj.kind.toLowerCase()} "${w.obj.metadata.name}" already exists`);
        const what = w ? `${w.obj.kind.toLowerCase()} "${w.obj.metadata.name}"` : e.key;
        throw new CarapaceError('CARAPACE_E_CONFLICT', `${what} was changed by someone else (resourceVersion ${w?.expectVersion ?? '?'} given, ${e.actualVersion} stored); re-read and retry`);
      }
      throw e;
    }
    return writes.map(({ obj }) => ({ ...obj, metadata: { ...obj.metadata, resourceVersion: revision } }));
  }

  /**
   * Read-modify-write with retry on conflict: `fn` gets a fresh copy and returns the new
   * object, or undefined to leave it unchanged. Returns the stored result (undefined when
   * the object is absent). Use for fields one writer owns (e.g. the agent's status).
   */
  async mutate<K extends Kind>(
    kind: K,
    name: string,
    tenant: string | undefined,
    fn: (o: ObjectOfKind<K>) => ObjectOfKind<K> | undefined,
    audit?: AuditEntry,
  ): Promise<ObjectOfKind<K> | undefined> {
    for (let attempt = 0; ; attempt++) {
      const cur = await this.get(kind, name, tenant);
      if (!cur) return undefined;
      const next = fn(structuredClone(cur));
      if (!next) return cur;
      try {
        return await this.write(next, cur.metadata.resourceVersion, audit);
      } catch (e) {
        if (e instanceof CarapaceError && e.code === 'CARAPACE_E_CONFLICT' && attempt < 50) continue;
        throw e;
      }
    }
  }

  /** Deletes an object (with an optional version precondition); false when it was absent. */
  async remove(kind: Kind, name: string, tenant?: string, expectVersion?: number, audit?: AuditEntry): Promise<boolean> {
    const key = objectKey(kind, name, tenant);
    try {
      if (audit && this.audit) {
        // The audit record must only be written when the object really goes: require it to exist.
        const cur = expectVersion === undefined ? await this.store.get(key) : undefined;
        if (expectVersion === undefined && !cur) return false;
        await this.commitOp({ op: 'delete', key, expect: { version: expectVersion ?? cur?.version ?? 0 } }, audit, undefined);
        return true;
      }
      if (this.env) {
        // With accounting on, the deletion closes the allocation in the same txn: the key
        // must exist (a txn delete of an absent key would still commit the accounting).
        const cur = expectVersion === undefined ? await this.store.get(key) : undefined;
        if (expectVersion === undefined && !cur) return false;
        await this.commitOp({ op: 'delete', key, expect: { version: expectVersion ?? cur?.version ?? 0 } }, undefined, undefined);
        return true;
      }
      const rev = await this.store.delete(key, expectVersion === undefined ? undefined : { version: expectVersion });
      return rev !== undefined;
    } catch (e) {
      if (e instanceof ConflictError) {
        if (e.actualVersion === 0) return false;
        throw new CarapaceError(
          'CARAPACE_E_CONFLICT',
          `${kind.toLowerCase()} "${name}" was changed by someone else (resourceVersion ${expectVersion ?? '?'} given, ${e.actualVersion} stored)`,
        );
      }
      throw e;
    }
  }
}
