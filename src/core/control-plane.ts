/**
 * The control plane's front door: executes Actions against the desired state in the store.
 * Validation that needs no state lives in model/; what needs state (the tenant exists, the
 * isolation tier is available, a job's spec is immutable) lives here. Reconcilers then
 * turn the desired state into instances; nothing here touches a runtime.
 */
import { isDeepStrictEqual } from 'node:util';
import { CarapaceError, isCarapaceError } from '../model/errors.js';
import { KINDS, type AnyObject, type Instance, type Job, type Machine, type Metadata, type Service, type Tenant } from '../model/objects.js';
import { AVAILABLE_ISOLATION, ISOLATION_ORDER, isolationAtLeast, type ConfigManifest, type JobManifest, type MachineManifest, type Manifest, type ServiceManifest, type TenantManifest, type VolumeManifest, type VolumeSnapshotManifest } from '../model/schemas.js';
import { VOLUME_SERVICE_LABEL, VOLUME_TEMPLATE_LABEL, volumeSizeMiB, type Volume } from '../model/volumes.js';
import type { VolumeSnapshot } from '../model/volume-snapshots.js';
import { checkMachineDisks, checkSnapshotSpec, checkStorageQuota, checkVolumeDeletable, checkVolumeUpdate, checkWorkloadVolumes, newSnapshotStatus, restoredVolume, snapshotStorageMiB, storageOf, type TemplateVolume } from './volumes.js';
import { checkContainerRefs, type Config } from '../model/secrets.js';
import { applySecret, checkMaterialDeletable, checkReferences, deleteSecret, needKeyring, reencryptSecrets } from './secrets.js';
import type { Keyring } from '../keyring/keyring.js';
import type { Action, Env } from './actions.js';
import type { Resources } from './resources.js';
import { overQuota, quotaProblems, registryOf, requestedBy, type TenantUsage } from './quota.js';
import type { AuditEntry, AuditTarget } from '../audit/record.js';
import { tokenInfo, type TokenInfo } from '../auth/tokens.js';
import type { AgentCertRecord } from '../pki/agents.js';
import { clusterCaFingerprint, ensureClusterCa } from '../pki/x509.js';
import { CLUSTER_CA_TARGET, reencryptKeys, type KeysReencryptResult } from './keys.js';
import { auditEntry, SYSTEM, type AuditContext } from './audit-context.js';
import { issueToken, newTokenId, revokeToken } from './api-tokens.js';
import { createJoinToken, forgetAgentCert, recordAgentCert, revokeAgentCert } from './agent-trust.js';
import { objectKey } from '../model/keys.js';
import { specWithTemplate } from '../model/rollout.js';
import { DEFAULT_NETWORK_POOLS, type NetworkPools } from '../model/tenant-network.js';
import { ConflictError, type TxnOp } from '../store/store.js';
import { claimServiceAddress, releaseServiceAddressOps, tenantNetworkRemovalOps } from './network-records.js';

/** The result of an action: one object, a list, the outcome of a delete, or a credential. */
export type ActionResult =
  /** `warnings`: things the caller should know that did not stop the action (e.g. existing work now breaks a tightened policy). */
  | { type: 'object'; object: AnyObject; created?: boolean; changed?: boolean; warnings?: string[] }
  | { type: 'list'; items: AnyObject[]; revision: number }
  | { type: 'deleted'; kind: string; name: string; tenant?: string }
  /** An API token as listed (never its hash); `secret` is the whole token, present only when it was just created. */
  | { type: 'token'; info: TokenInfo; secret?: string }
  /** A join token just created: the token (shown once), its id and expiry. */
  | { type: 'joinToken'; token: string; id: string; expiresAt: string }
  | { type: 'agentCert'; record: AgentCertRecord }
  /** Secrets re-encrypted under the keyring's primary key (`keyId`), and those already under it. */
  | { type: 'reencrypted'; keyId: string; reencrypted: number; current: number }
  | { type: 'keysReencrypted'; result: KeysReencryptResult }
  /** An exec session may start in `instance` (running; its start is in the audit log). */
  | { type: 'exec'; instance: Instance }
  /** A forwarded connection may start to `instance` (running; its start is in the audit log). */
  | { type: 'portForward'; instance: Instance };

/**
 * How often a write that names no resourceVersion is re-run on fresh state after losing a
 * race (each attempt re-reads; a status write by the controller takes a few ms).
 */
const UNCONDITIONAL_ATTEMPTS = 20;

export class ControlPlane {
  /** `pools`: where service addresses come from (default DEFAULT_NETWORK_POOLS). */
  constructor(
    private readonly resources: Resources,
    private readonly env: Env,
    private readonly pools: NetworkPools = DEFAULT_NETWORK_POOLS,
    /** The cluster's secret keys (never in the store); without it Secret writes are refused. */
    private readonly keyring?: Keyring,
  ) {}

  /** A view of this control plane that records `ctx` as the actor of its mutations. */
  private withContext(ctx: AuditContext): ControlPlane {
    const view = Object.create(this) as ControlPlane; // shares everything but ctx
    view.ctx = ctx;
    return view;
  }

  /** Who the current action is for; set per call by handle(). */
  private ctx: AuditContext = SYSTEM;

  /** The audit entry of a successful mutation (written in the mutation's own transaction). */
  private entry(action: string, kind: string, name: string, tenant: string | undefined, detail?: Record<string, unknown>): AuditEntry {
    return auditEntry(this.ctx, this.env.now(), action, { kind, name, ...(tenant !== undefined ? { tenant } : {}) }, 'success', detail);
  }

  /**
   * Records a refused request in the audit log (outcome `failure`, with the error's code and
   * message): who tried what, and why it was refused. Nothing else is written. Rejects when
   * the record cannot be written; a refusal changed nothing, so the caller may go on.
   */
  async recordRefusal(ctx: AuditContext, action: string, target: AuditTarget, error: { code: string; message: string }): Promise<void> {
    await this.resources.recordRefusal(auditEntry(ctx, this.env.now(), action, target, 'failure', { code: error.code, message: error.message.slice(0, 500) }));
  }

