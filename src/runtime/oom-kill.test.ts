import { describe, expect, it } from 'vitest';
import { oomKillCount } from './oci-driver.js';

describe('oomKillCount', () => {
  it('reads the oom_kill line of cgroup v1 memory.oom_control and v2 memory.events', () => {
    expect(oomKillCount('oom_kill_disable 0\nunder_oom 0\noom_kill 2\n')).toBe(2);
    expect(oomKillCount('low 0\nhigh 0\nmax 14\noom 1\noom_kill 1\noom_group_kill 0\n')).toBe(1);
  });
  it('is 0 when the cgroup is gone or the kernel does not count kills (oom_kill_disable is not oom_kill)', () => {
    expect(oomKillCount(undefined)).toBe(0);
    expect(oomKillCount('oom_kill_disable 0\nunder_oom 0\n')).toBe(0);
    expect(oomKillCount('oom_kill 0\n')).toBe(0);
  });
});
