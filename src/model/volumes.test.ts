import { describe, expect, it } from 'vitest';
import { isCarapaceError, type CarapaceError } from './errors.js';
import { parseManifest } from './manifest.js';
import { containerSpecOf, ServiceSpecSchema } from './schemas.js';
import { mountsOf, VolumeSpecSchema } from './volumes.js';

function refusal(doc: Record<string, unknown>): CarapaceError {
  try {
    parseManifest({ apiVersion: 'carapace/v1', ...doc });
  } catch (e) {
    if (isCarapaceError(e)) return e;
    throw e;
  }
  throw new Error('expected a refusal');
}

const svc = (spec: Record<string, unknown>): Record<string, unknown> => ({ kind: 'Service', metadata: { name: 'db', tenant: 'acme' }, spec: { image: 'reg/pg:16', ...spec } });

describe('Volume manifests', () => {
  it('fills the filesystem, keeps the size canonical and the pin', () => {
    const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Volume', metadata: { name: 'pgdata', tenant: 'acme' }, spec: { size: '1024Mi', host: 'h1' } });
    expect(m).toMatchObject({ kind: 'Volume', metadata: { name: 'pgdata', tenant: 'acme', labels: {} }, spec: { size: '1Gi', filesystem: 'ext4', host: 'h1' } });
    expect(VolumeSpecSchema.parse({ size: 100 })).toEqual({ size: '100Mi', filesystem: 'ext4' });
  });

  it('refuses a size under 16Mi, a non-quantity, another filesystem and unknown fields, with their paths', () => {
    const e = refusal({ kind: 'Volume', metadata: { name: 'v', tenant: 'acme' }, spec: { size: '8Mi', filesystem: 'xfs', mode: 'fast' } });
    expect(e.code).toBe('CARAPACE_E_VALIDATION');
    expect(e.details.map((d) => d.path).sort()).toEqual(['spec.filesystem', 'spec.mode', 'spec.size']);
    expect(e.details.find((d) => d.path === 'spec.size')?.message).toBe('must be at least 16Mi');
    expect(refusal({ kind: 'Volume', metadata: { name: 'v', tenant: 'acme' }, spec: { size: 'lots' } }).details).toEqual([
      { path: 'spec.size', message: 'must be a quantity such as "512Mi" or "10Gi" (a bare number is MiB)' },
    ]);
    expect(refusal({ kind: 'Volume', metadata: { name: 'v', tenant: 'acme' }, spec: {} }).details).toEqual([{ path: 'spec.size', message: 'is required' }]);
  });
});

