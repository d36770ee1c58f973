import { describe, expect, it } from 'vitest';
import { hostLeaseKey, intervalKey, objectKey, openAllocationKey, sampleBatchKey, sampleDayPrefixes, SEALED_SECRET_PREFIX, sealedSecretKey, VOLUME_SNAPSHOT_PREFIX, volumeKey } from '../model/keys.js';
import { mayListPrefix, mayRead, writeProblem } from './scope.js';

const inst = (host: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({ kind: 'Instance', metadata: { name: 'web-0', uid: 'u1', ...extra }, spec: { host, container: { cpu: 0.1 } }, status: { phase: 'Pending' } });

describe('agent scope', () => {
  it('reads only its own lease, placed objects, their open allocations and samples, and what tenant networks need', () => {
    expect(mayRead('h1', 'hosts/h1', {})).toBe(true);
    // Other hosts' records (their addresses: VXLAN peers, infrastructure) and the tenant
    // network records and views the control plane derives; never another lease.
    expect(mayRead('h1', 'hosts/h2', {})).toBe(true);
    expect(mayRead('h1', 'leases/hosts/h2', {})).toBe(false);
    expect(mayRead('h1', 'networks/tenants/acme', {})).toBe(true);
    expect(mayRead('h1', 'networks/views/acme', {})).toBe(true);
    expect(mayRead('h1', 'networks/claims/cidr/0', {})).toBe(false);
    expect(mayRead('h1', 'instances/acme/web-0', inst('h1'))).toBe(true);
    expect(mayRead('h1', 'instances/acme/web-0', inst('h2'))).toBe(false);
    expect(mayRead('h1', 'machines/acme/m', { status: { host: 'h1' } })).toBe(true);
    expect(mayRead('h1', 'usage/open/instances/acme/web-0', {}, inst('h1'))).toBe(true);
    expect(mayRead('h1', 'usage/open/instances/acme/web-0', {}, inst('h2'))).toBe(false);
    expect(mayRead('h1', 'usage/samples/2026-01-01/0000000000001-h1', {})).toBe(true);
    expect(mayRead('h1', 'usage/samples/2026-01-01/0000000000001-h2', {})).toBe(false);
    for (const k of ['tokens/x', 'audit/head', 'pki/ca', 'tenants/acme', 'services/acme/web']) expect(mayRead('h1', k, {})).toBe(false);
    // Secrets (objects and sealed values) and configs: never through the store calls, even
    // for a host running an instance that uses them (the material endpoint serves those).
    for (const k of [objectKey('Secret', 'db', 'acme'), sealedSecretKey('acme', 'db'), objectKey('Config', 'app', 'acme')]) expect(mayRead('h1', k, { spec: { host: 'h1' }, status: { host: 'h1' } })).toBe(false);
    for (const p of ['secrets/', 'secrets/acme/', 'sealed/', SEALED_SECRET_PREFIX, 'configs/']) expect(mayListPrefix('h1', p)).toBe(false);
    expect(mayListPrefix('h1', 'instances/')).toBe(true);
    expect(mayListPrefix('h1', '')).toBe(false);
    expect(mayListPrefix('h1', 'hosts/')).toBe(true);
    expect(mayListPrefix('h1', 'networks/views/')).toBe(true);
    expect(mayListPrefix('h1', 'networks/')).toBe(false);
    expect(mayListPrefix('h1', 'leases/')).toBe(false);
  });

  it('reads the lease settings the control plane publishes (fence grace), and never writes them', () => {
    expect(mayRead('h1', 'leases/settings', { ttlMs: 3000, graceMs: 3000, waitMs: 9000 })).toBe(true);
    expect(writeProblem('h1', { op: 'put', key: 'leases/settings', value: { ttlMs: 3000, graceMs: 60_000, waitMs: 9000 }, current: undefined })).toBeDefined();
  });

  it('never writes secrets, sealed records or configs', () => {
    for (const key of [objectKey('Secret', 'db', 'acme'), sealedSecretKey('acme', 'db'), objectKey('Config', 'app', 'acme')]) {
      expect(writeProblem('h1', { op: 'put', key, value: { v: 1 }, current: undefined })).toMatch(/agents cannot write/);
      expect(writeProblem('h1', { op: 'delete', key, current: { v: 1 } })).toMatch(/agents cannot write/);
    }
  });

  it('writes status but never spec, placement, identity or undeletion', () => {
    const cur = inst('h1');
    expect(writeProblem('h1', { op: 'put', key: 'instances/acme/web-0', value: { ...cur, status: { phase: 'Running' } }, current: cur })).toBeUndefined();
    expect(writeProblem('h1', { op: 'put', key: 'instances/acme/web-0', value: inst('h2'), current: cur })).toMatch(/spec/);
    expect(writeProblem('h1', { op: 'put', key: 'instances/acme/web-0', value: { ...cur, metadata: { name: 'web-0', uid: 'u2' } }, current: cur })).toMatch(/replace/);
    expect(writeProblem('h1', { op: 'put', key: 'instances/acme/web-0', value: cur, current: inst('h1', { deletionRequestedAt: 't' }) })).toMatch(/undo a deletion/);
    expect(writeProblem('h1', { op: 'put', key: 'instances/acme/new', value: inst('h1'), current: undefined })).toMatch(/only create warm cells/);
    expect(writeProblem('h1', { op: 'delete', key: 'instances/acme/web-0', current: inst('h1', { deletionRequestedAt: 't' }) })).toBeUndefined();
    expect(writeProblem('h1', { op: 'delete', key: 'instances/acme/web-0', current: inst('h2', { deletionRequestedAt: 't' }) })).toMatch(/not placed/);
    const warm = { kind: 'Cell', metadata: { name: 'warm-1', uid: 'c' }, spec: { host: 'h1', tenant: '', warm: true } };
    expect(writeProblem('h1', { op: 'put', key: 'cells/warm-1', value: warm, current: undefined })).toBeUndefined();
    expect(writeProblem('h1', { op: 'put', key: 'cells/warm-1', value: { ...warm, spec: { host: 'h1', tenant: 'acme', warm: true } }, current: undefined })).toMatch(/warm cells/);
    expect(writeProblem('h1', { op: 'put', key: 'usage/intervals/x', value: {}, current: {} })).toMatch(/once/);
    expect(writeProblem('h1', { op: 'delete', key: 'leases/hosts/h1', current: {} })).toMatch(/lease/);
    expect(writeProblem('h1', { op: 'put', key: 'usage/samples/d/1-h2', value: {}, current: undefined })).toMatch(/own usage samples/);
  });

  it("writes an instance's status.lastState only with a known reason, an exit code and bounded strings", () => {
    const cur = inst('h1');
    const key = 'instances/acme/web-0';
    const put = (lastState: unknown): string | undefined => writeProblem('h1', { op: 'put', key, value: { ...cur, status: { phase: 'Backoff', lastState } }, current: cur });
    const good = { exitCode: 3, reason: 'Error', message: 'exited with code 3', containerId: 'acme-web-0-u1', startedAt: '2026-01-01T00:00:00.000Z', finishedAt: '2026-01-01T00:00:05.000Z' };
    expect(put(good)).toBeUndefined();
    expect(put({ exitCode: 128, reason: 'StartFailed', finishedAt: '2026-01-01T00:00:05.000Z' })).toBeUndefined();
    expect(put('Error')).toMatch(/must be an object/);
    expect(put({ ...good, reason: 'Hacked' })).toMatch(/reason must be one of Completed, Error, OOMKilled, Unhealthy, StartFailed/);
    expect(put({ ...good, exitCode: 256 })).toMatch(/exitCode/);
    expect(put({ ...good, exitCode: '3' })).toMatch(/exitCode/);
    expect(put({ ...good, message: 'x'.repeat(1025) })).toMatch(/message must be a string of at most 1024/);
    expect(put({ ...good, finishedAt: undefined })).toMatch(/finishedAt is required/);
    expect(put({ ...good, startedAt: 5 })).toMatch(/startedAt must be a string/);
    expect(put({ ...good, env: { SECRET: 'x' } })).toMatch(/lastState.env is not a field/);
  });

  it('lets an agent use the keys its own writers build (one key layout, model/keys.ts)', () => {
    const t = Date.UTC(2026, 0, 2, 3, 4, 5);
    const machine = { kind: 'Machine', metadata: { name: 'm', uid: 'u' }, spec: {}, status: { host: 'h1' } };
    expect(writeProblem('h1', { op: 'put', key: hostLeaseKey('h1'), value: {}, current: undefined })).toBeUndefined();
    expect(writeProblem('h1', { op: 'put', key: sampleBatchKey(t, 'h1'), value: {}, current: undefined })).toBeUndefined();
    expect(writeProblem('h1', { op: 'put', key: intervalKey('i1'), value: {}, current: undefined })).toBeUndefined();
    expect(writeProblem('h1', { op: 'put', key: openAllocationKey(objectKey('Machine', 'm', 'acme')), value: {}, current: undefined, owner: machine })).toBeUndefined();
    expect(writeProblem('h2', { op: 'put', key: openAllocationKey(objectKey('Machine', 'm', 'acme')), value: {}, current: undefined, owner: machine })).toMatch(/no object on this host/);
    expect(mayRead('h1', objectKey('Host', 'h1'), {})).toBe(true);
    expect(mayRead('h1', objectKey('Instance', 'web-0', 'acme'), inst('h1'))).toBe(true);
    expect(mayRead('h1', objectKey('Service', 'web', 'acme'), {})).toBe(false);
    for (const prefix of sampleDayPrefixes(t, t)) expect(mayListPrefix('h1', prefix)).toBe(true);
    // Host names may contain dashes: host `b` gets neither the batches of host `a-b` nor of `b-c`.
    expect(mayRead('b', sampleBatchKey(t, 'a-b'), {})).toBe(false);
    expect(writeProblem('b', { op: 'put', key: sampleBatchKey(t, 'a-b'), value: {}, current: undefined })).toMatch(/own usage samples/);
    expect(mayRead('b', sampleBatchKey(t, 'b'), {})).toBe(true);
    expect(mayRead('a-b', sampleBatchKey(t, 'a-b'), {})).toBe(true);
  });

  it("reads the volumes bound to it and writes only their usedBytes and message", () => {
    const vol = (host: string | undefined, status: Record<string, unknown> = {}): Record<string, unknown> => ({
      kind: 'Volume',
      metadata: { name: 'pgdata', tenant: 'acme', uid: 'v1', labels: {}, resourceVersion: 7 },
      spec: { size: '1Gi', filesystem: 'ext4' },
      status: { phase: host ? 'Bound' : 'Pending', ...(host ? { host } : {}), attachedTo: ['pg-0'], ...status },
    });
    const key = volumeKey('acme', 'pgdata');
    expect(mayRead('h1', key, vol('h1'))).toBe(true);
    expect(mayRead('h1', key, vol('h2'))).toBe(false);
    expect(mayRead('h1', key, vol(undefined))).toBe(false);
    expect(mayListPrefix('h1', 'volumes/')).toBe(true);
    const cur = vol('h1');
    const withStatus = (st: Record<string, unknown>): Record<string, unknown> => ({ ...cur, metadata: { ...(cur['metadata'] as object), resourceVersion: 8 }, status: { ...(cur['status'] as object), ...st } });
    expect(writeProblem('h1', { op: 'put', key, value: withStatus({ usedBytes: 4096, message: 'ext4 on loop3' }), current: cur })).toBeUndefined();
    expect(writeProblem('h1', { op: 'put', key, value: withStatus({ attachedTo: [] }), current: cur })).toMatch(/only a volume's status.usedBytes/);
    expect(writeProblem('h1', { op: 'put', key, value: withStatus({ host: 'h2' }), current: cur })).toMatch(/only a volume's status.usedBytes/);
    expect(writeProblem('h1', { op: 'put', key, value: withStatus({ usedBytes: -1 }), current: cur })).toMatch(/whole number/);
    expect(writeProblem('h1', { op: 'put', key, value: { ...cur, spec: { size: '2Gi', filesystem: 'ext4' } }, current: cur })).toMatch(/spec/);
    expect(writeProblem('h1', { op: 'put', key, value: { ...cur, metadata: { name: 'pgdata', tenant: 'acme', uid: 'v1', labels: { x: 'y' } } }, current: cur })).toMatch(/labels/);
    expect(writeProblem('h2', { op: 'put', key, value: withStatus({ usedBytes: 1 }), current: cur })).toMatch(/not bound to this host/);
    expect(writeProblem('h1', { op: 'put', key, value: cur, current: undefined })).toMatch(/cannot create/);
    expect(writeProblem('h1', { op: 'delete', key, current: cur })).toMatch(/cannot delete/);
  });

  it('reads the volume snapshots kept on it and writes only the status of a Pending one', () => {
    const snap = (host: string | undefined, status: Record<string, unknown> = {}): Record<string, unknown> => ({
      kind: 'VolumeSnapshot',
      metadata: { name: 's1', tenant: 'acme', uid: 's-uid', labels: {}, resourceVersion: 3 },
      spec: { volume: 'pgdata' },
      status: { phase: host ? 'Pending' : 'Failed', ...(host ? { host, volumeUid: 'v1' } : { reason: 'VolumeNotBound' }), ...status },
    });
    const key = objectKey('VolumeSnapshot', 's1', 'acme');
    expect(key.startsWith(VOLUME_SNAPSHOT_PREFIX)).toBe(true);
    expect(mayListPrefix('h1', VOLUME_SNAPSHOT_PREFIX)).toBe(true);
    expect(mayRead('h1', key, snap('h1'))).toBe(true);
    expect(mayRead('h1', key, snap('h2'))).toBe(false);
    expect(mayRead('h1', key, snap(undefined))).toBe(false);
    const cur = snap('h1');
    const next = (st: Record<string, unknown>, from = cur): Record<string, unknown> => ({ ...from, metadata: { ...(from['metadata'] as object), resourceVersion: 4 }, status: { ...(from['status'] as object), ...st } });
    const ready = next({ phase: 'Ready', sizeBytes: 64 * 1048576, takenAt: '2026-03-01T00:00:00.000Z', reason: 'Taken' });
    expect(writeProblem('h1', { op: 'put', key, value: ready, current: cur })).toBeUndefined();
    expect(writeProblem('h1', { op: 'put', key, value: next({ phase: 'Failed', reason: 'PauseTooLong', message: 'the copy took longer than 2000 ms' }), current: cur })).toBeUndefined();
    // Never the host or the volume it is of, nor its spec or labels; nothing for another host.
    expect(writeProblem('h1', { op: 'put', key, value: next({ host: 'h2' }), current: cur })).toMatch(/never its host or volume/);
    expect(writeProblem('h1', { op: 'put', key, value: next({ volumeUid: 'v2' }), current: cur })).toMatch(/never its host or volume/);
    expect(writeProblem('h1', { op: 'put', key, value: { ...cur, spec: { volume: 'other' } }, current: cur })).toMatch(/spec/);
    expect(writeProblem('h1', { op: 'put', key, value: { ...cur, metadata: { ...(cur['metadata'] as object), labels: { x: 'y' } } }, current: cur })).toMatch(/labels/);
    expect(writeProblem('h2', { op: 'put', key, value: ready, current: cur })).toMatch(/not kept on this host/);
    expect(writeProblem('h1', { op: 'put', key, value: next({ phase: 'Gone' }), current: cur })).toMatch(/Pending, Ready or Failed/);
    expect(writeProblem('h1', { op: 'put', key, value: next({ sizeBytes: 1.5 }), current: cur })).toMatch(/whole number/);
    // A Ready or Failed snapshot is final; an agent neither creates nor deletes one.
    expect(writeProblem('h1', { op: 'put', key, value: next({ phase: 'Failed' }, ready), current: ready })).toMatch(/final/);
    expect(writeProblem('h1', { op: 'put', key, value: cur, current: undefined })).toMatch(/cannot create/);
    expect(writeProblem('h1', { op: 'delete', key, current: cur })).toMatch(/cannot delete/);
  });
});
