/**
 * Manifest schemas: what users may write, Kubernetes-style (`apiVersion`, `kind`,
 * `metadata`, `spec`). Unknown fields are rejected everywhere (strict objects) so a typo
 * is an error, not a silently ignored setting. Parsing normalises quantities (cpu in cores,
 * memory in MiB) and fills defaults, so stored specs are canonical. Pure.
 */
import { z } from 'zod';
import { RolloutSchema } from './rollout.js';
import { parseCidr } from './netaddr.js';
import { parseCpu, parseMemoryMiB } from './quantity.js';

export const API_VERSION = 'carapace/v1';

// In name.ts so kind files (volumes.ts) that this file imports can use it without an import cycle.
export { NameSchema } from './name.js';
import { NameSchema } from './name.js';
import { FencingSchema } from './fencing.js';
import { refineVolumes, StorageQuotaSchema, VolumeMountSchema, VolumeSpecSchema, VolumeTemplateSchema } from './volumes.js';
import { VolumeSnapshotSpecSchema } from './volume-snapshots.js';

const LabelsSchema = z.record(
  z.string().regex(/^[a-zA-Z0-9][-a-zA-Z0-9_./]{0,62}$/, 'label keys are at most 63 of [-a-zA-Z0-9_./]'),
  z.string().max(63, 'label values are at most 63 characters'),
);

export const CpuSchema = z
  .union([z.number(), z.string()])
  .transform((v, ctx) => {
    const cores = parseCpu(v);
    if (cores === undefined) {
      ctx.addIssue({ code: 'custom', message: 'must be a number of cores (0.5) or millicores ("500m")' });
      return z.NEVER;
    }
    if (cores < 0.001) {
      ctx.addIssue({ code: 'custom', message: 'must be at least 0.001 cores (1m)' });
      return z.NEVER;
    }
    if (cores > 1024) {
      ctx.addIssue({ code: 'custom', message: 'must be at most 1024 cores' });
      return z.NEVER;
    }
    return cores;
  });

export const MemorySchema = z
  .union([z.number(), z.string()])
  .transform((v, ctx) => {
    const mib = parseMemoryMiB(v);
    if (mib === undefined) {
      ctx.addIssue({ code: 'custom', message: 'must be MiB (128) or a quantity ("128Mi", "1Gi")' });
      return z.NEVER;
    }
    if (mib < 4) {
      ctx.addIssue({ code: 'custom', message: 'must be at least 4Mi' });
      return z.NEVER;
    }
    if (mib > 16 * 1024 * 1024) {
      ctx.addIssue({ code: 'custom', message: 'must be at most 16Ti' });
      return z.NEVER;
    }
    return mib;
  });

/**
 * Where a container runs. `host`: runc on the host; `sandbox`: gVisor (runsc) on the host;
 * `cell`: inside a VM shared by the tenant's trust group (the default); `dedicated`: a VM of
 * its own.
 */
export const IsolationSchema = z.enum(['host', 'sandbox', 'cell', 'dedicated']);
export type Isolation = z.infer<typeof IsolationSchema>;

/**
 * Tiers this control plane can run; others would be refused at apply time. All four are
 * implemented; whether a host can run a tier is decided by placement (hosts advertise the
 * tiers their runtimes passed probes for), with a reason when none can.
 */
export const AVAILABLE_ISOLATION: readonly Isolation[] = ['host', 'sandbox', 'cell', 'dedicated'];

const EnvNameSchema = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'environment variable names are [A-Za-z_][A-Za-z0-9_]*');

export const PortSchema = z.strictObject({
  containerPort: z.number().int().min(1).max(65535),
  /** Published on the host's loopback-or-any address; omitted means not published. */
  hostPort: z.number().int().min(1).max(65535).optional(),
  protocol: z.enum(['tcp', 'udp']).default('tcp'),
});

const ProbePortSchema = z.number().int().min(1).max(65535);

