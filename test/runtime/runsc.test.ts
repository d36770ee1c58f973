/**
 * The gVisor (runsc) driver (isolation `sandbox`) with real conmon, runsc (ptrace platform),
 * overlayfs, cgroups and the agent's network manager: the RuntimeDriver contract, then what
 * is gVisor's own (its kernel, the sandbox's own tasks in the pids limit, memory pressure).
 */
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRunscDriver, type OciDriver } from '../../src/runtime/index.js';
import { describeDriverContract } from './contract.js';
import { IMAGE, allLogs, newId, shSpec, stdoutOf } from './helpers.js';
import { ociHarness } from './oci-harness.js';

/** The sandbox's processes as gVisor counts them (`runsc ps`: pids inside the sandbox). */
async function sandboxProcs(driver: OciDriver, id: string): Promise<number> {
  return (JSON.parse((await driver.runtime(['ps', '--format', 'json', id])).stdout) as number[]).length; // `as`: runsc ps --format json prints the pid list
}

describeDriverContract('runsc', {
  capabilities: { network: 'namespace', images: 'host-path' },
  kernel: 'gvisor',
  runtimeOwnPids: 128,
  hostMounts: true,
  setup: () => ociHarness(createRunscDriver, sandboxProcs),
});

describe('runsc driver: gVisor', () => {
  let h: Awaited<ReturnType<typeof ociHarness>>;
  const started: string[] = [];
  beforeAll(async () => {
    h = await ociHarness(createRunscDriver, sandboxProcs);
  });
  afterAll(async () => {
    for (const id of started) await h?.driver.destroy(id).catch(() => undefined);
    await h?.cleanup();
  });
  const req = (id: string, script: string, over: Parameters<typeof shSpec>[1] = {}) => {
    started.push(id);
    return { id, rootfs: h.rootfs, image: IMAGE, container: shSpec(script, { isolation: 'sandbox', ...over }), hostname: id.slice(0, 60), labels: {} };
  };

  it('runs on the gVisor kernel', async () => {
    const id = newId('gv');
    await h.driver.start(req(id, 'dmesg | head -1'));
    expect((await h.driver.wait(id)).exitCode).toBe(0);
    expect(await stdoutOf(h.driver, id)).toMatch(/Starting gVisor/);
  });

  it("a small pids limit counts the container's processes, not the sandbox's own tasks", async () => {
    // The sentry, gofer and ptrace stubs live in the sandbox's cgroup (about 30 tasks idle):
    // with the limit applied as is, a container asking for 16 processes could not even start.
    const id = newId('pids');
    await h.driver.start(req(id, 'echo abc | cat | wc -c; echo abc | cat | cat | wc -c', { pids: 16 }));
    const exited = await h.driver.wait(id);
    expect(exited.exitCode, JSON.stringify(await allLogs(h.driver, id))).toBe(0);
    expect(await stdoutOf(h.driver, id)).toBe('4\n4');
  }, 120_000);

  it('a process allocating beyond the memory limit does not complete', async () => {
    const id = newId('oom');
    // 200 MiB into a tmpfs-backed /dev/shm in a 64 MiB container: must not complete.
    await h.driver.start(req(id, 'dd if=/dev/zero of=/dev/shm/big bs=1M count=200 2>&1; echo done-rc=$?', { memory: 64 }));
    const exited = await h.driver.wait(id);
    const out = await stdoutOf(h.driver, id);
    expect(exited.exitCode !== 0 || !out.includes('done-rc=0')).toBe(true);
  });

  it('destroy of a running sandbox kills its sentry', async () => {
    const id = newId('live');
    const info = await h.driver.start(req(id, 'sleep 60'));
    const pid = info.state.status === 'running' ? info.state.pid : 0;
    expect(pid).toBeGreaterThan(0);
    await h.driver.destroy(id);
    expect(await readFile(`/proc/${pid}/status`, 'utf8').catch(() => 'gone')).toMatch(/gone|State:\s+Z/);
  });
});
