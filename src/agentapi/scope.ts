/**
 * What an agent may read and write through the agent API: its own host's objects and
 * nothing else (Kubernetes' NodeRestriction, for Carapace). Pure functions over keys and
 * stored values; the server calls them on every operation and on every watch event.
 *
 * Reads: its Host and lease, the lease settings (TTL, fence grace); instances and cells placed on it; machines placed on it; the
 * open allocation records of those objects; and what its tenant networks need: every Host
 * record (their addresses are its VXLAN peers and the infrastructure no workload may reach)
 * and every tenant's network record and view (CIDR, blocks, service addresses and ready
 * endpoint addresses, names, egress policy: derived by the control plane, so no tenant's
 * specs, env or images). An agent cannot tell which tenants it will serve before their work
 * arrives, so it may read all of them: a compromised agent learns other tenants' addresses
 * and service names, nothing of their data.
 * Writes: its Host (status only, once it exists) and lease; the status of its instances
 * (`status.lastState` checked: a known reason, bounded strings), cells and machines (their
 * spec and placement never change through an agent); deletion of its instances, cells and
 * machines once the control plane asked for it; new warm cells on itself; allocation records
 * of its own objects (open ones) and new closed ones; its own usage sample batches. Never
 * the audit log, tokens, tenants, services, other hosts' anything.
 * Volumes: it reads the Volume objects bound to it (`status.host`), and writes only their
 * `status.usedBytes` and `status.message`; never their spec, binding, attachedTo, labels, nor
 * creates or deletes one (a volume's storage whose object is gone is reclaimed on the host).
 * Volume snapshots: it reads those kept on it (`status.host`, copied from the volume's binding
 * by the control plane at creation and never changed), and writes only the status of a
 * Pending one (phase Ready or Failed, sizeBytes, takenAt, reason, message); never its spec,
 * host or volume uid, nor creates or deletes one (a deleted snapshot's copy is removed on the
 * host).
 * Never Secrets, Configs or sealed secret records through the store calls either (not even
 * their keys): an agent gets the decrypted data of exactly the instances placed on it from the
 * material endpoint (server.ts), which checks the placement itself.
 */
import { isDeepStrictEqual } from 'node:util';
import {
  HOST_LEASE_SETTINGS_KEY, hostLeaseKey, INTERVALS_PREFIX, isPlacedKey, isSampleBatchOf, kindPrefix, objectKey, OPEN_PREFIX, ownerOfOpenAllocation, PLACED_PREFIXES, SAMPLES_PREFIX,
  TENANT_NETWORK_PREFIX, TENANT_NETWORK_VIEW_PREFIX, VOLUME_PREFIX, VOLUME_SNAPSHOT_PREFIX,
} from '../model/keys.js';
import { LAST_STATE_REASONS } from '../model/objects.js';

// Key prefixes of the kinds whose placement is read differently (see placedOn).
const INSTANCES = kindPrefix('Instance');
const CELLS = kindPrefix('Cell');
const MACHINES = kindPrefix('Machine');
const HOSTS = kindPrefix('Host');
const VOLUMES = VOLUME_PREFIX;

/** The host a volume value is bound to ('' when unbound or malformed). */
function volumeHost(value: unknown): string {
  const o = asObj(value);
  return typeof o?.status?.['host'] === 'string' && o.status['phase'] === 'Bound' ? o.status['host'] : '';
}