  /**
   * Executes one action; throws CarapaceError for anything the caller got wrong. `ctx` names
   * who asks and from where, for the audit log (default: the system itself).
   */
  async handle(action: Action, ctx: AuditContext = SYSTEM): Promise<ActionResult> {
    // Requests run concurrently: each gets a view carrying its own context, never shared state.
    if (ctx !== SYSTEM && ctx !== this.ctx) return this.withContext(ctx).handle(action);
    switch (action.type) {
      case 'apply': {
        const createOnly = action.createOnly ?? false;
        return this.unconditional(!createOnly && action.manifest.metadata.resourceVersion === undefined, () => this.apply(action.manifest, createOnly));
      }
      case 'get':
        return { type: 'object', object: await this.resources.mustGet(action.kind, action.name, this.tenantOf(action.kind, action.tenant)) };
      case 'list': {
        const r = await this.resources.list(action.kind, KINDS[action.kind].scoped ? action.tenant : undefined);
        return { type: 'list', items: r.items, revision: r.revision };
      }
      case 'delete':
        return this.unconditional(action.resourceVersion === undefined, () => this.delete(action));
      case 'hostOp':
        return this.hostOp(action.op, action.name);
      case 'createToken': {
        const minted = await issueToken(this.resources, this.ctx, {
          id: newTokenId(this.env),
          name: action.name,
          role: action.role,
          ...(action.tenant !== undefined ? { tenant: action.tenant } : {}),
          now: this.env.now(),
        });
        return { type: 'token', info: tokenInfo(minted.record), secret: minted.token };
      }
      case 'revokeToken':
        return { type: 'token', info: await revokeToken(this.resources, this.ctx, action.token, this.env.now()) };
      case 'createJoinToken': {
        // The CA is made at server start; made here only on a store that has none yet. Its
        // fingerprint is public: no keyring needed to read it.
        const caFingerprint = (await clusterCaFingerprint(this.resources.store)) ?? (await ensureClusterCa(this.resources.store, needKeyring(this.keyring, 'create a join token'))).fingerprint;
        const { token, record } = await createJoinToken(this.resources, this.ctx, { caFingerprint, now: new Date(this.env.now()), ttlMs: action.ttlSeconds * 1000, description: action.description });
        return { type: 'joinToken', token, id: record.id, expiresAt: record.expiresAt };
      }
      case 'recordAgentCert':
        return { type: 'agentCert', record: await recordAgentCert(this.resources, this.ctx, { host: action.host, serial: action.serial, notAfter: action.notAfter, via: action.via, now: new Date(this.env.now()) }) };
      case 'revokeAgentCert':
        return { type: 'agentCert', record: await revokeAgentCert(this.resources, this.ctx, action.host, new Date(this.env.now())) };
      case 'forgetAgentCert':
        await forgetAgentCert(this.resources, this.ctx, action.host, new Date(this.env.now()));
        return { type: 'deleted', kind: 'AgentCert', name: action.host };
      case 'exec':
        return this.exec(action);
      case 'portForward':
        return this.portForward(action);
      case 'rollout':
        return this.rollout(action);
      case 'reencryptSecrets': {
        if (action.tenant !== undefined) await this.ownerTenant(action.tenant, 'tenant');
        const r = await reencryptSecrets(this.resources, this.keyring, (tenant, name, detail) => this.entry('secret.reencrypted', 'Secret', name, tenant, detail), action.tenant);
        return { type: 'reencrypted', ...r };
      }
      case 'reencryptKeys': {
        const result = await reencryptKeys(
          this.resources,
          this.keyring,
          (act, detail) => auditEntry(this.ctx, this.env.now(), act, CLUSTER_CA_TARGET, 'success', detail),
          (tenant, name, detail) => this.entry('secret.reencrypted', 'Secret', name, tenant, detail),
        );
        return { type: 'keysReencrypted', result };
      }
    }
  }

