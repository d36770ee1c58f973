/**
 * The store's key layout, in one place: every prefix and every key builder the control plane,
 * the agents and the agent API's scope check use. A module that reads or writes the store
 * takes its keys from here, so a rule about a key (who may write it, which writes carry
 * allocation records, which keys are audit records) cannot drift from where the key is
 * written. Pure string arithmetic (model/ imports nothing effectful).
 *
 * | key | holds |
 * |---|---|
 * | `<plural>/<name>`, `<plural>/<tenant>/<name>` | objects (tenants, services, jobs, instances, hosts, cells, machines, volumes, volumesnapshots, secrets, configs) |
 * | `leases/hosts/<host>` | a host agent's liveness lease |
 * | `tokens/<id>`, `auth/bootstrap` | API token records; marker of the first admin token |
 * | `pki/ca`, `pki/join-tokens/<id>`, `pki/agents/<host>` | the cluster CA (its private key sealed with the keyring), join tokens, agent certificates on record |
 * | `audit/<seq>`, `audit/head`, `audit/checkpoints/<seq>`, `audit/keys/<keyId>` | the hash-chained audit log |
 * | `usage/open/<object key>`, `usage/intervals/<id>`, `usage/samples/<day>/<ms>-<host>` | allocation records and measured samples |
 * | `election/<name>/<lease>` | etcd leader-election candidates |
 * | `networks/tenants/<tenant>` | a tenant's network (TenantNetwork: cidr, vni, host blocks) |
 * | `networks/claims/cidr/<index>`, `networks/claims/vip/<ip>` | cluster-wide claims: a tenant network's pool index, a service address |
 * | `sealed/secrets/<tenant>/<name>` | a Secret's values, encrypted (AES-256-GCM, key id named); written with the Secret, read only by the core |
 */
import { KINDS, type AnyObject, type Kind } from './objects.js';

// ---- objects ------------------------------------------------------------------------------

/** The store key of an object: `services/acme/web`, `tenants/acme`. */
export function objectKey(kind: Kind, name: string, tenant?: string): string {
  const info = KINDS[kind];
  return info.scoped ? `${info.plural}/${tenant ?? ''}/${name}` : `${info.plural}/${name}`;
}

/** The key prefix of a kind, optionally narrowed to one tenant. */
export function kindPrefix(kind: Kind, tenant?: string): string {
  const info = KINDS[kind];
  return info.scoped && tenant !== undefined ? `${info.plural}/${tenant}/` : `${info.plural}/`;
}

/** The key of an object. */
export function keyOf(o: AnyObject): string {
  return objectKey(o.kind, o.metadata.name, o.metadata.tenant);
}

/**
 * The prefixes of the objects placed on a host and holding its capacity: instances, cells and
 * machines. Their writes carry allocation records, and they are what an agent works on.
 */
export const PLACED_PREFIXES: readonly string[] = [kindPrefix('Instance'), kindPrefix('Cell'), kindPrefix('Machine')];

/** True for keys of instances, cells and machines (see PLACED_PREFIXES). */
export function isPlacedKey(key: string): boolean {
  return PLACED_PREFIXES.some((p) => key.startsWith(p));
}

// ---- volumes --------------------------------------------------------------------------------

/** Where volumes live (`volumes/<tenant>/<name>`); their writes carry allocation records (storage). */
export const VOLUME_PREFIX = kindPrefix('Volume');

/** The store key of `tenant`'s volume `name`. */
export function volumeKey(tenant: string, name: string): string {
  return objectKey('Volume', name, tenant);
}

/** Where volume snapshots live (`volumesnapshots/<tenant>/<name>`); agents read and write those on their host (agentapi/scope.ts). */
export const VOLUME_SNAPSHOT_PREFIX = kindPrefix('VolumeSnapshot');

// ---- hosts ----------------------------------------------------------------------------------

/** Where host leases live. */
export const HOST_LEASE_PREFIX = 'leases/hosts/';