/** Why an agent's write of a volume bound to `host` is refused: anything but usedBytes and message. */
function volumeWriteProblem(host: string, w: ScopedWrite): string | undefined {
  if (w.op === 'delete') return 'an agent cannot delete a volume';
  const cur = asObj(w.current);
  if (!cur) return 'an agent cannot create a volume';
  if (volumeHost(cur) !== host) return 'the volume is not bound to this host';
  const next = asObj(w.value);
  if (!next) return 'not an object';
  const { resourceVersion: _a, ...curMd } = (cur.metadata ?? {}) as Record<string, unknown>; // the version is the store's, not the writer's
  const { resourceVersion: _b, ...nextMd } = (next.metadata ?? {}) as Record<string, unknown>; // likewise
  if (next.kind !== cur.kind || !isDeepStrictEqual(nextMd, curMd) || !isDeepStrictEqual(next.spec, cur.spec)) return "an agent cannot change a volume's identity, labels or spec";
  const keep = (st: Record<string, unknown> | undefined): Record<string, unknown> => {
    const { usedBytes: _u, message: _m, ...rest } = st ?? {};
    return rest;
  };
  if (!isDeepStrictEqual(keep(next.status), keep(cur.status))) return "an agent writes only a volume's status.usedBytes and status.message";
  const used = next.status?.['usedBytes'];
  if (used !== undefined && (typeof used !== 'number' || !Number.isSafeInteger(used) || used < 0)) return 'usedBytes must be a whole number of bytes';
  const msg = next.status?.['message'];
  if (msg !== undefined && (typeof msg !== 'string' || msg.length > 1024)) return 'message must be a string of at most 1024 characters';
  return undefined;
}

/** The host a volume snapshot value is kept on ('' when none or malformed). */
function snapshotHost(value: unknown): string {
  const o = asObj(value);
  return typeof o?.status?.['host'] === 'string' ? o.status['host'] : '';
}

/** The status fields an agent writes of a snapshot kept on it. */
const SNAPSHOT_AGENT_FIELDS = ['phase', 'sizeBytes', 'takenAt', 'reason', 'message'];

/** Why an agent's write of a volume snapshot is refused: anything but the status of a Pending one kept on its host. */
function snapshotWriteProblem(host: string, w: ScopedWrite): string | undefined {
  if (w.op === 'delete') return 'an agent cannot delete a volume snapshot';
  const cur = asObj(w.current);
  if (!cur) return 'an agent cannot create a volume snapshot';
  if (snapshotHost(cur) !== host) return 'the snapshot is not kept on this host';
  if (cur.status?.['phase'] !== 'Pending') return 'an agent writes only a Pending snapshot (a Ready or Failed one is final)';
  const next = asObj(w.value);
  if (!next) return 'not an object';
  const { resourceVersion: _a, ...curMd } = (cur.metadata ?? {}) as Record<string, unknown>; // the version is the store's, not the writer's
  const { resourceVersion: _b, ...nextMd } = (next.metadata ?? {}) as Record<string, unknown>; // likewise
  if (next.kind !== cur.kind || !isDeepStrictEqual(nextMd, curMd) || !isDeepStrictEqual(next.spec, cur.spec)) return "an agent cannot change a snapshot's identity, labels or spec";
  const rest = (st: Record<string, unknown> | undefined): Record<string, unknown> => Object.fromEntries(Object.entries(st ?? {}).filter(([k]) => !SNAPSHOT_AGENT_FIELDS.includes(k)));
  if (!isDeepStrictEqual(rest(next.status), rest(cur.status))) return "an agent writes only a snapshot's status.phase, sizeBytes, takenAt, reason and message (never its host or volume)";
  const st = next.status ?? {};
  if (!['Pending', 'Ready', 'Failed'].includes(st['phase'] as string)) return 'phase must be Pending, Ready or Failed';
  const size = st['sizeBytes'];
  if (size !== undefined && (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)) return 'sizeBytes must be a whole number of bytes';
  for (const f of ['takenAt', 'reason', 'message']) {
    const v = st[f];
    if (v !== undefined && (typeof v !== 'string' || v.length > 1024)) return `${f} must be a string of at most 1024 characters`;
  }
  return undefined;
}

/** The fields of an instance's `status.lastState` (model/objects.ts InstanceLastState). */
const LAST_STATE_FIELDS = ['exitCode', 'reason', 'message', 'containerId', 'startedAt', 'finishedAt'];

