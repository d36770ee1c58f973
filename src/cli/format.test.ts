import { describe, expect, it } from 'vitest';
import { parseManifest } from '../model/manifest.js';
import type { AnyObject, Host, Instance, Machine, Service, Tenant } from '../model/objects.js';
import { describeEgress, formatDescribe, formatOutput, objectRef, WatchPrinter } from './format.js';

const md = { uid: 'u', labels: {}, resourceVersion: 3, generation: 1, createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z' };

function service(address?: string): Service {
  const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Service', metadata: { name: 'web', tenant: 'acme' }, spec: { image: 'r/web:1', ports: [{ containerPort: 80 }, { containerPort: 443, hostPort: 8443 }] } });
  if (m.kind !== 'Service') throw new Error('parsed a Service');
  return { kind: 'Service', metadata: { ...md, name: 'web', tenant: 'acme' }, spec: m.spec, status: { ready: 1, observedGeneration: 1, ...(address ? { address } : {}) } };
}

describe('addresses in get -o wide and describe', () => {
  it('services: ADDRESS (the VIP) and PORTS, only with -o wide', () => {
    const wide = formatOutput('Service', [service('10.112.0.1'), { ...service(), metadata: { ...md, name: 'new', tenant: 'acme' } }], 'wide', false).split('\n');
    expect(wide[0]).toMatch(/AGE\s+ADDRESS\s+PORTS$/);
    expect(wide[1]).toMatch(/web\s.*10\.112\.0\.1\s+80\/tcp,8443->443\/tcp$/);
    expect(wide[2]).toMatch(/new\s.*\s-\s+80\/tcp,8443->443\/tcp$/);
    expect(formatOutput('Service', [service('10.112.0.1')], 'table', false)).not.toMatch(/ADDRESS|10\.112/);
    expect(formatDescribe(service('10.112.0.1'))).toMatch(/\nAddress:\s+10\.112\.0\.1\n/);
  });

  it('instances: ADDRESS, CELL, IMAGE; machines, cells and hosts: ADDRESS', () => {
    const inst = {
      kind: 'Instance',
      metadata: { ...md, name: 'web-0', tenant: 'acme' },
      spec: { owner: { kind: 'Service', name: 'web' }, host: 'h1', cell: 'cell-1', container: { ...service().spec }, restartPolicy: 'Always' },
      status: { phase: 'Running', restarts: 0, ready: true, address: '10.128.0.5' },
    } as unknown as Instance; // only the fields the table reads are filled in
    const rows = formatOutput('Instance', [inst], 'wide', false).split('\n');
    expect(rows[0]).toMatch(/REASON\s+ADDRESS\s+CELL\s+IMAGE$/);
    expect(rows[1]).toMatch(/10\.128\.0\.5\s+cell-1\s+r\/web:1$/);
    expect(formatDescribe(inst)).toMatch(/\nAddress:\s+10\.128\.0\.5\n/);
    const machine = { kind: 'Machine', metadata: { ...md, name: 'vm', tenant: 'acme' }, spec: { cpu: 1, memory: 512, ports: [], running: true, restartPolicy: 'Always' }, status: { phase: 'Running', host: 'h1', restarts: 0, address: '10.128.0.9', mac: '02:0a:80:00:00:09' } } as unknown as Machine; // likewise
    expect(formatOutput('Machine', [machine], 'wide', false)).toMatch(/ADDRESS\n.*10\.128\.0\.9$/);
    expect(formatDescribe(machine)).toMatch(/Address:\s+10\.128\.0\.9\nMAC:\s+02:0a:80:00:00:09\n/);
    const host = { kind: 'Host', metadata: { ...md, name: 'h1' }, spec: { labels: {}, unschedulable: false }, status: { state: 'Ready', lastHeartbeatAt: md.createdAt, isolation: ['host'], capacity: { cpu: 2, memoryMiB: 1024 }, agentVersion: 't', address: '192.0.2.2' } } as Host;
    expect(formatOutput('Host', [host], 'wide', false)).toMatch(/ADDRESS\n.*192\.0\.2\.2$/);
  });

  it("tenants: the network and the egress policy", () => {
    const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: { network: { egress: { default: 'deny', allow: [{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443, 8443] }, { cidr: '198.51.100.7/32' }] } } } });
    if (m.kind !== 'Tenant') throw new Error('parsed a Tenant');
    const t: Tenant = { kind: 'Tenant', metadata: { ...md, name: 'acme' }, spec: m.spec, status: { network: { cidr: '10.128.64.0/18', vni: 1001 } } };
    expect(formatDescribe(t)).toMatch(/\nNetwork:\s+10\.128\.64\.0\/18 \(VNI 1001\)\nEgress:\s+deny, except 192\.0\.2\.0\/24 tcp 443,8443; 198\.51\.100\.7\/32$/);
    expect(formatOutput('Tenant', [t], 'wide', false)).toMatch(/CIDR\s+EGRESS\n.*10\.128\.64\.0\/18\s+deny$/);
    expect(describeEgress({ default: 'allow', allow: [] })).toBe('allow (everything but the infrastructure)');
    expect(formatDescribe({ ...t, spec: {}, status: {} })).toMatch(/Network:\s+\(none yet: made with its first placed work\)\nEgress:\s+allow/);
  });
});