/** The handlers a probe may use; exactly one is set. */
export const PROBE_HANDLERS = ['exec', 'httpGet', 'tcpSocket'] as const;

/**
 * A Kubernetes-style health check of a container, run by the agent on the container's host
 * (or by the guest agent inside its cell). Exactly one handler: `exec` (a command run inside
 * the container; exit 0 is success), `httpGet` (a GET of `path` on `port` at the container's
 * address; 200-399 is success, redirects are not followed), `tcpSocket` (a TCP connect to
 * `port`). Times are whole seconds like Kubernetes; an agent started with
 * `CARAPACE_PROBE_TIME_SCALE` (tests) multiplies `initialDelaySeconds` and `periodSeconds` by it.
 */
function probeSchema(kind: 'liveness' | 'readiness') {
  return z
    .strictObject({
      exec: z.strictObject({ command: z.array(z.string().max(4096)).min(1, 'must name a command').max(256) }).optional(),
      httpGet: z
        .strictObject({
          path: z
            .string()
            .max(2048)
            .regex(/^\/[\x21-\x7e]*$/, 'must be an absolute URL path such as "/healthz" (printable ASCII, no spaces)')
            .default('/'),
          port: ProbePortSchema,
        })
        .optional(),
      tcpSocket: z.strictObject({ port: ProbePortSchema }).optional(),
      /** Seconds after the container started before the first check. */
      initialDelaySeconds: z.number().int().min(0).max(3600).default(0),
      /** Seconds between the starts of two checks. */
      periodSeconds: z.number().int().min(1).max(3600).default(10),
      /** Seconds one check may take; a check that takes longer fails (and an exec is killed). */
      timeoutSeconds: z.number().int().min(1).max(3600).default(1),
      /** Consecutive failures after which the probe fails (liveness: the container is restarted). */
      failureThreshold: z.number().int().min(1).max(1000).default(3),
      /** Consecutive successes after which a failed probe passes again (must be 1 for liveness). */
      successThreshold: z.number().int().min(1).max(1000).default(1),
    })
    .superRefine((p, ctx) => {
      const set = PROBE_HANDLERS.filter((h) => p[h] !== undefined);
      if (set.length === 0) ctx.addIssue({ code: 'custom', path: [], message: 'must set exactly one of exec, httpGet, tcpSocket' });
      for (const extra of set.slice(1)) {
        ctx.addIssue({ code: 'custom', path: [extra], message: `set only one of exec, httpGet, tcpSocket (also set: ${set[0] ?? ''})` });
      }
      if (kind === 'liveness' && p.successThreshold !== 1) ctx.addIssue({ code: 'custom', path: ['successThreshold'], message: 'must be 1 for a liveness probe' });
    });
}

/** A liveness probe: failing `failureThreshold` times in a row restarts the container. */
export const LivenessProbeSchema = probeSchema('liveness');
/** A readiness probe: while it fails the instance is not ready (not counted in `status.ready`). */
export const ReadinessProbeSchema = probeSchema('readiness');
/** A validated, defaulted probe (liveness or readiness). */
export type Probe = z.infer<typeof ReadinessProbeSchema>;

/** A key of a Secret's or Config's data: the file name it is mounted as, and what `envFrom` names. */
export const DataKeySchema = z.string().regex(/^[A-Za-z0-9._-]{1,253}$/, 'data keys are 1 to 253 of [A-Za-z0-9._-]').refine((k) => k !== '.' && k !== '..', 'a data key cannot be "." or ".." (keys become file names)');

/**
 * Where a secret or config is mounted in a container: an absolute, normalised path (no `.`
 * or `..` segments, no trailing `/`), not `/` and not under the kernel's own filesystems.
 */
export const MountPathSchema = z
  .string()
  .max(1024)
  .regex(/^(\/[^/\s\p{Cc}]+)+$/u, 'must be an absolute path such as /etc/app (no trailing "/", no empty segments, no spaces or control characters)')
  .refine((p) => !p.split('/').some((seg) => seg === '.' || seg === '..'), 'must not contain "." or ".." segments')
  .refine((p) => !/^\/(proc|sys|dev)(\/|$)/.test(p), 'must not be under /proc, /sys or /dev');

