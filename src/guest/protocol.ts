/**
 * The cell channel protocol between the host agent and the guest agent inside a cell VM,
 * carried over one virtio-serial port (a unix socket on the host). Pure: schemas, encoding
 * and a bounded line splitter; no I/O.
 *
 * Framing: JSON lines, one object per line, `\n`-terminated. Every message has a `type`.
 * The host speaks first: `hello {version, cellId}`; the guest answers every hello with
 * `ready {version, ...}` and then re-reports the state of every container it runs, so a
 * host agent that restarted learns the cell again. Each side checks the other's version;
 * a mismatch is an error (`GUEST_E_VERSION`), never a silent guess.
 *
 * Requests carry a `requestId` chosen by the host; the guest answers each with exactly one
 * `ack`, `err`, (for `list`) `containers`, (for `check`) `checkResult` or (for `volumes`) `volumeList`.
 * `ping` is answered by `pong` with the same seq. Volumes and file sets: README.md.
 * Events (`state`, `log`, `usage`, `dropped`) are unsolicited.
 *
 * Exec sessions (`carapace exec` into a cell's container): `exec` (acked once the guest's
 * `runc exec` is spawned) opens a session named by the host's `sessionId`; then both sides
 * send `execFrame {sessionId, frame}`, `frame` being one exec frame of `exec/frames.ts`
 * (base64): host to guest stdin, resize and eof; guest to host stdout, stderr and, last, the
 * status `{"exitCode": n}`. Flow control: the guest has at most EXEC_WINDOW_BYTES of output of
 * a session unacknowledged (`execAck {sessionId, bytes}` from the host) and stops reading the
 * process meanwhile; a guest that sends more is cut off (its session ends in error). `execKill`
 * (the client went away) kills the exec'd process in the container; sessions also end when
 * the connection does (the guest kills them, the host ends them CARAPACE_E_UNAVAILABLE).
 *
 * Trust: the host trusts nothing from the guest (the guest runs tenant code as root in the
 * VM). Guest-to-host lines are limited to `MAX_GUEST_LINE_BYTES` and every field is bounded
 * here, so a validated message is small. Host-to-guest lines may be larger (a run request
 * carries the container env) but are still bounded by `MAX_HOST_LINE_BYTES`.
 */
import { z } from 'zod';
import { ContainerSpecSchema } from '../model/schemas.js';
import { CONTAINER_ID_PATTERN } from '../runtime/driver.js';

/** The protocol version both sides state in hello/ready. Bump on any incompatible change. */
export const PROTOCOL_VERSION = 1;

/** Longest guest-to-host line (bytes, newline excluded); longer lines are discarded by the host. */
export const MAX_GUEST_LINE_BYTES = 64 * 1024;

/** Longest host-to-guest line (bytes, newline excluded); a run request with a large env fits. */
export const MAX_HOST_LINE_BYTES = 1024 * 1024;

/** Longest log line text the guest sends; longer container output lines are split. */
export const MAX_LOG_TEXT_CHARS = 8 * 1024;

/** Container ids on the wire: the runtime drivers' own rule (paths are derived from them). */
export const GUEST_CONTAINER_ID_PATTERN = CONTAINER_ID_PATTERN;

/** Error codes the guest returns in `err`; stable, never reused. */
export const GUEST_ERROR_CODES = [
  'GUEST_E_VERSION',
  'GUEST_E_BAD_REQUEST',
  'GUEST_E_NOT_FOUND',
  'GUEST_E_EXISTS',
  'GUEST_E_START_FAILED',
  'GUEST_E_STOP_FAILED',
  'GUEST_E_INTERNAL',
  'GUEST_E_SHUTTING_DOWN',
  /** A volume still used by a container cannot be unmounted. */
  'GUEST_E_BUSY',
] as const;
/** One guest error code. */
export type GuestErrorCode = (typeof GUEST_ERROR_CODES)[number];

const ContainerId = z.string().regex(GUEST_CONTAINER_ID_PATTERN);
const RequestId = z.string().min(1).max(64);
const Time = z.string().max(40);
const Count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const NonNegative = z.number().min(0).max(Number.MAX_SAFE_INTEGER);

/** The image config a run needs (mirrors runtime `ImageConfig`). */
export const WireImageConfigSchema = z.strictObject({
  entrypoint: z.array(z.string().max(4096)).max(256),
  cmd: z.array(z.string().max(4096)).max(256),
  env: z.array(z.string().max(32768)).max(1024),
  workingDir: z.string().max(4096),
  user: z.string().max(256),
});

