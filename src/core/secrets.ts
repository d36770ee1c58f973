/**
 * The core's part of Secrets and Configs: writing a Secret (its object and its sealed values
 * in one transaction with its audit record), deleting it, checking what a workload
 * references, re-encrypting under the primary key (rotation), and assembling the decrypted
 * files and env of one instance for its agent. Every function here that handles values
 * returns them to its caller only: nothing is logged, and audit records carry keys and a
 * keyed fingerprint, never a value or a plain hash of one.
 */
import { isDeepStrictEqual } from 'node:util';
import { createHash } from 'node:crypto';
import { CarapaceError, isCarapaceError, type FieldIssue } from '../model/errors.js';
import { TERMINAL_PHASES, type Instance, type Job, type Metadata, type Service } from '../model/objects.js';
import { objectKey, SEALED_SECRET_PREFIX, sealedSecretKey } from '../model/keys.js';
import { contentVersion, referencesOf, storedSecretSpec, type Config, type Secret } from '../model/secrets.js';
import type { ContainerSpec, SecretManifest } from '../model/schemas.js';
import { ConflictError, type Store, type TxnOp } from '../store/store.js';
import type { AuditEntry } from '../audit/record.js';
import type { Resources } from './resources.js';
import { isSealedBlob, openSecret, sealSecret, secretFingerprint, type Keyring, type SealedBlob } from '../keyring/keyring.js';

/** The keyring, or CARAPACE_E_SECRETS_KEYRING_MISSING naming what could not be done. */
export function needKeyring(keyring: Keyring | undefined, what: string): Keyring {
  if (!keyring) throw new CarapaceError('CARAPACE_E_SECRETS_KEYRING_MISSING', `${what}: this process has no keyring; give it --keyring FILE (servers make STATE_DIR/keyring when given none)`);
  return keyring;
}

/** The stored sealed blob of a secret, or undefined when absent or malformed. */
async function sealedOf(store: Store, tenant: string, name: string): Promise<{ blob: SealedBlob; version: number } | undefined> {
  const e = await store.get<unknown>(sealedSecretKey(tenant, name));
  return e && isSealedBlob(e.value) ? { blob: e.value, version: e.version } : undefined;
}

/** A secret's decrypted data (the caller must not log or return it to users). */
export async function secretData(store: Store, keyring: Keyring, tenant: string, name: string): Promise<Record<string, string>> {
  const sealed = await sealedOf(store, tenant, name);
  if (!sealed) throw new CarapaceError('CARAPACE_E_SECRET_UNDECRYPTABLE', `secret "${name}" in tenant "${tenant}" has no sealed data in the store`);
  return openSecret(keyring, tenant, name, sealed.blob);
}

export interface SecretWriteContext {
  resources: Resources;
  keyring: Keyring | undefined;
  now: string;
  newMetadata: (name: string, labels: Record<string, string>, tenant: string) => Metadata;
  /** The audit entry of the write (`create` or `update`), with `detail`. */
  entry: (action: 'create' | 'update', detail: Record<string, unknown>) => AuditEntry;
  /** Throws CARAPACE_E_CONFLICT when the manifest names a resourceVersion other than `cur`'s. */
  checkVersion: (cur: Secret) => void;
  /** The version the write must find (0: absent). */
  expected: (cur: Secret | undefined) => number;
}

/**
 * Applies a Secret manifest: unchanged when its data, onChange and labels are what is
 * stored; else the object (keys, sizes, onChange) and its values sealed under the primary
 * key are written in one transaction with the audit record, whose detail holds the keys and
 * a keyed fingerprint of the data.
 */
export async function applySecret(c: SecretWriteContext, m: SecretManifest, createOnly: boolean): Promise<{ object: Secret; created: boolean; changed: boolean }> {
  const { name, tenant } = m.metadata;
  const keyring = needKeyring(c.keyring, `secret "${name}"`);
  const r = c.resources;
  const cur = await r.get('Secret', name, tenant);
  if (cur && createOnly) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `secret "${name}" already exists in tenant "${tenant}"`);
  let curData: Record<string, string> | undefined;
  if (cur) {
    try {
      curData = await secretData(r.store, keyring, tenant, name);
    } catch (e) {
      // Values no longer readable (a key removed too early): the apply replaces them.
      if (!isCarapaceError(e, 'CARAPACE_E_SECRET_UNDECRYPTABLE')) throw e;
    }
  }
  const sameData = curData !== undefined && isDeepStrictEqual(curData, m.spec.data);
  const sameSpec = cur !== undefined && sameData && cur.spec.onChange === m.spec.onChange;
  if (cur && sameSpec && isDeepStrictEqual(cur.metadata.labels, m.metadata.labels)) {
    c.checkVersion(cur);
    return { object: cur, created: false, changed: false };
  }
  const spec = storedSecretSpec(m.spec);
  const obj: Secret = cur
    ? { ...cur, spec, metadata: { ...cur.metadata, labels: m.metadata.labels, generation: sameSpec ? cur.metadata.generation : cur.metadata.generation + 1, updatedAt: c.now } }
    : { kind: 'Secret', metadata: c.newMetadata(name, m.metadata.labels, tenant), spec };
  const entry = c.entry(cur ? 'update' : 'create', { generation: obj.metadata.generation, keys: spec.keys.map((k) => k.key), fingerprint: secretFingerprint(keyring, m.spec.data) });
  const sealed: TxnOp = { op: 'put', key: sealedSecretKey(tenant, name), value: sealSecret(keyring, tenant, name, m.spec.data) };
  const [written] = await r.writeAll([{ obj, expectVersion: createOnly ? 0 : c.expected(cur) }], [entry], [sealed]);
  return { object: (written as Secret | undefined) ?? obj, created: !cur, changed: true }; // writeAll returns the objects it was given, in order
}

