/**
 * The images the bundled examples (examples/, quick-start script) run, built from busybox and
 * pushed to a local registry. Usable as a library (`buildExampleImages`) or as a CLI:
 *
 *   node dist/src/image/testing/example-images.js 127.0.0.1:5000
 *
 * prints one `name=reference` line per image (and exits non-zero with a message on failure).
 */
import { pathToFileURL } from 'node:url';
import { buildBusyboxImage } from './busybox-image.js';

/** References of the example images, keyed by short name. */
export interface ExampleImages {
  /** `carapace-examples/busybox:1`: plain busybox, default cmd `sh`. */
  busybox: string;
  /** `carapace-examples/web:1`: busybox httpd serving /www/index.html on port 8080 (foreground). */
  web: string;
  /** `carapace-examples/worker:1`: prints a line every 2 seconds forever. */
  worker: string;
}

/** Repository names used by {@link buildExampleImages}, for manifests that hard-code them. */
export const EXAMPLE_REPOSITORIES = {
  busybox: 'carapace-examples/busybox',
  web: 'carapace-examples/web',
  worker: 'carapace-examples/worker',
} as const;

const INDEX_HTML = `<!doctype html>
<html>
<head><title>Carapace example</title></head>
<body><h1>Hello from Carapace</h1><p>Served by busybox httpd inside a container.</p></body>
</html>
`;

/**
 * Builds and pushes the three example images to `registry` (`127.0.0.1:PORT`, plain HTTP).
 * Idempotent: rebuilding gives the same digests. Takes about 1–2 s.
 */
export async function buildExampleImages(registry: string): Promise<ExampleImages> {
  const busybox = await buildBusyboxImage({ registry, repository: EXAMPLE_REPOSITORIES.busybox, tag: '1', cmd: ['sh'] });
  const web = await buildBusyboxImage({
    registry,
    repository: EXAMPLE_REPOSITORIES.web,
    tag: '1',
    cmd: ['httpd', '-f', '-p', '8080', '-h', '/www'],
    files: { '/www/index.html': INDEX_HTML },
    labels: { 'org.opencontainers.image.description': 'busybox httpd on :8080' },
  });
  const worker = await buildBusyboxImage({
    registry,
    repository: EXAMPLE_REPOSITORIES.worker,
    tag: '1',
    cmd: ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo "worker tick $i $(date -u +%H:%M:%S)"; sleep 2; done'],
  });
  return { busybox: busybox.reference, web: web.reference, worker: worker.reference };
}

async function main(argv: string[]): Promise<void> {
  const registry = argv[0];
  if (registry === undefined || registry.startsWith('-')) {
    process.stderr.write('usage: example-images REGISTRY (e.g. 127.0.0.1:5000)\n');
    process.exitCode = 2;
    return;
  }
  const images = await buildExampleImages(registry);
  for (const [name, ref] of Object.entries(images)) process.stdout.write(`${name}=${ref}\n`);
}

// Run as a CLI only when executed directly, not when imported.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`example-images: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