const LabelsSchema = z.record(z.string().max(128), z.string().max(256));

/** Volume ids on the wire (the host's choice, e.g. `<tenant>.<volume>`): a directory name in the guest. */
export const GUEST_VOLUME_ID_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,127}$/;
const VolumeId = z.string().regex(GUEST_VOLUME_ID_PATTERN);
/** A virtio-blk serial (`src/vm/disks.ts` diskSerial: `cv` + 18 hex digits). */
const Serial = z.string().regex(/^cv[0-9a-f]{18}$/);
/** An absolute, normalised path (no `.`/`..` segments, no empty segment), not `/`. */
const AbsPath = z.string().max(4096).regex(/^(\/(?!\.{1,2}(\/|$))[^/\0\n]+)+$/, 'an absolute normalised path');
/** A file name in a delivered file set: a secret/config key; names starting `..` are the set's own. */
export const FILE_KEY_PATTERN = /^(?!\.\.)(?!\.$)[A-Za-z0-9._-]{1,253}$/;
/** Most bytes of one file set (decoded), the Secret/Config data limit. */
export const MAX_FILE_SET_BYTES = 64 * 1024;

/**
 * A guest path bind-mounted into a container (nosuid, nodev): a mounted volume
 * (`<state>/volumes/<id>`) or a file set of this container (`<state>/files/<containerId>/<set>`).
 * The guest checks the source is one of those.
 */
export const WireMountSchema = z.strictObject({ source: AbsPath, destination: AbsPath, readOnly: z.boolean() });
/** A bind mount of a run request. */
export type WireMount = z.infer<typeof WireMountSchema>;

// ---------------------------------------------------------------- host -> guest

/** First message on every connection. */
export const HelloSchema = z.strictObject({ type: z.literal('hello'), version: z.number().int(), cellId: z.string().min(1).max(128) });
/** Start a container. `rootfs` is a path inside the guest, under the images share. */
export const RunSchema = z.strictObject({
  type: z.literal('run'),
  requestId: RequestId,
  containerId: ContainerId,
  rootfs: z.string().min(1).max(4096),
  image: WireImageConfigSchema,
  /** The instance's container spec, the model's own schema (already normalised by the host). */
  container: ContainerSpecSchema,
  hostname: z.string().min(1).max(63),
  labels: LabelsSchema,
  /** Guest paths bind-mounted into the container; added without a version bump (sent only when not empty). */
  mounts: z.array(WireMountSchema).max(64).optional(),
});
/** SIGTERM, then SIGKILL after graceMs; acked once the container has exited. */
export const StopSchema = z.strictObject({ type: z.literal('stop'), requestId: RequestId, containerId: ContainerId, graceMs: z.number().int().min(0).max(3_600_000) });
/** Remove a container and everything made for it (kills it first). Idempotent. */
export const DestroySchema = z.strictObject({ type: z.literal('destroy'), requestId: RequestId, containerId: ContainerId });
/** Every container the guest knows; answered by `containers`. */
export const ListSchema = z.strictObject({ type: z.literal('list'), requestId: RequestId });
/**
 * The last `tail` lines (default all kept) as `log` messages carrying this requestId, then
 * an ack. Live lines are streamed to the host for every container anyway, so `follow` is
 * served host-side by HostChannel.
 */
export const LogsSchema = z.strictObject({
  type: z.literal('logs'),
  requestId: RequestId,
  containerId: ContainerId,
  tail: z.number().int().min(0).max(100_000).optional(),
  follow: z.boolean().optional(),
});
/** Longest check a host may ask for (ms); the prober's timeouts are at most an hour, checks are short. */
export const MAX_CHECK_TIMEOUT_MS = 600_000;

/**
 * A health check the host asks the guest to run against one of its containers, from inside
 * the VM: `exec` through `runc exec`, `httpGet`/`tcpSocket` to 127.0.0.1:port (a cell's
 * containers share the VM's network). Answered by `checkResult` (or `err` when the container
 * is unknown). Added to protocol version 1 without a bump: a guest that predates it answers
 * `err GUEST_E_BAD_REQUEST`, which the host reports as a failed check.
 */