/** A Secret mounted as files, one per key, in a tmpfs directory (default `/run/secrets/<secret>`). */
export const SecretMountSchema = z
  .strictObject({
    secret: NameSchema,
    mountPath: MountPathSchema.optional(),
  })
  // The default is filled in so stored specs (and agents) never compute it.
  .transform((m) => ({ secret: m.secret, mountPath: m.mountPath ?? `/run/secrets/${m.secret}` }));

/** A Config mounted as files, one per key, at `mountPath`. */
export const ConfigMountSchema = z.strictObject({ config: NameSchema, mountPath: MountPathSchema });

/** One environment variable taken from a key of a Secret or a Config (exactly one of the two). */
export const EnvFromSchema = z
  .strictObject({
    name: EnvNameSchema,
    secret: NameSchema.optional(),
    config: NameSchema.optional(),
    key: DataKeySchema,
  })
  .superRefine((e, ctx) => {
    if (e.secret === undefined && e.config === undefined) ctx.addIssue({ code: 'custom', path: ['secret'], message: 'set one of secret or config' });
    if (e.secret !== undefined && e.config !== undefined) ctx.addIssue({ code: 'custom', path: ['config'], message: 'set only one of secret or config (also set: secret)' });
  });

/**
 * The container part of a service or job: what one instance runs. The one definition from
 * the manifest to the guest: services and jobs extend it, `containerSpecOf` takes it back out
 * of them for an instance, and the cell protocol carries it as is (guest/protocol.ts).
 */
export const ContainerSpecSchema = z.strictObject({
  /** An OCI image reference: `registry/repo:tag` or `registry/repo@sha256:…`. */
  image: z
    .string()
    .min(1, 'must not be empty')
    .max(512)
    .regex(/^[a-zA-Z0-9][a-zA-Z0-9._\-/:@]*$/, 'must be an image reference such as registry.example:5000/app:1.0'),
  /** Replaces the image's entrypoint. */
  command: z.array(z.string().max(4096)).max(256).optional(),
  /** Replaces the image's cmd. */
  args: z.array(z.string().max(4096)).max(256).optional(),
  env: z.record(EnvNameSchema, z.string().max(32768)).default({}),
  workingDir: z.string().startsWith('/', 'must be an absolute path').optional(),
  cpu: CpuSchema.default(0.1),
  memory: MemorySchema.default(64),
  /** Most processes the container may have (cgroup pids limit). */
  pids: z.number().int().min(8).max(65536).default(1024),
  readOnlyRootfs: z.boolean().default(false),
  isolation: IsolationSchema.default('cell'),
  /** The trust group: services that may share a cell. */
  group: NameSchema.default('default'),
  ports: z.array(PortSchema).max(64).default([]),
  /** Restart the container when this check keeps failing. */
  livenessProbe: LivenessProbeSchema.optional(),
  /** Count the instance as ready only while this check passes. */
  readinessProbe: ReadinessProbeSchema.optional(),
  /** Volumes of the tenant mounted into the container (model/volumes.ts); absent: none (specs stored before volumes existed have none). */
  volumes: z.array(VolumeMountSchema).max(32).optional(),
  /** Secrets mounted as files (tmpfs; never on the host's disk in clear). Not defaulted: specs stored before it compare equal. */
  secrets: z.array(SecretMountSchema).max(64).optional(),
  /** Configs mounted as files. */
  configs: z.array(ConfigMountSchema).max(64).optional(),
  /** Environment variables taken from keys of Secrets and Configs. */
  envFrom: z.array(EnvFromSchema).max(256).optional(),
});
/** A validated, defaulted container spec (see ContainerSpecSchema). */
export type ContainerSpec = z.infer<typeof ContainerSpecSchema>;