describe('volumes in get and describe', () => {
  it('shows TENANT NAME SIZE PHASE HOST ATTACHED, used space with -o wide, and the binding in describe', () => {
    const v = (name: string, status: Record<string, unknown>, host?: string): AnyObject =>
      ({ kind: 'Volume', metadata: { ...md, name, tenant: 'acme' }, spec: { size: '1Gi', filesystem: 'ext4', ...(host ? { host } : {}) }, status: { attachedTo: [], ...status } }) as unknown as AnyObject; // a stored Volume's fields (phase given by each call)
    const rows = formatOutput('Volume', [v('pgdata', { phase: 'Bound', host: 'h1', attachedTo: ['pg-0'], usedBytes: 50 * 1048576 }), v('spare', { phase: 'Pending' }, 'h2')], 'wide', false).split('\n');
    expect(rows[0]).toMatch(/^TENANT\s+NAME\s+SIZE\s+PHASE\s+HOST\s+ATTACHED\s+USED\s+FILESYSTEM\s+AGE\s+SOURCE$/);
    expect(rows[1]).toMatch(/^acme\s+pgdata\s+1Gi\s+Bound\s+h1\s+pg-0\s+50Mi\s+ext4\s+\S+\s+-$/);
    expect(rows[2]).toMatch(/^acme\s+spare\s+1Gi\s+Pending\s+h2\s+-\s+-\s+ext4\s/);
    expect(formatDescribe(v('spare', { phase: 'Pending' }, 'h2'))).toMatch(/\nHost:\s+h2 \(pinned, not bound yet\)\n/);
    const restored = { ...(v('back', { phase: 'Bound', host: 'h1', restoredFrom: { snapshot: 's1', snapshotUid: 'su', volumeUid: 'vu' } }, 'h1') as object), spec: { size: '1Gi', filesystem: 'ext4', host: 'h1', source: { snapshot: 's1' } } } as unknown as AnyObject; // a restored Volume
    expect(formatOutput('Volume', [restored], 'wide', false).split('\n')[1]).toMatch(/\ssnapshot\/s1$/);
    expect(formatDescribe(restored)).toMatch(/\nSource:\s+snapshot s1 \(uid su, of volume uid vu\)$/);
  });
});

