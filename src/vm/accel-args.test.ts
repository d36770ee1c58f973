import { describe, expect, it } from 'vitest';
import { accelArgs, kernelCmdline, TCG_TB_SIZE_MIB } from './qemu.js';

describe('QEMU accelerator arguments', () => {
  it('KVM: the host CPU, no emulation settings', () => {
    expect(accelArgs('kvm')).toEqual(['-accel', 'kvm', '-cpu', 'host']);
    expect(kernelCmdline({ shares: [], channel: false }, 'kvm')).not.toMatch(/tsc=reliable|no_timer_check/);
  });

  it('TCG: a bounded translation cache, a CPU whose APIC timer runs in idle, a TSC the guest trusts', () => {
    const args = accelArgs('tcg');
    expect(args).toEqual(['-accel', `tcg,tb-size=${TCG_TB_SIZE_MIB}`, '-cpu', 'qemu64,+arat']);
    expect(TCG_TB_SIZE_MIB).toBeLessThanOrEqual(128);
    const cmdline = kernelCmdline({ shares: [], channel: false }, 'tcg').split(' ');
    expect(cmdline).toContain('tsc=reliable');
    expect(cmdline).toContain('no_timer_check');
  });
});