/**
 * Seconds between SIGTERM and SIGKILL when a container is stopped (deleted, replaced, its
 * liveness probe failed), 0 to 3600; 0 kills at once. Absent: the agent's default (10 s).
 * Not defaulted, so specs stored before it existed compare equal (no restart on upgrade).
 */
export const StopGracePeriodSchema = z.number().int().min(0).max(3600);

export const ServiceSpecSchema = ContainerSpecSchema.extend({
  replicas: z.number().int().min(0).max(10_000).default(1),
  /** `Always`: restart on any exit; `OnFailure`: only on a non-zero exit; `Never`. */
  restartPolicy: z.enum(['Always', 'OnFailure', 'Never']).default('Always'),
  /**
   * Disruption budget: most replicas that operator actions (drain) may take down at once,
   * counting those already not running (absent: 1). Failures are not held back by it.
   */
  maxUnavailable: z.number().int().min(0).max(10_000).optional(),
  /** One Volume `<name>-<ordinal>` per replica, made and kept by the control plane (model/volumes.ts). */
  volumeTemplates: z.array(VolumeTemplateSchema).max(16).optional(),
  stopGracePeriodSeconds: StopGracePeriodSchema.optional(),
  /**
   * What a host cut off from the control plane does with the replicas (model/fencing.ts):
   * `stop` them before they are replaced elsewhere, or `keep` them running. Absent: `stop`
   * when the service mounts a volume (`volumes`, `volumeTemplates`), else `keep`
   * (`fencingOf`). Not part of the template: a change reaches the replicas without a restart.
   */
  fencing: FencingSchema.optional(),
  /** How a change of the template replaces the replicas (model/rollout.ts); absent: ROLLOUT_DEFAULTS. */
  rollout: RolloutSchema.optional(),
  /**
   * Set by `rollout restart` (the time it was asked): part of the template, so a new value is
   * a new revision and every replica is replaced in waves, the rest of the template unchanged.
   */
  restartedAt: z.string().datetime({ message: 'must be an ISO 8601 time such as 2026-01-01T00:00:00.000Z' }).optional(),
});
export type ServiceSpec = z.infer<typeof ServiceSpecSchema>;

export const JobSpecSchema = ContainerSpecSchema.extend({
  /** How many successful runs complete the job. */
  completions: z.number().int().min(1).max(10_000).default(1),
  /** How many runs at once. */
  parallelism: z.number().int().min(1).max(1_000).default(1),
  /** Failed runs retried (with exponential backoff) before the job is Failed. */
  backoffLimit: z.number().int().min(0).max(100).default(3),
  stopGracePeriodSeconds: StopGracePeriodSchema.optional(),
  /** As a service's `fencing` (model/fencing.ts): absent, `stop` when the job mounts a volume, else `keep`. */
  fencing: FencingSchema.optional(),
});
export type JobSpec = z.infer<typeof JobSpecSchema>;

/** The keys of a container spec, in schema order. */
const CONTAINER_SPEC_KEYS = Object.keys(ContainerSpecSchema.shape) as (keyof ContainerSpec)[]; // `as`: the keys of the shape are the spec's keys

/**
 * The container part of a service or job spec, for its instances: every container field
 * that is set, nothing of the owner's own fields (replicas, restart policy, completions…).
 */
export function containerSpecOf(spec: ServiceSpec | JobSpec): ContainerSpec {
  const out: Partial<Record<keyof ContainerSpec, unknown>> = {};
  for (const k of CONTAINER_SPEC_KEYS) if (spec[k] !== undefined) out[k] = spec[k];
  return out as ContainerSpec; // `as`: copied field by field from a spec that extends ContainerSpec, optional ones only when set
}

/** Isolation tiers from weakest to strongest; a tenant's `minIsolation` refuses weaker ones. */
export const ISOLATION_ORDER: readonly Isolation[] = ['host', 'sandbox', 'cell', 'dedicated'];

