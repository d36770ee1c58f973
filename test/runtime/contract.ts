/**
 * The RuntimeDriver contract suite: every driver (runc, runsc, a cell's runtime) runs these
 * same tests on real containers, so the agent can rely on the semantics documented in
 * `src/runtime/driver.ts` whichever driver an instance lands on (as `src/store/contract.ts`
 * does for the stores). Call `describeDriverContract` from the driver's test file with a
 * harness that builds the driver and tells what only the test needs (where a container's
 * processes and leftovers are seen from the host).
 *
 * What differs between drivers is declared, not guessed: the driver's `capabilities` (the
 * network tests follow `network`, the image tests `images`) and the kernel its containers
 * see (gVisor reports capabilities and limits its own way; the limits are then read where
 * they are enforced, on the host's cgroup).
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DriverCapabilities, HostMount, LogLine, RuntimeDriver, StartRequest } from '../../src/runtime/driver.js';
import type { SecretFiles } from '../../src/storage/secret-files.js';
import type { VolumeStore } from '../../src/storage/volume-store.js';
import { httpGet, httpGetEventually } from '../network/helpers.js';
import { IMAGE, allLogs, newId, shSpec, stdoutOf } from './helpers.js';
import { until } from '../../src/proc/until.js';

/** CapEff of exactly Podman's 11 default capabilities. */
export const CAP_MASK_11 = '00000000800405fb';

/** A network namespace made for one container the way the agent makes it (namespace drivers). */
export interface HarnessNetwork {
  setup(id: string, ports: { containerPort: number; hostPort: number; protocol: 'tcp' }[]): Promise<{ netnsPath: string; ip: string }>;
  teardown(id: string): Promise<void>;
  /** A TCP port free on the host. */
  freeHostPort(): Promise<number>;
}

/** One driver under test and what the suite needs to look at its containers from the host. */
export interface DriverHarness {
  /** The driver now (`restart` replaces it). */
  readonly driver: RuntimeDriver;
  /** A busybox root filesystem the driver may use (inside a VM driver's image share). */
  readonly rootfs: string;
  /** A path with a copy of the same busybox root outside any image share (shared-into-vm drivers must refuse it). */
  readonly outsideShare: string;
  /** The agent's network for `namespace` drivers; absent for `vm` drivers. */
  readonly network?: HarnessNetwork;
  /** A TCP port the container may listen on in the network the driver gives it. */
  freePort(): Promise<number>;
  /** An agent restart: a new driver object over the same state (and channel), replacing `driver`. */
  restart(): Promise<void>;
  /** How many processes the container runs, as the runtime counts them (its init alone: 1). */
  processes(id: string): Promise<number>;
  /** The limits enforced on the container, read where they are enforced. */
  limits(id: string): Promise<{ memoryBytes: number; pids: number; cpuQuotaUs: number }>;
  /** The host's volume store and secret files, for drivers that take host mounts (`hostMounts`). */
  readonly hostMounts?: { volumes: VolumeStore; files: SecretFiles };
  /** What a destroyed container left behind (mounts, cgroups, runtime state, files), described; [] when nothing. */
  leftovers(id: string): Promise<string[]>;
  cleanup(): Promise<void>;
}

/** What the suite is told about a driver before it exists. */
export interface DriverContractOptions {
  /** The capabilities the driver must declare. */
  capabilities: DriverCapabilities;
  /** The kernel its containers see: the host's Linux (runc, runc in a cell) or gVisor's. */
  kernel: 'linux' | 'gvisor';
  /** Tasks the runtime keeps in the container's cgroup itself, on top of the spec's pids. */
  runtimeOwnPids: number;
  /**
   * Whether the driver takes host directories (`StartRequest.mounts`: volumes mounted on the
   * host, secret files): the host drivers do; a cell's runtime gets its volumes as block
   * devices instead. When true the harness provides `hostMounts`.
   */
  hostMounts?: boolean;
  /** Builds the harness (once for the file). */
  setup(): Promise<DriverHarness>;
}

