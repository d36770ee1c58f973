/**
 * Volumes: tenant-owned persistent storage on one host (`kind: Volume`), how services and jobs
 * mount them (`spec.volumes`), per-replica volumes made from a service's templates
 * (`spec.volumeTemplates`, one Volume `<template>-<ordinal>` per replica) and what an instance
 * is told to mount (`InstanceSpec.mounts`, templates already resolved). Pure: schemas, types
 * and the rules that need no state; what needs state (a volume exists, is not used read-write
 * elsewhere, the tenant's storage quota) is core/volumes.ts's, where a volume may be placed is
 * the placement pipeline's (control/placement.ts).
 */
import { z } from 'zod';
import type { Metadata } from './objects.js';
import { NameSchema } from './name.js';
import { formatMemory, parseMemoryMiB } from './quantity.js';

/** Smallest volume: an ext4 filesystem needs room for its journal and metadata. */
export const MIN_VOLUME_MIB = 16;
/** Largest volume (and storage quota) a manifest may ask for. */
export const MAX_VOLUME_MIB = 16 * 1024 * 1024;

function sizeMiB(v: number | string, ctx: z.RefinementCtx, max: number): number {
  const mib = parseMemoryMiB(v);
  if (mib === undefined) {
    ctx.addIssue({ code: 'custom', message: 'must be a quantity such as "512Mi" or "10Gi" (a bare number is MiB)' });
    return z.NEVER;
  }
  if (mib < MIN_VOLUME_MIB) {
    ctx.addIssue({ code: 'custom', message: `must be at least ${MIN_VOLUME_MIB}Mi` });
    return z.NEVER;
  }
  if (mib > max) {
    ctx.addIssue({ code: 'custom', message: `must be at most ${formatMemory(max)}` });
    return z.NEVER;
  }
  return mib;
}

/** The message of a quantity that is neither a number nor a string (absent: required). */
function quantityError(iss: { input?: unknown }): string {
  return iss.input === undefined ? 'is required' : 'must be a quantity such as "512Mi" or "10Gi" (a bare number is MiB)';
}

/**
 * A volume's size: a quantity (`"1Gi"`, `"512Mi"`, a bare number is MiB), at least 16Mi, stored
 * canonical (`formatMemory` of whole MiB: `"1Gi"`, `"1536Mi"`) so an unchanged manifest
 * compares equal to the stored spec.
 */
export const VolumeSizeSchema = z.union([z.number(), z.string()], { error: quantityError }).transform((v, ctx) => {
  const mib = sizeMiB(v, ctx, MAX_VOLUME_MIB);
  return typeof mib === 'number' ? formatMemory(mib) : mib;
});

/** A tenant's storage quota: like a volume size, stored as whole MiB (like `quota.memory`). */
export const StorageQuotaSchema = z.union([z.number(), z.string()], { error: quantityError }).transform((v, ctx) => {
  const mib = parseMemoryMiB(v);
  if (mib === undefined || mib < 0) {
    ctx.addIssue({ code: 'custom', message: 'must be a quantity such as "100Gi" (a bare number is MiB), not negative' });
    return z.NEVER;
  }
  if (mib > 1024 * MAX_VOLUME_MIB) {
    ctx.addIssue({ code: 'custom', message: `must be at most ${formatMemory(1024 * MAX_VOLUME_MIB)}` });
    return z.NEVER;
  }
  return mib === 0 ? 0 : mib; // -0.5 rounds up to -0, which would not compare equal to the 0 it prints as
});

/** MiB of a stored (canonical) volume size; 0 for a malformed one. */
export function volumeSizeMiB(size: string): number {
  return parseMemoryMiB(size) ?? 0;
}

/** Bytes of a stored volume size (what the host storage library makes the image). */
export function volumeSizeBytes(size: string): number {
  return volumeSizeMiB(size) * 1024 * 1024;
}

/**
 * Where a volume is mounted in a container: absolute, normalised (no `.`/`..` segment, no
 * `//`, no trailing `/`), not `/` itself, printable without spaces.
 */