/** True when `tier` is at least as strong as `min`. */
export function isolationAtLeast(tier: Isolation, min: Isolation): boolean {
  return ISOLATION_ORDER.indexOf(tier) >= ISOLATION_ORDER.indexOf(min);
}

/** An IPv4 CIDR (`192.0.2.0/24`, host bits zero); the message says what is wrong, or which block was meant. */
export const Ipv4CidrSchema = z.string().superRefine((v, ctx) => {
  const r = parseCidr(v);
  if (!r.ok) ctx.addIssue({ code: 'custom', message: r.message });
});

/** One destination a tenant's workloads may reach when its egress default is `deny`. */
export const EgressRuleSchema = z
  .strictObject({
    cidr: Ipv4CidrSchema,
    /** Required when `ports` are given; without both, every protocol and port of `cidr` is allowed. */
    protocol: z.enum(['tcp', 'udp']).optional(),
    ports: z.array(z.number().int().min(1, 'must be a port from 1 to 65535').max(65535, 'must be a port from 1 to 65535')).min(1, 'must name at least one port (or leave ports out)').max(64).optional(),
  })
  .superRefine((r, ctx) => {
    if (r.ports !== undefined && r.protocol === undefined) ctx.addIssue({ code: 'custom', path: ['protocol'], message: 'is required when ports are given (tcp or udp)' });
  });

/**
 * Where a tenant's workloads may connect outside the tenant network. `allow` (the default):
 * anywhere but the infrastructure; `deny`: only the `allow` list. Whatever the policy, the
 * infrastructure (every host address, the control plane, the store) and other tenants stay
 * unreachable except through published ports.
 */
export const EgressSchema = z
  .strictObject({
    default: z.enum(['allow', 'deny']).default('allow'),
    allow: z.array(EgressRuleSchema).max(256).default([]),
  })
  .superRefine((e, ctx) => {
    // A list that would change nothing is a mistake the user should hear about.
    if (e.default === 'allow' && e.allow.length > 0) ctx.addIssue({ code: 'custom', path: ['allow'], message: 'is only used with default: deny (with default: allow everything but the infrastructure is reachable)' });
  });
/** A validated, defaulted egress policy. */
export type Egress = z.infer<typeof EgressSchema>;

/** The egress policy a tenant spec means: its own, or `allow` when it names none. */
export function egressOf(spec: { network?: { egress: Egress } | undefined }): Egress {
  return spec.network?.egress ?? { default: 'allow', allow: [] };
}

export const TenantSpecSchema = z.strictObject({
  displayName: z.string().max(200).optional(),
  /** Free-form contact for the operators. */
  contact: z.string().max(200).optional(),
  /**
   * The weakest isolation this tenant's workloads may use: e.g. `sandbox` forbids `host`
   * (runc straight on the host). Enforced when services and jobs are applied.
   */
  minIsolation: IsolationSchema.optional(),
  /**
   * Most the tenant's workloads may request in total: cpu and memory summed over service
   * replicas, job parallelism and machines; instances = replicas + parallelism; machines;
   * cells (at apply time the fewest cells the workloads can pack into; the scheduler counts real ones).
   * Enforced at apply time and by the scheduler; omitted limits are unlimited.
   */
  quota: z
    .strictObject({
      cpu: CpuSchema.optional(),
      memory: MemorySchema.optional(),
      instances: z.number().int().min(0).max(1_000_000).optional(),
      machines: z.number().int().min(0).max(10_000).optional(),
      /** Cells (VMs) the tenant's cell and dedicated instances may occupy. */
      cells: z.number().int().min(0).max(100_000).optional(),
      /** Total size of the tenant's volumes, in MiB (`"100Gi"`); templates count once per replica. */
      storage: StorageQuotaSchema.optional(),
    })
    .optional(),
  /**
   * Registries the tenant's images may come from (`host[:port]`, e.g. `registry.example:5000`);
   * omitted means any.
   */
  allowedRegistries: z.array(z.string().min(1).max(255).regex(/^[a-zA-Z0-9.-]+(:\d{1,5})?$/, 'must be a registry host[:port]')).max(64).optional(),
  /**
   * The tenant network's policy. Omitted: egress `allow`. (Not defaulted here, so a tenant
   * stored before it existed compares equal to its unchanged manifest.)
   */
  network: z.strictObject({ egress: EgressSchema.default({ default: 'allow', allow: [] }) }).optional(),
});
export type TenantSpec = z.infer<typeof TenantSpecSchema>;

