/**
 * The error catalogue. Every error Carapace reports to a user has a stable code
 * (`CARAPACE_E_*`, never reused for another meaning), an HTTP status, and a one-line
 * message. Field-level problems carry the path of the offending field
 * (e.g. `spec.replicas`). Pure: no I/O, used by the API, the CLI and the core alike.
 */

/** One problem with one field of an input, e.g. `{path: "spec.cpu", message: "must be > 0"}`. */
export interface FieldIssue {
  path: string;
  message: string;
}

interface CatalogueEntry {
  status: number;
  /** What the code means; this text is the docs row. */
  description: string;
}

/** The catalogue itself; `docs/errors.md` is generated from and tested against it. */
export const ERROR_CATALOGUE = {
  CARAPACE_E_VALIDATION: { status: 400, description: 'The input does not match the schema; `details` lists each field path and problem.' },
  CARAPACE_E_MALFORMED_BODY: { status: 400, description: 'The request body is not valid JSON (or YAML for manifests).' },
  CARAPACE_E_UNKNOWN_KIND: { status: 400, description: 'The manifest names a kind Carapace does not know.' },
  CARAPACE_E_UNSUPPORTED_API_VERSION: { status: 400, description: 'The manifest names an apiVersion this server does not serve.' },
  CARAPACE_E_NAME_MISMATCH: { status: 400, description: 'The name or tenant in the URL differs from the one in the body.' },
  CARAPACE_E_BAD_QUERY: { status: 400, description: 'A query parameter has an invalid value.' },
  CARAPACE_E_UNAUTHENTICATED: {
    status: 401,
    description: 'The request carries no bearer token, or the token is unknown, malformed or revoked. Send `Authorization: Bearer <token>`.',
  },
  CARAPACE_E_FORBIDDEN: {
    status: 403,
    description: "The token is valid but its role does not allow this request (another tenant's objects, infrastructure, a write with a viewer token, or granting more than the role has).",
  },
  CARAPACE_E_NOT_FOUND: { status: 404, description: 'The object does not exist.' },
  CARAPACE_E_ROUTE_NOT_FOUND: { status: 404, description: 'No such endpoint.' },
  CARAPACE_E_TENANT_NOT_FOUND: { status: 404, description: 'The tenant named in metadata.tenant does not exist; apply the tenant first.' },
  CARAPACE_E_METHOD_NOT_ALLOWED: { status: 405, description: 'The endpoint exists but not for this HTTP method.' },
  CARAPACE_E_CONFLICT: { status: 409, description: 'The resourceVersion given does not match the stored one (optimistic concurrency); re-read and retry.' },
  CARAPACE_E_ALREADY_EXISTS: { status: 409, description: 'Create-only request for an object that already exists.' },
  CARAPACE_E_AMBIGUOUS_NAME: { status: 409, description: 'The name matches several objects (e.g. live API tokens given the same name); `details` lists them: name one by its id.' },
  CARAPACE_E_TENANT_NOT_EMPTY: { status: 409, description: 'A tenant cannot be deleted while it still owns services or jobs.' },
  CARAPACE_E_IMMUTABLE_FIELD: { status: 422, description: 'The update changes a field that cannot change after creation.' },
  CARAPACE_E_ISOLATION_UNAVAILABLE: { status: 422, description: 'The requested isolation tier is not available on this control plane yet.' },
  CARAPACE_E_QUOTA_EXCEEDED: { status: 403, description: "Applying this would take the tenant over its quota (cpu, memory, instances, machines, cells or storage); `details` names the limit." },
  CARAPACE_E_POLICY_VIOLATION: { status: 403, description: "The object breaks its tenant's policy (e.g. an isolation weaker than the tenant's minIsolation)." },
  CARAPACE_E_UNSUPPORTED_MEDIA_TYPE: { status: 415, description: 'The request body has a content type other than JSON.' },
  CARAPACE_E_BODY_TOO_LARGE: { status: 413, description: 'The request body exceeds the size limit.' },
  CARAPACE_E_UNAVAILABLE: { status: 503, description: 'The store or a dependency is not available right now; retry later.' },
  CARAPACE_E_INTERNAL: { status: 500, description: 'A bug: an unexpected error. The server logs it with a request id.' },
  CARAPACE_E_PORT_IN_USE: { status: 409, description: 'A published hostPort is already used by another container or a host socket; reported in the instance status.' },
  CARAPACE_E_ADDRESS_POOL_EXHAUSTED: { status: 503, description: "The host's container subnet has no free address; reported in the instance status." },
  CARAPACE_E_NETWORK_CONFLICT: { status: 409, description: "Network state for a container exists with different settings, or the tenant's address block is already on another interface of the host (named in the message); reported in the instance status." },
  CARAPACE_E_NETWORK_FAILED: { status: 503, description: 'Setting up a container network failed on the host; reported in the instance status.' },
  CARAPACE_E_NETWORK_POOL_EXHAUSTED: {
    status: 503,
    description: "The cluster's network pools are used up: no tenant network (one /18 per tenant) or no service address is left, or a tenant's network has no host block left; delete unused tenants or services. A placement refused for it waits, with the reason in its status.",
  },
  CARAPACE_E_SERVER_UNREACHABLE: { status: 0, description: 'CLI only: the API server could not be reached at the configured address.' },
  CARAPACE_E_MANIFEST_FILE: { status: 0, description: 'CLI only: the manifest file cannot be read.' },
  CARAPACE_E_USAGE: { status: 0, description: 'CLI only: the command line is not valid (an unknown command or option, a missing argument, a value outside the allowed choices); the message says which, `--help` shows the usage.' },
  CARAPACE_E_BAD_STORE_URL: { status: 0, description: 'CLI only: the store URL is not `sqlite:PATH`, `etcds://HOST:PORT[,HOST:PORT...]` or `etcd://HOST:PORT[,HOST:PORT...]`.' },
  CARAPACE_E_STORE_FLAGS: {
    status: 0,
    description: 'Server or agent start only: the store flags do not fit the store URL. An `etcds://` store needs all of `--etcd-ca`, `--etcd-cert` and `--etcd-key`; those flags are refused with a plain `etcd://` or `sqlite:` store, `--insecure-store` with anything but a plain `etcd://`, and both with an agent that joins instead of opening the store. `details` names the flags.',
  },
  CARAPACE_E_INSECURE_STORE: {
    status: 0,
    description: "Server or agent start only: a plain `etcd://` store on an address that is not loopback, without `--insecure-store`. The store holds the cluster CA's key, token hashes and every tenant's objects; plain etcd lets anyone who reaches its port read and change them. Use `etcds://` with client certificates.",
  },
  CARAPACE_E_BAD_ETCD_TLS_FILE: {
    status: 0,
    description: 'Server or agent start only: an `--etcd-ca`, `--etcd-cert` or `--etcd-key` file cannot be read, is not PEM of the right kind (a CA certificate, a certificate, an unencrypted private key), the key is not the certificate\'s, or the key file is readable by group or others (`chmod 600` it). `details` names the flag.',
  },
  CARAPACE_E_ETCD_CERT_EXPIRED: { status: 0, description: 'Server or agent start only: the etcd client certificate (`--etcd-cert`) has expired or is not valid yet; the message says when. Issue a new one from the etcd CA (or check the clock).' },
  CARAPACE_E_BAD_JOIN_TOKEN: { status: 401, description: 'An agent presented a join token that is malformed, unknown or expired.' },
  CARAPACE_E_VOLUME_BUSY: {
    status: 409,
    description: 'The volume is in use in a way that excludes the operation: mounted on its host (or still held by a container) when it is to be handed to a VM, restored or removed, or attached to a VM when it is to be mounted on the host. Unmount or detach it first.',
  },
  CARAPACE_E_TIMEOUT: { status: 0, description: 'CLI only: what the command waited for (e.g. `drain --wait`) did not happen in time.' },
  CARAPACE_E_VOLUME_NOT_FOUND: {
    status: 422,
    description: "A service or job mounts a volume its tenant does not have (volume names are per tenant: another tenant's volume is not found); `details` names the field, e.g. `spec.volumes[0].volume`. Apply the Volume first.",
  },
  CARAPACE_E_VOLUME_IN_USE: {
    status: 409,
    description: 'The volume is used by someone else: deleting a volume a live instance mounts, a service/job spec references or a VolumeSnapshot (Pending or Ready) was taken of, mounting read-write a volume another service or job uses (or read-only one it uses read-write), or a volume template whose `<name>-<ordinal>` volume belongs to another service. The message names the user.',
  },
  CARAPACE_E_SNAPSHOT_NOT_FOUND: { status: 422, description: "A volume's `spec.source.snapshot` names a VolumeSnapshot its tenant does not have (snapshot names are per tenant: another tenant's snapshot is not found); `details` names the field." },
  CARAPACE_E_SNAPSHOT_NOT_READY: { status: 409, description: "A volume's `spec.source.snapshot` names a VolumeSnapshot that is not Ready (still Pending: retry once it is; Failed: its status says why)." },
  CARAPACE_E_VOLUME_TOO_SMALL: { status: 422, description: 'A volume restored from a snapshot asks for less than the size of the volume the snapshot was taken of (`details` names `spec.size` and the smallest size).' },
  CARAPACE_E_SECRET_NOT_FOUND: { status: 422, description: "A service or job references a Secret its tenant does not have (`details` names the field, e.g. `spec.secrets[0].secret`); apply the Secret first." },
  CARAPACE_E_SECRET_IN_USE: { status: 409, description: 'Deleting a Secret that a service or job of its tenant references, or that a live instance still uses: change or delete its users first (the message names one; `details` lists them).' },
  CARAPACE_E_CONFIG_IN_USE: { status: 409, description: 'Deleting a Config that a service or job of its tenant references, or that a live instance still uses: change or delete its users first (the message names one; `details` lists them).' },
  CARAPACE_E_CONFIG_NOT_FOUND: { status: 422, description: "A service or job references a Config its tenant does not have (`details` names the field, e.g. `spec.configs[0].config`); apply the Config first." },
  CARAPACE_E_DATA_KEY_NOT_FOUND: { status: 422, description: 'An `envFrom` entry names a key its Secret or Config does not hold (`details` names the field and lists the keys it has).' },
  CARAPACE_E_MOUNT_PATH_CONFLICT: {
    status: 422,
    description: 'A secret or config mount of a container uses the same path as another of its mounts (secret, config, volume or volume template), or one lies inside the other; `details` names both fields. (Two volumes on one path are a `CARAPACE_E_VALIDATION` of the manifest.)',
  },
  CARAPACE_E_ENV_CONFLICT: { status: 422, description: 'An environment variable is set twice (in `env` and `envFrom`, or twice in `envFrom`); `details` names the field.' },
  CARAPACE_E_SECRETS_KEYRING_MISSING: { status: 503, description: 'This process has no keyring, so it cannot encrypt or decrypt Secrets; Secret writes and reads of secret values are refused. Servers always have one (`--keyring FILE`, `CARAPACE_KEYRING`, or STATE_DIR/keyring made at first start); an agent on the store needs `--keyring FILE` for instances that use secrets.' },
  CARAPACE_E_SECRET_UNDECRYPTABLE: { status: 500, description: "A stored Secret cannot be decrypted: its key id is not in the server's keyring (removed too early in a rotation) or the stored blob was altered or moved. The message names the key id; restore the key to the keyring." },
  CARAPACE_E_INSTANCE_NOT_RUNNING: { status: 409, description: 'An exec or port-forward into an instance whose container is not running (Pending, Succeeded, Failed, or not started yet on its host): wait for `Running`, or look at `status.message`.' },
  CARAPACE_E_EXEC_UNSUPPORTED: { status: 422, description: "The instance's runtime cannot run exec sessions (a runtime without exec, or a cell whose guest agent predates it: an older cell image)." },
  CARAPACE_E_UPGRADE_REQUIRED: { status: 426, description: 'The exec and port-forward endpoints speak WebSocket only: send a WebSocket upgrade (`carapace exec` and `carapace port-forward` do).' },
  CARAPACE_E_PORT_UNREACHABLE: { status: 502, description: "A port-forward could not connect to the workload's port (refused: nothing listens there; or no answer within 10 s), or the connection broke; the message names the address and port tried." },
  CARAPACE_E_PORT_FORWARD_UNSUPPORTED: { status: 422, description: "The instance cannot be port-forwarded: it has no address on its tenant network that its host can reach (e.g. its runtime gives it none), or the service named has no ready instance to pick." },
  CARAPACE_E_REVISION_NOT_FOUND: { status: 404, description: "A `rollout undo` to a revision the service's history does not hold (10 are kept; `rollout history` lists them), or an undo with no earlier revision to return to." },
  CARAPACE_E_BAD_KEYRING: { status: 0, description: 'Server start or CLI only: the keyring (`--keyring FILE`, its older name `--secrets-keyring`, or the `CARAPACE_KEYRING` variable: `details` names which) is malformed (one `keyId:base64key` per line, 32-byte keys), unreadable, readable by group or others (a file must be mode 0600), or given twice.' },
  CARAPACE_E_KEYRING_KEY_MISSING: { status: 500, description: "Something the keyring seals (the cluster CA's private key in the store, this server's audit signing key file, at start or in `carapace keys reencrypt`) is sealed with a key id this server's keyring does not hold: the servers of one store were given different keyrings, or a key was removed before `carapace keys reencrypt` moved everything off it. The message names the key id; give the server the same keyring file as the others, or put the key back." },
  CARAPACE_E_SEALED_KEY_INVALID: { status: 500, description: "A sealed key (the cluster CA at `pki/ca`, an audit signing key file) is malformed or does not authenticate under the key it names: it was altered, or copied from another purpose. Restore it from a backup." },
  CARAPACE_E_AUDIT_COPY_TRUNCATED: { status: 0, description: 'CLI or server start only: an off-store audit copy (`--audit-copy`, `audit verify --against`) is empty or ends inside a line (it was cut short); `details` names the file and line. A copy cut at a line boundary is only older, and still checked.' },
  CARAPACE_E_AUDIT_COPY_TAMPERED: { status: 0, description: 'CLI or server start only: a line of an off-store audit copy was changed, removed or inserted (it does not link to the line before), is not a copy line, or holds a checkpoint whose signature does not verify; `details` names the file and line.' },
  CARAPACE_E_AUDIT_COPY_UNREADABLE: { status: 0, description: 'CLI only: the off-store audit copy given to `audit verify --against` cannot be read.' },
  CARAPACE_E_AUDIT_COPY_UNWRITABLE: { status: 0, description: 'Server start only: the off-store audit copy (`--audit-copy FILE`) cannot be opened for appending (missing directory, permissions).' },
  CARAPACE_E_TLS_CERT_INVALID: { status: 0, description: 'Server start only: the API certificate or key given (`--tls-cert`, `--tls-key`) cannot be read, is not PEM, or the key does not belong to the certificate; the field path names the flag.' },
  CARAPACE_E_TLS_CERT_EXPIRED: { status: 0, description: 'Server start only: the API certificate given (`--tls-cert`) has expired or is not valid yet; the message says since or until when.' },
  CARAPACE_E_TLS_KEY_PERMISSIONS: { status: 0, description: 'Server start only: the API private key file (`--tls-key`) is readable by group or others; `chmod 600` it.' },
  CARAPACE_E_TLS_UNVERIFIED: {
    status: 0,
    description: "CLI only: the server's certificate could not be verified against the pinned CA, so nothing (no token) was sent: the message says which check failed (the CA's fingerprint differs from the pinned one, a CA the CLI does not know, a host name the certificate does not cover, an expired or not yet valid certificate, a server that does not speak TLS).",
  },
  CARAPACE_E_TLS_NOT_PINNED: { status: 0, description: 'CLI only: the server speaks HTTPS but no CA is pinned for it: run `carapace login SERVER --ca-fingerprint SHA256` (the fingerprint `carapace server` prints) or give `--ca-file` / `CARAPACE_CA_FILE`. The CLI never trusts a server it cannot verify.' },
} as const satisfies Record<string, CatalogueEntry>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/**
 * The one error type the core throws for anything a user caused or must know about.
 * The API maps it to `{error: {code, message, details}}` with `status`; anything else
 * thrown becomes CARAPACE_E_INTERNAL.
 */
export class CarapaceError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: FieldIssue[];

  constructor(code: ErrorCode, message: string, details: FieldIssue[] = []) {
    super(message);
    this.name = 'CarapaceError';
    this.code = code;
    this.status = ERROR_CATALOGUE[code].status;
    this.details = details;
  }

  /** The wire shape used by the API and understood by the CLI. */
  toJSON(): ErrorBody {
    return { error: { code: this.code, message: this.message, details: this.details } };
  }
}

/** The body of every error response. */
export interface ErrorBody {
  error: { code: string; message: string; details: FieldIssue[] };
}

/** True when `e` is a CarapaceError with the given code (or any code when omitted). */
export function isCarapaceError(e: unknown, code?: ErrorCode): e is CarapaceError {
  return e instanceof CarapaceError && (code === undefined || e.code === code);
}
