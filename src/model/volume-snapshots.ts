/**
 * VolumeSnapshots: point-in-time copies of a tenant's volume, kept on the volume's host
 * (`kind: VolumeSnapshot`, per tenant at `volumesnapshots/<tenant>/<name>`), and what a new
 * volume restored from one (`Volume.spec.source.snapshot`) needs. Pure: the schema, the types
 * and the rules that need no state; what needs state (the volume exists and is bound, the
 * snapshot is Ready) is core/volumes.ts's, taking the copy is the host agent's
 * (agent/volume-snapshots.ts over storage/volume-store.ts).
 *
 * Life of a snapshot:
 *   created  ── volume bound to a host ──> Pending, status.host/volumeUid copied from the volume
 *            └─ volume never used (unbound) ──> Failed (VolumeNotBound): it holds no data
 *   Pending  ── the host's agent copies the image ──> Ready (sizeBytes, takenAt)
 *            └─ it cannot, for good ──> Failed (reason, message)
 *   deleted  ──> the host's agent removes the copy (its sweep, after a successful list)
 */
import { z } from 'zod';
import type { Metadata } from './objects.js';
import { NameSchema } from './name.js';

/** The spec of a VolumeSnapshot: which volume of the same tenant. Immutable after creation. */
export const VolumeSnapshotSpecSchema = z.strictObject({
  /** A Volume of the same tenant (names are per tenant: another tenant's volume is not found). */
  volume: NameSchema,
});
export type VolumeSnapshotSpec = z.infer<typeof VolumeSnapshotSpecSchema>;

/** `Pending`: not taken yet; `Ready`: the copy exists on `status.host`; `Failed`: it will not be taken (see reason). */
export type VolumeSnapshotPhase = 'Pending' | 'Ready' | 'Failed';

/**
 * Stable reasons of a snapshot's status (machine-readable, like an instance's `reason`):
 * - `VolumeNotBound`: the volume was never used, so it lives on no host and holds no data
 *   (written by the control plane at creation);
 * - `VolumeNotOnHost`: the volume is bound to the host but its storage was never made there
 *   (its first user never started);
 * - `PauseTooLong`: the volume is attached to a running VM, which is paused for the copy, and
 *   the copy did not finish within the longest pause allowed (the VM was resumed, the partial
 *   copy removed);
 * - `CopyFailed`: the host could not copy the image (a full disk, an I/O error);
 * - `Taken`: Ready.
 */
export const SNAPSHOT_REASONS = ['VolumeNotBound', 'VolumeNotOnHost', 'PauseTooLong', 'CopyFailed', 'Taken'] as const;
export type SnapshotReason = (typeof SNAPSHOT_REASONS)[number];

export interface VolumeSnapshotStatus {
  phase: VolumeSnapshotPhase;
  /** The host holding (or to hold) the copy: the volume's host when the snapshot was created. */
  host?: string;
  /** The uid of the volume it is a copy of (the host's storage keeps it under that id). */
  volumeUid?: string;
  /** The volume's size when it was taken, in bytes: the smallest volume it can be restored into. */
  sizeBytes?: number;
  /** When the copy was made (the host's clock). */
  takenAt?: string;
  reason?: SnapshotReason;
  /** Human-readable detail (why it failed; what it waits for). */
  message?: string;
}

/** A stored VolumeSnapshot. */
export interface VolumeSnapshot {
  kind: 'VolumeSnapshot';
  metadata: Metadata;
  spec: VolumeSnapshotSpec;
  status: VolumeSnapshotStatus;
}

/** `yyyymmddhhmmss` of `d` in UTC. */
export function utcStamp(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

/**
 * The name `carapace volume snapshot` gives a snapshot when none is asked for:
 * `<volume>-<UTC yyyymmddhhmmss>`, the volume's name cut so the whole stays a 63-character name.
 */
export function defaultSnapshotName(volume: string, at: Date): string {
  const stamp = utcStamp(at);
  return `${volume.slice(0, 63 - stamp.length - 1)}-${stamp}`;
}
