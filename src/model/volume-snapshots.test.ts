import { describe, expect, it } from 'vitest';
import { isCarapaceError, type CarapaceError } from './errors.js';
import { parseManifest } from './manifest.js';
import { NameSchema } from './name.js';
import { kindFromWord } from './objects.js';
import { defaultSnapshotName, utcStamp } from './volume-snapshots.js';

function refusal(doc: Record<string, unknown>): CarapaceError {
  try {
    parseManifest({ apiVersion: 'carapace/v1', ...doc });
  } catch (e) {
    if (isCarapaceError(e)) return e;
    throw e;
  }
  throw new Error('expected a refusal');
}

const snap = (spec: unknown): Record<string, unknown> => ({ kind: 'VolumeSnapshot', metadata: { name: 'nightly', tenant: 'acme' }, spec });
const vol = (spec: unknown): Record<string, unknown> => ({ kind: 'Volume', metadata: { name: 'back', tenant: 'acme' }, spec });

describe('VolumeSnapshot manifests', () => {
  it('names one volume of the tenant', () => {
    expect(parseManifest({ apiVersion: 'carapace/v1', ...snap({ volume: 'pgdata' }) })).toEqual({
      apiVersion: 'carapace/v1',
      kind: 'VolumeSnapshot',
      metadata: { name: 'nightly', tenant: 'acme', labels: {} },
      spec: { volume: 'pgdata' },
    });
  });

  it('refuses bad input with the field path', () => {
    expect(refusal(snap({})).details).toEqual([{ path: 'spec.volume', message: 'is required' }]);
    expect(refusal(snap({ volume: 'PG_data' })).details).toEqual([{ path: 'spec.volume', message: expect.stringContaining('lower-case letters') }]);
    const e = refusal(snap({ volume: 'pgdata', at: 'now' }));
    expect(e.code).toBe('CARAPACE_E_VALIDATION');
    expect(e.details).toEqual([{ path: 'spec.at', message: 'unknown field' }]);
    expect(refusal({ kind: 'VolumeSnapshot', metadata: { name: 'nightly' }, spec: { volume: 'pgdata' } }).details).toEqual([{ path: 'metadata.tenant', message: 'is required' }]);
  });

  it('is a kind the CLI finds by its plural, singular or alias', () => {
    for (const w of ['volumesnapshots', 'VolumeSnapshot', 'snapshots', 'snapshot']) expect(kindFromWord(w)).toBe('VolumeSnapshot');
  });
});

describe('Volume.spec.source', () => {
  it('names a snapshot by name; nothing else', () => {
    expect(parseManifest({ apiVersion: 'carapace/v1', ...vol({ size: '1Gi', source: { snapshot: 'nightly' } }) })).toMatchObject({ spec: { size: '1Gi', filesystem: 'ext4', source: { snapshot: 'nightly' } } });
    expect(refusal(vol({ size: '1Gi', source: {} })).details).toEqual([{ path: 'spec.source.snapshot', message: 'is required' }]);
    expect(refusal(vol({ size: '1Gi', source: { snapshot: 'nightly', volume: 'pgdata' } })).details).toEqual([{ path: 'spec.source.volume', message: 'unknown field' }]);
    expect(refusal(vol({ size: '1Gi', source: { snapshot: '' } })).details).toContainEqual({ path: 'spec.source.snapshot', message: 'must not be empty' });
  });
});

describe('defaultSnapshotName', () => {
  const at = new Date('2026-03-01T04:05:06.789Z');
  it('is <volume>-<UTC yyyymmddhhmmss>', () => {
    expect(utcStamp(at)).toBe('20260301040506');
    expect(defaultSnapshotName('pgdata', at)).toBe('pgdata-20260301040506');
  });
  it('stays a valid name for the longest volume names', () => {
    const long = `${'a'.repeat(40)}-${'b'.repeat(22)}`;
    expect(long).toHaveLength(63);
    const n = defaultSnapshotName(long, at);
    expect(n).toHaveLength(63);
    expect(n.endsWith('-20260301040506')).toBe(true);
    expect(NameSchema.safeParse(n).success).toBe(true);
  });
});
