import { describe, expect, it } from 'vitest';
import { CarapaceError } from '../model/errors.js';
import type { ContainerSpec } from '../model/schemas.js';
import type { ImageConfig } from './driver.js';
import { buildOciSpec, checkHostMounts, DEFAULT_CAPABILITIES, labelsFromAnnotations, resolvConfFile, tenantResolvConf, resolveArgs, resolveEnv, resolveUser, type OciSpecInput } from './oci-spec.js';

const image: ImageConfig = { entrypoint: ['/entry'], cmd: ['--serve'], env: ['PATH=/usr/bin', 'A=1'], workingDir: '/app', user: '' };
const container: ContainerSpec = {
  image: 'r/app:1', env: { B: '2', A: 'x' }, cpu: 1.5, memory: 256, pids: 100, readOnlyRootfs: true, isolation: 'host', group: 'default', ports: [],
};
function input(over: Partial<OciSpecInput> = {}): OciSpecInput {
  return {
    id: 'c1', rootfsPath: '/s/c1/merged', image, container, hostname: 'web-0', network: { kind: 'private' }, user: { uid: 0, gid: 0, additionalGids: [] }, labels: { tenant: 'acme' },
    etcFiles: { hosts: '/s/c1/hosts', hostname: '/s/c1/hostname', resolvConf: '/s/c1/resolv.conf' }, cgroupsPath: '/carapace/c1', nofileLimit: 4096, ...over,
  };
}

describe('resolveArgs (Kubernetes semantics)', () => {
  it('combines entrypoint/cmd with command/args', () => {
    expect(resolveArgs(image, {})).toEqual(['/entry', '--serve']);
    expect(resolveArgs(image, { args: ['-v'] })).toEqual(['/entry', '-v']);
    expect(resolveArgs(image, { command: ['/bin/sh'] })).toEqual(['/bin/sh']);
    expect(resolveArgs(image, { command: ['/bin/sh'], args: ['-c', 'x'] })).toEqual(['/bin/sh', '-c', 'x']);
    expect(() => resolveArgs({ ...image, entrypoint: [], cmd: [] }, {})).toThrow(/no command/);
  });
});

describe('resolveEnv', () => {
  it('overlays container env on image env and defaults PATH', () => {
    expect(resolveEnv(['PATH=/usr/bin', 'A=1'], { A: 'x', B: '2' }, 'h')).toEqual(['PATH=/usr/bin', 'A=x', 'B=2', 'HOSTNAME=h']);
    expect(resolveEnv([], {}, 'h')[0]).toMatch(/^PATH=\/usr\/local\/sbin:/);
  });
});

describe('resolveUser', () => {
  const passwd = 'root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n';
  const group = 'root:x:0:\napp:x:1001:\nextra:x:2000:app,other\nweb:x:3000:\n';
  it('resolves names, numbers and groups', () => {
    expect(resolveUser('', undefined, undefined)).toEqual({ uid: 0, gid: 0, additionalGids: [] });
    expect(resolveUser('app', passwd, group)).toEqual({ uid: 1000, gid: 1001, additionalGids: [2000] });
    expect(resolveUser('1000', passwd, group)).toEqual({ uid: 1000, gid: 1001, additionalGids: [2000] });
    expect(resolveUser('1234:55', undefined, undefined)).toEqual({ uid: 1234, gid: 55, additionalGids: [] });
    expect(resolveUser('app:web', passwd, group)).toMatchObject({ uid: 1000, gid: 3000 });
  });
  it('fails clearly for unknown names', () => {
    expect(() => resolveUser('nobody', passwd, group)).toThrow(/no such user/);
    expect(() => resolveUser('app', undefined, undefined)).toThrow(/no \/etc\/passwd/);
    expect(() => resolveUser('app:nogroup', passwd, group)).toThrow(/no such group/);
  });
});