/** The store key of `host`'s lease. */
export function hostLeaseKey(host: string): string {
  return `${HOST_LEASE_PREFIX}${host}`;
}

/**
 * Where the control plane publishes the lease TTL and fence timings (model/fencing.ts
 * `HostLeaseSettings`) for the agents: outside `HOST_LEASE_PREFIX`, which holds leases only.
 */
export const HOST_LEASE_SETTINGS_KEY = 'leases/settings';

// ---- API tokens -----------------------------------------------------------------------------

/** The Store prefix holding token records. */
export const TOKENS_KEY_PREFIX = 'tokens/';
/** The Store key marking that the first cluster-admin token was minted. */
export const BOOTSTRAP_KEY = 'auth/bootstrap';

/** The store key of a token record. */
export function tokenKey(id: string): string {
  return `${TOKENS_KEY_PREFIX}${id}`;
}

// ---- PKI ------------------------------------------------------------------------------------

/** Where the cluster CA lives. */
export const CA_KEY = 'pki/ca';
/** Where join token records live (`pki/join-tokens/<id>`). */
export const JOIN_TOKEN_PREFIX = 'pki/join-tokens/';
/** Where the agent certificate on record for each host lives (`pki/agents/<host>`). */
export const AGENT_CERT_PREFIX = 'pki/agents/';

/** The store key of join token `id`. */
export function joinTokenKey(id: string): string {
  return `${JOIN_TOKEN_PREFIX}${id}`;
}

/** The store key of the agent certificate on record for `host`. */
export function agentCertKey(host: string): string {
  return `${AGENT_CERT_PREFIX}${host}`;
}

// ---- audit log ------------------------------------------------------------------------------

/** Every audit key lives under this prefix; mutations must not write here. */
export const AUDIT_PREFIX = 'audit/';
/** The head key: `{seq, hash}` of the last record, CAS-updated by every append. */
export const HEAD_KEY = 'audit/head';
/** Prefix of the signed checkpoints. */
export const CHECKPOINT_PREFIX = 'audit/checkpoints/';
/**
 * Prefix of the checkpoint-signing public keys: every control-plane server registers its own
 * at `audit/keys/<keyId>` when it opens the log, so a log written by several servers verifies.
 */
export const SIGNING_KEYS_PREFIX = 'audit/keys/';

const SEQ_DIGITS = 12;
const RECORD_KEY = /^audit\/(\d{12})$/;

/** The store key of the signing key `keyId`. */
export function signingKeyKey(keyId: string): string {
  return SIGNING_KEYS_PREFIX + keyId;
}

/** The store key of record `seq`: `audit/` + seq zero-padded to 12 digits (so key order is seq order). */
export function recordKey(seq: number): string {
  return AUDIT_PREFIX + String(seq).padStart(SEQ_DIGITS, '0');
}

/** The store key of the checkpoint at `seq`. */
export function checkpointKey(seq: number): string {
  return CHECKPOINT_PREFIX + String(seq).padStart(SEQ_DIGITS, '0');
}

/** The seq a record key names, or undefined when `key` is not a record key. */
export function seqOfRecordKey(key: string): number | undefined {
  const m = RECORD_KEY.exec(key);
  return m ? Number(m[1]) : undefined;
}

// ---- usage ----------------------------------------------------------------------------------

/** Where open allocation records live, keyed by the object's store key. */
export const OPEN_PREFIX = 'usage/open/';
/** Where closed allocation interval records live. */
export const INTERVALS_PREFIX = 'usage/intervals/';
/** Where measured sample batches live. */
export const SAMPLES_PREFIX = 'usage/samples/';

/** The store key of the open allocation record of the object at `objectKey`. */
export function openAllocationKey(objectKey: string): string {
  return `${OPEN_PREFIX}${objectKey}`;
}

/** The key of the object an open allocation record (`usage/open/...`) belongs to. */
export function ownerOfOpenAllocation(key: string): string {
  return key.slice(OPEN_PREFIX.length);
}

