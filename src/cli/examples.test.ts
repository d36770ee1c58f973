// The bundled examples (examples/*.yaml), as the quick start applies them together: each parses
// as `carapace apply` reads it, no two define the same object, no two publish the same host
// port (nor one the quick start itself listens on), and every image is one the quick start
// builds into its registry. Running them is test/e2e's (guestbook.test.ts, cells.test.ts).
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEBIAN_REPOSITORIES, EXAMPLE_REPOSITORIES, GUESTBOOK_REPOSITORIES } from '../image/testing/index.js';
import { readManifests } from './apply.js';

const DIR = join(import.meta.dirname, '..', '..', 'examples');
/** What scripts/quickstart.sh listens on: the registry, the API, the agent API. */
const QUICKSTART_PORTS = [5000, 7070, 7443];
const REGISTRY = '127.0.0.1:5000';

describe('examples/', () => {
  it('parse, define each object once, publish distinct host ports, and use only the images the quick start builds', async () => {
    const files = (await readdir(DIR)).filter((f) => f.endsWith('.yaml')).sort();
    expect(files).toContain('guestbook.yaml');
    const manifests = await readManifests(files.map((f) => join(DIR, f)));
    const ids = manifests.map((m) => `${m.kind}/${m.kind === 'Tenant' ? '' : m.metadata.tenant}/${m.metadata.name}`);
    expect(ids.filter((id, i) => ids.indexOf(id) !== i)).toEqual([]);

    const ports: number[] = [];
    const repositories = new Set<string>([...Object.values(EXAMPLE_REPOSITORIES), DEBIAN_REPOSITORIES.postgres, ...Object.values(GUESTBOOK_REPOSITORIES)]);
    for (const m of manifests) {
      if (m.kind === 'Service' || m.kind === 'Job') {
        for (const p of m.spec.ports) if (p.hostPort !== undefined) ports.push(p.hostPort);
        const [registry, rest] = [m.spec.image.slice(0, REGISTRY.length), m.spec.image.slice(REGISTRY.length + 1)];
        expect(registry, m.spec.image).toBe(REGISTRY);
        expect(repositories.has(rest.split(':')[0] ?? ''), `${m.metadata.name}: ${m.spec.image}`).toBe(true);
      }
      if (m.kind === 'Machine') for (const p of m.spec.ports ?? []) ports.push(p.hostPort);
    }
    expect(ports.filter((p, i) => ports.indexOf(p) !== i)).toEqual([]);
    expect(ports.filter((p) => QUICKSTART_PORTS.includes(p))).toEqual([]);
    expect(ports).toContain(8090); // the guestbook's page, as the README says
  });
});