const ClusterMetadataSchema = z.strictObject({
  name: NameSchema,
  labels: LabelsSchema.default({}),
  /** Optimistic concurrency: when present, the write succeeds only at this version. */
  resourceVersion: z.number().int().min(0).optional(),
});

const TenantScopedMetadataSchema = ClusterMetadataSchema.extend({
  tenant: NameSchema,
});

export const TenantManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Tenant'),
  metadata: ClusterMetadataSchema,
  spec: TenantSpecSchema.default({}),
});

export const ServiceManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Service'),
  metadata: TenantScopedMetadataSchema,
  spec: ServiceSpecSchema.superRefine(refineVolumes),
});

export const JobManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Job'),
  metadata: TenantScopedMetadataSchema,
  spec: JobSpecSchema.superRefine(refineVolumes),
});

/**
 * A file in the host's machine image directory, by name only: a manifest can never name an
 * arbitrary host path (a tenant must not boot /etc/shadow as a disk).
 */
const MachineFileSchema = z
  .string()
  .max(255)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'must be a file name in the machine image directory (letters, digits, ".", "_", "-"; no "/")');

export const MachineSpecSchema = z
  .strictObject({
    /** Direct kernel boot: a kernel from the image directory, or `host` for the host's own Debian kernel. */
    kernel: MachineFileSchema.optional(),
    initrd: MachineFileSchema.optional(),
    /** Kernel command line for direct kernel boot. */
    cmdline: z.string().max(4096).optional(),
    /** A disk image from the image directory; the machine writes to its own copy-on-write overlay, never to the base. */
    disk: z.strictObject({ image: MachineFileSchema, format: z.enum(['qcow2', 'raw']).default('qcow2') }).optional(),
    cpu: z.number().int().min(1).max(64).default(1),
    memory: MemorySchema.default(256),
    ports: z
      .array(z.strictObject({ guestPort: z.number().int().min(1).max(65535), hostPort: z.number().int().min(1).max(65535), protocol: z.enum(['tcp', 'udp']).default('tcp') }))
      .max(32)
      .default([]),
    restartPolicy: z.enum(['Always', 'OnFailure', 'Never']).default('Always'),
    /** Desired power state: `carapace machine stop|start` flips it. */
    running: z.boolean().default(true),
    /** Changing it restarts the machine (`carapace machine restart` sets it to the current time). */
    restartedAt: z.string().max(64).optional(),
    /** The tenant's volumes as extra virtio disks at boot (/dev/vdb... in order; serial: src/vm/disks.ts diskSerial). */
    disks: z.array(z.strictObject({ volume: NameSchema, readOnly: z.boolean().default(false) })).max(16).optional(),
  })
  .superRefine((spec, ctx) => {
    if (!spec.kernel && !spec.disk) ctx.addIssue({ code: 'custom', path: ['kernel'], message: 'a machine needs a kernel (direct boot) or a disk' });
    if (spec.initrd && !spec.kernel) ctx.addIssue({ code: 'custom', path: ['initrd'], message: 'an initrd needs a kernel' });
    if (spec.cmdline && !spec.kernel) ctx.addIssue({ code: 'custom', path: ['cmdline'], message: 'a kernel command line needs a kernel' });
    if (spec.disks && new Set(spec.disks.map((d) => d.volume)).size !== spec.disks.length) ctx.addIssue({ code: 'custom', path: ['disks'], message: 'a volume is given twice' });
  });
