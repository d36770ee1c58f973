import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CarapaceError } from './errors.js';
import { parseManifest } from './manifest.js';

const svc = (spec: Record<string, unknown>, extra: Record<string, unknown> = {}): unknown => ({
  apiVersion: 'carapace/v1',
  kind: 'Service',
  metadata: { name: 'web', tenant: 'acme' },
  spec: { image: 'reg.example/web:1', isolation: 'host', ...spec },
  ...extra,
});

function issues(doc: unknown): { code: string; paths: string[] } {
  try {
    parseManifest(doc);
  } catch (e) {
    if (e instanceof CarapaceError) return { code: e.code, paths: e.details.map((d) => d.path) };
    throw e;
  }
  return { code: 'OK', paths: [] };
}

describe('parseManifest', () => {
  it('fills defaults and normalises quantities', () => {
    const m = parseManifest(svc({ cpu: '250m', memory: '1Gi' }));
    expect(m.kind).toBe('Service');
    if (m.kind !== 'Service') return;
    expect(m.spec.cpu).toBe(0.25);
    expect(m.spec.memory).toBe(1024);
    expect(m.spec.replicas).toBe(1);
    expect(m.spec.restartPolicy).toBe('Always');
    expect(m.spec.group).toBe('default');
    expect(m.spec.env).toEqual({});
  });

  it('defaults isolation to cell, as the architecture says', () => {
    const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'a', tenant: 't' }, spec: { image: 'x/y:1' } });
    expect(m.kind === 'Service' && m.spec.isolation).toBe('cell');
  });

  it('names the path of every bad field', () => {
    const r = issues(svc({ replicas: -1, cpu: 'lots', ports: [{ containerPort: 70000 }] }));
    expect(r.code).toBe('CARAPACE_E_VALIDATION');
    expect(r.paths).toEqual(expect.arrayContaining(['spec.replicas', 'spec.cpu', 'spec.ports[0].containerPort']));
  });

  it('rejects unknown fields at any depth', () => {
    expect(issues(svc({ replica: 2 })).paths).toContain('spec.replica');
    expect(issues(svc({ ports: [{ containerPort: 80, hostport: 8080 }] })).paths).toContain('spec.ports[0].hostport');
    expect(issues(svc({}, { extra: true })).paths).toContain('extra');
  });

  it('rejects wrong types, negative resources and missing fields', () => {
    expect(issues(svc({ replicas: '3' })).paths).toContain('spec.replicas');
    expect(issues(svc({ memory: -5 })).paths).toContain('spec.memory');
    expect(issues(svc({ cpu: 0 })).paths).toContain('spec.cpu');
    expect(issues({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { tenant: 'a' }, spec: {} }).paths).toEqual(
      expect.arrayContaining(['metadata.name', 'spec.image']),
    );
  });

  it('gives stable codes for unknown kinds and api versions', () => {
    expect(issues({ apiVersion: 'carapace/v1', kind: 'Pod' }).code).toBe('CARAPACE_E_UNKNOWN_KIND');
    expect(issues({ apiVersion: 'v2', kind: 'Tenant', metadata: { name: 'a' } }).code).toBe('CARAPACE_E_UNSUPPORTED_API_VERSION');
    expect(issues('just a string').code).toBe('CARAPACE_E_VALIDATION');
    expect(issues(null).code).toBe('CARAPACE_E_VALIDATION');
  });

  it('rejects names that are not DNS labels', () => {
    expect(issues(svc({}, { metadata: { name: 'Web_1', tenant: 'acme' } })).paths).toContain('metadata.name');
    expect(issues(svc({}, { metadata: { name: 'a'.repeat(64), tenant: 'acme' } })).paths).toContain('metadata.name');
  });

  it('never throws anything but a CarapaceError with a path, whatever the input (fuzz)', () => {
    const anyJson = fc.jsonValue({ maxDepth: 4 });
    const mutated = fc.record({
      apiVersion: fc.oneof(fc.constant('carapace/v1'), fc.string()),
      kind: fc.constantFrom('Tenant', 'Service', 'Job', 'Nope'),
      metadata: fc.oneof(fc.record({ name: fc.string(), tenant: fc.string() }), anyJson),
      spec: fc.oneof(fc.dictionary(fc.constantFrom('image', 'cpu', 'memory', 'replicas', 'ports', 'env', 'isolation', 'junk'), anyJson), anyJson),
    });
    fc.assert(
      fc.property(fc.oneof(anyJson, mutated), (doc) => {
        try {
          parseManifest(doc);
        } catch (e) {
          expect(e).toBeInstanceOf(CarapaceError);
          const ce = e as CarapaceError;
          expect(ce.code).toMatch(/^CARAPACE_E_/);
          expect(ce.details.length).toBeGreaterThan(0);
          for (const d of ce.details) expect(d.path.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: 3000 },
    );
  });
});
