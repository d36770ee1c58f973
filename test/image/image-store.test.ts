// Integration tests of the image store against a real registry (docker-registry), real skopeo
// and real umoci. Every test gets its own cache dir; registries and temp dirs are removed in
// afterAll/finally even when a test fails.
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { runOrThrow } from '../../src/proc/run.js';
import { ImagePullError, type PullProgress } from '../../src/image/image-store.js';
import { createImageStore, type ImageStoreOptions } from '../../src/image/local-store.js';
import { buildBusyboxImage, buildExampleImages, freePort, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';

const logger = pino({ level: 'silent' });
let root: string;
let registry: RunningRegistry;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'carapace-image-test-'));
  registry = await startRegistry({ dir: join(root, 'registry') });
});

afterAll(async () => {
  await registry?.stop();
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

let n = 0;
async function newCacheDir(): Promise<string> {
  n += 1;
  const d = join(root, `cache-${n}`);
  await mkdir(d, { recursive: true });
  return d;
}

function store(cacheDir: string, extra: Partial<ImageStoreOptions> = {}) {
  return createImageStore({ cacheDir, logger, ...extra });
}

/** A skopeo wrapper that logs each invocation's subcommand, so tests can count real pulls. */
async function countingSkopeo(dir: string, opts: { fail?: boolean } = {}): Promise<{ path: string; calls: () => Promise<string[]> }> {
  const log = join(dir, 'skopeo-calls.log');
  const path = join(dir, 'skopeo-counting.sh');
  const body = opts.fail
    ? `#!/bin/sh\necho "$*" >> '${log}'\necho 'time="x" level=fatal msg="network must not be used"' >&2\nexit 1\n`
    : `#!/bin/sh\necho "$*" >> '${log}'\nexec skopeo "$@"\n`;
  await writeFile(path, body);
  await chmod(path, 0o755);
  return {
    path,
    calls: async () => {
      try {
        return (await readFile(log, 'utf8')).split('\n').filter((l) => l.length > 0);
      } catch {
        return [];
      }
    },
  };
}

async function expectPullError(p: Promise<unknown>): Promise<ImagePullError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ImagePullError);
    return e as ImagePullError; // safe: checked just above
  }
  throw new Error('expected the pull to fail');
}