describe('volumes in service and job specs', () => {
  it('defaults readOnly, carries the mounts into the container spec, resolves templates per replica', () => {
    const spec = ServiceSpecSchema.parse({
      image: 'reg/pg:16',
      replicas: 2,
      volumes: [{ volume: 'conf', mountPath: '/etc/pg', readOnly: true }],
      volumeTemplates: [{ name: 'data', size: '1Gi', mountPath: '/var/lib/pg' }],
    });
    expect(containerSpecOf(spec).volumes).toEqual([{ volume: 'conf', mountPath: '/etc/pg', readOnly: true }]);
    expect(mountsOf(spec, 1)).toEqual([
      { volume: 'conf', mountPath: '/etc/pg', readOnly: true },
      { volume: 'data-1', mountPath: '/var/lib/pg', readOnly: false },
    ]);
    expect(ServiceSpecSchema.parse({ image: 'r/a:1', volumes: [{ volume: 'v', mountPath: '/d' }] }).volumes).toEqual([{ volume: 'v', mountPath: '/d', readOnly: false }]);
  });

  it('refuses two mounts on one path, volumes and templates alike, with the path of the second', () => {
    const e = refusal(
      svc({
        volumes: [
          { volume: 'a', mountPath: '/data' },
          { volume: 'b', mountPath: '/data', readOnly: true },
        ],
        volumeTemplates: [{ name: 't', size: '1Gi', mountPath: '/data' }],
      }),
    );
    expect(e.code).toBe('CARAPACE_E_VALIDATION');
    expect(e.details).toEqual([
      { path: 'spec.volumes[1].mountPath', message: 'mount path "/data" is already used by spec.volumes[0]' },
      { path: 'spec.volumeTemplates[0].mountPath', message: 'mount path "/data" is already used by spec.volumes[0]' },
    ]);
  });

  it('refuses a read-write volume shared by several replicas, and not a read-only one or a single replica', () => {
    const e = refusal(svc({ replicas: 3, volumes: [{ volume: 'pgdata', mountPath: '/data' }] }));
    expect(e.details).toEqual([
      {
        path: 'spec.volumes[0].readOnly',
        message: 'volume "pgdata" is mounted read-write by 3 replicas; set readOnly: true to share it, or use volumeTemplates for one volume per replica',
      },
    ]);
    expect(() => parseManifest({ apiVersion: 'carapace/v1', ...svc({ replicas: 3, volumes: [{ volume: 'pgdata', mountPath: '/data', readOnly: true }] }) })).not.toThrow();
    expect(() => parseManifest({ apiVersion: 'carapace/v1', ...svc({ replicas: 1, volumes: [{ volume: 'pgdata', mountPath: '/data' }] }) })).not.toThrow();
  });

  it('refuses relative, unnormalised and root mount paths, a volume mounted twice and duplicate templates', () => {
    const e = refusal(
      svc({
        volumes: [
          { volume: 'a', mountPath: 'data' },
          { volume: 'b', mountPath: '/x/../etc' },
          { volume: 'c', mountPath: '/' },
          { volume: 'a', mountPath: '/a2' },
        ],
        volumeTemplates: [
          { name: 't', size: '1Gi', mountPath: '/t1' },
          { name: 't', size: '1Gi', mountPath: '/t2' },
        ],
      }),
    );
    expect(e.details.map((d) => d.path)).toEqual(
      expect.arrayContaining(['spec.volumes[0].mountPath', 'spec.volumes[1].mountPath', 'spec.volumes[2].mountPath', 'spec.volumes[3].volume', 'spec.volumeTemplates[1].name']),
    );
  });

  it('a job may mount volumes but has no templates', () => {
    const e = refusal({ kind: 'Job', metadata: { name: 'j', tenant: 'acme' }, spec: { image: 'r/a:1', volumeTemplates: [] } });
    expect(e.details).toEqual([{ path: 'spec.volumeTemplates', message: 'unknown field' }]);
    const j = parseManifest({ apiVersion: 'carapace/v1', kind: 'Job', metadata: { name: 'j', tenant: 'acme' }, spec: { image: 'r/a:1', volumes: [{ volume: 'v', mountPath: '/in', readOnly: true }] } });
    expect(j.kind === 'Job' && j.spec.volumes).toEqual([{ volume: 'v', mountPath: '/in', readOnly: true }]);
  });

  it('a tenant quota on storage is stored in MiB', () => {
    const t = parseManifest({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: { quota: { storage: '10Gi' } } });
    expect(t.kind === 'Tenant' && t.spec.quota?.storage).toBe(10240);
  });

  it('a negative storage quota is refused with its path; -0.5 is stored as 0, not -0 (found by the fuzzer)', () => {
    const tenant = (storage: unknown): unknown => ({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: { quota: { storage } } });
    const e = (() => {
      try {
        parseManifest(tenant(-5));
      } catch (x) {
        return x as CarapaceError;
      }
      throw new Error('accepted');
    })();
    expect(isCarapaceError(e) && e.code).toBe('CARAPACE_E_VALIDATION');
    expect(e.details.map((d) => d.path)).toEqual(['spec.quota.storage']);
    const t = parseManifest(tenant(-0.5));
    expect(Object.is(t.kind === 'Tenant' && t.spec.quota?.storage, 0)).toBe(true);
  });
});
