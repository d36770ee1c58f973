import { describe, expect, it } from 'vitest';
import { parseManifest } from './manifest.js';
import { CarapaceError } from './errors.js';
import { nextRevision, rolloutBounds, rolloutOf, specWithTemplate, templateOf, templateSummary } from './rollout.js';

function svc(spec: Record<string, unknown>) {
  const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'r/web:1', ...spec } });
  if (m.kind !== 'Service') throw new Error('not a service');
  return m.spec;
}

function issues(spec: Record<string, unknown>): { code: string; paths: string[] } {
  try {
    svc(spec);
  } catch (e) {
    if (e instanceof CarapaceError) return { code: e.code, paths: (e.details ?? []).map((d) => d.path) };
    throw e;
  }
  return { code: 'none', paths: [] };
}

describe('spec.rollout', () => {
  it('defaults: maxSurge 1, maxUnavailable 0, deadline 600 s, autoRollback, not paused (absent stays absent in the spec)', () => {
    const s = svc({});
    expect(s.rollout).toBeUndefined();
    expect(rolloutOf(s)).toEqual({ maxSurge: 1, maxUnavailable: 0, progressDeadlineSeconds: 600, autoRollback: true, paused: false });
  });

  it('takes counts and percentages; percentages round surge up and unavailable down; both 0 gives unavailable 1', () => {
    expect(rolloutBounds(rolloutOf(svc({ rollout: { maxSurge: '25%', maxUnavailable: '25%' } })), 10)).toEqual({ surge: 3, unavailable: 2 });
    expect(rolloutBounds(rolloutOf(svc({ rollout: { maxSurge: 0, maxUnavailable: '10%' } })), 4)).toEqual({ surge: 0, unavailable: 1 });
    expect(rolloutBounds(rolloutOf(svc({ rollout: { maxSurge: 3, maxUnavailable: 2 } })), 4)).toEqual({ surge: 3, unavailable: 2 });
  });

  it('refuses bad values with CARAPACE_E_VALIDATION and their field paths', () => {
    expect(issues({ rollout: { maxSurge: '150%' } })).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.rollout.maxSurge'] });
    expect(issues({ rollout: { maxUnavailable: -1 } })).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.rollout.maxUnavailable'] });
    expect(issues({ rollout: { maxSurge: 0, maxUnavailable: '0%' } })).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.rollout.maxUnavailable'] });
    expect(issues({ rollout: { progressDeadlineSeconds: 0 } })).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.rollout.progressDeadlineSeconds'] });
    expect(issues({ rollout: { autoRollback: 'yes' } })).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.rollout.autoRollback'] });
    expect(issues({ rollout: { surge: 1 } }).paths).toEqual(['spec.rollout.surge']);
    expect(issues({ restartedAt: 'yesterday' })).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.restartedAt'] });
  });
});

describe('revisions', () => {
  it('the template leaves out replicas, rollout and the drain budget; specWithTemplate puts them back', () => {
    const s = svc({ replicas: 3, rollout: { paused: true }, maxUnavailable: 2, env: { A: '1' } });
    const t = templateOf(s);
    expect(Object.keys(t)).not.toContain('replicas');
    expect(Object.keys(t)).not.toContain('rollout');
    expect(specWithTemplate(svc({ replicas: 5 }), t)).toEqual({ ...svc({ env: { A: '1' } }), replicas: 5 });
    expect(templateSummary(t)).toBe('r/web:1 env=A=1');
  });

  it('nextRevision: unchanged template keeps the number; a new one counts up; an old one is taken over and renumbered', () => {
    const at = { now: 't', generation: 1, cause: 'update' as const };
    const a = templateOf(svc({}));
    const b = templateOf(svc({ image: 'r/web:2' }));
    const r1 = nextRevision({}, a, at);
    expect([r1.revision, r1.changed]).toEqual([1, true]);
    expect(nextRevision({ revision: 1, history: r1.history }, a, at).changed).toBe(false);
    const r2 = nextRevision({ revision: 1, history: r1.history }, b, at);
    const r3 = nextRevision({ revision: 2, history: r2.history }, a, at);
    expect(r3.history.map((h) => [h.revision, h.cause, h.replaces])).toEqual([
      [2, 'update', undefined],
      [3, 'undo', [1]],
    ]);
  });
});