/** The store key of a closed interval record. */
export function intervalKey(id: string): string {
  return `${INTERVALS_PREFIX}${id}`;
}

const DAY_MS = 86_400_000;

/**
 * The key of a sample batch: `usage/samples/<YYYY-MM-DD>/<epoch ms>-<host>`, one batch per
 * host per sampling pass, so a report lists only the days of its window. Epoch ms padded to 13
 * digits so keys sort by time within a day.
 */
export function sampleBatchKey(time: number, host: string): string {
  return `${SAMPLES_PREFIX}${new Date(time).toISOString().slice(0, 10)}/${String(time).padStart(13, '0')}-${host}`;
}

/**
 * True when `key` is a sample batch of `host` (see sampleBatchKey): its last segment is the
 * 13-digit time, a dash, and exactly `host`. (A suffix test would give host `b` the batches of
 * host `a-b`.)
 */
export function isSampleBatchOf(key: string, host: string): boolean {
  if (!key.startsWith(SAMPLES_PREFIX)) return false;
  const last = key.slice(key.lastIndexOf('/') + 1);
  return /^\d{13}-/.test(last) && last.slice(14) === host;
}

/** The day prefixes (`usage/samples/YYYY-MM-DD/`) that can hold samples taken in [from, to]. */
export function sampleDayPrefixes(from: number, to: number): string[] {
  const out: string[] = [];
  for (let t = Math.floor(from / DAY_MS) * DAY_MS; t <= to; t += DAY_MS) out.push(`${SAMPLES_PREFIX}${new Date(t).toISOString().slice(0, 10)}/`);
  return out;
}

// ---- leader election ------------------------------------------------------------------------

/** Where election candidates' keys live (etcd only), under the store's namespace. */
export const ELECTION_PREFIX = 'election/';

// ---- tenant networks ------------------------------------------------------------------------

/** Where tenant networks (`TenantNetwork`, model/tenant-network.ts) live. */
export const TENANT_NETWORK_PREFIX = 'networks/tenants/';
/**
 * Where each tenant's network view lives (model/tenant-network.ts `TenantNetworkView`): what
 * every agent with a segment of the tenant programs (services, names, egress), derived by the
 * control plane so agents read no other tenant's objects, only this.
 */
export const TENANT_NETWORK_VIEW_PREFIX = 'networks/views/';

/** The store key of `tenant`'s network view. */
export function tenantNetworkViewKey(tenant: string): string {
  return `${TENANT_NETWORK_VIEW_PREFIX}${tenant}`;
}
/**
 * Where claims of tenant-network pool indexes live: created with `expect absent` in the
 * transaction that creates the network, so two tenants never get one CIDR or one VNI.
 */
export const CIDR_CLAIM_PREFIX = 'networks/claims/cidr/';
/** Where claims of service addresses live: created with the service, deleted with it. */
export const VIP_CLAIM_PREFIX = 'networks/claims/vip/';

/** The store key of `tenant`'s network. */
export function tenantNetworkKey(tenant: string): string {
  return `${TENANT_NETWORK_PREFIX}${tenant}`;
}

/** The store key of the claim on the tenant pool's block number `index`. */
export function cidrClaimKey(index: number): string {
  return `${CIDR_CLAIM_PREFIX}${index}`;
}

/** The store key of the claim on service address `ip` (`a.b.c.d`). */
export function vipClaimKey(ip: string): string {
  return `${VIP_CLAIM_PREFIX}${ip}`;
}

// ---- secrets ----------------------------------------------------------------------------------

/**
 * Where Secrets' encrypted values live, apart from the Secret objects (so no object read path
 * can carry them). Nothing but the core reads them: not the public API's object routes, not
 * agents' store calls (scope.ts), not the event stream.
 */
export const SEALED_SECRET_PREFIX = 'sealed/secrets/';

/** The store key of a Secret's sealed values. */
export function sealedSecretKey(tenant: string, name: string): string {
  return `${SEALED_SECRET_PREFIX}${tenant}/${name}`;
}