export const CheckSchema = z.strictObject({
  type: z.literal('check'),
  requestId: RequestId,
  containerId: ContainerId,
  action: z.union([
    z.strictObject({ exec: z.strictObject({ command: z.array(z.string().max(4096)).min(1).max(256) }) }),
    z.strictObject({ httpGet: z.strictObject({ path: z.string().max(2048).regex(/^\/[\x21-\x7e]*$/), port: z.number().int().min(1).max(65535) }) }),
    z.strictObject({ tcpSocket: z.strictObject({ port: z.number().int().min(1).max(65535) }) }),
  ]),
  timeoutMs: z.number().int().min(1).max(MAX_CHECK_TIMEOUT_MS),
});
/** A check request's action (what the guest runs). */
export type WireCheckAction = z.infer<typeof CheckSchema>['action'];

/**
 * The VM's address on its tenant network, for a cell whose address was not known when it
 * booted (a warm cell, claimed later): the guest puts it on eth0 with a default route and
 * the resolver, then acks. Containers started after it see the tenant's DNS.
 */
export const NetworkSchema = z.strictObject({
  type: z.literal('network'),
  requestId: RequestId,
  address: z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/),
  gateway: z.string().regex(/^(\d{1,3}\.){3}\d{1,3}$/),
  dns: z.array(z.string().regex(/^(\d{1,3}\.){3}\d{1,3}$/)).max(3),
  mtu: z.number().int().min(576).max(9000).optional(),
  /** Search domains for the resolver (`<tenant>.<cluster domain>`), so short names resolve. */
  search: z.array(z.string().regex(/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/)).max(6).optional(),
  /**
   * The MAC the tenant network expects of this VM (its anti-spoofing filter drops any other).
   * A warm cell booted before it had one; the guest sets it on eth0 before the address.
   */
  mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/).optional(),
});
/** A network request's configuration. */
export type WireNetwork = Omit<z.infer<typeof NetworkSchema>, 'type' | 'requestId'>;

/**
 * Mount the hot-plugged disk with this virtio serial (ext4, nosuid, nodev, ro when asked) at
 * `<state>/volumes/<volumeId>`; the guest waits a while for the device to appear. Idempotent.
 */
export const MountVolumeSchema = z.strictObject({ type: z.literal('mountVolume'), requestId: RequestId, volumeId: VolumeId, serial: Serial, readOnly: z.boolean() });
/**
 * Unmount a volume (refused with GUEST_E_BUSY while a container, running or not, uses it) and,
 * with `eject`, power its hot-plug slot off so QEMU unplugs the device at once. Idempotent.
 */
export const UnmountVolumeSchema = z.strictObject({ type: z.literal('unmountVolume'), requestId: RequestId, volumeId: VolumeId, eject: z.boolean() });
/** The volumes the guest has mounted and who uses them; answered by `volumeList`. */
export const VolumesSchema = z.strictObject({ type: z.literal('volumes'), requestId: RequestId });
/**
 * Replace a container's file set (secret or config files) at `<state>/files/<containerId>/<set>`
 * atomically: readers see the old set or the new one, never a mix (a `..data` symlink swap).
 * `data` is base64; at most MAX_FILE_SET_BYTES decoded per set.
 */
export const WriteFilesSchema = z
  .strictObject({
    type: z.literal('writeFiles'),
    requestId: RequestId,
    containerId: ContainerId,
    set: z.string().regex(FILE_KEY_PATTERN),
    files: z
      .array(z.strictObject({ path: z.string().regex(FILE_KEY_PATTERN), data: z.string().max(Math.ceil(MAX_FILE_SET_BYTES / 3) * 4).regex(/^[A-Za-z0-9+/]*={0,2}$/), mode: z.number().int().min(0).max(0o777).optional() }))
      .max(256),
  })
  .superRefine((m, ctx) => {
    const bytes = m.files.reduce((n, f) => n + Buffer.byteLength(f.data, 'base64'), 0);
    if (bytes > MAX_FILE_SET_BYTES) ctx.addIssue({ code: 'custom', path: ['files'], message: `file set of ${bytes} bytes exceeds ${MAX_FILE_SET_BYTES}` });
    if (new Set(m.files.map((f) => f.path)).size !== m.files.length) ctx.addIssue({ code: 'custom', path: ['files'], message: 'duplicate file path' });
  });

