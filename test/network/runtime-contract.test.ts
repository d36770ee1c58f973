/**
 * The contract with the runtime drivers: a real runc container (and a real gVisor runsc
 * sandbox) joins the namespace the network manager made and serves HTTP that the host
 * reaches through the published port. Bundles are built here from busybox-static with a
 * `runc spec` config edited in TypeScript, and a private runtime --root so nothing is
 * shared with other users of runc on the host.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNetworkManager, type NetworkManager } from '../../src/network/network-manager.js';
import { execFileP, freeHostPort, freeSubnet, httpGet, httpGetEventually, otherHostAddress, testLogger, uniqueTag } from './helpers.js';

const tag = uniqueTag();
const bridge = `cpr${tag}`;
let work: string;
let mgr: NetworkManager;
const started: { runtime: 'runc' | 'runsc'; id: string }[] = [];

interface OciNamespace {
  type: string;
  path?: string;
}
interface OciSpec {
  process: { terminal: boolean; args: string[] };
  root: { path: string; readonly: boolean };
  hostname?: string;
  linux: { namespaces: OciNamespace[] };
}

/** A bundle whose process is busybox httpd on :8080 serving `body`, in network namespace `netnsPath`. */
async function makeBundle(name: string, body: string, netnsPath: string | undefined): Promise<string> {
  const bundle = path.join(work, name);
  const rootfs = path.join(bundle, 'rootfs');
  await fs.mkdir(path.join(rootfs, 'bin'), { recursive: true });
  await fs.mkdir(path.join(rootfs, 'www'), { recursive: true });
  await fs.copyFile('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
  await fs.chmod(path.join(rootfs, 'bin', 'busybox'), 0o755);
  await fs.writeFile(path.join(rootfs, 'www', 'index.html'), body);
  await execFileP('runc', ['spec'], { cwd: bundle });
  const spec = JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8')) as OciSpec; // safe: `runc spec` writes this shape
  spec.process.terminal = false;
  spec.process.args = ['/bin/busybox', 'httpd', '-f', '-p', '8080', '-h', '/www'];
  spec.root = { path: 'rootfs', readonly: true };
  spec.hostname = name;
  spec.linux.namespaces = spec.linux.namespaces
    .filter((n) => n.type !== 'network')
    .concat(netnsPath ? [{ type: 'network', path: netnsPath }] : []);
  await fs.writeFile(path.join(bundle, 'config.json'), JSON.stringify(spec, null, 2));
  return bundle;
}

/** Runs `cmd` detached from our stdio (the container inherits it) and waits for it to exit. */
function runDetached(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const errPath = path.join(work, `stderr-${Date.now()}-${Math.random()}`);
    void fs.open(errPath, 'w').then((fh) => {
      const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', fh.fd] });
      child.on('error', reject);
      child.on('exit', (code) => {
        void fh.close().then(async () => {
          if (code === 0) resolve();
          else reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${await fs.readFile(errPath, 'utf8')}`));
        });
      });
    }, reject);
  });
}

beforeAll(async () => {
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'carapace-netrt-'));
  mgr = createNetworkManager({ stateDir: path.join(work, 'state'), logger: testLogger, bridge, subnet: freeSubnet() });
});

afterAll(async () => {
  for (const c of started) {
    await execFileP(c.runtime, ['--root', path.join(work, c.runtime), 'delete', '--force', c.id]).catch(() => undefined);
  }
  if (mgr) {
    await mgr.gc(new Set());
    await mgr.removeBridge();
  }
  await fs.rm(work, { recursive: true, force: true });
});

describe('runtime contract', () => {
  it('a runc container joining netnsPath serves HTTP through the published port', async () => {
    const id = `r${tag}-runc`;
    const hostPort = await freeHostPort();
    const net = await mgr.setup(id, { ports: [{ containerPort: 8080, hostPort, protocol: 'tcp' }], isolationKey: 'tenant-a' });
    const bundle = await makeBundle('runc', `runc ${tag}\n`, net.netnsPath);
    started.push({ runtime: 'runc', id });
    await runDetached('runc', ['--root', path.join(work, 'runc'), 'run', '--detach', '--bundle', bundle, id]);

    expect(await httpGetEventually('127.0.0.1', hostPort)).toBe(`runc ${tag}\n`);
    expect(await httpGet(otherHostAddress([bridge, 'cv', 'lo']) ?? '127.0.0.1', hostPort)).toBe(`runc ${tag}\n`);
    expect(await httpGet(net.ip, 8080)).toBe(`runc ${tag}\n`);
    // The container really is in our namespace: its init's netns is the one we made.
    const state = JSON.parse((await execFileP('runc', ['--root', path.join(work, 'runc'), 'state', id])).stdout) as { pid: number }; // safe: runc state prints JSON with pid
    const [containerNs, ourNs] = await Promise.all([fs.stat(`/proc/${state.pid}/ns/net`), fs.stat(net.netnsPath)]);
    expect(containerNs.ino).toBe(ourNs.ino);

    await execFileP('runc', ['--root', path.join(work, 'runc'), 'delete', '--force', id]);
    await mgr.teardown(id);
    await expect(httpGet('127.0.0.1', hostPort, 500)).rejects.toThrow();
  });

  it('a runsc sandbox started inside netnsPath (network=host there) serves HTTP through the published port', async () => {
    // runsc 20221219 with --network=sandbox refuses any namespace on this kernel: it tells
    // "root namespace" by /proc/sys/net/core/rmem_default, which Linux >= 6.x shows in every
    // namespace. Started inside the namespace with --network=host, the sandbox uses that
    // namespace's kernel stack instead of netstack (see src/network/README.md).
    const id = `r${tag}-runsc`;
    const hostPort = await freeHostPort();
    const net = await mgr.setup(id, { ports: [{ containerPort: 8080, hostPort, protocol: 'tcp' }], isolationKey: 'tenant-a' });
    const bundle = await makeBundle('runsc', `runsc ${tag}\n`, undefined);
    started.push({ runtime: 'runsc', id });
    // nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup tree runsc needs.
    await runDetached('nsenter', [`--net=${net.netnsPath}`, 'runsc', '--root', path.join(work, 'runsc'), '--network=host', 'run', '--detach', '--bundle', bundle, id]);

    expect(await httpGetEventually('127.0.0.1', hostPort, 10_000)).toBe(`runsc ${tag}\n`);
    // Retried: busybox httpd under gVisor hostinet now and then drops a connection just after
    // start ("socket hang up"), seen in about 1 of 8 runs; the network path is not involved.
    expect(await httpGetEventually(net.ip, 8080, 5000)).toBe(`runsc ${tag}\n`);

    await execFileP('runsc', ['--root', path.join(work, 'runsc'), 'delete', '--force', id]);
    await mgr.teardown(id);
  });
});