describe('volume snapshots in get and describe', () => {
  const s = (name: string, status: Record<string, unknown>): AnyObject =>
    ({ kind: 'VolumeSnapshot', metadata: { ...md, name, tenant: 'acme' }, spec: { volume: 'pgdata' }, status }) as unknown as AnyObject; // a stored VolumeSnapshot (status given by each call)
  it('shows TENANT NAME VOLUME PHASE SIZE AGE, host and reason with -o wide, and the outcome in describe', () => {
    const ready = s('nightly', { phase: 'Ready', host: 'h1', volumeUid: 'vu', sizeBytes: 1024 * 1048576, takenAt: '2026-03-01T00:00:00.000Z', reason: 'Taken' });
    const failed = s('early', { phase: 'Failed', reason: 'VolumeNotBound', message: 'volume "pgdata" was never used' });
    const rows = formatOutput('VolumeSnapshot', [ready, failed], 'table', false).split('\n');
    expect(rows[0]).toMatch(/^TENANT\s+NAME\s+VOLUME\s+PHASE\s+SIZE\s+AGE$/);
    expect(rows[1]).toMatch(/^acme\s+nightly\s+pgdata\s+Ready\s+1Gi\s+\S+$/);
    expect(rows[2]).toMatch(/^acme\s+early\s+pgdata\s+Failed\s+-\s+\S+$/);
    const wide = formatOutput('VolumeSnapshot', [ready, failed], 'wide', false).split('\n');
    expect(wide[0]).toMatch(/AGE\s+HOST\s+TAKEN\s+REASON$/);
    expect(wide[2]).toMatch(/\s-\s+-\s+VolumeNotBound$/);
    expect(formatDescribe(ready)).toMatch(/\nVolume:\s+pgdata\nPhase:\s+Ready\nHost:\s+h1\nSize:\s+1Gi \(restores into a volume at least this large\)\nTaken:\s+2026-03-01T00:00:00.000Z\n/);
    expect(formatDescribe(failed)).toMatch(/\nHost:\s+\(none: the volume was bound to no host\)\nReason:\s+VolumeNotBound\nMessage:\s+volume "pgdata" was never used$/);
  });
});

describe('get -o name', () => {
  it('prints kind/TENANT/NAME for per-tenant kinds and kind/NAME for cluster kinds, one per line, nothing for none', () => {
    const tenant = { kind: 'Tenant', metadata: { ...md, name: 'acme' }, spec: {} } as unknown as Tenant; // only the name is read
    expect(formatOutput('Service', [service(), { ...service(), metadata: { ...md, name: 'api', tenant: 'acme' } }], 'name', false)).toBe('service/acme/web\nservice/acme/api');
    expect(formatOutput('Tenant', [tenant], 'name', true)).toBe('tenant/acme');
    expect(formatOutput('Service', [], 'name', false)).toBe('');
    const snap = { kind: 'VolumeSnapshot', metadata: { ...md, name: 's1', tenant: 'acme' } } as unknown as AnyObject; // likewise
    expect(objectRef(snap)).toBe('volumesnapshot/acme/s1');
  });
});