/** Most exec sessions a guest runs at once; more are refused (GUEST_E_BUSY). */
export const MAX_EXEC_SESSIONS = 16;
/** Largest payload of one exec frame on the channel (raw bytes; base64 on the wire keeps a line well under MAX_GUEST_LINE_BYTES). */
export const MAX_EXEC_CHUNK_BYTES = 16 * 1024;
/** Output bytes of one session the guest may send before the host acknowledges them. */
export const EXEC_WINDOW_BYTES = 128 * 1024;
/** Session ids on the wire: the host's choice. */
export const EXEC_SESSION_ID_PATTERN = /^x[0-9]{1,15}$/;
const SessionId = z.string().regex(EXEC_SESSION_ID_PATTERN);
/** exec/frames.ts channels each side may send (stdin 0, stdout 1, stderr 2, status 3, resize 4, eof 5). */
export const HOST_EXEC_CHANNELS: readonly number[] = [0, 4, 5];
export const GUEST_EXEC_CHANNELS: readonly number[] = [1, 2, 3];
/** Longest base64 text of one frame: the channel byte plus a full chunk. */
const MAX_FRAME_B64 = Math.ceil((MAX_EXEC_CHUNK_BYTES + 1) / 3) * 4;

/** One exec frame (channel byte + payload) in base64, of a channel in `allowed`, payload at most MAX_EXEC_CHUNK_BYTES. */
function execFrameSchema(allowed: readonly number[]): z.ZodType<string> {
  return z
    .string()
    .min(2)
    .max(MAX_FRAME_B64)
    .regex(/^[A-Za-z0-9+/]*={0,2}$/)
    .superRefine((b64, ctx) => {
      const head = Buffer.from(b64.slice(0, 4), 'base64')[0];
      if (head === undefined || !allowed.includes(head)) ctx.addIssue({ code: 'custom', message: `exec frame channel ${String(head)} not allowed in this direction` });
    });
}

/**
 * Start an exec session in a running container: `runc exec` in the guest, under a terminal
 * (`tty`) or with pipes. Acked once spawned; GUEST_E_NOT_FOUND for a container that is not
 * there or not running, GUEST_E_BUSY past MAX_EXEC_SESSIONS or for a session id in use.
 */
export const ExecSchema = z.strictObject({
  type: z.literal('exec'),
  requestId: RequestId,
  sessionId: SessionId,
  containerId: ContainerId,
  command: z.array(z.string().max(4096).regex(/^[^\0]*$/)).min(1).max(256),
  tty: z.boolean(),
  stdin: z.boolean(),
  cols: z.number().int().min(1).max(4096).optional(),
  rows: z.number().int().min(1).max(4096).optional(),
});
/** Host to guest: stdin bytes, a resize or the end of input of a session. Unknown sessions are ignored. */
export const HostExecFrameSchema = z.strictObject({ type: z.literal('execFrame'), sessionId: SessionId, frame: execFrameSchema(HOST_EXEC_CHANNELS) });
/** The host has taken `bytes` more output of a session: the guest may send that much more. */
export const ExecAckSchema = z.strictObject({ type: z.literal('execAck'), sessionId: SessionId, bytes: z.number().int().min(1).max(EXEC_WINDOW_BYTES) });
/** The client went away: kill what the session runs in the container; acked (also for a session already over). */
export const ExecKillSchema = z.strictObject({ type: z.literal('execKill'), requestId: RequestId, sessionId: SessionId });

/**
 * Warm the cell up: run the supervisor's throwaway container once (see Supervisor.prewarm), so
 * the runtime's, libseccomp's and the kernel's code paths are translated before real work
 * comes. The host asks it of a warm pool cell before it reports the cell Ready: a cell the
 * pool offers is then warm in fact, and a failover into it does not pay the first start's
 * cost. Acked once it ran, or at once when the cell already has work (containers or its
 * tenant's network); at most once per guest agent.
 */
export const PrewarmSchema = z.strictObject({ type: z.literal('prewarm'), requestId: RequestId });
/** Liveness probe. */
export const PingSchema = z.strictObject({ type: z.literal('ping'), seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER) });
/** Stop every container and end the agent (the VM then powers off). */
export const ShutdownSchema = z.strictObject({ type: z.literal('shutdown'), requestId: RequestId, graceMs: z.number().int().min(0).max(3_600_000).optional() });

/** Any message the host sends. */
export const HostMessageSchema = z.discriminatedUnion('type', [HelloSchema, RunSchema, StopSchema, DestroySchema, ListSchema, LogsSchema, CheckSchema, NetworkSchema, MountVolumeSchema, UnmountVolumeSchema, VolumesSchema, WriteFilesSchema, ExecSchema, HostExecFrameSchema, ExecAckSchema, ExecKillSchema, PrewarmSchema, PingSchema, ShutdownSchema]);
/** Any message the host sends. */
export type HostMessage = z.infer<typeof HostMessageSchema>;

