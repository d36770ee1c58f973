/**
 * Fencing's model: the effective setting (`stop` for anything with a volume), the manifest
 * field with its path on bad input, and the timing bound that makes a fenced host stop its
 * work before the control plane replaces it (property-tested over TTLs).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CarapaceError } from './errors.js';
import { FENCE_MARGIN_MS, fenceTimings, fencingOf, fencingSummary, instanceFencing } from './fencing.js';
import { parseManifest } from './manifest.js';
import { templateOf } from './rollout.js';
import type { ServiceSpec } from './schemas.js';

const service = (spec: Record<string, unknown>): unknown => ({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'db', tenant: 'acme' }, spec: { image: 'reg/db:1', ...spec } });

describe('fencing', () => {
  it('defaults to stop for anything that mounts a volume, keep otherwise; an explicit value wins', () => {
    expect(fencingOf({})).toBe('keep');
    expect(fencingOf({ volumes: [{}] })).toBe('stop');
    expect(fencingOf({ volumeTemplates: [{}] })).toBe('stop');
    expect(fencingOf({ volumes: [{}], fencing: 'keep' })).toBe('keep');
    expect(fencingOf({ fencing: 'stop' })).toBe('stop');
    expect(fencingSummary({ volumes: [{}] })).toBe('stop (default: mounts a volume)');
    expect(fencingSummary({ fencing: 'keep' })).toBe('keep');
    // Instances stored before the field existed: judged by their mounts.
    expect(instanceFencing({ mounts: [{}] })).toBe('stop');
    expect(instanceFencing({})).toBe('keep');
    expect(instanceFencing({ mounts: [{}], fencing: 'keep' })).toBe('keep');
  });

  it('is a field of services and jobs, refused with its path when unknown, and not part of the template', () => {
    const m = parseManifest(service({ fencing: 'stop' }));
    expect(m.kind === 'Service' && m.spec.fencing).toBe('stop');
    // Not defaulted by the schema: stored specs compare equal with and without it.
    const plain = parseManifest(service({}));
    expect(plain.kind === 'Service' && 'fencing' in plain.spec).toBe(false);
    expect(templateOf((m as { spec: ServiceSpec }).spec)).toEqual(templateOf((plain as { spec: ServiceSpec }).spec)); // both parsed as Service above
    const job = parseManifest({ apiVersion: 'carapace/v1', kind: 'Job', metadata: { name: 'j', tenant: 'acme' }, spec: { image: 'reg/j:1', fencing: 'keep' } });
    expect(job.kind === 'Job' && job.spec.fencing).toBe('keep');
    try {
      parseManifest(service({ fencing: 'pause' }));
      expect.unreachable('an unknown fencing is refused');
    } catch (e) {
      expect(e).toBeInstanceOf(CarapaceError);
      const err = e as CarapaceError; // checked above
      expect(err.code).toBe('CARAPACE_E_VALIDATION');
      expect(err.details.map((d) => d.path)).toEqual(['spec.fencing']);
    }
  });

  it('waits W = 3 x TTL by default, and always longer than the grace, a check and the stop budget plus the margin', () => {
    expect(fenceTimings()).toMatchObject({ ttlMs: 3000, graceMs: 3000, waitMs: 9000 });
    expect(fenceTimings().stopBudgetMs).toBeLessThanOrEqual(2000);
    fc.assert(
      fc.property(fc.integer({ min: 50, max: 600_000 }), (ttl) => {
        const t = fenceTimings(ttl);
        expect(t.graceMs).toBe(ttl);
        expect(t.killGraceMs).toBeLessThan(t.stopBudgetMs);
        expect(t.waitMs).toBeGreaterThanOrEqual(3 * ttl);
        expect(t.waitMs - (t.graceMs + t.checkMs + t.stopBudgetMs)).toBeGreaterThanOrEqual(FENCE_MARGIN_MS);
      }),
    );
  });
});
