import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { guestAgentLaunch } from './cells.js';

describe('how a cell starts its guest agent', () => {
  const withSnapshot = mkdtempSync(join(tmpdir(), 'carapace-launch-'));
  const without = mkdtempSync(join(tmpdir(), 'carapace-launch-'));
  mkdirSync(join(withSnapshot, 'dist/guest'), { recursive: true });
  writeFileSync(join(withSnapshot, 'dist/guest/agent-tcg.blob'), 'x');
  afterAll(() => {
    for (const d of [withSnapshot, without]) rmSync(d, { recursive: true, force: true });
  });
  const loader = '/usr/bin/node /opt/carapace/dist/guest/agent.cjs --images /carapace/images';

  it('under emulation, from the install\'s startup snapshot, with the loader as the fallback', () => {
    expect(guestAgentLaunch('tcg', withSnapshot)).toEqual({
      exec: '/usr/bin/node --snapshot-blob /opt/carapace/dist/guest/agent-tcg.blob /opt/carapace/dist/guest/agent.cjs --images /carapace/images',
      earlyExec: true,
      fallbackExec: loader,
    });
  });

  it('with the loader alone under KVM, or when the install has no snapshot', () => {
    expect(guestAgentLaunch('kvm', withSnapshot)).toEqual({ exec: loader, earlyExec: true });
    expect(guestAgentLaunch('tcg', without)).toEqual({ exec: loader, earlyExec: true });
  });
});
