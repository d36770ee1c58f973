import { describe, expect, it } from 'vitest';
import { isCarapaceError } from './errors.js';
import { parseManifest } from './manifest.js';
import { checkContainerRefs, keyInfos, referencesOf } from './secrets.js';
import type { ServiceManifest } from './schemas.js';

const M = (kind: string, spec: unknown): unknown => ({ apiVersion: 'carapace/v1', kind, metadata: { name: 'x', tenant: 'acme' }, spec });

function issuesOf(doc: unknown): { code: string; paths: string[] } {
  try {
    parseManifest(doc);
  } catch (e) {
    if (isCarapaceError(e)) return { code: e.code, paths: e.details.map((d) => d.path) };
    throw e;
  }
  return { code: 'ok', paths: [] };
}

function refsProblem(spec: Record<string, unknown>): { code: string; paths: string[] } {
  const m = parseManifest(M('Service', { image: 'r.example/a:1', ...spec })) as ServiceManifest;
  try {
    checkContainerRefs(m.spec);
  } catch (e) {
    if (isCarapaceError(e)) return { code: e.code, paths: e.details.map((d) => d.path) };
    throw e;
  }
  return { code: 'ok', paths: [] };
}

describe('Secret and Config manifests', () => {
  it('accept key/value data with onChange defaulting to update', () => {
    const s = parseManifest(M('Secret', { data: { 'db.password': 'x', TOKEN_1: 'y' } }));
    expect(s).toMatchObject({ kind: 'Secret', spec: { onChange: 'update', data: { 'db.password': 'x' } } });
    expect(parseManifest(M('Config', { data: { 'app.yaml': 'a: 1' }, onChange: 'restart' }))).toMatchObject({ spec: { onChange: 'restart' } });
  });

  it('refuse bad keys, non-string values, unknown fields and data over 64 KiB, with the field path', () => {
    expect(issuesOf(M('Secret', { data: { 'a/b': 'x' } }))).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.data.a/b'] });
    expect(issuesOf(M('Secret', { data: { '..': 'x' } })).paths).toEqual(['spec.data...']); // spec.data + the key ".."
    expect(issuesOf(M('Secret', { data: { a: 1 } }))).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.data.a'] });
    expect(issuesOf(M('Config', { data: {}, extra: 1 })).paths).toEqual(['spec.extra']);
    expect(issuesOf(M('Secret', { data: {}, onChange: 'reboot' })).paths).toEqual(['spec.onChange']);
    expect(issuesOf(M('Secret', { data: { big: 'x'.repeat(64 * 1024) } }))).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.data'] });
    expect(issuesOf(M('Secret', { data: { big: 'x'.repeat(64 * 1024 - 3) } })).code).toBe('ok');
    expect(issuesOf(M('Config', { data: { a: 'é'.repeat(40_000) } })).paths).toEqual(['spec.data']); // bytes, not characters
  });

  it('keyInfos lists keys and byte sizes, never values', () => {
    expect(keyInfos({ b: 'é', a: 'xyz' })).toEqual([{ key: 'a', size: 3 }, { key: 'b', size: 2 }]);
  });
});

