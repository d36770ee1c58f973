/**
 * Integration tests of the runc driver with real conmon, runc, overlayfs and cgroups.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRuncDriver, type OciDriver } from '../../src/runtime/index.js';
import { pidAlive } from '../../src/runtime/proc.js';
import { IMAGE, allLogs, logger, makeRootfs, mountsContaining, newId, shSpec, stdoutOf } from './helpers.js';

/** CapEff of exactly Podman's 11 default capabilities. */
const CAP_MASK_11 = '00000000800405fb';

let work: { dir: string; rootfs: string };
let stateDir: string;
let driver: OciDriver;
const started: string[] = [];

function req(id: string, script: string, over: Parameters<typeof shSpec>[1] = {}, labels: Record<string, string> = {}) {
  started.push(id);
  return { id, rootfs: work.rootfs, image: IMAGE, container: shSpec(script, over), hostname: id.slice(0, 60), labels };
}

/** Pids in the container's cgroup (pids controller of cgroup v1, or the unified hierarchy). */
async function cgroupProcs(id: string): Promise<number[]> {
  for (const base of ['/sys/fs/cgroup/pids', '/sys/fs/cgroup']) {
    const text = await readFile(join(base, driver.cgroupPath(id), 'cgroup.procs'), 'utf8').catch(() => undefined);
    if (text !== undefined) return text.split('\n').filter((l) => l.trim() !== '').map(Number);
  }
  throw new Error(`no cgroup for ${id}`);
}

beforeAll(async () => {
  work = await makeRootfs();
  stateDir = await mkdtemp(join(tmpdir(), 'carapace-runc-state-'));
  driver = createRuncDriver({ stateDir, logger });
});

afterAll(async () => {
  for (const id of started) await driver.destroy(id).catch(() => undefined);
  await rm(stateDir, { recursive: true, force: true });
  await rm(work.dir, { recursive: true, force: true });
});