// ---------------------------------------------------------------- guest -> host

/** A container's state, same shape as the runtime drivers' `ContainerState`. */
export const WireContainerStateSchema = z.discriminatedUnion('status', [
  z.strictObject({ status: z.literal('running'), pid: z.number().int().min(1).max(4_194_304), startedAt: Time }),
  z.strictObject({ status: z.literal('exited'), exitCode: z.number().int().min(0).max(255), startedAt: Time.optional(), finishedAt: Time }),
  z.strictObject({ status: z.literal('created') }),
]);
/** A container's state. */
export type WireContainerState = z.infer<typeof WireContainerStateSchema>;

/** Sent in answer to every hello. */
export const ReadySchema = z.strictObject({
  type: z.literal('ready'),
  version: z.number().int(),
  /** Milliseconds from kernel boot to the agent's start (from /proc/uptime). */
  bootMs: NonNegative,
  /** Milliseconds from the agent's process start to being able to serve. */
  agentStartMs: NonNegative,
  cellId: z.string().max(128).optional(),
});
/** A request succeeded. */
/** `startMs` (answers to `run` only): how long `runc run` took inside the guest to start the process. */
export const AckSchema = z.strictObject({ type: z.literal('ack'), requestId: RequestId, startMs: z.number().min(0).max(3_600_000).optional() });
/** A request failed. */
export const ErrSchema = z.strictObject({ type: z.literal('err'), requestId: RequestId, code: z.enum(GUEST_ERROR_CODES), message: z.string().max(4096) });
/** Current state of one container (after every change, and for all containers after hello). */
export const StateSchema = z.strictObject({ type: z.literal('state'), containerId: ContainerId, state: WireContainerStateSchema });
/** One line of container output; `requestId` set when it answers a `logs` request. */
export const LogSchema = z.strictObject({
  type: z.literal('log'),
  containerId: ContainerId,
  stream: z.enum(['stdout', 'stderr']),
  time: Time,
  text: z.string().max(MAX_LOG_TEXT_CHARS),
  /** Per-container line number (from 1), so a follower can skip lines it already replayed. */
  seq: Count,
  requestId: RequestId.optional(),
});
/** Periodic resource use of the whole cell and of each container. */
export const UsageSchema = z.strictObject({
  type: z.literal('usage'),
  cell: z.strictObject({ cpuSeconds: NonNegative, memoryBytes: NonNegative, memoryTotalBytes: NonNegative }),
  containers: z.array(z.strictObject({ containerId: ContainerId, cpuSeconds: NonNegative, memoryBytes: NonNegative })).max(512),
});
/** Answer to ping. */
export const PongSchema = z.strictObject({ type: z.literal('pong'), seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER) });
/** Log lines the guest dropped (its rate limit or its outgoing buffer while the host was away). */
export const DroppedSchema = z.strictObject({ type: z.literal('dropped'), containerId: ContainerId, count: Count });
/** Answer to list. */
export const ContainersSchema = z.strictObject({
  type: z.literal('containers'),
  requestId: RequestId,
  containers: z.array(z.strictObject({ containerId: ContainerId, labels: LabelsSchema, state: WireContainerStateSchema })).max(512),
});

/** Longest check message the guest sends (chars); the host shows it in the instance status. */
export const MAX_CHECK_MESSAGE_CHARS = 1024;

/** Answer to check: whether it passed, and what happened in one line. */
export const CheckResultSchema = z.strictObject({
  type: z.literal('checkResult'),
  requestId: RequestId,
  ok: z.boolean(),
  message: z.string().max(MAX_CHECK_MESSAGE_CHARS),
});

/** Answer to volumes: each mounted volume, its serial and the containers using it. */
export const VolumeListSchema = z.strictObject({
  type: z.literal('volumeList'),
  requestId: RequestId,
  volumes: z.array(z.strictObject({ volumeId: VolumeId, serial: Serial, readOnly: z.boolean(), users: z.array(ContainerId).max(512) })).max(64),
});
/** One mounted volume as the guest reports it. */
export type WireVolume = z.infer<typeof VolumeListSchema>['volumes'][number];