describe('buildOciSpec', () => {
  it('builds a hardened spec', () => {
    const s = buildOciSpec(input({ seccomp: { defaultAction: 'SCMP_ACT_ERRNO', architectures: [], syscalls: [] } }));
    expect(s.process.capabilities.bounding).toEqual(DEFAULT_CAPABILITIES);
    expect(s.process.capabilities.effective).toHaveLength(11);
    expect(s.process.capabilities.ambient).toEqual([]);
    expect(s.process.capabilities.inheritable).toEqual([]);
    expect(s.process.noNewPrivileges).toBe(true);
    expect(s.process.args).toEqual(['/entry', '--serve']);
    expect(s.process.cwd).toBe('/app');
    expect(s.root).toEqual({ path: '/s/c1/merged', readonly: true });
    expect(s.linux.resources.cpu).toEqual({ quota: 150000, period: 100000 });
    expect(s.linux.resources.memory).toEqual({ limit: 256 * 1024 * 1024, swap: 256 * 1024 * 1024 });
    expect(s.linux.resources.pids).toEqual({ limit: 100 });
    expect(s.linux.cgroupsPath).toBe('/carapace/c1');
    expect(s.linux.namespaces.map((n) => n.type)).toEqual(['pid', 'ipc', 'uts', 'mount', 'network', 'cgroup']);
    expect(s.linux.maskedPaths).toContain('/proc/kcore');
    expect(s.linux.readonlyPaths).toContain('/proc/sysrq-trigger');
    expect(s.linux.seccomp?.defaultAction).toBe('SCMP_ACT_ERRNO');
    expect(s.mounts.find((m) => m.destination === '/etc/resolv.conf')?.source).toBe('/s/c1/resolv.conf');
    expect(s.mounts.find((m) => m.destination === '/sys')?.options).toContain('ro');
    expect(s.process.rlimits).toEqual([{ type: 'RLIMIT_NOFILE', hard: 4096, soft: 4096 }]);
    expect(labelsFromAnnotations(s.annotations)).toEqual({ tenant: 'acme' });
  });
  it('joins a given netns and keeps caps in the bounding set only for non-root users', () => {
    const s = buildOciSpec(input({ network: { kind: 'join', path: '/var/run/netns/x' }, user: { uid: 1000, gid: 1000, additionalGids: [5] } }));
    expect(s.linux.namespaces).toContainEqual({ type: 'network', path: '/var/run/netns/x' });
    expect(s.process.capabilities.effective).toEqual([]);
    expect(s.process.capabilities.permitted).toEqual([]);
    expect(s.process.capabilities.bounding).toHaveLength(11);
    expect(s.process.user).toEqual({ uid: 1000, gid: 1000, additionalGids: [5] });
  });
  it('shares the runtime\'s network namespace when told to, and adds the runtime\'s own tasks to the pids limit', () => {
    const s = buildOciSpec(input({ network: { kind: 'shared' }, runtimeOwnPids: 128 }));
    expect(s.linux.namespaces.map((n) => n.type)).toEqual(['pid', 'ipc', 'uts', 'mount', 'cgroup']);
    expect(s.linux.resources.pids).toEqual({ limit: 228 });
  });
  it('gives a tiny cpu request at least the kernel minimum quota', () => {
    expect(buildOciSpec(input({ container: { ...container, cpu: 0.001 } })).linux.resources.cpu.quota).toBe(1000);
  });
  it('a startup quota replaces the cpu one (its caller narrows it later); memory and pids stay the container\'s', () => {
    const s = buildOciSpec(input({ container: { ...container, cpu: 0.05 }, startupCpu: 2 }));
    expect(s.linux.resources.cpu).toEqual({ quota: 200000, period: 100000 });
    expect(s.linux.resources.memory).toEqual(buildOciSpec(input({ container: { ...container, cpu: 0.05 } })).linux.resources.memory);
    expect(buildOciSpec(input({ container: { ...container, cpu: 0.05 } })).linux.resources.cpu).toEqual({ quota: 5000, period: 100000 });
  });
});