/** Registers the contract tests for one driver. */
export function describeDriverContract(name: string, o: DriverContractOptions): void {
  describe(`RuntimeDriver contract: ${name}`, () => {
    let h: DriverHarness;
    const started: string[] = [];

    beforeAll(async () => {
      h = await o.setup();
    });

    afterAll(async () => {
      for (const id of started) await h?.driver.destroy(id).catch(() => undefined);
      await h?.cleanup();
    });

    /** A start request for `sh -c script`, remembered for cleanup. */
    function req(id: string, script: string, over: Parameters<typeof shSpec>[1] = {}, labels: Record<string, string> = {}): StartRequest {
      started.push(id);
      return { id, rootfs: h.rootfs, image: IMAGE, container: shSpec(script, over), hostname: id.slice(0, 60), labels };
    }

    /** Waits until the container wrote `line` (e.g. a trap is installed): the driver's own logs, polled. */
    async function waitForLine(id: string, line: string): Promise<void> {
      await until(`${id} to print ${line}`, async () => ((await allLogs(h.driver, id)).some((l) => l.text === line) ? true : undefined));
    }

    it('declares its capabilities and probes ok', async () => {
      expect(h.driver.capabilities).toEqual(o.capabilities);
      expect(await h.driver.probe()).toEqual({ ok: true });
    });

    it('starts, logs stdout and stderr, reports the exit code and keeps its labels', async () => {
      const id = newId('basic');
      const info = await h.driver.start(req(id, 'echo hello; echo oops >&2; exit 3', {}, { tenant: 't1' }));
      expect(info.state.status).toBe('running');
      expect(info.labels).toEqual({ tenant: 't1' });
      const exited = await h.driver.wait(id);
      expect(exited.exitCode).toBe(3);
      const lines = await allLogs(h.driver, id);
      expect(lines.map((l) => [l.stream, l.text]).sort()).toEqual([
        ['stderr', 'oops'],
        ['stdout', 'hello'],
      ]);
      const insp = await h.driver.inspect(id);
      expect(insp?.labels).toEqual({ tenant: 't1' });
      expect(insp?.state).toMatchObject({ status: 'exited', exitCode: 3 });
      const tail: LogLine[] = [];
      for await (const l of h.driver.logs(id, { follow: false, tail: 1 })) tail.push(l);
      expect(tail).toEqual(lines.slice(-1));
    });

    it('joins a line written in pieces without newlines', async () => {
      const id = newId('partial');
      await h.driver.start(req(id, 'printf abc; sleep 0.2; printf def; sleep 0.2; echo ghi; printf tail'));
      await h.driver.wait(id);
      expect((await allLogs(h.driver, id)).map((l) => l.text)).toEqual(['abcdefghi', 'tail']);
    });

    it('follows logs until the container exits', async () => {
      const id = newId('follow');
      await h.driver.start(req(id, 'for i in 1 2 3; do echo line$i; sleep 0.2; done'));
      const seen: string[] = [];
      for await (const l of h.driver.logs(id, { follow: true })) seen.push(l.text);
      expect(seen).toEqual(['line1', 'line2', 'line3']);
    });

    it('stops following when the signal aborts', async () => {
      const id = newId('abort');
      await h.driver.start(req(id, 'echo first; sleep 60'));
      const ac = new AbortController();
      const seen: string[] = [];
      for await (const l of h.driver.logs(id, { follow: true, signal: ac.signal })) {
        seen.push(l.text);
        ac.abort();
      }
      expect(seen).toEqual(['first']);
      await h.driver.stop(id, 0);
    });

    it('stop: SIGTERM within the grace period, SIGKILL after it; idempotent', async () => {
      const polite = newId('polite');
      await h.driver.start(req(polite, "trap 'exit 42' TERM; echo trapped; while true; do sleep 0.1; done"));
      await waitForLine(polite, 'trapped');
      await h.driver.stop(polite, 10_000);
      expect((await h.driver.inspect(polite))?.state).toMatchObject({ status: 'exited', exitCode: 42 });

      const stubborn = newId('stubborn');
      await h.driver.start(req(stubborn, "trap '' TERM; echo trapped; while true; do sleep 0.1; done"));
      await waitForLine(stubborn, 'trapped');
      const t0 = Date.now();
      await h.driver.stop(stubborn, 500);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(450);
      expect((await h.driver.inspect(stubborn))?.state).toMatchObject({ status: 'exited', exitCode: 137 });
      await h.driver.stop(stubborn, 500); // already exited: no error
    });

    it('destroy leaves nothing behind and forgets the container; idempotent', async () => {
      const id = newId('destroy');
      await h.driver.start(req(id, 'sleep 60'));
      expect(await h.processes(id)).toBe(1);
      await h.driver.destroy(id);
      expect(await h.leftovers(id)).toEqual([]);
      expect(await h.driver.inspect(id)).toBeUndefined();
      expect(await h.driver.usage(id)).toBeUndefined();
      await h.driver.destroy(id);
    });

    it('gives each container a private writable layer; the image root is untouched; readOnlyRootfs refuses writes', async () => {
      const a = newId('wa');
      const b = newId('wb');
      await h.driver.start(req(a, 'echo secret > /data/file && cat /data/file'));
      expect((await h.driver.wait(a)).exitCode).toBe(0);
      await h.driver.start(req(b, 'cat /data/file'));
      expect((await h.driver.wait(b)).exitCode).not.toBe(0);
      expect(await stdoutOf(h.driver, a)).toBe('secret');
      expect(existsSync(`${h.rootfs}/data/file`)).toBe(false);
      const ro = newId('ro');
      await h.driver.start(req(ro, 'touch /data/x 2>&1; echo rc=$?', { readOnlyRootfs: true }));
      await h.driver.wait(ro);
      expect(await stdoutOf(h.driver, ro)).toMatch(/Read-only file system[\s\S]*rc=1/);
    });

    it("hardening: Podman's 11 capabilities, no_new_privs and seccomp, masked /proc and /sys paths, cgroup limits, its own hostname", async () => {
      const id = newId('sec');
      const script = [
        'grep -E "^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):" /proc/self/status',
        // Masked (empty) or absent (gVisor has none of them): nothing to read either way.
        // /proc/kcore does not exist on every kernel (not on this CI's); these do on Linux.
        'echo timer_list=$(cat /proc/timer_list 2>/dev/null | wc -c) keys=$(cat /proc/keys 2>/dev/null | wc -c) acpi=$(ls /proc/acpi 2>/dev/null | wc -l) fw=$(ls /sys/firmware 2>/dev/null | wc -l)',
        'echo host=$(hostname) h=$(cat /etc/hostname)',
        'echo x > /proc/sysrq-trigger; echo sysrq_rc=$?',
        'echo done; sleep 60',
      ].join('; ');
      await h.driver.start(req(id, script, { memory: 48, pids: 64, cpu: 0.25 }));
      await waitForLine(id, 'done');
      const out = await stdoutOf(h.driver, id);
      const field = (k: string): string | undefined => new RegExp(`^${k}:\\s*(\\S+)`, 'm').exec(out)?.[1];
      expect(field('CapEff')).toBe(CAP_MASK_11);
      expect(field('CapPrm')).toBe(CAP_MASK_11);
      expect(field('CapBnd')).toBe(CAP_MASK_11);
      expect(field('CapInh')).toBe('0000000000000000');
      if (o.kernel === 'linux') {
        expect(field('CapAmb')).toBe('0000000000000000');
        expect(field('NoNewPrivs')).toBe('1');
        expect(field('Seccomp')).toBe('2');
      } else {
        // gVisor has no ambient capabilities (no CapAmb line); its sentry, not the container, is under seccomp.
        expect(field('CapAmb')).toBeUndefined();
      }
      expect(out).toContain('timer_list=0 keys=0 acpi=0 fw=0');
      expect(out).toContain(`host=${id} h=${id}`);
      expect(out).toContain('sysrq_rc=1');
      expect(await h.limits(id)).toEqual({ memoryBytes: 48 * 1024 * 1024, pids: 64 + o.runtimeOwnPids, cpuQuotaUs: 25_000 });
      await h.driver.stop(id, 0);
    });

    it('runs as a named user of the image with its groups, holding no capabilities', async () => {
      const id = newId('user');
      await h.driver.start({ ...req(id, 'id; grep CapEff /proc/self/status'), image: { ...IMAGE, user: 'app' } });
      await h.driver.wait(id);
      const out = await stdoutOf(h.driver, id);
      expect(out).toContain('uid=1000(app) gid=1000(app)');
      expect(out).toMatch(/groups=.*2000\(extra\)/);
      expect(out).toMatch(/CapEff:\s*0000000000000000/);
    });

    it('enforces the pids limit', async () => {
      const id = newId('pids');
      // 400: more than the limit plus any runtime's own headroom (gVisor's 128).
      await h.driver.start(req(id, '(for i in $(seq 1 400); do sleep 5 & done; echo started-all) 2>/dev/null; echo done', { pids: 16 }));
      await h.driver.wait(id);
      expect(await stdoutOf(h.driver, id)).not.toContain('started-all');
    });

    it('a command that does not exist is a clear start error and leaves nothing behind', async () => {
      const id = newId('nocmd');
      const r = req(id, '');
      await expect(h.driver.start({ ...r, container: { ...r.container, command: ['/bin/does-not-exist'] } })).rejects.toThrow(/does-not-exist/);
      expect(await h.driver.inspect(id)).toBeUndefined();
      expect(await h.leftovers(id)).toEqual([]);
    });

    it('refuses an invalid id and a second start of the same id', async () => {
      await expect(h.driver.start(req('../etc', 'true'))).rejects.toThrow(/invalid container id/);
      const id = newId('dup');
      await h.driver.start(req(id, 'sleep 60'));
      await expect(h.driver.start(req(id, 'true'))).rejects.toThrow(/already exists/);
      expect((await h.driver.inspect(id))?.state.status).toBe('running');
      await h.driver.destroy(id);
    });

    it('reports usage', async () => {
      const id = newId('usage');
      await h.driver.start(req(id, 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 60', { cpu: 1 }));
      const u = await until('cpu usage', async () => {
        const v = await h.driver.usage(id);
        return v && v.cpuSeconds > 0.05 ? v : undefined;
      });
      expect(u.memoryBytes).toBeGreaterThan(0);
      await h.driver.destroy(id);
      expect(await h.driver.usage(id)).toBeUndefined();
    });

    it('check exec: runs in the container with its user and env; the exit code and output decide', async () => {
      const id = newId('check');
      await h.driver.start({ ...req(id, 'sleep 60', { env: { GREETING: 'hi' } }), image: { ...IMAGE, user: 'app' } });
      expect(await h.driver.check(id, { exec: { command: ['sh', '-c', 'echo $(id -u) $GREETING'] } }, 10_000)).toEqual({ ok: true, message: 'exec ["sh","-c","echo $(id -u) $GREETING"]: exit 0: 1000 hi' });
      expect(await h.driver.check(id, { exec: { command: ['sh', '-c', 'echo not healthy >&2; exit 3'] } }, 10_000)).toEqual({ ok: false, message: 'exec ["sh","-c","echo not healthy >&2; exit 3"]: exit 3: not healthy' });
      const missing = await h.driver.check(id, { exec: { command: ['/no/such/binary'] } }, 10_000);
      expect(missing.ok).toBe(false);
      // gVisor's runsc (2022-12) exec client dies of SIGPIPE without a word for a missing binary.
      if (o.kernel === 'linux') expect(missing.message).toMatch(/^exec \["\/no\/such\/binary"\]: exit \d+: .*no such file or directory/i);
      else expect(missing.message).toMatch(/^exec \["\/no\/such\/binary"\]: /);
      expect(await h.processes(id)).toBe(1);
      await h.driver.stop(id, 0);
    });

    it('check exec: one that outlives its timeout fails in time and is killed', async () => {
      const id = newId('checkslow');
      await h.driver.start(req(id, 'sleep 60'));
      const t0 = Date.now();
      const slow = await h.driver.check(id, { exec: { command: ['sleep', '30'] } }, 1_000);
      const took = Date.now() - t0;
      expect(slow).toEqual({ ok: false, message: 'exec ["sleep","30"]: timed out after 1s' });
      expect(took).toBeGreaterThanOrEqual(1_000);
      expect(took).toBeLessThan(4_000);
      await until('only the init left', async () => ((await h.processes(id)) === 1 ? true : undefined), 5_000);
      expect((await h.driver.check(id, { exec: { command: ['true'] } }, 10_000)).ok).toBe(true);
      await h.driver.stop(id, 0);
    });

    // Not gVisor's: runsc (2022-12) cannot signal a process its exec did not start (`kill
    // --pid` returns 0 and does nothing), so what a timed-out check forked runs on until it ends.
    if (o.kernel === 'linux') {
      it('check exec: one that outlives its timeout is killed with its children', async () => {
        const id = newId('checktree');
        await h.driver.start(req(id, 'sleep 60'));
        const slow = await h.driver.check(id, { exec: { command: ['sh', '-c', 'sleep 30 & sleep 31'] } }, 1_000);
        expect(slow).toEqual({ ok: false, message: 'exec ["sh","-c","sleep 30 & sleep 31"]: timed out after 1s' });
        await until('only the init left', async () => ((await h.processes(id)) === 1 ? true : undefined), 5_000);
        await h.driver.stop(id, 0);
      });
    }

    if (o.capabilities.network === 'namespace') {
      it('network namespace: the container joins the one the agent made, serves on its address and its published port; checks use that address', async () => {
        const net = h.network;
        if (!net) throw new Error('a namespace driver needs the harness network');
        const id = newId('net');
        const hostPort = await net.freeHostPort();
        const n = await net.setup(id, [{ containerPort: 8080, hostPort, protocol: 'tcp' }]);
        try {
          await h.driver.start({ ...req(id, `echo 'served by ${name}' > /www/index.html; exec httpd -f -p 8080 -h /www`), netnsPath: n.netnsPath });
          // Retried until httpd listens (start returns before it does).
          expect(await httpGetEventually('127.0.0.1', hostPort, 10_000)).toBe(`served by ${name}\n`);
          expect(await httpGetEventually(n.ip, 8080, 5_000)).toBe(`served by ${name}\n`);
          const http = async (): Promise<string> => (await h.driver.check(id, { httpGet: { path: '/index.html', port: 8080, host: n.ip } }, 1_000)).message;
          await until('httpGet check', async () => ((await http()) === `HTTP GET http://${n.ip}:8080/index.html: 200 OK` ? true : undefined), 10_000);
          expect(await h.driver.check(id, { tcpSocket: { port: 8080, host: n.ip } }, 1_000)).toEqual({ ok: true, message: `TCP connect ${n.ip}:8080: connected` });
          expect(await h.driver.check(id, { tcpSocket: { port: 8081, host: n.ip } }, 1_000)).toEqual({ ok: false, message: `TCP connect ${n.ip}:8081: connection refused` });
          expect((await h.driver.check(id, { exec: { command: ['cat', '/www/index.html'] } }, 10_000)).message).toMatch(/exit 0: served by/);
          await h.driver.destroy(id);
          await expect(httpGet('127.0.0.1', hostPort, 500)).rejects.toThrow();
        } finally {
          await h.driver.destroy(id).catch(() => undefined);
          await net.teardown(id);
        }
      });

      it('network namespace: without one the container has loopback only, and network checks say there is no address', async () => {
        const id = newId('nonet');
        // gVisor has no /sys/class/net: its /proc/net/dev lists the same interfaces.
        await h.driver.start(req(id, 'ls /sys/class/net 2>/dev/null || cat /proc/net/dev; echo done; sleep 60'));
        await waitForLine(id, 'done');
        const out = await stdoutOf(h.driver, id);
        expect(out).toMatch(/\blo\b/);
        expect(out).not.toMatch(/eth0/);
        expect(await h.driver.check(id, { httpGet: { path: '/healthz', port: 8080 } }, 1_000)).toEqual({ ok: false, message: `HTTP GET :8080/healthz: container ${id} has no network address to probe (started without a network)` });
        expect((await h.driver.check(id, { tcpSocket: { port: 8080 } }, 1_000)).message).toMatch(/^TCP connect :8080: .*no network address/);
        await h.driver.stop(id, 0);
      });
    }

    if (o.capabilities.network === 'vm') {
      it("vm network: the container serves on the VM's network; checks run inside it, whatever host they name", async () => {
        const id = newId('vmnet');
        const port = await h.freePort();
        await h.driver.start(req(id, `echo 'served by ${name}' > /www/index.html; exec httpd -f -p 127.0.0.1:${port} -h /www`));
        // The agent passes no address for a vm driver; one given anyway is ignored.
        const ok = `HTTP GET http://127.0.0.1:${port}/index.html: 200 OK`;
        await until('httpGet check', async () => ((await h.driver.check(id, { httpGet: { path: '/index.html', port } }, 1_000)).message === ok ? true : undefined), 10_000);
        expect(await h.driver.check(id, { httpGet: { path: '/index.html', port, host: '192.0.2.1' } }, 1_000)).toEqual({ ok: true, message: ok });
        expect(await h.driver.check(id, { tcpSocket: { port } }, 1_000)).toEqual({ ok: true, message: `TCP connect 127.0.0.1:${port}: connected` });
        // A second container of the same driver shares that network.
        const peer = newId('vmpeer');
        await h.driver.start(req(peer, `wget -q -O - http://127.0.0.1:${port}/index.html`));
        expect((await h.driver.wait(peer)).exitCode).toBe(0);
        expect(await stdoutOf(h.driver, peer)).toBe(`served by ${name}`);
        await h.driver.stop(id, 0);
      });
    }

    if (o.capabilities.images === 'shared-into-vm') {
      it("images shared into the VM: a root outside the share is refused before anything starts", async () => {
        const id = newId('outside');
        await expect(h.driver.start({ ...req(id, 'true'), rootfs: h.outsideShare })).rejects.toThrow(/not under the cell's image share/);
        expect(await h.driver.inspect(id)).toBeUndefined();
      });
    }

    if (o.capabilities.images === 'host-path') {
      it('images at a host path: any absolute image root works; a relative one is refused', async () => {
        const id = newId('hostpath');
        await h.driver.start({ ...req(id, 'echo from outside'), rootfs: h.outsideShare });
        expect((await h.driver.wait(id)).exitCode).toBe(0);
        expect(await stdoutOf(h.driver, id)).toBe('from outside');
        await expect(h.driver.start({ ...req(newId('relative'), 'true'), rootfs: 'rootfs' })).rejects.toThrow(/must be an absolute path/);
      });
    }

    if (o.hostMounts) {
      /** The harness's host storage (present when the suite is told the driver takes host mounts). */
      const storage = (): NonNullable<DriverHarness['hostMounts']> => {
        if (!h.hostMounts) throw new Error('the harness of a driver with hostMounts must provide them');
        return h.hostMounts;
      };
      const bind = (source: string, destination: string, readOnly: boolean): HostMount => ({ kind: 'bind', source, destination, readOnly });
      /** Runs `script` with `mounts` to its end; its exit code, stdout and stderr. */
      async function runWith(prefix: string, script: string, mounts: HostMount[]): Promise<{ code: number; stdout: string; stderr: string[] }> {
        const id = newId(prefix);
        await h.driver.start({ ...req(id, script), mounts });
        const code = (await h.driver.wait(id)).exitCode;
        const lines = await allLogs(h.driver, id);
        await h.driver.destroy(id);
        return { code, stdout: lines.filter((l) => l.stream === 'stdout').map((l) => l.text).join('\n'), stderr: lines.filter((l) => l.stream === 'stderr').map((l) => l.text) };
      }

      it('host mounts: a volume written by one container is there for the next once the first is destroyed; read-only refuses writes (EROFS)', async () => {
        const { volumes } = storage();
        const vol = newId('vol');
        await volumes.ensure({ id: vol, tenant: 'acme', name: 'db', sizeBytes: 32 * 1024 * 1024 });
        const src = await volumes.mount(vol);
        const first = await runWith('writer', 'echo persisted > /data/f && mkdir /data/sub && echo deep > /data/sub/g && sync', [bind(src, '/data', false)]);
        expect(first).toMatchObject({ code: 0 });
        expect(existsSync(`${src}/sub/g`)).toBe(true);
        const second = await runWith('reader', 'cat /data/f /data/sub/g', [bind(src, '/data', false)]);
        expect(second).toMatchObject({ code: 0, stdout: 'persisted\ndeep' });
        const ro = await runWith('ro', 'cat /data/f; if echo x > /data/h; then echo wrote; else echo refused; fi', [bind(src, '/data', true)]);
        expect(ro.stdout).toBe('persisted\nrefused');
        expect(ro.stderr.join('\n')).toMatch(/read-only file system/i);
        expect(existsSync(`${src}/h`)).toBe(false);
        // Every container is gone: the volume unmounts (nothing holds it).
        await volumes.unmount(vol);
        await volumes.remove(vol);
      });

      it('host mounts: a volume a running container holds cannot be unmounted or handed to a VM until the container is gone', async () => {
        const { volumes } = storage();
        const vol = newId('held');
        await volumes.ensure({ id: vol, tenant: 'acme', name: 'held', sizeBytes: 16 * 1024 * 1024 });
        const src = await volumes.mount(vol);
        const id = newId('holder');
        await h.driver.start({ ...req(id, 'echo in > /data/f; echo started; sleep 60'), mounts: [bind(src, '/data', false)] });
        await waitForLine(id, 'started');
        await expect(volumes.unmount(vol)).rejects.toMatchObject({ code: 'CARAPACE_E_VOLUME_BUSY' });
        await expect(volumes.imagePath(vol)).rejects.toMatchObject({ code: 'CARAPACE_E_VOLUME_BUSY' });
        // Still mounted on the host, with what the container wrote.
        expect(existsSync(`${src}/f`)).toBe(true);
        await h.driver.destroy(id);
        await volumes.unmount(vol);
        await volumes.imagePath(vol);
        await volumes.releaseImage(vol);
        await volumes.remove(vol);
      });

      it('host mounts: a container filling its volume gets ENOSPC; the volume keeps its size and stays usable', async () => {
        const { volumes } = storage();
        const vol = newId('full');
        const v = await volumes.ensure({ id: vol, tenant: 'acme', name: 'full', sizeBytes: 16 * 1024 * 1024 });
        const src = await volumes.mount(vol);
        const r = await runWith('fill', 'dd if=/dev/zero of=/data/big bs=1M count=64; echo exit=$?; rm /data/big; echo ok > /data/after && cat /data/after', [bind(src, '/data', false)]);
        expect(r.stderr.join('\n')).toMatch(/no space left on device/i);
        expect(r.stdout).toMatch(/^exit=[1-9]\d*\nok$/);
        const u = await volumes.usage(vol);
        expect(u.totalBytes).toBeLessThanOrEqual(v.sizeBytes);
        expect(u.allocatedBytes).toBeLessThanOrEqual(v.sizeBytes);
        await volumes.unmount(vol);
        await volumes.remove(vol);
      });

      it('host mounts: secret files are read-only in the container, and an update reaches a running container', async () => {
        const { files } = storage();
        const instance = newId('sec');
        const src = await files.write(instance, 'db', { password: 'one' });
        const id = newId('secrets');
        const script = [
          'cat /run/secrets/db/password; echo',
          'if echo x > /run/secrets/db/password; then echo wrote; else echo refused; fi',
          'i=0; while [ "$(cat /run/secrets/db/password)" != two ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done',
          'cat /run/secrets/db/password; echo',
        ].join('\n');
        await h.driver.start({ ...req(id, script), mounts: [bind(src, '/run/secrets/db', true)] });
        await waitForLine(id, 'refused');
        await files.write(instance, 'db', { password: 'two' });
        expect((await h.driver.wait(id)).exitCode).toBe(0);
        expect(await stdoutOf(h.driver, id)).toBe('one\nrefused\ntwo');
        await h.driver.destroy(id);
        await files.remove(instance);
      });

      it('host mounts: a destination under /proc, /sys or /dev, or not absolute, is refused before anything starts', async () => {
        const id = newId('badmount');
        await expect(h.driver.start({ ...req(id, 'true'), mounts: [bind('/tmp', '/proc/x', false)] })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION' });
        await expect(h.driver.start({ ...req(id, 'true'), mounts: [bind('/tmp', 'data', false)] })).rejects.toMatchObject({ code: 'CARAPACE_E_VALIDATION' });
        expect(await h.driver.inspect(id)).toBeUndefined();
      });
    }

    // Last: it replaces the harness's driver.
    it('an agent restart: a new driver object finds the running container with its labels, and gets its exit code', async () => {
      const id = newId('recover');
      await h.driver.start(req(id, 'sleep 60', {}, { tenant: 'acme', instance: 'web-0' }));
      const lingering = newId('linger');
      await h.driver.start(req(lingering, 'exit 4', {}, { tenant: 'acme', instance: 'job-0' }));
      await h.driver.wait(lingering);
      await h.restart();
      const found = await h.driver.recover();
      expect(found.find((c) => c.id === id)).toMatchObject({ labels: { tenant: 'acme', instance: 'web-0' }, state: { status: 'running' } });
      expect(found.find((c) => c.id === lingering)).toMatchObject({ labels: { tenant: 'acme', instance: 'job-0' }, state: { status: 'exited', exitCode: 4 } });
      const exit = h.driver.wait(id);
      await h.driver.stop(id, 0);
      expect((await exit).exitCode).toBe(137);
      expect((await h.driver.wait(lingering)).exitCode).toBe(4);
    });
  });
}