describe('container references', () => {
  it('default a secret mount path to /run/secrets/<secret> and list references once each', () => {
    const m = parseManifest(M('Service', { image: 'r.example/a:1', secrets: [{ secret: 'db' }], configs: [{ config: 'app', mountPath: '/etc/app' }], envFrom: [{ name: 'PW', secret: 'db', key: 'password' }, { name: 'MODE', config: 'app', key: 'mode' }] })) as ServiceManifest;
    expect(m.spec.secrets).toEqual([{ secret: 'db', mountPath: '/run/secrets/db' }]);
    expect(referencesOf(m.spec)).toEqual({ secrets: ['db'], configs: ['app'] });
  });

  it('refuse envFrom naming both or neither of secret and config, and bad mount paths, with the field path', () => {
    const base = { image: 'r.example/a:1' };
    expect(issuesOf(M('Service', { ...base, envFrom: [{ name: 'A', key: 'k' }] })).paths).toEqual(['spec.envFrom[0].secret']);
    expect(issuesOf(M('Service', { ...base, envFrom: [{ name: 'A', key: 'k', secret: 's' }, { name: 'B', key: 'k', secret: 's', config: 'c' }] })).paths).toEqual(['spec.envFrom[1].config']);
    for (const p of ['etc/app', '/', '/etc/../root', '/etc/app/', '/proc/self', '/a b', '/a//b']) expect(issuesOf(M('Service', { ...base, configs: [{ config: 'c', mountPath: p }] })).paths).toEqual(['spec.configs[0].mountPath']);
    expect(issuesOf(M('Service', { ...base, envFrom: [{ name: '1A', key: 'k', config: 'c' }] })).paths).toEqual(['spec.envFrom[0].name']);
  });

  it('refuse colliding mount paths (equal or nested) with CARAPACE_E_MOUNT_PATH_CONFLICT', () => {
    expect(refsProblem({ secrets: [{ secret: 'db' }], configs: [{ config: 'c', mountPath: '/run/secrets/db' }] })).toEqual({ code: 'CARAPACE_E_MOUNT_PATH_CONFLICT', paths: ['spec.configs[0].mountPath'] });
    expect(refsProblem({ configs: [{ config: 'a', mountPath: '/etc/app' }, { config: 'b', mountPath: '/etc/app/extra' }] })).toEqual({ code: 'CARAPACE_E_MOUNT_PATH_CONFLICT', paths: ['spec.configs[1].mountPath'] });
    expect(refsProblem({ configs: [{ config: 'a', mountPath: '/etc/app' }, { config: 'b', mountPath: '/etc/application' }] }).code).toBe('ok');
  });

  it('refuse a secret or config mount path that collides with a volume or volume template mount', () => {
    expect(refsProblem({ volumes: [{ volume: 'data', mountPath: '/data' }], configs: [{ config: 'c', mountPath: '/data/conf' }] })).toEqual({ code: 'CARAPACE_E_MOUNT_PATH_CONFLICT', paths: ['spec.configs[0].mountPath'] });
    expect(refsProblem({ volumeTemplates: [{ name: 'd', size: '64Mi', mountPath: '/run/secrets' }], secrets: [{ secret: 'db' }] })).toEqual({ code: 'CARAPACE_E_MOUNT_PATH_CONFLICT', paths: ['spec.secrets[0].mountPath'] });
    expect(refsProblem({ volumes: [{ volume: 'data', mountPath: '/etc/app' }], configs: [{ config: 'c', mountPath: '/etc/app' }] })).toEqual({ code: 'CARAPACE_E_MOUNT_PATH_CONFLICT', paths: ['spec.configs[0].mountPath'] });
    expect(refsProblem({ volumes: [{ volume: 'data', mountPath: '/data' }], configs: [{ config: 'c', mountPath: '/database' }] }).code).toBe('ok');
    // Volumes among themselves keep the schema's rule: one inside another is allowed.
    expect(refsProblem({ volumes: [{ volume: 'a', mountPath: '/data' }, { volume: 'b', mountPath: '/data/cache' }] }).code).toBe('ok');
  });

  it('refuse env names set twice (env and envFrom, or envFrom twice) with CARAPACE_E_ENV_CONFLICT', () => {
    expect(refsProblem({ env: { PW: 'x' }, envFrom: [{ name: 'PW', secret: 'db', key: 'k' }] })).toEqual({ code: 'CARAPACE_E_ENV_CONFLICT', paths: ['spec.envFrom[0].name'] });
    expect(refsProblem({ envFrom: [{ name: 'A', secret: 'db', key: 'k' }, { name: 'A', config: 'c', key: 'k' }] })).toEqual({ code: 'CARAPACE_E_ENV_CONFLICT', paths: ['spec.envFrom[1].name'] });
    expect(refsProblem({ env: { A: 'x' }, envFrom: [{ name: 'B', secret: 'db', key: 'k' }] }).code).toBe('ok');
  });
});
