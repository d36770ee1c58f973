/**
 * Test and benchmark fixture: the part every image builder here shares. Builds a reproducible
 * OCI image layer by layer with umoci (each layer is a callback that fills a root filesystem)
 * and pushes it to a registry with skopeo. No network and no Docker needed.
 *
 * Reproducible: every file of a layer gets a fixed mtime, history and config dates are fixed,
 * and umoci writes sorted tar entries, so the same layers and config give the same digest.
 * Run as root (umoci then records the owners it finds; a rootless umoci would map them).
 */
import { randomBytes } from 'node:crypto';
import { chmod, lutimes, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { runOrThrow, type RunResult } from '../../proc/run.js';

/** A file to put into the image: text content (mode 0644) or content with an explicit mode. */
export type ImageFile = string | { content: string | Buffer; mode?: number };

/** What was pushed. */
export interface BuiltImage {
  /** `registry/repository:tag`, ready for ImageStore.ensure. */
  reference: string;
  /** `sha256:…` of the pushed manifest; `registry/repository@digest` pins it. */
  digest: string;
}

/** One layer: `populate` writes into `rootfs`, which holds the layers below it (unpacked). */
export interface LayerBuild {
  /** The history entry's `created_by`. */
  createdBy: string;
  populate(rootfs: string): Promise<void>;
}

/** The image config and where to push. */
export interface ImageBuild {
  /** Registry address (`127.0.0.1:PORT`), e.g. from startRegistry. */
  registry: string;
  /** Repository inside the registry, e.g. `test/busybox`. */
  repository: string;
  tag: string;
  /** Bottom first; a layer whose populate writes nothing is still a (small) layer. */
  layers: LayerBuild[];
  entrypoint?: string[];
  cmd?: string[];
  /** Added to the default `PATH=/usr/sbin:/usr/bin:/sbin:/bin`; a PATH entry here replaces it. */
  env?: string[];
  workingDir?: string;
  /** `uid[:gid]` or a name; default unset (root). */
  user?: string;
  labels?: Record<string, string>;
  /** Volume paths declared in the config (informational: Carapace mounts what the spec says). */
  volumes?: string[];
}

export const FIXED_TIME = new Date('2000-01-01T00:00:00Z');
const FIXED_TIME_ISO = FIXED_TIME.toISOString();
const DEFAULT_PATH = 'PATH=/usr/sbin:/usr/bin:/sbin:/bin';
/** Per umoci/skopeo call; a 100 MB layer repacks in a few seconds. */
const TOOL_TIMEOUT_MS = 120_000;

/** Sets every mtime/atime under `root` (and root itself) to a fixed date, so tar layers are reproducible. */
export async function fixTimes(root: string): Promise<void> {
  const entries = await readdir(root, { withFileTypes: true });
  for (const e of entries) {
    const p = join(root, e.name);
    if (e.isDirectory()) await fixTimes(p);
    await lutimes(p, FIXED_TIME, FIXED_TIME);
  }
  await lutimes(root, FIXED_TIME, FIXED_TIME);
}

/** Writes one {@link ImageFile} at absolute image path `path` under `rootfs` (parents 0755). */
export async function writeImageFile(rootfs: string, path: string, file: ImageFile): Promise<void> {
  if (!path.startsWith('/') || posix.normalize(path) !== path || path === '/') {
    throw new Error(`image file path must be absolute and normalised: ${path}`);
  }
  const dest = join(rootfs, path);
  await mkdir(dirname(dest), { recursive: true, mode: 0o755 });
  const content = typeof file === 'string' ? file : file.content;
  const mode = typeof file === 'string' ? 0o644 : (file.mode ?? 0o644);
  await writeFile(dest, content);
  await chmod(dest, mode);
}

/**
 * Builds the image in a private temp dir (removed afterwards) and pushes it to
 * `registry/repository:tag` (plain HTTP: the registry must be loopback or insecure).
 * Safe to call concurrently for different tags.
 */
export async function buildImage(opts: ImageBuild): Promise<BuiltImage> {
  const work = await mkdtemp(join(tmpdir(), 'carapace-img-'));
  const umoci = (args: string[]): Promise<RunResult> => runOrThrow('umoci', args, { timeoutMs: TOOL_TIMEOUT_MS });
  try {
    const layout = join(work, 'layout');
    const image = `${layout}:img`;
    await umoci(['init', '--layout', layout]);
    await umoci(['new', '--image', image]);
    for (const [i, layer] of opts.layers.entries()) {
      const bundle = join(work, `bundle${i}`);
      await umoci(['unpack', '--image', image, bundle]);
      const rootfs = join(bundle, 'rootfs');
      await layer.populate(rootfs);
      await fixTimes(rootfs);
      await umoci(['repack', '--history.created', FIXED_TIME_ISO, '--history.created_by', layer.createdBy, '--image', image, bundle]);
      // The unpacked copy is not needed any more; big layers would otherwise pile up in /tmp.
      await rm(bundle, { recursive: true, force: true });
    }

    const env = [...(opts.env ?? [])];
    if (!env.some((e) => e.startsWith('PATH='))) env.unshift(DEFAULT_PATH);
    const cfg = ['config', '--image', image, '--created', FIXED_TIME_ISO, '--history.created', FIXED_TIME_ISO,
      '--os', 'linux', '--architecture', process.arch === 'arm64' ? 'arm64' : 'amd64',
      // Clear umoci's defaults so only what we set is in the config.
      '--clear', 'config.env', '--clear', 'config.cmd', '--clear', 'config.entrypoint'];
    for (const e of env) cfg.push('--config.env', e);
    for (const c of opts.cmd ?? ['sh']) cfg.push('--config.cmd', c);
    for (const c of opts.entrypoint ?? []) cfg.push('--config.entrypoint', c);
    if (opts.workingDir !== undefined) cfg.push('--config.workingdir', opts.workingDir);
    if (opts.user !== undefined) cfg.push('--config.user', opts.user);
    for (const v of opts.volumes ?? []) cfg.push('--config.volume', v);
    for (const [k, v] of Object.entries(opts.labels ?? {})) cfg.push('--config.label', `${k}=${v}`);
    await umoci(cfg);

    const reference = `${opts.registry}/${opts.repository}:${opts.tag}`;
    const digestFile = join(work, `digest-${randomBytes(4).toString('hex')}`);
    await runOrThrow('skopeo', ['--command-timeout', '120s', 'copy', '--quiet', '--insecure-policy', '--dest-tls-verify=false',
      '--digestfile', digestFile, `oci:${image}`, `docker://${reference}`], { timeoutMs: TOOL_TIMEOUT_MS });
    const digest = (await readFile(digestFile, 'utf8')).trim();
    return { reference, digest };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