export const MountPathSchema = z
  .string()
  .max(1024)
  .regex(/^\/[\x21-\x7e]*$/, 'must be an absolute path such as "/data" (printable ASCII, no spaces)')
  .refine((p) => p !== '/', 'cannot be / (the container root)')
  .refine((p) => !p.endsWith('/') && !p.split('/').slice(1).some((s) => s === '' || s === '.' || s === '..'), 'must be a normalised path (no "//", ".", ".." or trailing "/")');

/**
 * Where a new volume's data comes from: a VolumeSnapshot of the same tenant, Ready. Restoring
 * makes a new volume (Kubernetes' `dataSource`), never overwrites one in place: see
 * core/volumes.ts `restoredVolumeStatus` for why.
 */
export const VolumeSourceSchema = z.strictObject({
  /** The VolumeSnapshot's name (per tenant, like volumes). */
  snapshot: NameSchema,
});
export type VolumeSource = z.infer<typeof VolumeSourceSchema>;

/** The spec of a Volume: how large, which filesystem, and optionally the host it must live on. */
export const VolumeSpecSchema = z.strictObject({
  /** Hard size limit (the host makes a filesystem of exactly this size). */
  size: VolumeSizeSchema,
  /** The filesystem made on it; only ext4 for now. */
  filesystem: z.enum(['ext4']).default('ext4'),
  /**
   * Pins the volume to this host; omitted: bound to the host of its first user's placement
   * (a volume restored from a snapshot: the snapshot's host, filled in by the control plane).
   */
  host: NameSchema.optional(),
  /** Made as a copy of this snapshot instead of an empty filesystem; set at creation only. */
  source: VolumeSourceSchema.optional(),
});
export type VolumeSpec = z.infer<typeof VolumeSpecSchema>;

/** One volume mounted into a service's or job's containers. */
export const VolumeMountSchema = z.strictObject({
  /** A Volume of the same tenant (names are per tenant: another tenant's volume is not found). */
  volume: NameSchema,
  mountPath: MountPathSchema,
  /** Shared read-only: several replicas (and other workloads) may mount it. */
  readOnly: z.boolean().default(false),
});
export type VolumeMount = z.infer<typeof VolumeMountSchema>;

/**
 * A service's per-replica volume: replica `k` mounts the Volume `<name>-<k>`, created by the
 * control plane when the service is applied (or scaled up) and kept when it scales down or is
 * deleted, so each replica keeps its data.
 */
export const VolumeTemplateSchema = z.strictObject({
  /** Up to 52 characters, so `<name>-<ordinal>` stays a valid 63-character name. */
  name: NameSchema.refine((n) => n.length <= 52, 'must be at most 52 characters (the replica ordinal is appended)'),
  size: VolumeSizeSchema,
  mountPath: MountPathSchema,
});
export type VolumeTemplate = z.infer<typeof VolumeTemplateSchema>;

/** What an instance mounts: a Volume by name (templates resolved), where, and how. */
export interface InstanceMount {
  volume: string;
  mountPath: string;
  readOnly: boolean;
}

/** `Pending`: not on any host yet; `Bound`: lives on `status.host` for good. */
export type VolumePhase = 'Pending' | 'Bound';

export interface VolumeStatus {
  phase: VolumePhase;
  /** The host the volume lives on, once bound (written by the placement that binds it). */
  host?: string;
  /** Bytes used in its filesystem, reported by its host's agent. */
  usedBytes?: number;
  /** Live instances that mount it (instance names), kept by the controller. */
  attachedTo: string[];
  /** What its host's agent last said about it (e.g. why it could not be made). */
  message?: string;
  /**
   * For a volume made from a snapshot (`spec.source`): the snapshot and its copy on the host,
   * resolved by the control plane when the volume was created, so the host's agent finds the
   * copy without reading the snapshot (which may be deleted meanwhile).
   */
  restoredFrom?: RestoredFrom;
}