describe('get --watch output', () => {
  const web = (ready: number, name = 'web'): Service => ({ ...service(), metadata: { ...md, name, tenant: 'acme' }, status: { ready, observedGeneration: 1 } });

  it('tables: an EVENT column, a line per visible change, none for a write that changes nothing shown', () => {
    const p = new WatchPrinter('Service', 'table');
    const first = p.start([web(0)]);
    expect(first[0]).toMatch(/^EVENT\s+TENANT\s+NAME\s+READY\s+ISOLATION\s+IMAGE\s+AGE$/);
    expect(first[1]).toMatch(/^ADDED\s+acme\s+web\s+0\/1\s/);
    expect(p.change('put', web(0))).toEqual([]); // same row: e.g. a status write that changed nothing shown
    const [modified] = p.change('put', web(1));
    expect(modified).toMatch(/^MODIFIED\s+acme\s+web\s+1\/1\s/);
    // The columns stay where the first listing put them.
    expect(modified?.indexOf('acme')).toBe(first[1]?.indexOf('acme'));
    expect(p.change('put', web(0, 'api'))[0]).toMatch(/^ADDED\s+acme\s+api\s/);
    expect(p.change('delete', web(1))[0]).toMatch(/^DELETED\s+acme\s+web\s+1\/1/);
    // Created again after its deletion: ADDED, even with the row it had.
    expect(p.change('put', web(1))[0]).toMatch(/^ADDED\s+acme\s+web\s/);
  });

  it('starts with the header alone when nothing exists yet; wide adds its columns', () => {
    const p = new WatchPrinter('Service', 'wide');
    expect(p.start([])).toEqual([expect.stringMatching(/^EVENT\s+TENANT\s.*AGE\s+ADDRESS\s+PORTS$/)]);
    expect(p.change('put', web(0))[0]).toMatch(/^ADDED\s+acme\s+web\s.*80\/tcp,8443->443\/tcp$/);
  });

  it('name, json and yaml: every change, for programs', () => {
    const names = new WatchPrinter('Service', 'name');
    expect(names.start([web(0)])).toEqual(['service/acme/web']);
    expect(names.change('put', web(0))).toEqual(['service/acme/web']);
    const json = new WatchPrinter('Service', 'json');
    expect(json.start([web(0)]).map((l) => JSON.parse(l))).toEqual([{ type: 'ADDED', object: web(0) }]);
    expect(JSON.parse(json.change('put', web(1))[0] ?? '')).toEqual({ type: 'MODIFIED', object: web(1) });
    expect(JSON.parse(json.change('delete', web(1))[0] ?? '')).toMatchObject({ type: 'DELETED' });
    const yaml = new WatchPrinter('Service', 'yaml');
    expect(yaml.start([web(0)])[0]).toMatch(/^---\ntype: ADDED\nobject:\n {2}kind: Service\n/);
  });
});

describe('last state and stop grace in describe', () => {
  const inst = (status: Record<string, unknown>, spec: Record<string, unknown> = {}): Instance =>
    ({
      kind: 'Instance',
      metadata: { ...md, name: 'web-0', tenant: 'acme' },
      spec: { owner: { kind: 'Service', name: 'web' }, host: 'h1', container: { ...service().spec }, restartPolicy: 'Always', ...spec },
      status: { phase: 'Running', restarts: 2, ready: true, ...status },
    }) as unknown as Instance; // only the fields describe reads are filled in

  it('shows how the previous container ended: reason, exit code, times, message', () => {
    const out = formatDescribe(inst({ lastState: { exitCode: 137, reason: 'OOMKilled', message: 'exited with code 137 (OOM-killed)', startedAt: '2026-01-01T00:00:00.000Z', finishedAt: '2026-01-01T00:00:12.000Z' } }, { stopGracePeriodSeconds: 1 }));
    expect(out).toMatch(/\nLast state:\s+Terminated \(OOMKilled\), exit code 137, started 2026-01-01T00:00:00\.000Z, finished 2026-01-01T00:00:12\.000Z \(ran 12s\)\n/);
    expect(out).toMatch(/\nLast message:\s+exited with code 137 \(OOM-killed\)\n/);
    expect(out).toMatch(/\nStop grace:\s+1s\nFencing:\s+keep$/);
  });

  it('a failed start never started; no last state, no line; no grace set: the agent default', () => {
    expect(formatDescribe(inst({ lastState: { exitCode: 128, reason: 'StartFailed', finishedAt: '2026-01-01T00:00:01.000Z' } }))).toMatch(/Last state:\s+Terminated \(StartFailed\), exit code 128, never started, failed at 2026-01-01T00:00:01\.000Z\n/);
    const plain = formatDescribe(inst({}));
    expect(plain).not.toMatch(/Last state|Last message/);
    expect(plain).toMatch(/Stop grace:\s+the agent's default/);
    expect(formatDescribe(service())).toMatch(/Stop grace:\s+the agent's default/);
  });

  it('shows the effective fencing: the default says why', () => {
    expect(formatDescribe(service())).toMatch(/\nFencing:\s+keep \(default: no volume\)/);
    expect(formatDescribe(inst({}, { mounts: [{ volume: 'data', mountPath: '/data', readOnly: false }] }))).toMatch(/\nFencing:\s+stop$/);
  });
});