describe('runc driver', () => {
  it('probes ok', async () => {
    expect(await driver.probe()).toEqual({ ok: true });
  });

  it('starts, logs stdout/stderr, and reports the exit code', async () => {
    const id = newId('basic');
    const info = await driver.start(req(id, 'echo hello; echo oops >&2; exit 3', {}, { tenant: 't1' }));
    expect(info.state.status).toBe('running');
    const exited = await driver.wait(id);
    expect(exited.exitCode).toBe(3);
    const lines = await allLogs(driver, id);
    expect(lines.map((l) => [l.stream, l.text])).toEqual([
      ['stdout', 'hello'],
      ['stderr', 'oops'],
    ]);
    const insp = await driver.inspect(id);
    expect(insp?.labels).toEqual({ tenant: 't1' });
    expect(insp?.state).toMatchObject({ status: 'exited', exitCode: 3 });
    // tail
    const tail: string[] = [];
    for await (const l of driver.logs(id, { follow: false, tail: 1 })) tail.push(l.text);
    expect(tail).toEqual(['oops']);
  });

  it('joins long lines written without newline (partial records)', async () => {
    const id = newId('partial');
    await driver.start(req(id, 'printf abc; sleep 0.2; printf def; sleep 0.2; echo ghi; printf tail'));
    await driver.wait(id);
    expect((await allLogs(driver, id)).map((l) => l.text)).toEqual(['abcdefghi', 'tail']);
  });

  it('follows logs until the container exits', async () => {
    const id = newId('follow');
    await driver.start(req(id, 'for i in 1 2 3; do echo line$i; sleep 0.2; done'));
    const seen: string[] = [];
    for await (const l of driver.logs(id, { follow: true })) seen.push(l.text);
    expect(seen).toEqual(['line1', 'line2', 'line3']);
  });

  it('follow stops when the signal aborts', async () => {
    const id = newId('abort');
    await driver.start(req(id, 'echo first; sleep 30'));
    const ac = new AbortController();
    const seen: string[] = [];
    const t = setTimeout(() => ac.abort(), 700);
    for await (const l of driver.logs(id, { follow: true, signal: ac.signal })) seen.push(l.text);
    clearTimeout(t);
    expect(seen).toEqual(['first']);
    await driver.stop(id, 0);
  });

  it('stop: SIGTERM within grace, SIGKILL after it; idempotent', async () => {
    const polite = newId('polite');
    await driver.start(req(polite, "trap 'exit 42' TERM; while true; do sleep 0.1; done"));
    await new Promise((r) => setTimeout(r, 300)); // let the shell install its trap
    await driver.stop(polite, 5000);
    expect((await driver.inspect(polite))?.state).toMatchObject({ status: 'exited', exitCode: 42 });

    const stubborn = newId('stubborn');
    await driver.start(req(stubborn, "trap '' TERM; while true; do sleep 0.1; done"));
    await new Promise((r) => setTimeout(r, 300));
    const t0 = Date.now();
    await driver.stop(stubborn, 500);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(450);
    expect((await driver.inspect(stubborn))?.state).toMatchObject({ status: 'exited', exitCode: 137 });
    await driver.stop(stubborn, 500); // already exited: no error
  });

  it('destroy leaves no mount, cgroup, runc container or conmon behind; idempotent', async () => {
    const id = newId('destroy');
    await driver.start(req(id, 'sleep 30'));
    const conmonPid = Number((await readFile(join(stateDir, 'containers', id, 'conmon.pid'), 'utf8')).trim());
    expect(conmonPid).toBeGreaterThan(0);
    expect(pidAlive(conmonPid)).toBe(true);
    expect(await mountsContaining(id)).toHaveLength(1);
    expect(existsSync(`/sys/fs/cgroup/memory/carapace/${id}`)).toBe(true);
    await driver.destroy(id);
    expect(await mountsContaining(id)).toEqual([]);
    for (const ctl of ['memory', 'cpu', 'cpuacct', 'pids']) expect(existsSync(`/sys/fs/cgroup/${ctl}/carapace/${id}`)).toBe(false);
    expect(() => execFileSync('runc', ['--root', join(stateDir, 'runtime'), 'state', id], { stdio: 'pipe' })).toThrow();
    expect(pidAlive(conmonPid)).toBe(false); // gone or a zombie awaiting pid 1
    expect(existsSync(join(stateDir, 'containers', id))).toBe(false);
    expect(existsSync(join(stateDir, 'exits', id))).toBe(false);
    expect(await driver.inspect(id)).toBeUndefined();
    await driver.destroy(id);
  });

  it('gives each container a private writable layer; the shared rootfs is untouched', async () => {
    const a = newId('wa');
    const b = newId('wb');
    await driver.start(req(a, 'echo secret > /data/file && cat /data/file'));
    expect((await driver.wait(a)).exitCode).toBe(0);
    await driver.start(req(b, 'cat /data/file'));
    expect((await driver.wait(b)).exitCode).not.toBe(0);
    expect(await stdoutOf(driver, a)).toBe('secret');
    expect(existsSync(join(work.rootfs, 'data/file'))).toBe(false);
  });

  it('readOnlyRootfs refuses writes', async () => {
    const id = newId('ro');
    await driver.start(req(id, 'touch /data/x 2>&1; echo rc=$?', { readOnlyRootfs: true }));
    await driver.wait(id);
    expect(await stdoutOf(driver, id)).toMatch(/Read-only file system[\s\S]*rc=1/);
  });

  it('hardening: 11 caps, no_new_privs, seccomp filter, masked /proc and /sys paths, cgroup limits', async () => {
    const id = newId('sec');
    const script = [
      'grep -E "^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):" /proc/self/status',
      // /proc/kcore does not exist on every kernel (not on this CI's); these masked ones do.
      'echo timer_list=$(wc -c < /proc/timer_list) keys=$(wc -c < /proc/keys) acpi=$(ls /proc/acpi | wc -l) fw=$(ls /sys/firmware | wc -l)',
      'echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)',
      'echo pids=$(cat /sys/fs/cgroup/pids/pids.max)',
      'echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)',
      'echo host=$(hostname) h=$(cat /etc/hostname)',
      'echo sysrq; echo x > /proc/sysrq-trigger; echo sysrq_rc=$?',
    ].join('; ');
    await driver.start(req(id, script, { memory: 48, pids: 64, cpu: 0.25 }));
    await driver.wait(id);
    const out = await stdoutOf(driver, id);
    const field = (k: string) => new RegExp(`^${k}:\\s*(\\S+)`, 'm').exec(out)?.[1];
    expect(field('CapEff')).toBe(CAP_MASK_11);
    expect(field('CapPrm')).toBe(CAP_MASK_11);
    expect(field('CapBnd')).toBe(CAP_MASK_11);
    expect(field('CapInh')).toBe('0000000000000000');
    expect(field('CapAmb')).toBe('0000000000000000');
    expect(field('NoNewPrivs')).toBe('1');
    expect(field('Seccomp')).toBe('2');
    expect((await readFile('/proc/timer_list', 'utf8')).length).toBeGreaterThan(0); // the mask hides something real
    expect(out).toContain('timer_list=0 keys=0 acpi=0 fw=0');
    expect(out).toContain(`mem=${48 * 1024 * 1024}`);
    expect(out).toContain('pids=64');
    expect(out).toContain('quota=25000');
    expect(out).toContain(`host=${id} h=${id}`);
    expect(out).toContain('sysrq_rc=1');
  });

  it('runs as a named user from the image /etc/passwd with its groups, holding no capabilities', async () => {
    const id = newId('user');
    const r = req(id, 'id; grep CapEff /proc/self/status');
    await driver.start({ ...r, image: { ...IMAGE, user: 'app' } });
    await driver.wait(id);
    const out = await stdoutOf(driver, id);
    expect(out).toContain('uid=1000(app) gid=1000(app)');
    expect(out).toMatch(/groups=.*2000\(extra\)/);
    expect(out).toMatch(/CapEff:\s*0000000000000000/);
  });

  it('enforces the pids limit', async () => {
    const id = newId('pids');
    await driver.start(req(id, 'for i in $(seq 1 40); do sleep 5 & done 2>/dev/null; wait; echo n=$(ls /proc | grep -c "^[0-9]")', { pids: 16 }));
    await driver.stop(id, 0).catch(() => undefined);
    const n = Number(/n=(\d+)/.exec(await stdoutOf(driver, id))?.[1] ?? '0');
    // Either the loop was refused forks (fewer than 40 sleeps) or killed first; never 40+.
    expect(n).toBeLessThanOrEqual(16);
  });

  it('a command that does not exist gives a clear start error and leaves nothing behind', async () => {
    const id = newId('nocmd');
    const r = req(id, '');
    await expect(driver.start({ ...r, container: { ...r.container, command: ['/bin/does-not-exist'] } })).rejects.toThrow(/does-not-exist.*(no such file|not found)/i);
    expect(await driver.inspect(id)).toBeUndefined();
    expect(await mountsContaining(id)).toEqual([]);
  });

  it('rejects invalid ids and duplicate starts', async () => {
    await expect(driver.start(req('../etc', 'true'))).rejects.toThrow(/invalid container id/);
    const id = newId('dup');
    await driver.start(req(id, 'sleep 5'));
    await expect(driver.start(req(id, 'true'))).rejects.toThrow(/already exists/);
    await driver.destroy(id);
  });

  it('reports usage from the cgroup', async () => {
    const id = newId('usage');
    await driver.start(req(id, 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 30'));
    await new Promise((r) => setTimeout(r, 800));
    const u = await driver.usage(id);
    expect(u?.cpuSeconds).toBeGreaterThan(0.05);
    expect(u?.memoryBytes).toBeGreaterThan(0);
    await driver.destroy(id);
    expect(await driver.usage(id)).toBeUndefined();
  });

  it('survives an agent restart: a new driver instance recovers the container and gets its exit code', async () => {
    const id = newId('recover');
    await driver.start(req(id, 'sleep 1.5; exit 7', {}, { tenant: 'acme', instance: 'web-0' }));
    const restarted = createRuncDriver({ stateDir, logger });
    const found = (await restarted.recover()).find((c) => c.id === id);
    expect(found?.labels).toEqual({ tenant: 'acme', instance: 'web-0' });
    expect(found?.state.status).toBe('running');
    expect((await restarted.wait(id)).exitCode).toBe(7);
  });

  it('check: exec runs in the container with its user and env; exit code and output decide; no address is a clear failure', async () => {
    const id = newId('check');
    await driver.start({ ...req(id, 'sleep 60', { env: { GREETING: 'hi' } }), image: { ...IMAGE, user: 'app' } });
    const ok = await driver.check(id, { exec: { command: ['sh', '-c', 'echo $(id -u) $GREETING'] } }, 5_000);
    expect(ok).toEqual({ ok: true, message: 'exec ["sh","-c","echo $(id -u) $GREETING"]: exit 0: 1000 hi' });
    const bad = await driver.check(id, { exec: { command: ['sh', '-c', 'echo not healthy >&2; exit 3'] } }, 5_000);
    expect(bad).toEqual({ ok: false, message: 'exec ["sh","-c","echo not healthy >&2; exit 3"]: exit 3: not healthy' });
    const missing = await driver.check(id, { exec: { command: ['/no/such/binary'] } }, 5_000);
    expect(missing.ok).toBe(false);
    expect(missing.message).toMatch(/^exec \["\/no\/such\/binary"\]: exit \d+: .*no such file or directory/);
    expect(await driver.check(id, { httpGet: { path: '/healthz', port: 8080 } }, 1_000)).toEqual({
      ok: false,
      message: `HTTP GET :8080/healthz: container ${id} has no network address to probe (started without a network)`,
    });
    expect((await driver.check(id, { tcpSocket: { port: 8080 } }, 1_000)).message).toMatch(/^TCP connect :8080: .*no network address/);
    // Nothing of the checks is left: no pid files in the bundle, only the container's own process in its cgroup.
    expect((await readdir(join(stateDir, 'containers', id))).filter((f) => f.startsWith('probe-'))).toEqual([]);
    expect(await cgroupProcs(id)).toHaveLength(1);
    const t0 = performance.now();
    for (let i = 0; i < 10; i++) expect((await driver.check(id, { exec: { command: ['true'] } }, 5_000)).ok).toBe(true);
    console.log(`runc exec check: ${((performance.now() - t0) / 10).toFixed(1)} ms mean`);
    await driver.stop(id, 0);
  });

  it('check: an exec that outlives its timeout fails in time and is killed with its children', async () => {
    const id = newId('checkslow');
    await driver.start(req(id, 'sleep 60'));
    const t0 = Date.now();
    const slow = await driver.check(id, { exec: { command: ['sh', '-c', 'sleep 30 & sleep 31'] } }, 500);
    const took = Date.now() - t0;
    expect(slow).toEqual({ ok: false, message: 'exec ["sh","-c","sleep 30 & sleep 31"]: timed out after 0.5s' });
    expect(took).toBeGreaterThanOrEqual(500);
    expect(took).toBeLessThan(2_500);
    // The exec'd shell and its background child died with it: only the container's init is left.
    await expect.poll(() => cgroupProcs(id), { timeout: 3_000 }).toHaveLength(1);
    expect((await driver.check(id, { exec: { command: ['true'] } }, 5_000)).ok).toBe(true);
    await driver.stop(id, 0);
  });

  it('conmon killed -9: the container keeps running; once it is gone the exit is reported as unknown (137)', async () => {
    const id = newId('orphan');
    await driver.start(req(id, 'sleep 30'));
    const conmonPid = Number((await readFile(join(stateDir, 'containers', id, 'conmon.pid'), 'utf8')).trim());
    process.kill(conmonPid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    expect((await driver.inspect(id))?.state.status).toBe('running');
    execFileSync('runc', ['--root', join(stateDir, 'runtime'), 'kill', id, 'KILL']);
    const exited = await driver.wait(id);
    expect(exited.exitCode).toBe(137);
    await driver.destroy(id);
    expect(await mountsContaining(id)).toEqual([]);
  });
});