/**
 * Why an instance's `status.lastState` written by an agent is refused: it is shown to the
 * tenant's users (describe, the dashboard), so its shape and sizes are checked here like
 * the other agent-written fields, not trusted.
 */
export function lastStateProblem(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'status.lastState must be an object';
  const o = v as Record<string, unknown>; // `as`: a non-null, non-array object; checked field by field below
  const extra = Object.keys(o).find((k) => !LAST_STATE_FIELDS.includes(k));
  if (extra !== undefined) return `status.lastState.${extra.slice(0, 64)} is not a field of lastState`;
  if (typeof o['exitCode'] !== 'number' || !Number.isInteger(o['exitCode']) || o['exitCode'] < 0 || o['exitCode'] > 255) return 'status.lastState.exitCode must be a whole number from 0 to 255';
  if (typeof o['reason'] !== 'string' || !(LAST_STATE_REASONS as readonly string[]).includes(o['reason'])) return `status.lastState.reason must be one of ${LAST_STATE_REASONS.join(', ')}`;
  for (const [f, max] of [['message', 1024], ['containerId', 128], ['startedAt', 64], ['finishedAt', 64]] as const) {
    const x = o[f];
    if (f === 'finishedAt' && x === undefined) return 'status.lastState.finishedAt is required';
    if (x !== undefined && (typeof x !== 'string' || x.length > max)) return `status.lastState.${f} must be a string of at most ${max} characters`;
  }
  return undefined;
}

type Obj = { kind?: unknown; metadata?: { name?: unknown; uid?: unknown; deletionRequestedAt?: unknown }; spec?: Record<string, unknown>; status?: Record<string, unknown> };

function asObj(v: unknown): Obj | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Obj) : undefined; // shape checked field by field below
}

/** The host an instance, cell or machine value is placed on, or a volume bound to ('' when none or malformed). */
export function placedOn(key: string, value: unknown): string {
  const o = asObj(value);
  if (!o) return '';
  if (key.startsWith(INSTANCES) || key.startsWith(CELLS)) return typeof o.spec?.['host'] === 'string' ? o.spec['host'] : '';
  if (key.startsWith(MACHINES)) return typeof o.status?.['host'] === 'string' ? o.status['host'] : '';
  // A volume is "placed" where it is bound: its agent's status writes carry its allocation records.
  if (key.startsWith(VOLUMES)) return volumeHost(value);
  return '';
}

/** True for keys of the objects an agent works on (instances, cells, machines). */
export function isWorkloadKey(key: string): boolean {
  return isPlacedKey(key);
}

/**
 * May `host` read the entry at `key` holding `value`? `ownerOf` answers for `usage/open/`
 * keys: the value of the object the record belongs to (the key after the prefix).
 */
export function mayRead(host: string, key: string, value: unknown, ownerOf?: unknown): boolean {
  if (key === objectKey('Host', host) || key === hostLeaseKey(host) || key === HOST_LEASE_SETTINGS_KEY) return true;
  if (key.startsWith(HOSTS) || key.startsWith(TENANT_NETWORK_PREFIX) || key.startsWith(TENANT_NETWORK_VIEW_PREFIX)) return true;
  if (isWorkloadKey(key)) return placedOn(key, value) === host;
  if (key.startsWith(OPEN_PREFIX)) return ownerOf !== undefined && placedOn(ownerOfOpenAllocation(key), ownerOf) === host;
  if (key.startsWith(SAMPLES_PREFIX)) return isSampleBatchOf(key, host);
  if (key.startsWith(VOLUMES)) return volumeHost(value) === host;
  if (key.startsWith(VOLUME_SNAPSHOT_PREFIX)) return snapshotHost(value) === host;
  return false;
}

