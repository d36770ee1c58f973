/**
 * The rollout history's "what changed" column (ui/src/revisions.ts): templates as the
 * controller stores them (model/rollout.ts templateOf of a parsed spec), so the comparison
 * sees the defaults the parser fills in.
 */
import { describe, expect, it } from 'vitest';
import { templateChanges } from '../../ui/src/revisions.js';
import { templateOf } from '../../src/model/rollout.js';
import { parseManifest } from '../../src/model/manifest.js';

function template(spec: object): ReturnType<typeof templateOf> {
  const doc = parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec });
  if (doc.kind !== 'Service') throw new Error('not a service');
  return templateOf(doc.spec);
}

const base = { image: 'reg/busybox:1', isolation: 'host', cpu: 0.1, memory: '32Mi', env: { A: '1', B: '2' } };

describe('templateChanges', () => {
  it('is empty for the first revision and for the same template', () => {
    expect(templateChanges(undefined, template(base))).toEqual([]);
    expect(templateChanges(template(base), template({ ...base, replicas: 5, rollout: { maxSurge: 2 } }))).toEqual([]);
  });

  it('names the image, env keys added, changed and removed, a restart and other fields, never env values', () => {
    const next = template({ ...base, image: 'reg/busybox:2', env: { A: 'secret-value', C: '3' }, command: ['sleep', '1'], restartedAt: '2026-01-01T00:00:00.000Z' });
    const changes = templateChanges(template(base), next);
    expect(changes).toEqual(['image', 'env ~A', 'env +C', 'env -B', 'restart', 'command']);
    expect(changes.join(' ')).not.toContain('secret-value');
  });
});
