/**
 * Security probes inside real containers of each isolation tier (host: runc, sandbox:
 * gVisor, cell: runc in the tenant's VM, one VM boot), placed by a real `carapace up`:
 * capabilities, no_new_privs, seccomp, masked paths, cgroup limits, and that nothing of the
 * host or of another tenant can be seen or reached. Same size in CI and in the soak.
 */
import { describe, expect, it } from 'vitest';
import { runProbes, TIERS } from './probes.js';

describe('security probes', () => {
  it('every tier keeps the defaults the README claims and sees and reaches nothing of the host or another tenant', async () => {
    const r = await runProbes({ log: (l) => console.log(l) });
    expect(r.tiers.map((t) => t.tier)).toEqual(TIERS);
    for (const t of r.tiers) expect(t.failures, `${t.tier}: ${JSON.stringify(t.facts)}`).toEqual([]);
    expect(r.checks).toBeGreaterThanOrEqual(80);
  }, 600_000);
});
