/**
 * The ImageStore implementation: skopeo fetches from registries, umoci unpacks, and a
 * content-addressed cache on local disk keeps the result. See ./README.md for the layout.
 *
 * Crash safety: everything is built in `tmp/` and published by an atomic rename, and an
 * image counts as cached only once its metadata file (written last, atomically) exists.
 * One process owns a cache directory at a time (the agent); within it, pulls are
 * single-flighted by reference and by digest.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { ImageConfig } from '../runtime/driver.js';
import { skopeoFailure, pullErrorMessage } from './classify.js';
import { CommandError, lastLine, run, type RunResult } from '../proc/run.js';
import { pidAlive } from '../proc/pids.js';
import { ImagePullError, type EnsureOptions, type ImageStore, type PulledImage, type PullProgress } from './image-store.js';
import { InvalidReferenceError, isLoopbackRegistry, parseReference, type ImageReference } from './reference.js';
import { SingleFlight } from './single-flight.js';

/** Options of {@link createImageStore}. */
export interface ImageStoreOptions {
  /** Root of the cache; created if missing. Owned by this store (one process at a time). */
  cacheDir: string;
  logger: Logger;
  /** Registries (`host[:port]` or bare host) spoken to without TLS verification, besides loopback. */
  insecureRegistries?: string[];
  /** Re-resolve a cached tag when its resolution is older than this; default: never. */
  tagTtlMs?: number;
  /** Deadline for resolving a reference (one manifest request); default 30 s. */
  resolveTimeoutMs?: number;
  /** Deadline for downloading an image's blobs; default 10 min. */
  pullTimeoutMs?: number;
  /** skopeo binary; default `skopeo` from PATH. */
  skopeoPath?: string;
  /** umoci binary; default `umoci` from PATH. */
  umociPath?: string;
  /**
   * containers-policy.json for skopeo. Default: a generated policy accepting any image (no
   * signature verification), since Carapace pins by digest and has no signing story yet.
   */
  policyPath?: string;
  /** Injected clock for tag TTL decisions (tests); default Date.now. */
  now?: () => number;
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const REF_NAME = 'org.opencontainers.image.ref.name';

/** What `images/sha256-<hex>.json` holds: the proof an image is complete on disk. */
interface ImageRecord {
  /** The digest the registry knows (what a reference resolves to). */
  digest: string;
  /** The manifest in our OCI layout (differs from `digest` when skopeo converted the format). */
  localManifest: string;
  /** References that resolved to it, oldest first. */
  references: string[];
  config: ImageConfig;
  pulledAt: string;
}

interface TagEntry {
  digest: string;
  resolvedAt: number;
}

interface OciDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** `sha256:abc` -> `sha256-abc`, a name safe for paths and OCI ref names. */
function digestKey(digest: string): string {
  return digest.replace(':', '-');
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function stringArray(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/**
 * Reads the runtime-relevant part of an OCI image config blob (`config` object of
 * application/vnd.oci.image.config.v1+json). Missing fields get the OCI defaults.
 */
export function parseImageConfig(json: unknown): ImageConfig {
  const c = isRecord(json) && isRecord(json['config']) ? json['config'] : {};
  const str = (v: unknown): string => (typeof v === 'string' ? v : '');
  return {
    entrypoint: stringArray(c['Entrypoint']),
    cmd: stringArray(c['Cmd']),
    env: stringArray(c['Env']),
    workingDir: str(c['WorkingDir']),
    user: str(c['User']),
  };
}

/** Maps our stored ImageConfig (camelCase) back to the OCI field names parseImageConfig reads. */
function recordConfigToOci(c: Record<string, unknown>): Record<string, unknown> {
  return { Entrypoint: c['entrypoint'], Cmd: c['cmd'], Env: c['env'], WorkingDir: c['workingDir'], User: c['user'] };
}

/** Writes a file so readers see the old or the new content, never a torn one, even after a crash. */
async function writeFileAtomic(path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.F_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Creates the store. Cheap and synchronous: the cache directory is prepared (and leftovers of
 * crashed pulls removed) on first use. Call once per process per cache directory.
 */
export function createImageStore(opts: ImageStoreOptions): ImageStore {
  return new LocalImageStore(opts);
}

class LocalImageStore implements ImageStore {
  private readonly log: Logger;
  private readonly dirs: { oci: string; blobs: string; rootfs: string; images: string; tmp: string };
  private readonly skopeo: string;
  private readonly umoci: string;
  private readonly now: () => number;
  private readonly insecure: Set<string>;
  private readonly resolveTimeoutMs: number;
  private readonly pullTimeoutMs: number;
  private policyPath: string;
  private initDone?: Promise<void>;
  /** Records of complete images by digest, loaded lazily from disk. */
  private readonly records = new Map<string, ImageRecord>();
  private tags = new Map<string, TagEntry>();
  /** Serialises writes of tags.json, the OCI index.json and image records. */
  private writeChain: Promise<unknown> = Promise.resolve();
  private readonly byReference = new SingleFlight<PulledImage, PullProgress>();
  private readonly byDigest = new SingleFlight<ImageRecord, PullProgress>();

  constructor(private readonly opts: ImageStoreOptions) {
    this.log = opts.logger.child({ component: 'image-store' });
    const c = opts.cacheDir;
    this.dirs = {
      oci: join(c, 'oci'),
      blobs: join(c, 'oci', 'blobs'),
      rootfs: join(c, 'rootfs'),
      images: join(c, 'images'),
      tmp: join(c, 'tmp'),
    };
    this.skopeo = opts.skopeoPath ?? 'skopeo';
    this.umoci = opts.umociPath ?? 'umoci';
    this.now = opts.now ?? Date.now;
    this.insecure = new Set((opts.insecureRegistries ?? []).map((r) => r.toLowerCase()));
    this.resolveTimeoutMs = opts.resolveTimeoutMs ?? 30_000;
    this.pullTimeoutMs = opts.pullTimeoutMs ?? 600_000;
    this.policyPath = opts.policyPath ?? join(c, 'policy.json');
  }

  async ensure(reference: string, opts: EnsureOptions = {}): Promise<PulledImage> {
    let ref: ImageReference;
    try {
      ref = parseReference(reference);
    } catch (e) {
      if (e instanceof InvalidReferenceError) throw new ImagePullError('ImageInvalid', e.message);
      throw e;
    }
    return this.byReference.run(ref.canonical, (signal, emit) => this.ensureRef(ref, signal, emit), {
      signal: opts.signal,
      onEvent: opts.onProgress,
    }).then((img) => ({ ...img, reference }));
  }

  async list(): Promise<PulledImage[]> {
    await this.init();
    const out: PulledImage[] = [];
    for (const name of await readdir(this.dirs.images)) {
      if (!name.endsWith('.json') || name.includes('.tmp-')) continue;
      const rec = await this.readRecord(name.slice(0, -'.json'.length).replace('-', ':'));
      if (rec === undefined) continue;
      out.push(this.toPulled(rec, rec.references[rec.references.length - 1] ?? rec.digest));
    }
    return out.sort((a, b) => a.digest.localeCompare(b.digest));
  }

  // ---- flow -------------------------------------------------------------------------------

  private async ensureRef(ref: ImageReference, signal: AbortSignal, emit: (e: PullProgress) => void): Promise<PulledImage> {
    await this.init();
    const { digest, fromRegistry } = await this.resolve(ref, signal, emit);
    let rec = await this.byDigest.run(digest, (s, e) => this.materialize(ref, digest, s, e), { signal, onEvent: emit });
    // The tag is recorded only once its image is complete, so a cached tag always has an image.
    if (fromRegistry) await this.recordTag(ref, digest);
    if (!rec.references.includes(ref.original)) rec = await this.addReference(digest, ref.original);
    return this.toPulled(rec, ref.original);
  }

  /** Digest for the reference: the pinned one, a fresh-enough cached tag, or the registry's answer. */
  private async resolve(ref: ImageReference, signal: AbortSignal, emit: (e: PullProgress) => void): Promise<{ digest: string; fromRegistry: boolean }> {
    if (ref.digest !== undefined) return { digest: ref.digest, fromRegistry: false };
    const cached = this.tags.get(ref.canonical);
    const ttl = this.opts.tagTtlMs;
    const fresh = cached !== undefined && (ttl === undefined || this.now() - cached.resolvedAt < ttl);
    if (cached !== undefined && fresh && (await this.readRecord(cached.digest)) !== undefined) {
      return { digest: cached.digest, fromRegistry: false };
    }
    emit({ phase: 'resolving', reference: ref.original });
    try {
      const raw = await this.skopeoRun(ref, ['inspect', '--raw', ...this.tlsFlags(ref, 'inspect'), `docker://${ref.canonical}`], this.resolveTimeoutMs, signal);
      const digest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
      this.log.info({ reference: ref.original, digest }, 'resolved image tag');
      return { digest, fromRegistry: true };
    } catch (e) {
      // A stale tag is better than no image when the registry is down: the agent can still
      // (re)start what it ran before. Any other answer from the registry is authoritative.
      if (e instanceof ImagePullError && e.reason === 'RegistryUnreachable' && cached !== undefined && (await this.readRecord(cached.digest)) !== undefined) {
        this.log.warn({ reference: ref.original, digest: cached.digest, err: e.message }, 'registry unreachable; using cached tag');
        return { digest: cached.digest, fromRegistry: false };
      }
      throw e;
    }
  }

  /** Makes the image with this registry digest complete on disk (download, parse, unpack). */
  private async materialize(ref: ImageReference, digest: string, signal: AbortSignal, emit: (e: PullProgress) => void): Promise<ImageRecord> {
    const existing = await this.readRecord(digest);
    if (existing !== undefined) return existing;
    const started = this.now();
    const work = join(this.dirs.tmp, `${process.pid}-${digestKey(digest)}-${randomBytes(4).toString('hex')}`);
    await mkdir(work, { recursive: true });
    try {
      emit({ phase: 'downloading', reference: ref.original, digest });
      const pinned = `${ref.registry}/${ref.repository}@${digest}`;
      await this.skopeoRun(ref, [
        'copy', '--quiet', ...this.tlsFlags(ref, 'copy'),
        '--dest-shared-blob-dir', this.dirs.blobs,
        `docker://${pinned}`, `oci:${join(work, 'layout')}:image`,
      ], this.pullTimeoutMs, signal);
      const desc = await this.readPulledDescriptor(ref, join(work, 'layout'));
      const config = await this.readConfig(ref, desc.digest);
      await this.addToOciIndex({ mediaType: desc.mediaType, digest: desc.digest, size: desc.size, annotations: { [REF_NAME]: digestKey(digest) } });

      const finalRootfs = join(this.dirs.rootfs, digestKey(digest));
      if (!(await exists(finalRootfs))) {
        emit({ phase: 'unpacking', reference: ref.original, digest });
        const tmpRootfs = join(work, 'rootfs');
        const failure = await run(this.umoci, ['raw', 'unpack', '--image', `${this.dirs.oci}:${digestKey(digest)}`, tmpRootfs], { timeoutMs: this.pullTimeoutMs, signal }).then(
          (r) => (r.code === 0 ? undefined : `unpack failed: ${lastLine(r.stderr)}`),
          (e: unknown) => {
            if (e instanceof CommandError && e.timedOut) return 'unpack timed out';
            throw e;
          },
        );
        if (failure !== undefined) throw new ImagePullError('ImageInvalid', pullErrorMessage('ImageInvalid', ref.original, ref.registry, failure));
        try {
          await rename(tmpRootfs, finalRootfs);
        } catch (e) {
          // Someone (a previous run that crashed before writing the record) already published
          // this digest's rootfs; a published rootfs is always complete, so keep it.
          const code = (e as NodeJS.ErrnoException).code; // safe: rename only throws ErrnoException
          if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
        }
      }
      const rec: ImageRecord = { digest, localManifest: desc.digest, references: [ref.original], config, pulledAt: new Date(this.now()).toISOString() };
      await this.writeRecord(rec);
      this.log.info({ reference: ref.original, digest, ms: this.now() - started }, 'image pulled');
      return rec;
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  // ---- skopeo -----------------------------------------------------------------------------

  private tlsFlags(ref: ImageReference, cmd: 'inspect' | 'copy'): string[] {
    const reg = ref.registry.toLowerCase();
    const host = reg.replace(/:\d+$/, '');
    const insecure = isLoopbackRegistry(reg) || this.insecure.has(reg) || this.insecure.has(host);
    if (!insecure) return [];
    return [cmd === 'copy' ? '--src-tls-verify=false' : '--tls-verify=false'];
  }

  /** Runs skopeo with bounded time; returns stdout or throws a classified ImagePullError. */
  private async skopeoRun(ref: ImageReference, args: string[], timeoutMs: number, signal: AbortSignal): Promise<Buffer> {
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    const full = ['--command-timeout', `${seconds}s`, '--policy', this.policyPath, ...args];
    let r: RunResult;
    try {
      // Our own deadline is a backstop a little after skopeo's, in case skopeo itself wedges.
      r = await run(this.skopeo, full, { timeoutMs: timeoutMs + 5_000, signal });
    } catch (e) {
      if (signal.aborted) throw e;
      if (e instanceof CommandError && e.timedOut) throw this.skopeoFailed(ref, e.stderr, true);
      throw new ImagePullError('ImagePullFailed', pullErrorMessage('ImagePullFailed', ref.original, ref.registry, (e as Error).message)); // `as`: run rejects with CommandErrors (cannot start skopeo) once the abort case is out
    }
    if (r.code === 0) return r.stdoutBytes;
    throw this.skopeoFailed(ref, r.stderr, false);
  }

  /** The classified error for a skopeo run that failed or missed our deadline, logged once. */
  private skopeoFailed(ref: ImageReference, stderr: string, timedOut: boolean): ImagePullError {
    const err = skopeoFailure(ref.original, ref.registry, stderr, timedOut);
    this.log.warn({ reference: ref.original, reason: err.reason, stderr: lastLine(stderr) }, 'skopeo failed');
    return err;
  }

  // ---- OCI layout -------------------------------------------------------------------------

  private blobPath(digest: string): string {
    const [alg, hex] = digest.split(':');
    return join(this.dirs.blobs, alg ?? 'sha256', hex ?? '');
  }

  private async readJsonBlob(ref: ImageReference, digest: string): Promise<unknown> {
    try {
      const parsed: unknown = JSON.parse(await readFile(this.blobPath(digest), 'utf8'));
      return parsed;
    } catch (e) {
      throw new ImagePullError('ImageInvalid', pullErrorMessage('ImageInvalid', ref.original, ref.registry, `unreadable blob ${digest}: ${(e as Error).message}`)); // safe: fs/JSON errors are Errors
    }
  }

  /** The manifest descriptor skopeo wrote into the per-pull layout. */
  private async readPulledDescriptor(ref: ImageReference, layout: string): Promise<OciDescriptor> {
    const invalid = (why: string): ImagePullError => new ImagePullError('ImageInvalid', pullErrorMessage('ImageInvalid', ref.original, ref.registry, why));
    let index: unknown;
    try {
      index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8'));
    } catch (e) {
      throw invalid(`no index after copy: ${(e as Error).message}`); // safe: fs/JSON errors are Errors
    }
    const manifests = isRecord(index) && Array.isArray(index['manifests']) ? index['manifests'] : [];
    const d: unknown = manifests[0];
    if (!isRecord(d) || typeof d['digest'] !== 'string' || typeof d['size'] !== 'number' || typeof d['mediaType'] !== 'string') {
      throw invalid('copied image has no manifest descriptor');
    }
    if (d['mediaType'] !== OCI_MANIFEST) throw invalid(`unsupported manifest media type ${d['mediaType']}`);
    return { mediaType: d['mediaType'], digest: d['digest'], size: d['size'] };
  }

  private async readConfig(ref: ImageReference, manifestDigest: string): Promise<ImageConfig> {
    const manifest = await this.readJsonBlob(ref, manifestDigest);
    const cfg = isRecord(manifest) ? manifest['config'] : undefined;
    if (!isRecord(cfg) || typeof cfg['digest'] !== 'string') {
      throw new ImagePullError('ImageInvalid', pullErrorMessage('ImageInvalid', ref.original, ref.registry, 'manifest has no config descriptor'));
    }
    return parseImageConfig(await this.readJsonBlob(ref, cfg['digest']));
  }

  private async addToOciIndex(desc: OciDescriptor): Promise<void> {
    await this.serialized(async () => {
      const path = join(this.dirs.oci, 'index.json');
      const index = await this.readOciIndex();
      const name = desc.annotations?.[REF_NAME];
      const others = index.filter((m) => m.annotations?.[REF_NAME] !== name);
      await writeFileAtomic(path, JSON.stringify({ schemaVersion: 2, manifests: [...others, desc] }));
    });
  }

  private async readOciIndex(): Promise<OciDescriptor[]> {
    try {
      const j: unknown = JSON.parse(await readFile(join(this.dirs.oci, 'index.json'), 'utf8'));
      // safe: entries are only ever written by addToOciIndex with this shape
      return isRecord(j) && Array.isArray(j['manifests']) ? (j['manifests'] as OciDescriptor[]) : [];
    } catch {
      return [];
    }
  }

  // ---- records and tags -------------------------------------------------------------------

  private recordPath(digest: string): string {
    return join(this.dirs.images, `${digestKey(digest)}.json`);
  }

  /** The record for a digest if the image is complete on disk (record and rootfs present). */
  private async readRecord(digest: string): Promise<ImageRecord | undefined> {
    const known = this.records.get(digest);
    if (known !== undefined) return known;
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(this.recordPath(digest), 'utf8'));
    } catch {
      return undefined;
    }
    // A record we cannot read (corrupt, foreign) means "not cached": the image is pulled again.
    if (!isRecord(raw) || raw['digest'] !== digest || typeof raw['localManifest'] !== 'string' || typeof raw['pulledAt'] !== 'string') return undefined;
    const rec: ImageRecord = {
      digest,
      localManifest: raw['localManifest'],
      references: stringArray(raw['references']),
      config: parseImageConfig({ config: isRecord(raw['config']) ? recordConfigToOci(raw['config']) : {} }),
      pulledAt: raw['pulledAt'],
    };
    if (!(await exists(join(this.dirs.rootfs, digestKey(digest))))) return undefined;
    this.records.set(digest, rec);
    return rec;
  }

  private async writeRecord(rec: ImageRecord): Promise<void> {
    await this.serialized(() => writeFileAtomic(this.recordPath(rec.digest), JSON.stringify(rec, null, 2)));
    this.records.set(rec.digest, rec);
  }

  /** Notes one more reference for `list()`; read-modify-write under the write lock. */
  private addReference(digest: string, reference: string): Promise<ImageRecord> {
    return this.serialized(async () => {
      const cur = this.records.get(digest);
      if (cur === undefined) throw new Error(`image record ${digest} vanished`);
      if (cur.references.includes(reference)) return cur;
      const updated: ImageRecord = { ...cur, references: [...cur.references, reference].slice(-32) };
      await writeFileAtomic(this.recordPath(digest), JSON.stringify(updated, null, 2));
      this.records.set(digest, updated);
      return updated;
    });
  }

  private async recordTag(ref: ImageReference, digest: string): Promise<void> {
    this.tags.set(ref.canonical, { digest, resolvedAt: this.now() });
    await this.serialized(() => writeFileAtomic(join(this.opts.cacheDir, 'tags.json'), JSON.stringify(Object.fromEntries(this.tags), null, 2)));
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.writeChain.then(fn, fn);
    this.writeChain = next.catch(() => undefined);
    return next;
  }

  private toPulled(rec: ImageRecord, reference: string): PulledImage {
    return {
      reference,
      digest: rec.digest,
      rootfs: join(this.dirs.rootfs, digestKey(rec.digest)),
      config: { ...rec.config, entrypoint: [...rec.config.entrypoint], cmd: [...rec.config.cmd], env: [...rec.config.env] },
    };
  }

  // ---- startup ----------------------------------------------------------------------------

  private init(): Promise<void> {
    this.initDone ??= this.doInit().catch((e: unknown) => {
      this.initDone = undefined; // let a later call retry (e.g. after the disk was fixed)
      throw new ImagePullError('ImagePullFailed', `image cache ${this.opts.cacheDir} unusable: ${(e as Error).message}`); // safe: fs errors are Errors
    });
    return this.initDone;
  }

  private async doInit(): Promise<void> {
    for (const d of [this.dirs.blobs, this.dirs.rootfs, this.dirs.images, this.dirs.tmp]) await mkdir(d, { recursive: true });
    const layoutFile = join(this.dirs.oci, 'oci-layout');
    if (!(await exists(layoutFile))) await writeFileAtomic(layoutFile, JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    if (this.opts.policyPath === undefined) {
      await writeFileAtomic(this.policyPath, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    }
    // Leftovers of pulls whose process died: never published, so safe to delete.
    for (const name of await readdir(this.dirs.tmp)) {
      const pid = Number.parseInt(name.split('-')[0] ?? '', 10);
      if (Number.isInteger(pid) && pid !== process.pid && !pidAlive(pid)) {
        await rm(join(this.dirs.tmp, name), { recursive: true, force: true });
      }
    }
    for (const dir of [this.opts.cacheDir, this.dirs.images, this.dirs.oci]) {
      for (const name of await readdir(dir)) {
        const m = /\.tmp-(\d+)-[0-9a-f]+$/.exec(name);
        if (m !== null && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) await rm(join(dir, name), { force: true });
      }
    }
    try {
      const raw: unknown = JSON.parse(await readFile(join(this.opts.cacheDir, 'tags.json'), 'utf8'));
      if (isRecord(raw)) {
        for (const [k, v] of Object.entries(raw)) {
          if (isRecord(v) && typeof v['digest'] === 'string' && typeof v['resolvedAt'] === 'number') {
            this.tags.set(k, { digest: v['digest'], resolvedAt: v['resolvedAt'] });
          }
        }
      }
    } catch {
      // No tag index yet (fresh cache) or unreadable: tags are simply re-resolved.
    }
    this.log.debug({ cacheDir: this.opts.cacheDir, tags: this.tags.size }, 'image cache ready');
  }
}
