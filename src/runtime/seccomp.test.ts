import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { convertSeccompProfile, goArchOf, type DockerSeccompProfile } from './seccomp.js';
import { DEFAULT_CAPABILITIES } from './oci-spec.js';

const profile: DockerSeccompProfile = {
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: 38,
  archMap: [
    { architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] },
    { architecture: 'SCMP_ARCH_AARCH64', subArchitectures: ['SCMP_ARCH_ARM'] },
  ],
  syscalls: [
    { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW', includes: {}, excludes: {} },
    { names: ['arch_prctl'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64', 'x32'] } },
    { names: ['arm_fadvise64_64'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['arm', 'arm64'] } },
    { names: ['not_on_amd64'], action: 'SCMP_ACT_ALLOW', excludes: { arches: ['amd64'] } },
    { names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
    { names: ['chroot'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_CHROOT'] } },
    { names: ['bpf'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, excludes: { caps: ['CAP_SYS_ADMIN'] } },
    { names: ['new_call'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '6.5' } },
    { names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 8, op: 'SCMP_CMP_EQ' }] },
    { name: 'legacy', action: 'SCMP_ACT_ALLOW', args: null },
  ],
};

describe('convertSeccompProfile', () => {
  const caps = ['CAP_SYS_CHROOT'];
  it('keeps the native arch and its sub-architectures, and defaultErrnoRet', () => {
    const out = convertSeccompProfile(profile, { goArch: 'amd64', capabilities: caps });
    expect(out.architectures).toEqual(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
    expect(out.defaultAction).toBe('SCMP_ACT_ERRNO');
    expect(out.defaultErrnoRet).toBe(38);
    expect(convertSeccompProfile(profile, { goArch: 'arm64', capabilities: caps }).architectures).toEqual(['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']);
  });

  it('honours includes/excludes by arch and capability', () => {
    const names = convertSeccompProfile(profile, { goArch: 'amd64', capabilities: caps }).syscalls.flatMap((r) => r.names);
    expect(names).toContain('arch_prctl');
    expect(names).not.toContain('arm_fadvise64_64');
    expect(names).not.toContain('not_on_amd64');
    expect(names).not.toContain('mount');
    expect(names).toContain('chroot');
    expect(names).toContain('bpf');
    const admin = convertSeccompProfile(profile, { goArch: 'arm64', capabilities: ['CAP_SYS_ADMIN'] }).syscalls.flatMap((r) => r.names);
    expect(admin).toContain('mount');
    expect(admin).not.toContain('bpf');
    expect(admin).not.toContain('chroot');
    expect(admin).toContain('arm_fadvise64_64');
    expect(admin).toContain('not_on_amd64');
  });

  it('carries errnoRet and args; accepts the old single-name form', () => {
    const out = convertSeccompProfile(profile, { goArch: 'amd64', capabilities: caps });
    expect(out.syscalls.find((r) => r.names.includes('bpf'))).toEqual({ names: ['bpf'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 });
    expect(out.syscalls.find((r) => r.names.includes('personality'))?.args).toEqual([{ index: 0, value: 8, valueTwo: 0, op: 'SCMP_CMP_EQ' }]);
    expect(out.syscalls.find((r) => r.names.includes('legacy'))).toEqual({ names: ['legacy'], action: 'SCMP_ACT_ALLOW' });
  });

  it('filters by minKernel only when the kernel version is known', () => {
    const n = (k?: string) => convertSeccompProfile(profile, { goArch: 'amd64', capabilities: caps, ...(k ? { kernelVersion: k } : {}) }).syscalls.flatMap((r) => r.names);
    expect(n('6.1.0-13-amd64')).not.toContain('new_call');
    expect(n('6.18.44')).toContain('new_call');
    expect(n()).toContain('new_call');
  });

  it('converts the real containers-common profile for the 11 default capabilities', () => {
    const real = JSON.parse(readFileSync('/usr/share/containers/seccomp.json', 'utf8')) as DockerSeccompProfile; // `as`: the shipped profile
    const out = convertSeccompProfile(real, { goArch: 'amd64', capabilities: DEFAULT_CAPABILITIES });
    const names = new Set(out.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW').flatMap((r) => r.names));
    expect(names.has('read')).toBe(true);
    expect(names.has('chroot')).toBe(true); // CAP_SYS_CHROOT is held
    expect(names.has('bpf')).toBe(false); // CAP_SYS_ADMIN is not held
    expect(names.has('open_by_handle_at')).toBe(false); // nor CAP_DAC_READ_SEARCH
    expect(names.has('init_module')).toBe(false);
    expect(out.architectures[0]).toBe('SCMP_ARCH_X86_64');
    expect(goArchOf('x64')).toBe('amd64');
  });
});