/** The prefixes an agent may list or watch (results are then filtered per entry with mayRead). */
export function mayListPrefix(host: string, prefix: string): boolean {
  if ([...PLACED_PREFIXES, SAMPLES_PREFIX, HOSTS, TENANT_NETWORK_PREFIX, TENANT_NETWORK_VIEW_PREFIX, VOLUMES, VOLUME_SNAPSHOT_PREFIX].some((p) => prefix.startsWith(p))) return true;
  return prefix === objectKey('Host', host) || prefix === hostLeaseKey(host);
}

/** One write as the server sees it: the op, and the value stored now (undefined when absent). */
export interface ScopedWrite {
  op: 'put' | 'delete';
  key: string;
  value?: unknown;
  current: unknown;
  /** For `usage/open/` keys: the current value of the object the record belongs to. */
  owner?: unknown;
}

/** Why `host` may not make this write, or undefined when it may. */
export function writeProblem(host: string, w: ScopedWrite): string | undefined {
  const { key } = w;
  if (key === hostLeaseKey(host)) return w.op === 'put' ? undefined : 'an agent cannot delete its lease';
  if (key === objectKey('Host', host)) {
    if (w.op === 'delete') return 'an agent cannot delete its host';
    const next = asObj(w.value);
    const cur = asObj(w.current);
    if (!next || next.kind !== 'Host' || next.metadata?.name !== host) return 'a host record must be the Host named after the agent';
    // The operator owns the spec (cordon, drain, overcommit) once the host exists.
    if (cur && !isDeepStrictEqual(cur.spec, next.spec)) return "an agent cannot change its host's spec (cordon, drain, overcommit are the operator's)";
    if (!cur && (next.spec?.['unschedulable'] !== false || next.spec?.['draining'])) return 'a new host starts schedulable';
    return undefined;
  }
  if (isWorkloadKey(key)) {
    const cur = asObj(w.current);
    if (w.op === 'delete') {
      if (!cur || placedOn(key, cur) !== host) return 'not placed on this host';
      return cur.metadata?.deletionRequestedAt ? undefined : 'the control plane has not asked to delete it';
    }
    const next = asObj(w.value);
    if (!next) return 'not an object';
    if (!cur) {
      // The only object an agent creates: a warm cell of its own pool.
      const spec = next.spec ?? {};
      if (key.startsWith(CELLS) && next.kind === 'Cell' && spec['host'] === host && spec['tenant'] === '' && spec['warm'] === true) return undefined;
      return 'an agent can only create warm cells on itself';
    }
    if (placedOn(key, cur) !== host) return 'not placed on this host';
    if (next.kind !== cur.kind || next.metadata?.uid !== cur.metadata?.uid || next.metadata?.name !== cur.metadata?.name) return 'an agent cannot replace an object with another';
    if (!isDeepStrictEqual(next.spec, cur.spec)) return 'an agent cannot change the spec (placement, tenant, size) of what it runs';
    if (placedOn(key, next) !== host) return 'an agent cannot move what it runs to another host';
    if (cur.metadata?.deletionRequestedAt && !next.metadata?.deletionRequestedAt) return 'an agent cannot undo a deletion';
    if (key.startsWith(INSTANCES)) return lastStateProblem(next.status?.['lastState']);
    return undefined;
  }
  // Open allocation records follow the object they account for (as stored before this write).
  if (key.startsWith(OPEN_PREFIX)) return placedOn(ownerOfOpenAllocation(key), w.owner) === host ? undefined : 'the allocation belongs to no object on this host';
  if (key.startsWith(INTERVALS_PREFIX)) return w.op === 'put' && w.current === undefined ? undefined : 'closed allocation records are written once';
  if (key.startsWith(SAMPLES_PREFIX)) return isSampleBatchOf(key, host) ? undefined : 'an agent writes only its own usage samples';
  if (key.startsWith(VOLUMES)) return volumeWriteProblem(host, w);
  if (key.startsWith(VOLUME_SNAPSHOT_PREFIX)) return snapshotWriteProblem(host, w);
  return `agents cannot write ${key.split('/')[0] ?? key}`;
}