export type MachineSpec = z.infer<typeof MachineSpecSchema>;

export const MachineManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Machine'),
  metadata: TenantScopedMetadataSchema,
  spec: MachineSpecSchema,
});
export type MachineManifest = z.infer<typeof MachineManifestSchema>;

export const VolumeManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Volume'),
  metadata: TenantScopedMetadataSchema,
  spec: VolumeSpecSchema,
});
export type VolumeManifest = z.infer<typeof VolumeManifestSchema>;

/** A point-in-time copy of one of the tenant's volumes, taken by the volume's host (model/volume-snapshots.ts). */
export const VolumeSnapshotManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('VolumeSnapshot'),
  metadata: TenantScopedMetadataSchema,
  spec: VolumeSnapshotSpecSchema,
});
export type VolumeSnapshotManifest = z.infer<typeof VolumeSnapshotManifestSchema>;

export type TenantManifest = z.infer<typeof TenantManifestSchema>;
export type ServiceManifest = z.infer<typeof ServiceManifestSchema>;
export type JobManifest = z.infer<typeof JobManifestSchema>;
export type Manifest = TenantManifest | ServiceManifest | JobManifest | MachineManifest | VolumeManifest | SecretManifest | ConfigManifest | VolumeSnapshotManifest;

/** Most bytes a Secret's or Config's data may hold in total (keys and values, UTF-8). */
export const DATA_LIMIT_BYTES = 64 * 1024;

/** Bytes of `data` as counted against DATA_LIMIT_BYTES: every key and value, UTF-8. */
export function dataBytes(data: Record<string, string>): number {
  const enc = new TextEncoder();
  let n = 0;
  for (const [k, v] of Object.entries(data)) n += enc.encode(k).length + enc.encode(v).length;
  return n;
}

/** Key/value data of a Secret or Config, at most DATA_LIMIT_BYTES in total. */
export const DataSchema = z
  .record(DataKeySchema, z.string())
  .superRefine((d, ctx) => {
    const n = dataBytes(d);
    if (n > DATA_LIMIT_BYTES) ctx.addIssue({ code: 'custom', message: `holds ${n} bytes; at most ${DATA_LIMIT_BYTES} (64 KiB) of keys and values in total` });
  });

/**
 * What happens to running instances when the data changes: `update` (default) rewrites the
 * mounted files in place (agents poll the content version); `restart` replaces the
 * instances of the services that use it.
 */
export const OnChangeSchema = z.enum(['update', 'restart']);
export type OnChange = z.infer<typeof OnChangeSchema>;

export const SecretSpecSchema = z.strictObject({ data: DataSchema.default({}), onChange: OnChangeSchema.default('update') });
export const ConfigSpecSchema = z.strictObject({ data: DataSchema.default({}), onChange: OnChangeSchema.default('update') });

/** A Secret as applied: its values are encrypted before they reach the store and never read back through the API. */
export const SecretManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Secret'),
  metadata: TenantScopedMetadataSchema,
  spec: SecretSpecSchema,
});
export type SecretManifest = z.infer<typeof SecretManifestSchema>;

/** A Config: key/value data mounted as files or env; not secret (tenant viewers read it). */
export const ConfigManifestSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Config'),
  metadata: TenantScopedMetadataSchema,
  spec: ConfigSpecSchema,
});
export type ConfigManifest = z.infer<typeof ConfigManifestSchema>;

/** Kinds a user may apply, with their schemas. */
export const MANIFEST_SCHEMAS = {
  Tenant: TenantManifestSchema,
  Service: ServiceManifestSchema,
  Job: JobManifestSchema,
  Machine: MachineManifestSchema,
  Volume: VolumeManifestSchema,
  Secret: SecretManifestSchema,
  Config: ConfigManifestSchema,
  VolumeSnapshot: VolumeSnapshotManifestSchema,
} as const;
export type ApplyKind = keyof typeof MANIFEST_SCHEMAS;