/** (path, inode, size, mode, mtime, ctime) of every entry under dir, to detect any change. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const st = await lstat(p, { bigint: true });
      out.push(`${p} ${st.ino} ${st.size} ${st.mode} ${st.mtimeNs} ${st.ctimeNs}`);
      if (e.isDirectory()) await walk(p);
    }
  };
  const st = await lstat(dir, { bigint: true });
  out.push(`${dir} ${st.ino} ${st.mtimeNs} ${st.ctimeNs}`);
  await walk(dir);
  return out.sort();
}

describe('ImageStore (skopeo + umoci)', () => {
  test('pulls by tag, then by digest without network, and parses the image config', async () => {
    const reg = await startRegistry({ dir: join(root, 'registry-offline') });
    try {
      const img = await buildBusyboxImage({
        registry: reg.address, repository: 'test/config', tag: 'v1',
        entrypoint: ['/bin/sh', '-c'], cmd: ['echo hello'], env: ['GREETING=hi', 'EMPTY='],
        workingDir: '/srv', user: '65534:65534', files: { '/srv/app.sh': { content: '#!/bin/sh\necho app\n', mode: 0o755 } },
      });
      const cache = await newCacheDir();
      const s = store(cache);
      const events: PullProgress[] = [];
      const t0 = performance.now();
      const byTag = await s.ensure(img.reference, { onProgress: (e) => events.push(e) });
      const coldMs = performance.now() - t0;
      expect(byTag.reference).toBe(img.reference);
      expect(byTag.digest).toBe(img.digest);
      expect(byTag.rootfs).toBe(join(cache, 'rootfs', img.digest.replace(':', '-')));
      expect(events.map((e) => e.phase)).toEqual(['resolving', 'downloading', 'unpacking']);
      expect(byTag.config).toEqual({
        entrypoint: ['/bin/sh', '-c'], cmd: ['echo hello'],
        env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'GREETING=hi', 'EMPTY='],
        workingDir: '/srv', user: '65534:65534',
      });
      expect(await readFile(join(byTag.rootfs, 'srv/app.sh'), 'utf8')).toBe('#!/bin/sh\necho app\n');
      expect((await lstat(join(byTag.rootfs, 'srv/app.sh'))).mode & 0o777).toBe(0o755);
      expect((await lstat(join(byTag.rootfs, 'bin/sh'))).isSymbolicLink()).toBe(true);
      expect(await readFile(join(byTag.rootfs, 'etc/passwd'), 'utf8')).toContain('nobody:x:65534:65534');

      const t1 = performance.now();
      const again = await s.ensure(img.reference);
      const cachedMs = performance.now() - t1;
      console.info(`image timings: cold pull by tag ${coldMs.toFixed(0)} ms, cached ensure ${cachedMs.toFixed(2)} ms`);
      expect(again.digest).toBe(img.digest);

      // The registry goes away: a digest reference must still resolve from the cache, in this
      // store and in a new one on the same directory.
      await reg.stop();
      const pinned = `${reg.address}/test/config@${img.digest}`;
      const byDigest = await s.ensure(pinned);
      expect(byDigest).toMatchObject({ reference: pinned, digest: img.digest, rootfs: byTag.rootfs });
      const fresh = await store(cache).ensure(pinned);
      expect(fresh.rootfs).toBe(byTag.rootfs);
      expect(fresh.config).toEqual(byTag.config);
      // ...while an uncached image on the dead registry fails as unreachable.
      const err = await expectPullError(s.ensure(`${reg.address}/test/other:v1`));
      expect(err.reason).toBe('RegistryUnreachable');
    } finally {
      await reg.stop();
    }
  });

  test('two images sharing the busybox layer store that blob once', async () => {
    const a = await buildBusyboxImage({ registry: registry.address, repository: 'test/share-a', tag: '1', files: { '/a.txt': 'a' } });
    const b = await buildBusyboxImage({ registry: registry.address, repository: 'test/share-b', tag: '1', files: { '/b.txt': 'b' } });
    expect(a.digest).not.toBe(b.digest);
    const cache = await newCacheDir();
    const s = store(cache);
    const [pa, pb] = await Promise.all([s.ensure(a.reference), s.ensure(b.reference)]);
    expect(pa.rootfs).not.toBe(pb.rootfs);
    const blobDir = join(cache, 'oci', 'blobs', 'sha256');
    const manifest = async (d: string) => JSON.parse(await readFile(join(blobDir, d.slice('sha256:'.length)), 'utf8')) as { config: { digest: string }; layers: { digest: string }[] }; // safe: OCI manifest shape, asserted below
    const ma = await manifest(a.digest);
    const mb = await manifest(b.digest);
    expect(ma.layers).toHaveLength(2);
    expect(mb.layers).toHaveLength(2);
    expect(ma.layers[0]?.digest).toBe(mb.layers[0]?.digest); // the shared busybox base layer
    const referenced = new Set([a.digest, b.digest, ma.config.digest, mb.config.digest, ...ma.layers.map((l) => l.digest), ...mb.layers.map((l) => l.digest)]);
    const files = (await readdir(blobDir)).filter((f) => /^[a-f0-9]{64}$/.test(f));
    // 2 manifests + 2 configs + 3 distinct layers = 7, not 8: the base layer is stored once.
    expect(referenced.size).toBe(7);
    expect(new Set(files)).toEqual(new Set([...referenced].map((d) => d.slice('sha256:'.length))));
    const list = await s.list();
    expect(list.map((i) => i.digest).sort()).toEqual([a.digest, b.digest].sort());
  });

  test('concurrent ensure of the same reference does one pull', async () => {
    const img = await buildBusyboxImage({ registry: registry.address, repository: 'test/concurrent', tag: '1' });
    const cache = await newCacheDir();
    const skopeo = await countingSkopeo(cache);
    const s = store(cache, { skopeoPath: skopeo.path });
    const results = await Promise.all(Array.from({ length: 8 }, () => s.ensure(img.reference)));
    expect(new Set(results.map((r) => r.rootfs)).size).toBe(1);
    const calls = await skopeo.calls();
    expect(calls.filter((c) => / inspect /.test(c))).toHaveLength(1);
    expect(calls.filter((c) => / copy /.test(c))).toHaveLength(1);
    // A digest reference to the same image, asked concurrently with the tag, adds no pull.
    await Promise.all([s.ensure(img.reference), s.ensure(`${registry.address}/test/concurrent@${img.digest}`)]);
    expect(await skopeo.calls()).toHaveLength(2);
  });

  test('a new store on the same directory rediscovers the cache without any network', async () => {
    const img = await buildBusyboxImage({ registry: registry.address, repository: 'test/restart', tag: 'stable' });
    const cache = await newCacheDir();
    const first = await store(cache).ensure(img.reference);
    const before = await snapshot(first.rootfs);
    const offline = await countingSkopeo(join(cache, '..'), { fail: true });
    const s2 = store(cache, { skopeoPath: offline.path });
    const second = await s2.ensure(img.reference);
    expect(second).toEqual(first);
    expect(await offline.calls()).toEqual([]);
    expect((await s2.list()).map((i) => i.digest)).toEqual([img.digest]);
    // The rootfs was not touched by either later ensure (same inodes, times, sizes, modes).
    await store(cache).ensure(`${registry.address}/test/restart@${img.digest}`);
    expect(await snapshot(first.rootfs)).toEqual(before);
  });

  test('leftovers of a crashed pull are removed and do not count as cached', async () => {
    const img = await buildBusyboxImage({ registry: registry.address, repository: 'test/crash', tag: '1' });
    const cache = await newCacheDir();
    // A dead process's half-done pull: pid 2^22+1 is above pid_max's default and never alive.
    const junk = join(cache, 'tmp', `4194305-${img.digest.replace(':', '-')}-dead`);
    await mkdir(join(junk, 'rootfs', 'bin'), { recursive: true });
    await mkdir(join(cache, 'images'), { recursive: true });
    const tornRecord = join(cache, 'images', `${img.digest.replace(':', '-')}.json.tmp-4194305-abcd`);
    await writeFile(tornRecord, '{"dig');
    const pulled = await store(cache).ensure(img.reference);
    await expect(lstat(junk)).rejects.toThrow();
    await expect(lstat(tornRecord)).rejects.toThrow();
    expect((await lstat(join(pulled.rootfs, 'bin', 'busybox'))).isFile()).toBe(true);
    expect(await readdir(join(cache, 'tmp'))).toEqual([]);
    // Crash after publishing the rootfs but before writing the record: the image is fetched
    // again (the record is the completion marker) and the published rootfs is kept as is.
    const before = await snapshot(pulled.rootfs);
    await rm(join(cache, 'images', `${img.digest.replace(':', '-')}.json`));
    const events: string[] = [];
    const again = await store(cache).ensure(img.reference, { onProgress: (e) => events.push(e.phase) });
    expect(again.rootfs).toBe(pulled.rootfs);
    expect(events).toEqual(['resolving', 'downloading']); // no 'unpacking': the rootfs is reused
    expect(await snapshot(pulled.rootfs)).toEqual(before);
  });

  test('a Docker v2s2 image (converted to OCI locally) is keyed by its registry digest', async () => {
    const img = await buildBusyboxImage({ registry: registry.address, repository: 'test/oci-src', tag: '1', cmd: ['echo', 'v2s2'], env: ['K=V'] });
    const v2ref = `${registry.address}/test/docker-v2s2:1`;
    await runOrThrow('skopeo', ['copy', '--quiet', '--insecure-policy', '--src-tls-verify=false', '--dest-tls-verify=false', '--format', 'v2s2',
      `docker://${img.reference}`, `docker://${v2ref}`], { timeoutMs: 30_000 });
    const raw = (await runOrThrow('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${v2ref}`], { timeoutMs: 30_000 })).stdoutBytes;
    expect(JSON.parse(raw.toString('utf8'))).toMatchObject({ mediaType: 'application/vnd.docker.distribution.manifest.v2+json' });
    const registryDigest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    const cache = await newCacheDir();
    const pulled = await store(cache).ensure(v2ref);
    expect(pulled.digest).toBe(registryDigest);
    expect(pulled.config).toMatchObject({ cmd: ['echo', 'v2s2'], env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'K=V'] });
    expect((await lstat(join(pulled.rootfs, 'bin', 'busybox'))).isFile()).toBe(true);
    // Pinned by the registry digest, it is served from the cache with no network.
    const offline = await countingSkopeo(cache, { fail: true });
    const again = await store(cache, { skopeoPath: offline.path }).ensure(`${registry.address}/test/docker-v2s2@${registryDigest}`);
    expect(again.rootfs).toBe(pulled.rootfs);
    expect(await offline.calls()).toEqual([]);
  });

  test('a missing repository, tag or digest is ImageNotFound', async () => {
    await buildBusyboxImage({ registry: registry.address, repository: 'test/exists', tag: '1' });
    const s = store(await newCacheDir());
    const cases = [
      `${registry.address}/test/no-such-repo:1`,
      `${registry.address}/test/exists:no-such-tag`,
      `${registry.address}/test/exists@sha256:${'0'.repeat(64)}`,
    ];
    for (const ref of cases) {
      const err = await expectPullError(s.ensure(ref));
      expect(err.reason).toBe('ImageNotFound');
      expect(err.message).toContain(ref);
      expect(err.message).not.toContain('\n');
      expect(err.message.length).toBeLessThan(400);
    }
  });

  test('a registry nobody listens on is RegistryUnreachable within seconds', async () => {
    const port = await freePort();
    const ref = `127.0.0.1:${port}/test/x:1`;
    const t0 = Date.now();
    const err = await expectPullError(store(await newCacheDir()).ensure(ref));
    expect(err.reason).toBe('RegistryUnreachable');
    expect(err.message).toContain(ref);
    expect(Date.now() - t0).toBeLessThan(5_000);
  });

  test('a registry that accepts connections but never answers hits the deadline', async () => {
    const sockets = new Set<Socket>();
    const server: Server = createServer((sock) => {
      sockets.add(sock); // hold it open, say nothing
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const addr = server.address();
    const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
    try {
      const t0 = Date.now();
      const err = await expectPullError(store(await newCacheDir(), { resolveTimeoutMs: 1_500 }).ensure(`127.0.0.1:${port}/test/hang:1`));
      expect(err.reason).toBe('RegistryUnreachable');
      expect(Date.now() - t0).toBeLessThan(6_000);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('garbage references are ImageInvalid without touching the network', async () => {
    const cache = await newCacheDir();
    const offline = await countingSkopeo(cache, { fail: true });
    const s = store(cache, { skopeoPath: offline.path });
    for (const ref of ['', 'UPPER/case', 'a b', 'repo:bad:tag:', 'docker://busybox', 'x@sha256:123', 'repo@md5:abc', '::::', 'reg.io//double']) {
      const err = await expectPullError(s.ensure(ref));
      expect(err.reason, ref).toBe('ImageInvalid');
      expect(err.message).toContain(`"${ref}"`);
    }
    expect(await offline.calls()).toEqual([]);
  });

  test('a cached tag is re-resolved only after tagTtlMs, and kept when the registry is down', async () => {
    const reg = await startRegistry({ dir: join(root, 'registry-ttl') });
    try {
      const v1 = await buildBusyboxImage({ registry: reg.address, repository: 'test/moving', tag: 'latest', files: { '/v': '1' } });
      let now = 1_000_000;
      const cache = await newCacheDir();
      const s = store(cache, { tagTtlMs: 60_000, now: () => now });
      expect((await s.ensure(v1.reference)).digest).toBe(v1.digest);
      const v2 = await buildBusyboxImage({ registry: reg.address, repository: 'test/moving', tag: 'latest', files: { '/v': '2' } });
      expect(v2.digest).not.toBe(v1.digest);
      now += 30_000;
      expect((await s.ensure(v1.reference)).digest).toBe(v1.digest); // within TTL: trusted
      now += 31_000;
      const moved = await s.ensure(v1.reference);
      expect(moved.digest).toBe(v2.digest);
      expect(await readFile(join(moved.rootfs, 'v'), 'utf8')).toBe('2');
      await reg.stop();
      now += 120_000;
      expect((await s.ensure(v1.reference)).digest).toBe(v2.digest); // stale but usable
    } finally {
      await reg.stop();
    }
  });

  test('a caller that aborts does not fail another caller sharing the pull', async () => {
    const img = await buildBusyboxImage({ registry: registry.address, repository: 'test/abort', tag: '1' });
    const s = store(await newCacheDir());
    const ac = new AbortController();
    const impatient = s.ensure(img.reference, { signal: ac.signal });
    const patient = s.ensure(img.reference);
    ac.abort(new Error('caller gave up'));
    await expect(impatient).rejects.toThrow('caller gave up');
    expect((await patient).digest).toBe(img.digest);
    // A lone caller that aborts stops its pull; the next ensure starts afresh and succeeds.
    const s2 = store(await newCacheDir());
    const ac2 = new AbortController();
    const p = s2.ensure(img.reference, { signal: ac2.signal });
    ac2.abort(new Error('stop'));
    await expect(p).rejects.toThrow('stop');
    expect((await s2.ensure(img.reference)).digest).toBe(img.digest);
  });

  test('example images build, are reproducible and pull', async () => {
    const first = await buildExampleImages(registry.address);
    expect(first).toEqual({
      busybox: `${registry.address}/carapace-examples/busybox:1`,
      web: `${registry.address}/carapace-examples/web:1`,
      worker: `${registry.address}/carapace-examples/worker:1`,
    });
    const s = store(await newCacheDir());
    const web = await s.ensure(first.web);
    expect(web.config.cmd).toEqual(['httpd', '-f', '-p', '8080', '-h', '/www']);
    expect(await readFile(join(web.rootfs, 'www/index.html'), 'utf8')).toContain('Hello from Carapace');
    const worker = await s.ensure(first.worker);
    expect(worker.config.cmd[0]).toBe('sh');
    const bb = await s.ensure(first.busybox);
    expect(bb.config.cmd).toEqual(['sh']);
    const t0 = performance.now();
    await buildBusyboxImage({ registry: registry.address, repository: 'carapace-examples/busybox', tag: '1', cmd: ['sh'] });
    const buildMs = performance.now() - t0;
    console.info(`image timings: build+push of a busybox image ${buildMs.toFixed(0)} ms`);
    expect(buildMs).toBeLessThan(3_000);
    // Rebuilding gives the same digest, so caches stay warm across test runs.
    const rebuilt = await buildBusyboxImage({ registry: registry.address, repository: 'carapace-examples/busybox', tag: '1', cmd: ['sh'] });
    expect(rebuilt.digest).toBe(bb.digest);
  });
});
