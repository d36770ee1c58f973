/**
 * `carapace port-forward` into a cell: busybox httpd in a container of a cell (a QEMU VM,
 * software emulation here), its port not published, reached from a local port through the
 * API; the host's agent dials the cell's address on the tenant network. One VM: slow under
 * TCG, so one file of its own. Requires `npm run build`.
 */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type RunningRegistry } from '../../src/image/testing/index.js';
import { CLI, cli, destroyAll, eventually, freePort, Server, tempDir, tokens } from './helpers.js';

let tmp: { dir: string; cleanup: () => Promise<void> };
let registry: RunningRegistry;
let server: Server;
const PAGE = 'served-from-a-cell-through-port-forward\n';

beforeAll(async () => {
  tmp = await tempDir('carapace-e2e-pfcell-');
  registry = await startRegistry({ dir: join(tmp.dir, 'registry') });
  const web = await buildBusyboxImage({ registry: registry.address, repository: 'e2e/pf-cell-web', tag: '1', cmd: ['httpd', '-f', '-p', '8080', '-h', '/www'], files: { '/www/index.html': PAGE } });
  server = new Server(join(tmp.dir, 'state'), await freePort(), ['--accel', 'tcg']);
  await server.start();
  const file = join(tmp.dir, 'm.yaml');
  await writeFile(
    file,
    [
      { apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } },
      // No `ports`: nothing is published.
      { apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: web.reference, isolation: 'cell', cpu: 0.25, memory: '64Mi' } },
    ].map((d) => JSON.stringify(d)).join('\n---\n'),
  );
  const r = await cli(server.url, ['apply', '-f', file, '--wait', '--timeout', '300'], undefined, 330_000);
  expect(r.code, r.stdout + r.stderr).toBe(0);
}, 420_000);

afterAll(async () => {
  await server?.stop();
  await destroyAll(join(tmp.dir, 'state'));
  await registry?.stop();
  await tmp?.cleanup();
}, 120_000);

function get(port: number): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/index.html', agent: false, timeout: 30_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
    req.on('timeout', () => {
      resolve({ error: 'TIMEOUT' });
      req.destroy();
    });
    req.end();
  });
}

describe('port-forward into a cell', () => {
  it('an HTTP request through the forwarded port reaches the unpublished httpd in the cell', async () => {
    const p = spawn(process.execPath, [CLI, 'port-forward', 'acme/service/web', ':8080'], {
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', CARAPACE_SERVER: server.url, CARAPACE_TOKEN: tokens.get(server.url) ?? '', CARAPACE_CONFIG: '/nonexistent/carapace-config.json' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise((r) => p.once('exit', (code) => r(code)));
    try {
      const local = await eventually(async () => Number(/^Forwarding from 127\.0\.0\.1:(\d+) -> acme\/web-0:8080$/m.exec(out)?.[1] ?? 0) || undefined, 30_000, `port-forward to listen (stderr: ${err})`);
      // httpd may still be starting in the VM: until the first answer.
      await eventually(async () => {
        const r = await get(local);
        return 'status' in r && r.status === 200;
      }, 120_000, 'the first request through the forward into the cell');
      expect(await get(local)).toEqual({ status: 200, body: PAGE });
      expect(await get(local)).toEqual({ status: 200, body: PAGE });
    } finally {
      p.kill('SIGINT');
      expect(await exited).toBe(0);
    }
  }, 240_000);
});