/**
 * Deletes a Secret and its sealed values in one transaction with the audit record. False
 * when the secret is absent. `resourceVersion`, when given, must match.
 */
export async function deleteSecret(r: Resources, tenant: string, name: string, resourceVersion: number | undefined, entry: AuditEntry): Promise<boolean> {
  const key = objectKey('Secret', name, tenant);
  for (let attempt = 1; ; attempt++) {
    const cur = await r.get('Secret', name, tenant);
    if (!cur) return false;
    if (resourceVersion !== undefined && resourceVersion !== cur.metadata.resourceVersion) {
      throw new CarapaceError('CARAPACE_E_CONFLICT', `secret "${name}" in tenant "${tenant}" is at resourceVersion ${cur.metadata.resourceVersion}, not ${resourceVersion}`);
    }
    try {
      await r.commitRecords([{ op: 'delete', key, expect: { version: cur.metadata.resourceVersion } }, { op: 'delete', key: sealedSecretKey(tenant, name) }], entry);
      return true;
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e;
      if (e.key === key && e.actualVersion === 0) return false;
      if (attempt >= 20) throw new CarapaceError('CARAPACE_E_CONFLICT', `secret "${name}" kept changing while it was being deleted; re-read and retry`);
    }
  }
}

/**
 * Refuses deleting a Secret or Config that a service or job of its tenant references, or that
 * a live instance's container still uses (CARAPACE_E_SECRET_IN_USE / CARAPACE_E_CONFIG_IN_USE
 * naming the user): its users' next start would fail, and a replica re-created by a failover
 * would not come back. Change or delete the users first.
 */
export function checkMaterialDeletable(kind: 'Secret' | 'Config', tenant: string, name: string, state: { instances: readonly Instance[]; services: readonly Service[]; jobs: readonly Job[] }): void {
  const uses = (c: Pick<ContainerSpec, 'secrets' | 'configs' | 'envFrom'>): boolean => (kind === 'Secret' ? referencesOf(c).secrets : referencesOf(c).configs).includes(name);
  const users = [
    ...state.services.filter((w) => uses(w.spec)).map((w) => `service "${w.metadata.name}"`),
    ...state.jobs.filter((w) => uses(w.spec)).map((w) => `job "${w.metadata.name}"`),
    ...state.instances.filter((i) => !TERMINAL_PHASES.includes(i.status.phase) && !i.metadata.deletionRequestedAt && uses(i.spec.container)).map((i) => `instance "${i.metadata.name}"`),
  ];
  if (users.length === 0) return;
  const what = kind === 'Secret' ? 'secret' : 'config';
  throw new CarapaceError(kind === 'Secret' ? 'CARAPACE_E_SECRET_IN_USE' : 'CARAPACE_E_CONFIG_IN_USE', `${what} "${name}" in tenant "${tenant}" is used by ${users[0]}${users.length > 1 ? ` and ${users.length - 1} more` : ''}; change or delete its users first`, [
    { path: 'metadata.name', message: `used by ${users.join(', ')}` },
  ]);
}

/**
 * Checks that every Secret and Config a workload's container references exists in its
 * tenant, and that every `envFrom` key is in its object: CARAPACE_E_SECRET_NOT_FOUND,
 * CARAPACE_E_CONFIG_NOT_FOUND or CARAPACE_E_DATA_KEY_NOT_FOUND with the field path. A
 * reference is by name within the workload's own tenant: another tenant's objects cannot be
 * named at all.
 */