/** The snapshot a volume was restored from, as its host's storage names it. */
export interface RestoredFrom {
  /** The VolumeSnapshot's name and uid. */
  snapshot: string;
  snapshotUid: string;
  /** The uid of the volume the snapshot was taken of (its copy lives under that volume's id on the host). */
  volumeUid: string;
}

/** A stored Volume. */
export interface Volume {
  kind: 'Volume';
  metadata: Metadata;
  spec: VolumeSpec;
  status: VolumeStatus;
}

/** Labels on a volume made from a template: the owning service and the template. */
export const VOLUME_SERVICE_LABEL = 'carapace/service';
export const VOLUME_TEMPLATE_LABEL = 'carapace/volume-template';

/** The Volume replica `ordinal` of a service mounts for template `template`. */
export function templateVolumeName(template: string, ordinal: number): string {
  return `${template}-${ordinal}`;
}

/** The mounts of replica (or completion index) `index`: the spec's volumes, then its templates resolved. */
export function mountsOf(spec: { volumes?: VolumeMount[] | undefined; volumeTemplates?: VolumeTemplate[] | undefined }, index: number): InstanceMount[] {
  return [
    ...(spec.volumes ?? []).map((v) => ({ volume: v.volume, mountPath: v.mountPath, readOnly: v.readOnly })),
    ...(spec.volumeTemplates ?? []).map((t) => ({ volume: templateVolumeName(t.name, index), mountPath: t.mountPath, readOnly: false })),
  ];
}

/** One problem found by volumeSpecIssues: a path relative to `spec` and a message. */
export interface SpecIssue {
  path: (string | number)[];
  message: string;
}

/**
 * The rules of a workload spec's volumes that need no state: no two mounts (volumes and
 * templates) on one path, no volume mounted twice, no two templates of one name, and a
 * read-write volume is not shared by several replicas (`replicas` > 1: use `readOnly: true`,
 * or `volumeTemplates` for one volume per replica). Paths are relative to the spec.
 */
export function volumeSpecIssues(spec: { volumes?: VolumeMount[] | undefined; volumeTemplates?: VolumeTemplate[] | undefined; replicas?: number }): SpecIssue[] {
  const out: SpecIssue[] = [];
  const paths = new Map<string, string>();
  const usePath = (p: string, where: (string | number)[], what: string): void => {
    const prev = paths.get(p);
    if (prev !== undefined) out.push({ path: [...where, 'mountPath'], message: `mount path "${p}" is already used by ${prev}` });
    else paths.set(p, what);
  };
  const seen = new Map<string, number>();
  (spec.volumes ?? []).forEach((v, i) => {
    usePath(v.mountPath, ['volumes', i], `spec.volumes[${i}]`);
    const first = seen.get(v.volume);
    if (first !== undefined) out.push({ path: ['volumes', i, 'volume'], message: `volume "${v.volume}" is already mounted by spec.volumes[${first}]` });
    else seen.set(v.volume, i);
    if (!v.readOnly && (spec.replicas ?? 1) > 1) {
      out.push({
        path: ['volumes', i, 'readOnly'],
        message: `volume "${v.volume}" is mounted read-write by ${spec.replicas ?? 1} replicas; set readOnly: true to share it, or use volumeTemplates for one volume per replica`,
      });
    }
  });
  const names = new Map<string, number>();
  (spec.volumeTemplates ?? []).forEach((t, i) => {
    usePath(t.mountPath, ['volumeTemplates', i], `spec.volumeTemplates[${i}]`);
    const first = names.get(t.name);
    if (first !== undefined) out.push({ path: ['volumeTemplates', i, 'name'], message: `template "${t.name}" is already defined by spec.volumeTemplates[${first}]` });
    else names.set(t.name, i);
  });
  return out;
}

/** Adds volumeSpecIssues to a zod refinement (for the manifest schemas). */
export function refineVolumes(spec: Parameters<typeof volumeSpecIssues>[0], ctx: z.RefinementCtx): void {
  for (const i of volumeSpecIssues(spec)) ctx.addIssue({ code: 'custom', path: i.path, message: i.message });
}