describe('tenantResolvConf', () => {
  it('names the tenant resolver and search domains, so short and full service names resolve', () => {
    expect(tenantResolvConf({ nameservers: ['10.128.0.1'], search: ['acme.carapace.internal'] })).toBe('search acme.carapace.internal\nnameserver 10.128.0.1\noptions ndots:1\n');
    expect(tenantResolvConf({ nameservers: ['10.128.0.1'], search: [] })).toBe('nameserver 10.128.0.1\noptions ndots:1\n');
  });
});

describe('resolvConfFile', () => {
  it('drops loopback nameservers', () => {
    expect(resolvConfFile('nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch x\n')).toBe('nameserver 10.0.0.2\nsearch x\n');
  });
});

describe('host mounts', () => {
  const bind = (destination: string, readOnly = false, source = '/var/lib/carapace/volumes/mnt/v1') => ({ kind: 'bind' as const, source, destination, readOnly });

  it('adds bind mounts without suid or devices, read-only when asked, after the runtime mounts', () => {
    const s = buildOciSpec(input({ mounts: [bind('/data'), bind('/run/secrets/db', true, '/run/carapace/secrets/i1/db')] }));
    expect(s.mounts.slice(-2)).toEqual([
      { destination: '/data', type: 'bind', source: '/var/lib/carapace/volumes/mnt/v1', options: ['bind', 'nosuid', 'nodev', 'rw'] },
      { destination: '/run/secrets/db', type: 'bind', source: '/run/carapace/secrets/i1/db', options: ['bind', 'nosuid', 'nodev', 'ro'] },
    ]);
    expect(buildOciSpec(input()).mounts.some((m) => m.destination === '/data')).toBe(false);
  });

  it('cleans destinations and puts parents before children', () => {
    expect(checkHostMounts([bind('/data/logs/'), bind('//data')]).map((m) => m.destination)).toEqual(['/data', '/data/logs']);
  });

  it.each([
    ['data', 'mounts[0].destination', 'absolute'],
    ['/data/../etc', 'mounts[0].destination', "'..'"],
    ['/./data', 'mounts[0].destination', "'.'"],
    ['/', 'mounts[0].destination', 'root directory'],
    ['/proc', 'mounts[0].destination', '/proc'],
    ['/proc/sys/kernel', 'mounts[0].destination', '/proc'],
    ['/sys/fs/cgroup', 'mounts[0].destination', '/sys'],
    ['/dev', 'mounts[0].destination', '/dev'],
    ['/dev/shm/x', 'mounts[0].destination', '/dev'],
    ['/etc/resolv.conf', 'mounts[0].destination', 'runtime'],
  ])('refuses destination %s (%s)', (destination, path, why) => {
    let err: unknown;
    try {
      checkHostMounts([bind(destination)]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CarapaceError);
    expect((err as CarapaceError).code).toBe('CARAPACE_E_VALIDATION'); // `as`: checked just above
    expect((err as CarapaceError).details).toEqual([{ path, message: expect.stringContaining(why) }]); // `as`: checked above
  });

  it('allows look-alikes of reserved paths', () => {
    expect(checkHostMounts([bind('/devdata'), bind('/system'), bind('/procs')]).length).toBe(3);
  });

  it('refuses relative or dotted sources and a destination mounted twice, naming every field', () => {
    let err: CarapaceError | undefined;
    try {
      checkHostMounts([bind('/a', false, 'rel/dir'), bind('/b', false, '/x/../y'), bind('/a/'), bind('/ok')]);
    } catch (e) {
      err = e as CarapaceError; // `as`: checkHostMounts throws only CarapaceError
    }
    expect(err?.details.map((d) => d.path)).toEqual(['mounts[0].source', 'mounts[1].source', 'mounts[2].destination']);
    expect(() => buildOciSpec(input({ mounts: [bind('/proc/x')] }))).toThrow(CarapaceError);
  });
});