/** Guest to host: a session's output, or its status (the last frame). The host checks the status is `{"exitCode": 0..255}`. */
export const GuestExecFrameSchema = z.strictObject({ type: z.literal('execFrame'), sessionId: SessionId, frame: execFrameSchema(GUEST_EXEC_CHANNELS) });

/** Any message the guest sends. */
export const GuestMessageSchema = z.discriminatedUnion('type', [ReadySchema, AckSchema, ErrSchema, StateSchema, LogSchema, UsageSchema, PongSchema, DroppedSchema, ContainersSchema, CheckResultSchema, VolumeListSchema, GuestExecFrameSchema]);
/** Any message the guest sends. */
export type GuestMessage = z.infer<typeof GuestMessageSchema>;

// ---------------------------------------------------------------- encoding

/** Thrown by `encodeLine` when a message would exceed the line limit. */
export class LineTooLongError extends Error {
  constructor(
    readonly bytes: number,
    readonly max: number,
  ) {
    super(`message of ${bytes} bytes exceeds the ${max}-byte line limit`);
    this.name = 'LineTooLongError';
  }
}

/** Serialises one message as a line (with its newline); throws LineTooLongError when too big. */
export function encodeLine(msg: HostMessage | GuestMessage, maxBytes: number): Buffer {
  const buf = Buffer.from(`${JSON.stringify(msg)}\n`, 'utf8');
  if (buf.length - 1 > maxBytes) throw new LineTooLongError(buf.length - 1, maxBytes);
  return buf;
}

/** Outcome of parsing one line. */
export type ParseResult<T> = { ok: true; msg: T } | { ok: false; reason: 'json' | 'schema'; detail: string };

function parseWith<T>(schema: z.ZodType<T>, line: string): ParseResult<T> {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch (e) {
    return { ok: false, reason: 'json', detail: (e as Error).message.slice(0, 200) }; // `as`: JSON.parse throws SyntaxError
  }
  const r = schema.safeParse(raw);
  if (!r.success) return { ok: false, reason: 'schema', detail: r.error.issues.slice(0, 3).map((i) => `${i.path.join('.')}: ${i.message}`).join('; ').slice(0, 500) };
  return { ok: true, msg: r.data };
}

/** Parses and validates a line the guest sent. Never throws. */
export function parseGuestLine(line: string): ParseResult<GuestMessage> {
  return parseWith(GuestMessageSchema, line);
}

/** Parses and validates a line the host sent. Never throws. */
export function parseHostLine(line: string): ParseResult<HostMessage> {
  return parseWith(HostMessageSchema, line);
}

/**
 * Splits a byte stream into lines with a hard bound on what it holds: a line longer than
 * `maxBytes` is discarded up to its newline (counted in `oversized`) and never buffered
 * whole. Empty lines are skipped. Pure; feed chunks with `push`.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private held = 0;
  private discarding = false;
  /** Lines longer than the limit that were discarded. */
  oversized = 0;

  constructor(private readonly maxBytes: number) {}

  /** Bytes currently buffered (always at most maxBytes). */
  get bufferedBytes(): number {
    return this.held;
  }

  /** Feeds a chunk; returns the complete lines it finished (as UTF-8 strings, without newline). */
  push(chunk: Buffer): string[] {
    const out: string[] = [];
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(10, start);
      const end = nl === -1 ? chunk.length : nl;
      if (!this.discarding) {
        const piece = chunk.subarray(start, end);
        if (this.held + piece.length > this.maxBytes) {
          this.discarding = true;
          this.parts = [];
          this.held = 0;
        } else if (piece.length > 0) {
          // Copy: the caller may reuse the chunk's memory, and a subarray would pin it.
          this.parts.push(Buffer.from(piece));
          this.held += piece.length;
        }
      }
      if (nl === -1) break;
      if (this.discarding) {
        this.oversized += 1;
        this.discarding = false;
      } else if (this.held > 0) {
        out.push(Buffer.concat(this.parts, this.held).toString('utf8'));
      }
      this.parts = [];
      this.held = 0;
      start = nl + 1;
    }
    return out;
  }
}

/**
 * A token bucket: `take()` is true while tokens last; refills at `perSec`, up to `burst`.
 * The clock is passed in (ms) so it is deterministic under test.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly perSec: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.last = now;
  }

  /** Takes one token at time `now`; false when the bucket is empty. */
  take(now: number): boolean {
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.perSec) / 1000);
      this.last = now;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
