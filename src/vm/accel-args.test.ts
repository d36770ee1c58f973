import { describe, expect, it } from 'vitest';
import { accelArgs, kernelCmdline, TCG_TB_SIZE_MIB } from './qemu.js';

describe('QEMU accelerator arguments', () => {
  it('KVM: the host CPU, no emulation settings', () => {
    expect(accelArgs('kvm')).toEqual(['-accel', 'kvm', '-cpu', 'host']);
    expect(kernelCmdline({ shares: [], channel: false }, 'kvm')).not.toMatch(/tsc=reliable|no_timer_check/);
  });

  it('TCG: the translation cache size, a CPU whose APIC timer runs in idle and with RDRAND, a TSC and RDRAND the guest trusts', () => {
    const args = accelArgs('tcg');
    expect(args).toEqual(['-accel', `tcg,tb-size=${TCG_TB_SIZE_MIB}`, '-cpu', 'qemu64,+arat,+rdrand']);
    expect(TCG_TB_SIZE_MIB).toBe(1024);
    const cmdline = kernelCmdline({ shares: [], channel: false }, 'tcg').split(' ');
    expect(cmdline).toContain('tsc=reliable');
    expect(cmdline).toContain('no_timer_check');
    expect(cmdline).toContain('random.trust_cpu=on');
  });

  it('TCG: CARAPACE_TCG_TB_MIB overrides the cache size; a value below 16 or not an integer is ignored', () => {
    const saved = process.env.CARAPACE_TCG_TB_MIB;
    try {
      process.env.CARAPACE_TCG_TB_MIB = '64';
      expect(accelArgs('tcg')[1]).toBe('tcg,tb-size=64');
      for (const bad of ['8', '64.5', 'lots']) {
        process.env.CARAPACE_TCG_TB_MIB = bad;
        expect(accelArgs('tcg')[1]).toBe(`tcg,tb-size=${TCG_TB_SIZE_MIB}`);
      }
    } finally {
      if (saved === undefined) delete process.env.CARAPACE_TCG_TB_MIB;
      else process.env.CARAPACE_TCG_TB_MIB = saved;
    }
  });
});