  /**
   * Runs a write. When the caller named no resourceVersion (`unconditional`), it asked for
   * "last writer wins": a conflict only means another write (the controller's status update,
   * a concurrent create) landed between our read and our compare-and-set, so the whole write
   * is run again on fresh state. A caller that named a version gets the conflict.
   */
  private async unconditional(unconditional: boolean, write: () => Promise<ActionResult>): Promise<ActionResult> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await write();
      } catch (e) {
        const raced = isCarapaceError(e, 'CARAPACE_E_CONFLICT') || isCarapaceError(e, 'CARAPACE_E_ALREADY_EXISTS');
        if (!unconditional || !raced || attempt >= UNCONDITIONAL_ATTEMPTS) throw e;
      }
    }
  }

  /**
   * Cordon (no new placements), drain (cordon, and the controller moves the host's instances
   * away within each service's maxUnavailable) and uncordon (both undone). Level-based: the
   * host's spec says what is wanted; the controller does the moving.
   */
  /**
   * Checks an exec may start (the instance exists and runs) and records it: `instance.exec`
   * with the command line, the terminal and the host, committed before the session starts
   * (if the record cannot be written, there is no session). The session itself changes no
   * object: its bytes are never recorded.
   */
  private async exec(a: Extract<Action, { type: 'exec' }>): Promise<ActionResult> {
    const inst = await this.resources.mustGet('Instance', a.name, a.tenant);
    if (inst.status.phase !== 'Running' || !inst.status.containerId) {
      throw new CarapaceError('CARAPACE_E_INSTANCE_NOT_RUNNING', `instance ${a.tenant}/${a.name} is not running (phase ${inst.status.phase}); exec needs a running container`);
    }
    const where = { host: inst.spec.host, ...(inst.spec.cell ? { cell: inst.spec.cell } : {}) };
    await this.resources.commitRecords([], this.entry('instance.exec', 'Instance', a.name, a.tenant, { command: a.command, tty: a.tty, stdin: a.stdin, ...where }));
    return { type: 'exec', instance: inst };
  }

  /**
   * Checks a forwarded connection may start (the instance exists and runs) and records it:
   * `instance.portforward` with the port and the host, committed before any byte is relayed
   * (if the record cannot be written, the connection is closed unused). One record per
   * forwarded TCP connection: each is its own authenticated request.
   */
  private async portForward(a: Extract<Action, { type: 'portForward' }>): Promise<ActionResult> {
    const inst = await this.resources.mustGet('Instance', a.name, a.tenant);
    if (inst.status.phase !== 'Running' || !inst.status.containerId) {
      throw new CarapaceError('CARAPACE_E_INSTANCE_NOT_RUNNING', `instance ${a.tenant}/${a.name} is not running (phase ${inst.status.phase}); port-forward needs a running container`);
    }
    const where = { host: inst.spec.host, ...(inst.spec.cell ? { cell: inst.spec.cell } : {}) };
    await this.resources.commitRecords([], this.entry('instance.portforward', 'Instance', a.name, a.tenant, { port: a.port, ...where }));
    return { type: 'portForward', instance: inst };
  }

  /**
   * A rollout operation on a service: a spec change like an apply (generation moves), with
   * its audit record `service.rollout.<op>` (detail: the new generation, the revision undone
   * to) in the same write; the controller then rolls the new template out in waves.
   */
  private async rollout(a: Extract<Action, { type: 'rollout' }>): Promise<ActionResult> {
    for (let attempt = 1; ; attempt++) {
      const cur = await this.resources.mustGet('Service', a.name, a.tenant);
      const now = this.env.now();
      const next = structuredClone(cur);
      let detail: Record<string, unknown> = {};
      switch (a.op) {
        case 'undo': {
          const history = cur.status.history ?? [];
          const current = cur.status.revision;
          const target = a.toRevision !== undefined ? history.find((h) => h.revision === a.toRevision) : [...history].reverse().find((h) => h.revision !== current);
          if (!target) {
            const held = history.map((h) => h.revision).join(', ') || 'none';
            throw new CarapaceError(
              'CARAPACE_E_REVISION_NOT_FOUND',
              a.toRevision !== undefined ? `service ${a.tenant}/${a.name} has no revision ${a.toRevision} (revisions kept: ${held})` : `service ${a.tenant}/${a.name} has no earlier revision to return to (revisions kept: ${held})`,
              [{ path: a.toRevision !== undefined ? 'query.toRevision' : 'name', message: `revisions kept: ${held}` }],
            );
          }
          next.spec = specWithTemplate(cur.spec, target.template);
          detail = { toRevision: target.revision };
          break;
        }
        case 'restart':
          next.spec = { ...cur.spec, restartedAt: now };
          break;
        case 'pause':
        case 'resume':
          next.spec = { ...cur.spec, rollout: { ...cur.spec.rollout, paused: a.op === 'pause' } };
          break;
      }
      const changed = !isDeepStrictEqual(cur.spec, next.spec);
      if (!changed) return { type: 'object', object: cur, changed: false };
      try {
        if (a.op === 'undo' || a.op === 'restart') {
          // A template that runs again is a request like an apply: the same admission (the
          // tenant's policy and quota as they are now, secrets and volumes that still exist),
          // through the same write path, audited as the operation.
          const m: ServiceManifest = { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: a.name, tenant: a.tenant, labels: cur.metadata.labels, resourceVersion: cur.metadata.resourceVersion }, spec: next.spec };
          return await this.applyWorkload(m, false, { action: `service.rollout.${a.op}`, detail });
        }
        next.metadata.generation += 1;
        next.metadata.updatedAt = now;
        const written = await this.resources.write(next, cur.metadata.resourceVersion, this.entry(`service.rollout.${a.op}`, 'Service', a.name, a.tenant, { generation: next.metadata.generation, ...detail }));
        return { type: 'object', object: written, changed: true };
      } catch (e) {
        // The controller's status write landed in between: read again and redo.
        if (!isCarapaceError(e, 'CARAPACE_E_CONFLICT') || attempt >= UNCONDITIONAL_ATTEMPTS) throw e;
      }
    }
  }

  private async hostOp(op: 'cordon' | 'uncordon' | 'drain', name: string): Promise<ActionResult> {
    const updated = await this.resources.mutate(
      'Host',
      name,
      undefined,
      (h) => {
        const want = { unschedulable: op !== 'uncordon', draining: op === 'drain' };
        if (h.spec.unschedulable === want.unschedulable && (h.spec.draining ?? false) === want.draining) return undefined;
        h.spec = { ...h.spec, ...want };
        h.metadata.generation += 1;
        h.metadata.updatedAt = this.env.now();
        return h;
      },
      this.entry(`host.${op}`, 'Host', name, undefined),
    );
    if (!updated) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `host "${name}" not found`);
    return { type: 'object', object: updated, changed: true };
  }

  private tenantOf(kind: keyof typeof KINDS, tenant: string | undefined): string | undefined {
    if (!KINDS[kind].scoped) return undefined;
    if (tenant === undefined) throw new CarapaceError('CARAPACE_E_BAD_QUERY', `${kind.toLowerCase()} is tenant-scoped: name the tenant`);
    return tenant;
  }

  private async apply(m: Manifest, createOnly: boolean): Promise<ActionResult> {
    switch (m.kind) {
      case 'Tenant':
        return this.applyTenant(m, createOnly);
      case 'Service':
        return this.applyWorkload(m, createOnly);
      case 'Job':
        return this.applyWorkload(m, createOnly);
      case 'Machine':
        return this.applyMachine(m, createOnly);
      case 'Volume':
        return this.applyVolume(m, createOnly);
      case 'Secret': {
        await this.ownerTenant(m.metadata.tenant);
        const r = await applySecret(
          {
            resources: this.resources,
            keyring: this.keyring,
            now: this.env.now(),
            newMetadata: (name, labels, tenant) => this.newMetadata(name, labels, tenant),
            entry: (action, detail) => this.entry(action, 'Secret', m.metadata.name, m.metadata.tenant, detail),
            checkVersion: (cur) => this.checkVersion(m, cur),
            expected: (cur) => this.expected(m, cur, createOnly),
          },
          m,
          createOnly,
        );
        return { type: 'object', ...r };
      }
      case 'Config':
        return this.applyConfig(m, createOnly);
      case 'VolumeSnapshot':
        return this.applyVolumeSnapshot(m, createOnly);
    }
  }

  /**
   * Creates a VolumeSnapshot (or changes its labels: its spec is immutable). A new one copies
   * its volume's host and uid into its status (Pending, for that host's agent to take), or is
   * Failed at once when the volume was never used (see newSnapshotStatus).
   */
  private async applyVolumeSnapshot(m: VolumeSnapshotManifest, createOnly: boolean): Promise<ActionResult> {
    const { name, tenant } = m.metadata;
    const owner = await this.ownerTenant(tenant);
    const cur = await this.resources.get('VolumeSnapshot', name, tenant);
    if (cur && createOnly) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `volume snapshot "${name}" already exists in tenant "${tenant}"`);
    const volume = checkSnapshotSpec(name, tenant, m.spec, cur, cur ? undefined : await this.resources.get('Volume', m.spec.volume, tenant));
    if (cur && isDeepStrictEqual(cur.metadata.labels, m.metadata.labels)) {
      this.checkVersion(m, cur);
      return { type: 'object', object: cur, changed: false };
    }
    const obj: VolumeSnapshot = cur
      ? { ...cur, metadata: { ...cur.metadata, labels: m.metadata.labels, updatedAt: this.env.now() } }
      : { kind: 'VolumeSnapshot', metadata: this.newMetadata(name, m.metadata.labels, tenant), spec: m.spec, status: newSnapshotStatus(volume as Volume) }; // checkSnapshotSpec returns the volume for a new snapshot
    if (!cur) {
      // A copy takes its volume's size of the host's disk: counted in the tenant's storage quota.
      const [vols, snaps] = await Promise.all([this.resources.list('Volume', tenant), this.resources.list('VolumeSnapshot', tenant)]);
      const before = storageOf(vols.items, snaps.items);
      checkStorageQuota(owner.spec.quota, tenant, before, before + snapshotStorageMiB(obj), 'spec.volume', `volume snapshot "${name}"`);
    }
    const detail = { volume: m.spec.volume, ...(obj.status.host ? { host: obj.status.host } : {}), phase: obj.status.phase };
    const written = await this.resources.write(obj, this.expected(m, cur, createOnly), this.entry(cur ? 'update' : 'create', 'VolumeSnapshot', name, tenant, detail));
    return { type: 'object', object: written, created: !cur, changed: true };
  }

  /**
   * Creates or updates a Volume. A new one is Pending (on no host) until the placement of its
   * first user binds it; a bound one keeps its size, filesystem and host (checkVolumeUpdate).
   * Labels a template volume carries (its service and template) survive a manual apply.
   */
  private async applyVolume(m: VolumeManifest, createOnly: boolean): Promise<ActionResult> {
    const { name, tenant } = m.metadata;
    const owner = await this.ownerTenant(tenant);
    const cur = await this.resources.get('Volume', name, tenant);
    if (cur && createOnly) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `volume "${name}" already exists in tenant "${tenant}"`);
    const kept: Record<string, string> = {};
    for (const k of [VOLUME_SERVICE_LABEL, VOLUME_TEMPLATE_LABEL]) {
      const v = cur?.metadata.labels[k];
      if (v !== undefined && m.metadata.labels[k] === undefined) kept[k] = v;
    }
    const labels = { ...m.metadata.labels, ...kept };
    // A restored volume's host was filled in from its snapshot: a manifest that leaves it out
    // (as the user wrote it) means the same volume.
    const spec = cur?.spec.source && m.spec.host === undefined && cur.spec.host !== undefined ? { ...m.spec, host: cur.spec.host } : m.spec;
    if (cur && isDeepStrictEqual(cur.spec, spec) && isDeepStrictEqual(cur.metadata.labels, labels)) {
      this.checkVersion(m, cur);
      return { type: 'object', object: cur, changed: false };
    }
    if (cur) checkVolumeUpdate(cur, spec);
    // A new volume from a snapshot is checked against it and bound to its host at once.
    const made = cur ? undefined : restoredVolume(name, spec, spec.source ? await this.resources.get('VolumeSnapshot', spec.source.snapshot, tenant) : undefined);
    const [volumes, snapshots] = await Promise.all([this.resources.list('Volume', tenant), this.resources.list('VolumeSnapshot', tenant)]);
    const before = storageOf(volumes.items, snapshots.items);
    checkStorageQuota(owner.spec.quota, tenant, before, before - (cur ? volumeSizeMiB(cur.spec.size) : 0) + volumeSizeMiB(spec.size), 'spec.size', `volume "${name}"`);
    const obj: Volume = cur
      ? {
          ...cur,
          spec,
          metadata: { ...cur.metadata, labels, generation: isDeepStrictEqual(cur.spec, spec) ? cur.metadata.generation : cur.metadata.generation + 1, updatedAt: this.env.now() },
        }
      : { kind: 'Volume', metadata: this.newMetadata(name, labels, tenant), spec: made?.spec ?? spec, status: made?.status ?? { phase: 'Pending', attachedTo: [] } };
    const detail = { generation: obj.metadata.generation, size: obj.spec.size, ...(obj.spec.source && !cur ? { source: obj.spec.source.snapshot, host: obj.status.host } : {}) };
    const written = await this.resources.write(obj, this.expected(m, cur, createOnly), this.entry(cur ? 'update' : 'create', 'Volume', name, tenant, detail));
    return { type: 'object', object: written, created: !cur, changed: true };
  }

  /**
   * The writes (with their audit records) that create or resize a service's template volumes,
   * for the transaction that writes the service: a replica's volume exists before its
   * instance can be placed.
   */
  private templateWrites(service: string, tenant: string, tvs: readonly TemplateVolume[]): { writes: { obj: AnyObject; expectVersion: number }[]; audits: AuditEntry[] } {
    const writes: { obj: AnyObject; expectVersion: number }[] = [];
    const audits: AuditEntry[] = [];
    for (const t of tvs) {
      const detail = { service, template: t.template, size: t.size };
      if (t.existing) {
        const e = t.existing;
        writes.push({ obj: { ...e, spec: { ...e.spec, size: t.size }, metadata: { ...e.metadata, generation: e.metadata.generation + 1, updatedAt: this.env.now() } }, expectVersion: e.metadata.resourceVersion });
        audits.push(this.entry('update', 'Volume', t.name, tenant, detail));
        continue;
      }
      const labels = { [VOLUME_SERVICE_LABEL]: service, [VOLUME_TEMPLATE_LABEL]: t.template };
      const v: Volume = { kind: 'Volume', metadata: this.newMetadata(t.name, labels, tenant), spec: { size: t.size, filesystem: 'ext4' }, status: { phase: 'Pending', attachedTo: [] } };
      writes.push({ obj: v, expectVersion: 0 });
      audits.push(this.entry('create', 'Volume', t.name, tenant, detail));
    }
    return { writes, audits };
  }

  /** A Config is stored as applied (its data is not secret); like a machine, without quota. */
  private async applyConfig(m: ConfigManifest, createOnly: boolean): Promise<ActionResult> {
    const { name, tenant } = m.metadata;
    await this.ownerTenant(tenant);
    const cur = await this.resources.get('Config', name, tenant);
    if (cur && createOnly) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `config "${name}" already exists in tenant "${tenant}"`);
    if (cur && isDeepStrictEqual(cur.spec, m.spec) && isDeepStrictEqual(cur.metadata.labels, m.metadata.labels)) {
      this.checkVersion(m, cur);
      return { type: 'object', object: cur, changed: false };
    }
    const obj: Config = cur
      ? { ...cur, spec: m.spec, metadata: { ...cur.metadata, labels: m.metadata.labels, generation: isDeepStrictEqual(cur.spec, m.spec) ? cur.metadata.generation : cur.metadata.generation + 1, updatedAt: this.env.now() } }
      : { kind: 'Config', metadata: this.newMetadata(name, m.metadata.labels, tenant), spec: m.spec };
    // The audit record names the keys, not the values (a config may still be sensitive to some).
    const written = await this.resources.write(obj, this.expected(m, cur, createOnly), this.entry(cur ? 'update' : 'create', 'Config', name, tenant, { generation: obj.metadata.generation, keys: Object.keys(m.spec.data).sort() }));
    return { type: 'object', object: written, created: !cur, changed: true };
  }

  private async applyMachine(m: MachineManifest, createOnly: boolean): Promise<ActionResult> {
    const { name, tenant } = m.metadata;
    const owner = await this.ownerTenant(tenant);
    const cur = await this.resources.get('Machine', name, tenant);
    if (cur && createOnly) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `machine "${name}" already exists in tenant "${tenant}"`);
    await this.checkQuota(owner, 'Machine', name, m.spec);
    if ((m.spec.disks ?? []).length > 0) {
      const [volumes, services, jobs, machines] = await Promise.all([this.resources.list('Volume', tenant), this.resources.list('Service', tenant), this.resources.list('Job', tenant), this.resources.list('Machine', tenant)]);
      checkMachineDisks(name, tenant, m.spec.disks ?? [], { volumes: volumes.items, services: services.items, jobs: jobs.items, machines: machines.items });
    }
    if (cur && isDeepStrictEqual(cur.spec, m.spec) && isDeepStrictEqual(cur.metadata.labels, m.metadata.labels)) {
      this.checkVersion(m, cur);
      return { type: 'object', object: cur, changed: false };
    }
    const obj: Machine = cur
      ? {
          ...cur,
          spec: m.spec,
          metadata: {
            ...cur.metadata,
            labels: m.metadata.labels,
            generation: isDeepStrictEqual(cur.spec, m.spec) ? cur.metadata.generation : cur.metadata.generation + 1,
            updatedAt: this.env.now(),
          },
        }
      : { kind: 'Machine', metadata: this.newMetadata(name, m.metadata.labels, tenant), spec: m.spec, status: { phase: 'Pending', host: '', restarts: 0 } };
    const written = await this.resources.write(obj, this.expected(m, cur, createOnly), this.entry(cur ? 'update' : 'create', obj.kind, name, tenant, { generation: obj.metadata.generation }));
    return { type: 'object', object: written, created: !cur, changed: true };
  }

  private newMetadata(name: string, labels: Record<string, string>, tenant?: string): Metadata {
    const now = this.env.now();
    const md: Metadata = { name, uid: this.env.newId(), labels, resourceVersion: 0, generation: 1, createdAt: now, updatedAt: now };
    if (tenant !== undefined) md.tenant = tenant;
    return md;
  }

  /** Applies the expected version: the manifest's resourceVersion if given, else the one just read. */
  private expected(m: Manifest, current: AnyObject | undefined, createOnly: boolean): number {
    if (createOnly) return 0;
    if (m.metadata.resourceVersion !== undefined) return m.metadata.resourceVersion;
    return current?.metadata.resourceVersion ?? 0;
  }

  private async applyTenant(m: TenantManifest, createOnly: boolean): Promise<ActionResult> {
    const cur = await this.resources.get('Tenant', m.metadata.name);
    if (cur && createOnly) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `tenant "${m.metadata.name}" already exists`);
    if (cur && isDeepStrictEqual(cur.spec, m.spec) && isDeepStrictEqual(cur.metadata.labels, m.metadata.labels)) {
      this.checkVersion(m, cur);
      return { type: 'object', object: cur, changed: false };
    }
    const obj: Tenant = cur
      ? { ...cur, spec: m.spec, metadata: { ...cur.metadata, labels: m.metadata.labels, generation: cur.metadata.generation + 1, updatedAt: this.env.now() } }
      : { kind: 'Tenant', metadata: this.newMetadata(m.metadata.name, m.metadata.labels), spec: m.spec };
    const written = await this.resources.write(obj, this.expected(m, cur, createOnly), this.entry(cur ? 'update' : 'create', 'Tenant', m.metadata.name, m.metadata.name, { generation: obj.metadata.generation }));
    const warnings = await this.policyWarnings(written);
    return { type: 'object', object: written, created: !cur, changed: true, ...(warnings.length ? { warnings } : {}) };
  }

  /** The tenant a workload names, or CARAPACE_E_TENANT_NOT_FOUND at `path` (default metadata.tenant). */
  private async ownerTenant(tenant: string, path = 'metadata.tenant'): Promise<Tenant> {
    const owner = await this.resources.get('Tenant', tenant);
    if (!owner) {
      throw new CarapaceError('CARAPACE_E_TENANT_NOT_FOUND', `tenant "${tenant}" does not exist; apply a Tenant named "${tenant}" first`, [
        { path, message: `tenant "${tenant}" does not exist` },
      ]);
    }
    return owner;
  }

  /** The tenant's current requests (services, unfinished jobs, machines). */
  private async usageOf(tenant: string): Promise<{ usage: TenantUsage; services: Service[]; jobs: Job[]; machines: Machine[] }> {
    const [svcs, jobs, machines] = await Promise.all([this.resources.list('Service', tenant), this.resources.list('Job', tenant), this.resources.list('Machine', tenant)]);
    return { usage: requestedBy(svcs.items, jobs.items, machines.items), services: svcs.items, jobs: jobs.items, machines: machines.items };
  }

  /** Refuses a workload that would take its tenant over quota (CARAPACE_E_QUOTA_EXCEEDED). */
  private async checkQuota(owner: Tenant, kind: 'Service' | 'Job' | 'Machine', name: string, spec: ServiceManifest['spec'] | JobManifest['spec'] | MachineManifest['spec']): Promise<void> {
    const quota = owner.spec.quota;
    if (!quota) return;
    const t = owner.metadata.name;
    const cur = await this.usageOf(t);
    const services = cur.services.filter((x) => !(kind === 'Service' && x.metadata.name === name));
    const jobs = cur.jobs.filter((x) => !(kind === 'Job' && x.metadata.name === name));
    const machines = cur.machines.filter((x) => !(kind === 'Machine' && x.metadata.name === name));
    const md = { name, tenant: t, uid: '', labels: {}, resourceVersion: 0, generation: 1, createdAt: '', updatedAt: '' };
    // The object as it would be after this apply (specs are already validated and normalised).
    if (kind === 'Service') services.push({ kind, metadata: md, spec: spec as Service['spec'], status: { ready: 0, observedGeneration: 0 } });
    if (kind === 'Job') jobs.push({ kind, metadata: md, spec: spec as Job['spec'], status: { phase: 'Pending', succeeded: 0, failed: 0, observedGeneration: 0 } });
    if (kind === 'Machine') machines.push({ kind, metadata: md, spec: spec as Machine['spec'], status: { phase: 'Pending', host: '', restarts: 0 } });
    const problems = quotaProblems(quota, cur.usage, requestedBy(services, jobs, machines), 'spec');
    if (problems.length > 0) {
      throw new CarapaceError('CARAPACE_E_QUOTA_EXCEEDED', `${kind} "${name}": ${problems.map((p) => p.message).join('; ')}`, problems);
    }
  }

  /**
   * A tightened policy is not applied to running work (nothing is stopped behind the
   * operator's back): the workloads that now break it are reported instead.
   */
  private async policyWarnings(t: Tenant): Promise<string[]> {
    const over = overQuota(t.spec.quota, (await this.usageOf(t.metadata.name)).usage).map(
      (o) => `tenant ${t.metadata.name} is over its new quota (${o}); running work is not stopped, new requests are refused`,
    );
    const min = t.spec.minIsolation;
    if (min === undefined) return over;
    const [svcs, jobs] = await Promise.all([this.resources.list('Service', t.metadata.name), this.resources.list('Job', t.metadata.name)]);
    return [...over, ...[...svcs.items, ...jobs.items]
      .filter((w) => !isolationAtLeast(w.spec.isolation, min))
      .map((w) => `${w.kind.toLowerCase()} ${t.metadata.name}/${w.metadata.name} runs with isolation "${w.spec.isolation}", weaker than the new minIsolation "${min}"; it keeps running until it is changed or deleted`)];
  }

  private checkVersion(m: Manifest, cur: AnyObject): void {
    const rv = m.metadata.resourceVersion;
    if (rv !== undefined && rv !== cur.metadata.resourceVersion) {
      throw new CarapaceError(
        'CARAPACE_E_CONFLICT',
        `${cur.kind.toLowerCase()} "${cur.metadata.name}" is at resourceVersion ${cur.metadata.resourceVersion}, not ${rv}; re-read and retry`,
      );
    }
  }

  /** `as`: the audit action and detail when the apply is another operation's (a rollout undo or restart). */
  private async applyWorkload(m: ServiceManifest | JobManifest, createOnly: boolean, as?: { action: string; detail: Record<string, unknown> }): Promise<ActionResult> {
    const { name, tenant } = m.metadata;
    const owner = await this.ownerTenant(tenant);
    const min = owner.spec.minIsolation;
    if (min !== undefined && !isolationAtLeast(m.spec.isolation, min)) {
      throw new CarapaceError(
        'CARAPACE_E_POLICY_VIOLATION',
        `${m.kind} "${name}": isolation "${m.spec.isolation}" is weaker than tenant "${tenant}"'s minIsolation "${min}" (allowed: ${ISOLATION_ORDER.filter((t) => isolationAtLeast(t, min)).join(', ')})`,
        [{ path: 'spec.isolation', message: `must be at least "${min}" for tenant "${tenant}"` }],
      );
    }
    if (!AVAILABLE_ISOLATION.includes(m.spec.isolation)) {
      throw new CarapaceError(
        'CARAPACE_E_ISOLATION_UNAVAILABLE',
        `${m.kind} "${name}": isolation "${m.spec.isolation}" is not available yet on this control plane (available: ${AVAILABLE_ISOLATION.join(', ')}); set spec.isolation`,
        [{ path: 'spec.isolation', message: `"${m.spec.isolation}" is not available yet (available: ${AVAILABLE_ISOLATION.join(', ')})` }],
      );
    }
    const allowed = owner.spec.allowedRegistries;
    if (allowed && !allowed.includes(registryOf(m.spec.image))) {
      throw new CarapaceError('CARAPACE_E_POLICY_VIOLATION', `${m.kind} "${name}": registry "${registryOf(m.spec.image)}" is not allowed for tenant "${tenant}" (allowed: ${allowed.join(', ') || 'none'})`, [
        { path: 'spec.image', message: `registry "${registryOf(m.spec.image)}" is not in the tenant's allowedRegistries` },
      ]);
    }
    // Secrets and configs: mount paths (also against the volumes') and env names first (no state), then that they exist.
    checkContainerRefs(m.spec);
    await checkReferences(this.resources, tenant, m.spec, `${m.kind} "${name}"`);
    const cur = m.kind === 'Service' ? await this.resources.get('Service', name, tenant) : await this.resources.get('Job', name, tenant);
    await this.checkQuota(owner, m.kind, name, m.spec);
    if (cur && createOnly) throw new CarapaceError('CARAPACE_E_ALREADY_EXISTS', `${m.kind.toLowerCase()} "${name}" already exists in tenant "${tenant}"`);
    if (cur && isDeepStrictEqual(cur.spec, m.spec) && isDeepStrictEqual(cur.metadata.labels, m.metadata.labels)) {
      this.checkVersion(m, cur);
      return { type: 'object', object: cur, changed: false };
    }
    if (cur && m.kind === 'Job' && !isDeepStrictEqual(cur.spec, m.spec)) {
      throw new CarapaceError('CARAPACE_E_IMMUTABLE_FIELD', `job "${name}": a job's spec cannot change once created; delete it and apply again`, [
        { path: 'spec', message: 'immutable after creation' },
      ]);
    }
    // Volumes: what is mounted exists and is not written by two workloads; the service's
    // template volumes are made (or resized while unbound) in the service's own transaction.
    // Nothing to check for a workload that mounts no volume (the common apply): skip the lists.
    const mountsVolumes = (m.spec.volumes?.length ?? 0) > 0 || (m.kind === 'Service' && (m.spec.volumeTemplates?.length ?? 0) > 0);
    const empty = { items: [] as never[] };
    const [vols, svcs, jobsNow, snapsNow, machinesNow] = mountsVolumes
      ? await Promise.all([this.resources.list('Volume', tenant), this.resources.list('Service', tenant), this.resources.list('Job', tenant), this.resources.list('VolumeSnapshot', tenant), this.resources.list('Machine', tenant)])
      : [empty, empty, empty, empty, empty];
    const templates = checkWorkloadVolumes(m.kind, name, m.spec, { volumes: vols.items, services: svcs.items, jobs: jobsNow.items, machines: machinesNow.items });
    const storageBefore = storageOf(vols.items, snapsNow.items);
    const storageAfter = storageBefore + templates.reduce((n, t) => n + volumeSizeMiB(t.size) - (t.existing ? volumeSizeMiB(t.existing.spec.size) : 0), 0);
    checkStorageQuota(owner.spec.quota, tenant, storageBefore, storageAfter, 'spec.volumeTemplates', `${m.kind} "${name}"`);
    const extra = this.templateWrites(name, tenant, templates);
    let obj: Service | Job;
    if (m.kind === 'Service') {
      const prev = cur as Service | undefined; // cur was read with kind Service above
      obj = prev
        ? {
            ...prev,
            spec: m.spec,
            metadata: {
              ...prev.metadata,
              labels: m.metadata.labels,
              generation: isDeepStrictEqual(prev.spec, m.spec) ? prev.metadata.generation : prev.metadata.generation + 1,
              updatedAt: this.env.now(),
            },
          }
        : { kind: 'Service', metadata: this.newMetadata(name, m.metadata.labels, tenant), spec: m.spec, status: { ready: 0, observedGeneration: 0 } };
    } else {
      const prev = cur as Job | undefined; // cur was read with kind Job above
      obj = prev
        ? { ...prev, metadata: { ...prev.metadata, labels: m.metadata.labels, updatedAt: this.env.now() } }
        : {
            kind: 'Job',
            metadata: this.newMetadata(name, m.metadata.labels, tenant),
            spec: m.spec,
            status: { phase: 'Pending', succeeded: 0, failed: 0, observedGeneration: 0 },
          };
    }
    const entry = this.entry(as?.action ?? (cur ? 'update' : 'create'), obj.kind, name, tenant, { generation: obj.metadata.generation, ...as?.detail });
    if (obj.kind === 'Service' && !cur) return this.createService(obj, this.expected(m, cur, createOnly), entry, extra);
    if (extra.writes.length > 0) {
      const [written] = await this.resources.writeAll([{ obj, expectVersion: this.expected(m, cur, createOnly) }, ...extra.writes], [entry, ...extra.audits]);
      return { type: 'object', object: written ?? obj, created: !cur, changed: true };
    }
    const written = await this.resources.write(obj, this.expected(m, cur, createOnly), entry);
    return { type: 'object', object: written, created: !cur, changed: true };
  }

  /**
   * Creates a service with its address: the claim lands in the creation's transaction. When a
   * service created at the same moment took the address first, another one is picked (the
   * claim is the only thing two creations of different services race for).
   */
  private async createService(obj: Service, expectVersion: number, entry: AuditEntry, extra: ReturnType<ControlPlane['templateWrites']>): Promise<ActionResult> {
    for (let attempt = 1; ; attempt++) {
      const claim = await claimServiceAddress(this.resources.store, this.pools, obj);
      const withAddress: Service = { ...obj, status: { ...obj.status, address: claim.address } };
      try {
        const [created] = await this.resources.writeAll([{ obj: withAddress, expectVersion }, ...extra.writes], [entry, ...extra.audits], [claim.op]);
        return { type: 'object', object: created ?? withAddress, created: true, changed: true };
      } catch (e) {
        // Only a lost claim is retried: the service's own precondition failing is the caller's answer.
        const lostClaim = isCarapaceError(e, 'CARAPACE_E_CONFLICT') && (await this.resources.store.get(claim.op.key)) !== undefined;
        if (!lostClaim || attempt >= UNCONDITIONAL_ATTEMPTS) throw e;
      }
    }
  }

  /**
   * Deletes a service or a tenant with the network records that go with it (the service's
   * address claim; the tenant's network and CIDR claim) in one transaction with its audit
   * record. False when the object is absent.
   */
  private async removeWithRecords(a: Extract<Action, { type: 'delete' }> & { kind: 'Service' | 'Tenant' }, tenant: string | undefined, what: string): Promise<boolean> {
    const key = objectKey(a.kind, a.name, tenant);
    for (let attempt = 1; ; attempt++) {
      const cur = a.kind === 'Service' ? await this.resources.get('Service', a.name, tenant) : await this.resources.get('Tenant', a.name);
      if (!cur) return false;
      if (a.resourceVersion !== undefined && a.resourceVersion !== cur.metadata.resourceVersion) {
        throw new CarapaceError('CARAPACE_E_CONFLICT', `${what} is at resourceVersion ${cur.metadata.resourceVersion}, not ${a.resourceVersion}`);
      }
      const store = this.resources.store;
      const records = cur.kind === 'Service' ? await releaseServiceAddressOps(store, cur) : await tenantNetworkRemovalOps(store, a.name);
      const ops: TxnOp[] = [{ op: 'delete', key, expect: { version: cur.metadata.resourceVersion } }, ...records];
      try {
        await this.resources.commitRecords(ops, this.entry('delete', a.kind, a.name, a.kind === 'Tenant' ? a.name : tenant));
        return true;
      } catch (e) {
        if (!(e instanceof ConflictError)) throw e;
        // Deleted by someone else between the read and the commit: it is not found, as if the
        // read had come after (a conflict would be an answer no order of the two explains).
        if (e.key === key && e.actualVersion === 0) return false;
        // Changed meanwhile (the object or its records): read again; the version check above
        // answers a caller who named one.
        if (attempt >= UNCONDITIONAL_ATTEMPTS) throw new CarapaceError('CARAPACE_E_CONFLICT', `${what} kept changing while it was being deleted; re-read and retry`);
      }
    }
  }

  private async delete(a: Extract<Action, { type: 'delete' }>): Promise<ActionResult> {
    const tenant = this.tenantOf(a.kind, a.tenant);
    const what = `${a.kind.toLowerCase()} "${a.name}"${tenant !== undefined ? ` in tenant "${tenant}"` : ''}`;
    if (a.kind === 'Host') throw new CarapaceError('CARAPACE_E_METHOD_NOT_ALLOWED', 'hosts are registered by their agents and cannot be deleted through the API yet');
    if (a.kind === 'Cell') throw new CarapaceError('CARAPACE_E_METHOD_NOT_ALLOWED', 'cells are created and retired by the scheduler; delete or scale the workloads instead');
    if (a.kind === 'Tenant') {
      const [svcs, jobs, machines, vols] = await Promise.all([this.resources.list('Service', a.name), this.resources.list('Job', a.name), this.resources.list('Machine', a.name), this.resources.list('Volume', a.name)]);
      const owned = svcs.items.length + jobs.items.length + machines.items.length + vols.items.length;
      if (owned > 0) {
        throw new CarapaceError(
          'CARAPACE_E_TENANT_NOT_EMPTY',
          `tenant "${a.name}" still owns ${svcs.items.length} service(s), ${jobs.items.length} job(s), ${machines.items.length} machine(s) and ${vols.items.length} volume(s); delete them first`,
        );
      }
      // Secrets and configs too: a secret's sealed record must go with it, through its own delete.
      const [secrets, configs, snaps] = await Promise.all([this.resources.list('Secret', a.name), this.resources.list('Config', a.name), this.resources.list('VolumeSnapshot', a.name)]);
      if (secrets.items.length + configs.items.length + snaps.items.length > 0) {
        throw new CarapaceError('CARAPACE_E_TENANT_NOT_EMPTY', `tenant "${a.name}" still owns ${secrets.items.length} secret(s), ${configs.items.length} config(s) and ${snaps.items.length} volume snapshot(s); delete them first`);
      }
    }
    if (a.kind === 'Secret' || a.kind === 'Config') {
      const [insts, svcs, jobs] = await Promise.all([this.resources.list('Instance', tenant), this.resources.list('Service', tenant), this.resources.list('Job', tenant)]);
      checkMaterialDeletable(a.kind, tenant ?? '', a.name, { instances: insts.items, services: svcs.items, jobs: jobs.items });
    }
    if (a.kind === 'Secret') {
      if (!(await deleteSecret(this.resources, tenant ?? '', a.name, a.resourceVersion, this.entry('delete', 'Secret', a.name, tenant)))) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `${what} not found`);
      return { type: 'deleted', kind: a.kind, name: a.name, tenant: a.tenant };
    }
    if (a.kind === 'Machine') {
      // A placed machine is removed by its agent once the VM is stopped and its disk overlay
      // deleted; an unplaced one can go at once.
      let gone = false;
      const updated = await this.resources.mutate('Machine', a.name, tenant, (m) => {
        if (a.resourceVersion !== undefined && m.metadata.resourceVersion !== a.resourceVersion) {
          throw new CarapaceError('CARAPACE_E_CONFLICT', `${what} is at resourceVersion ${m.metadata.resourceVersion}, not ${a.resourceVersion}`);
        }
        if (m.status.host === '') {
          gone = true;
          return undefined;
        }
        if (m.metadata.deletionRequestedAt) return undefined;
        m.metadata.deletionRequestedAt = this.env.now();
        return m;
      }, this.entry('delete', 'Machine', a.name, tenant));
      if (!updated) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `${what} not found`);
      if (gone) await this.resources.remove('Machine', a.name, tenant, updated.metadata.resourceVersion, this.entry('delete', 'Machine', a.name, tenant));
      return { type: 'deleted', kind: a.kind, name: a.name, tenant: a.tenant };
    }
    if (a.kind === 'Instance') {
      // Deleting an instance asks its agent to stop and remove it; its owner's controller
      // then replaces it. The object goes away once the container is gone.
      const updated = await this.resources.mutate('Instance', a.name, tenant, (i) => {
        if (a.resourceVersion !== undefined && i.metadata.resourceVersion !== a.resourceVersion) {
          throw new CarapaceError('CARAPACE_E_CONFLICT', `${what} is at resourceVersion ${i.metadata.resourceVersion}, not ${a.resourceVersion}`);
        }
        if (i.metadata.deletionRequestedAt) return undefined;
        i.metadata.deletionRequestedAt = this.env.now();
        return i;
      }, this.entry('delete', 'Instance', a.name, tenant));
      if (!updated) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `${what} not found`);
      return { type: 'deleted', kind: a.kind, name: a.name, tenant: a.tenant };
    }
    if (a.kind === 'Volume') {
      // Refused while in use; the host's agent reclaims the storage of a volume whose object is gone.
      const [insts, svcs, jobs, machines, snaps] = await Promise.all([
        this.resources.list('Instance', tenant),
        this.resources.list('Service', tenant),
        this.resources.list('Job', tenant),
        this.resources.list('Machine', tenant),
        this.resources.list('VolumeSnapshot', tenant),
      ]);
      if (await this.resources.get('Volume', a.name, tenant)) checkVolumeDeletable(tenant ?? '', a.name, { instances: insts.items, services: svcs.items, jobs: jobs.items, machines: machines.items, snapshots: snaps.items });
    }
    const removed =
      a.kind === 'Service' || a.kind === 'Tenant'
        ? await this.removeWithRecords({ ...a, kind: a.kind }, tenant, what)
        : await this.resources.remove(a.kind, a.name, tenant, a.resourceVersion, this.entry('delete', a.kind, a.name, tenant));
    if (!removed) throw new CarapaceError('CARAPACE_E_NOT_FOUND', `${what} not found`);
    return { type: 'deleted', kind: a.kind, name: a.name, tenant: a.tenant };
  }
}
