/**
 * The runc driver (isolation `host`) with real conmon, runc, overlayfs, cgroups and the
 * agent's network manager: the RuntimeDriver contract, then what is runc's own (conmon).
 */
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRuncDriver, type OciDriver } from '../../src/runtime/index.js';
import { pidAlive } from '../../src/proc/pids.js';
import { describeDriverContract } from './contract.js';
import { IMAGE, mountsContaining, newId, shSpec } from './helpers.js';
import { ociHarness } from './oci-harness.js';

/** Pids in the container's cgroup (the pids controller of cgroup v1). */
async function cgroupProcs(driver: OciDriver, id: string): Promise<number> {
  const text = await readFile(join('/sys/fs/cgroup/pids', driver.cgroupPath(id), 'cgroup.procs'), 'utf8');
  return text.split('\n').filter((l) => l.trim() !== '').length;
}

describeDriverContract('runc', {
  capabilities: { network: 'namespace', images: 'host-path' },
  kernel: 'linux',
  runtimeOwnPids: 0,
  hostMounts: true,
  setup: () => ociHarness(createRuncDriver, cgroupProcs),
});

describe('runc driver: conmon', () => {
  let h: Awaited<ReturnType<typeof ociHarness>>;
  const started: string[] = [];
  beforeAll(async () => {
    h = await ociHarness(createRuncDriver, cgroupProcs);
  });
  afterAll(async () => {
    for (const id of started) await h?.driver.destroy(id).catch(() => undefined);
    await h?.cleanup();
  });
  const req = (id: string, script: string) => {
    started.push(id);
    return { id, rootfs: h.rootfs, image: IMAGE, container: shSpec(script), hostname: id.slice(0, 60), labels: {} };
  };

  it('destroy ends the conmon that supervised the container', async () => {
    const id = newId('conmon');
    await h.driver.start(req(id, 'sleep 60'));
    const conmonPid = Number((await readFile(join(h.stateDir, 'containers', id, 'conmon.pid'), 'utf8')).trim());
    expect(pidAlive(conmonPid)).toBe(true);
    await h.driver.destroy(id);
    expect(pidAlive(conmonPid)).toBe(false); // gone or a zombie awaiting pid 1
  });

  it("a runtime that cannot answer `state` while conmon lives: the container is reported running, not exited", async () => {
    const id = newId('nostate');
    await h.driver.start(req(id, 'sleep 60'));
    // runc's own record of the container moved aside: `runc state` fails as if it were busy.
    const record = join(h.driver.runtimeRoot, id);
    execFileSync('mv', [record, `${record}.aside`]);
    try {
      const info = await h.driver.inspect(id);
      expect(info?.state.status).toBe('running');
    } finally {
      execFileSync('mv', [`${record}.aside`, record]);
    }
    await h.driver.destroy(id);
  });

  it('conmon killed -9: the container keeps running; once it is gone the exit is reported as unknown (137)', async () => {
    const id = newId('orphan');
    await h.driver.start(req(id, 'sleep 60'));
    const conmonPid = Number((await readFile(join(h.stateDir, 'containers', id, 'conmon.pid'), 'utf8')).trim());
    process.kill(conmonPid, 'SIGKILL');
    await expect.poll(() => pidAlive(conmonPid), { timeout: 5_000 }).toBe(false);
    expect((await h.driver.inspect(id))?.state.status).toBe('running');
    execFileSync('runc', ['--root', h.driver.runtimeRoot, 'kill', id, 'KILL']);
    const exited = await h.driver.wait(id);
    expect(exited.exitCode).toBe(137);
    await h.driver.destroy(id);
    expect(await mountsContaining(id)).toEqual([]);
  });
});