export async function checkReferences(r: Resources, tenant: string, spec: Pick<ContainerSpec, 'secrets' | 'configs' | 'envFrom'>, what: string): Promise<void> {
  const refs = referencesOf(spec);
  const [secrets, configs] = await Promise.all([
    Promise.all(refs.secrets.map(async (n) => [n, await r.get('Secret', n, tenant)] as const)),
    Promise.all(refs.configs.map(async (n) => [n, await r.get('Config', n, tenant)] as const)),
  ]);
  const secretBy = new Map(secrets);
  const configBy = new Map(configs);
  const missing = (code: 'CARAPACE_E_SECRET_NOT_FOUND' | 'CARAPACE_E_CONFIG_NOT_FOUND', issues: FieldIssue[]): void => {
    if (issues.length > 0) throw new CarapaceError(code, `${what}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
  };
  const noSecret = (n: string): string => `tenant "${tenant}" has no secret "${n}"`;
  const noConfig = (n: string): string => `tenant "${tenant}" has no config "${n}"`;
  missing('CARAPACE_E_SECRET_NOT_FOUND', [
    ...(spec.secrets ?? []).flatMap((s, i) => (secretBy.get(s.secret) ? [] : [{ path: `spec.secrets[${i}].secret`, message: noSecret(s.secret) }])),
    ...(spec.envFrom ?? []).flatMap((e, i) => (e.secret !== undefined && !secretBy.get(e.secret) ? [{ path: `spec.envFrom[${i}].secret`, message: noSecret(e.secret) }] : [])),
  ]);
  missing('CARAPACE_E_CONFIG_NOT_FOUND', [
    ...(spec.configs ?? []).flatMap((x, i) => (configBy.get(x.config) ? [] : [{ path: `spec.configs[${i}].config`, message: noConfig(x.config) }])),
    ...(spec.envFrom ?? []).flatMap((e, i) => (e.config !== undefined && !configBy.get(e.config) ? [{ path: `spec.envFrom[${i}].config`, message: noConfig(e.config) }] : [])),
  ]);
  const keyIssues: FieldIssue[] = [];
  (spec.envFrom ?? []).forEach((e, i) => {
    const keys = e.secret !== undefined ? (secretBy.get(e.secret)?.spec.keys.map((k) => k.key) ?? []) : Object.keys(configBy.get(e.config ?? '')?.spec.data ?? {});
    const obj = e.secret !== undefined ? `secret "${e.secret}"` : `config "${e.config ?? ''}"`;
    if (!keys.includes(e.key)) keyIssues.push({ path: `spec.envFrom[${i}].key`, message: `${obj} has no key "${e.key}" (keys: ${keys.sort().join(', ') || 'none'})` });
  });
  if (keyIssues.length > 0) throw new CarapaceError('CARAPACE_E_DATA_KEY_NOT_FOUND', `${what}: ${keyIssues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, keyIssues);
}

/**
 * The content versions of the `onChange: restart` Secrets and Configs a container uses, for
 * InstanceSpec.restartOn (the controller compares them with its instances'). Objects that
 * are gone are left out (their instances keep running with what they have).
 */
export async function restartVersions(r: Resources, tenant: string, spec: Pick<ContainerSpec, 'secrets' | 'configs' | 'envFrom'>): Promise<Record<string, string>> {
  const refs = referencesOf(spec);
  const out: Record<string, string> = {};
  for (const n of refs.secrets) {
    const s = await r.get('Secret', n, tenant);
    if (s?.spec.onChange === 'restart') out[`secret/${n}`] = contentVersion(s);
  }
  for (const n of refs.configs) {
    const x = await r.get('Config', n, tenant);
    if (x?.spec.onChange === 'restart') out[`config/${n}`] = contentVersion(x);
  }
  return out;
}

/** One mounted directory of an instance: its files (key -> content) and where it goes. */
export interface MaterialMount {
  kind: 'secret' | 'config';
  name: string;
  mountPath: string;
  /** The object's content version (`uid:generation`): changes exactly when its data does. */
  version: string;
  onChange: 'update' | 'restart';
  /** File name (the data key) to content. */
  files: Record<string, string>;
}

/**
 * Everything an instance's container needs of Secrets and Configs, decrypted: its mounts and
 * its `envFrom` variables, with a `version` over all the objects used (an agent refreshes
 * the files of `update` objects when it changes). For the agent of the instance's host only;
 * never logged.
 */
export interface InstanceMaterial {
  tenant: string;
  instance: string;
  uid: string;
  version: string;
  mounts: MaterialMount[];
  env: Record<string, string>;
}

/**
 * Assembles an instance's material: reads the Secrets and Configs its container references
 * (in its tenant), decrypts the secrets' values. CARAPACE_E_SECRET_NOT_FOUND or
 * CARAPACE_E_CONFIG_NOT_FOUND when one was deleted since the apply; CARAPACE_E_SECRETS_KEYRING_MISSING
 * when secrets are used and the server has no keyring.
 */
export async function instanceMaterial(r: Resources, keyring: Keyring | undefined, inst: Instance): Promise<InstanceMaterial> {
  const tenant = inst.metadata.tenant ?? '';
  const c = inst.spec.container;
  const refs = referencesOf(c);
  const secrets = new Map<string, { obj: Secret; data: Record<string, string> }>();
  for (const n of refs.secrets) {
    const obj = await r.get('Secret', n, tenant);
    if (!obj) throw new CarapaceError('CARAPACE_E_SECRET_NOT_FOUND', `instance "${inst.metadata.name}" uses secret "${n}", which tenant "${tenant}" no longer has`);
    secrets.set(n, { obj, data: await secretData(r.store, needKeyring(keyring, `secret "${n}"`), tenant, n) });
  }
  const configs = new Map<string, Config>();
  for (const n of refs.configs) {
    const obj = await r.get('Config', n, tenant);
    if (!obj) throw new CarapaceError('CARAPACE_E_CONFIG_NOT_FOUND', `instance "${inst.metadata.name}" uses config "${n}", which tenant "${tenant}" no longer has`);
    configs.set(n, obj);
  }
  const mounts: MaterialMount[] = [];
  for (const s of c.secrets ?? []) {
    const got = secrets.get(s.secret);
    if (got) mounts.push({ kind: 'secret', name: s.secret, mountPath: s.mountPath, version: contentVersion(got.obj), onChange: got.obj.spec.onChange, files: got.data });
  }
  for (const x of c.configs ?? []) {
    const got = configs.get(x.config);
    if (got) mounts.push({ kind: 'config', name: x.config, mountPath: x.mountPath, version: contentVersion(got), onChange: got.spec.onChange, files: got.spec.data });
  }
  const env: Record<string, string> = {};
  for (const e of c.envFrom ?? []) {
    const v = e.secret !== undefined ? secrets.get(e.secret)?.data[e.key] : configs.get(e.config ?? '')?.spec.data[e.key];
    if (v === undefined) throw new CarapaceError('CARAPACE_E_DATA_KEY_NOT_FOUND', `instance "${inst.metadata.name}": ${e.secret !== undefined ? `secret "${e.secret}"` : `config "${e.config ?? ''}"`} no longer has key "${e.key}" (env ${e.name})`);
    env[e.name] = v;
  }
  const versions = [...[...secrets.values()].map((s) => `secret/${s.obj.metadata.name}=${contentVersion(s.obj)}`), ...[...configs.values()].map((x) => `config/${x.metadata.name}=${contentVersion(x)}`)].sort();
  const version = createHash('sha256').update(versions.join('\n')).digest('hex').slice(0, 16);
  return { tenant, instance: inst.metadata.name, uid: inst.metadata.uid, version, mounts, env };
}

/** What a re-encryption did. */
export interface ReencryptResult {
  keyId: string;
  /** Secrets rewritten under the primary key. */
  reencrypted: number;
  /** Secrets already under it (left alone). */
  current: number;
}

/**
 * Rewrites every sealed secret (of `tenant`, or all) not sealed under the keyring's primary
 * key: decrypts with its own key, seals under the primary, compare-and-set on the record, one
 * transaction and audit record (`secret.reencrypted`, key ids only) per secret. Idempotent:
 * run it again after a failure. CARAPACE_E_SECRET_UNDECRYPTABLE names a secret whose key is
 * not in the keyring (nothing is lost: the others are done, that one is left as it was).
 */
export async function reencryptSecrets(r: Resources, keyring: Keyring | undefined, entry: (tenant: string, name: string, detail: Record<string, unknown>) => AuditEntry, tenant?: string): Promise<ReencryptResult> {
  const ring = needKeyring(keyring, 'reencrypt');
  const prefix = tenant !== undefined ? `${SEALED_SECRET_PREFIX}${tenant}/` : SEALED_SECRET_PREFIX;
  const list = await r.store.list<unknown>(prefix);
  let reencrypted = 0;
  let current = 0;
  for (const e of list.items) {
    const [t = '', n = ''] = e.key.slice(SEALED_SECRET_PREFIX.length).split('/');
    if (!isSealedBlob(e.value)) continue;
    if (e.value.keyId === ring.primary) {
      current++;
      continue;
    }
    const data = openSecret(ring, t, n, e.value);
    try {
      await r.commitRecords(
        [{ op: 'put', key: e.key, value: sealSecret(ring, t, n, data), expect: { version: e.version } }],
        entry(t, n, { fromKey: e.value.keyId, toKey: ring.primary }),
      );
      reencrypted++;
    } catch (err) {
      // Rewritten meanwhile (an apply seals under the primary too): nothing left to do for it.
      if (!(err instanceof ConflictError)) throw err;
      current++;
    }
  }
  return { keyId: ring.primary, reencrypted, current };
}

