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

  it('bounds stopGracePeriodSeconds to whole seconds from 0 to 3600 on services and jobs, and leaves it absent by default', () => {
    const m = parseManifest(svc({}));
    expect(m.kind === 'Service' && 'stopGracePeriodSeconds' in m.spec).toBe(false);
    const ok = parseManifest(svc({ stopGracePeriodSeconds: 0 }));
    expect(ok.kind === 'Service' && ok.spec.stopGracePeriodSeconds).toBe(0);
    for (const bad of [-1, 3601, 1.5, '10']) expect(issues(svc({ stopGracePeriodSeconds: bad }))).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['spec.stopGracePeriodSeconds'] });
    const job = { apiVersion: 'carapace/v1', kind: 'Job', metadata: { name: 'j', tenant: 'acme' }, spec: { image: 'reg.example/j:1', isolation: 'host' } };
    const j = parseManifest({ ...job, spec: { ...job.spec, stopGracePeriodSeconds: 3600 } });
    expect(j.kind === 'Job' && j.spec.stopGracePeriodSeconds).toBe(3600);
    expect(issues({ ...job, spec: { ...job.spec, stopGracePeriodSeconds: 4000 } }).paths).toEqual(['spec.stopGracePeriodSeconds']);
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
      spec: fc.oneof(fc.dictionary(fc.constantFrom('image', 'cpu', 'memory', 'replicas', 'ports', 'env', 'isolation', 'livenessProbe', 'readinessProbe', 'junk'), anyJson), anyJson),
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

describe('liveness and readiness probes', () => {
  const details = (doc: unknown): { path: string; message: string }[] => {
    try {
      parseManifest(doc);
    } catch (e) {
      if (e instanceof CarapaceError) return e.details;
      throw e;
    }
    return [];
  };

  it('fills the Kubernetes defaults', () => {
    const m = parseManifest(svc({ livenessProbe: { httpGet: { port: 8080 } }, readinessProbe: { exec: { command: ['cat', '/tmp/ready'] }, periodSeconds: 2 } }));
    if (m.kind !== 'Service') throw new Error('not a service');
    expect(m.spec.livenessProbe).toEqual({ httpGet: { path: '/', port: 8080 }, initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 1, failureThreshold: 3, successThreshold: 1 });
    expect(m.spec.readinessProbe).toEqual({ exec: { command: ['cat', '/tmp/ready'] }, initialDelaySeconds: 0, periodSeconds: 2, timeoutSeconds: 1, failureThreshold: 3, successThreshold: 1 });
  });

  it('jobs take probes too', () => {
    const m = parseManifest({ apiVersion: 'carapace/v1', kind: 'Job', metadata: { name: 'j', tenant: 'acme' }, spec: { image: 'r/j:1', livenessProbe: { tcpSocket: { port: 9000 } } } });
    expect(m.kind === 'Job' && m.spec.livenessProbe?.tcpSocket).toEqual({ port: 9000 });
  });

  it('wants exactly one handler, naming the probe or the extra handler', () => {
    expect(details(svc({ livenessProbe: {} }))).toEqual([{ path: 'spec.livenessProbe', message: 'must set exactly one of exec, httpGet, tcpSocket' }]);
    expect(details(svc({ readinessProbe: { periodSeconds: 5 } }))).toEqual([{ path: 'spec.readinessProbe', message: 'must set exactly one of exec, httpGet, tcpSocket' }]);
    expect(details(svc({ readinessProbe: { httpGet: { port: 80 }, tcpSocket: { port: 80 }, exec: { command: ['true'] } } }))).toEqual([
      { path: 'spec.readinessProbe.httpGet', message: 'set only one of exec, httpGet, tcpSocket (also set: exec)' },
      { path: 'spec.readinessProbe.tcpSocket', message: 'set only one of exec, httpGet, tcpSocket (also set: exec)' },
    ]);
  });

  it('rejects unknown fields, bad values and sub-second or fractional times, with field paths', () => {
    expect(issues(svc({ livenessProbe: { httpGet: { port: 80, host: 'evil.example' } } })).paths).toEqual(['spec.livenessProbe.httpGet.host']);
    expect(issues(svc({ livenessProbe: { tcpSocket: { port: 80 }, periodSecond: 3 } })).paths).toEqual(['spec.livenessProbe.periodSecond']);
    expect(issues(svc({ livenessProbe: { tcpSocket: { port: 80 }, periodSeconds: 0.5 } })).paths).toEqual(['spec.livenessProbe.periodSeconds']);
    expect(issues(svc({ livenessProbe: { tcpSocket: { port: 80 }, periodSeconds: 0 } })).paths).toEqual(['spec.livenessProbe.periodSeconds']);
    expect(issues(svc({ livenessProbe: { tcpSocket: { port: 80 }, timeoutSeconds: 0, failureThreshold: 0, initialDelaySeconds: -1 } })).paths.sort()).toEqual([
      'spec.livenessProbe.failureThreshold',
      'spec.livenessProbe.initialDelaySeconds',
      'spec.livenessProbe.timeoutSeconds',
    ]);
    expect(issues(svc({ readinessProbe: { tcpSocket: { port: 70000 } } })).paths).toEqual(['spec.readinessProbe.tcpSocket.port']);
    expect(issues(svc({ readinessProbe: { httpGet: {} } })).paths).toEqual(['spec.readinessProbe.httpGet.port']);
    expect(issues(svc({ readinessProbe: { exec: { command: [] } } })).paths).toEqual(['spec.readinessProbe.exec.command']);
    expect(issues(svc({ readinessProbe: { exec: {} } })).paths).toEqual(['spec.readinessProbe.exec.command']);
  });

  it('refuses HTTP paths that are not a plain absolute path (no header injection)', () => {
    for (const path of ['healthz', '/a b', '/x\r\nHost: evil', '']) {
      expect(details(svc({ livenessProbe: { httpGet: { port: 80, path } } }))[0]?.path).toBe('spec.livenessProbe.httpGet.path');
    }
    const m = parseManifest(svc({ livenessProbe: { httpGet: { port: 80, path: '/healthz?full=1' } } }));
    expect(m.kind === 'Service' && m.spec.livenessProbe?.httpGet?.path).toBe('/healthz?full=1');
  });

  it('liveness needs successThreshold 1; readiness may ask for more', () => {
    expect(details(svc({ livenessProbe: { tcpSocket: { port: 80 }, successThreshold: 2 } }))).toEqual([{ path: 'spec.livenessProbe.successThreshold', message: 'must be 1 for a liveness probe' }]);
    const m = parseManifest(svc({ readinessProbe: { tcpSocket: { port: 80 }, successThreshold: 2 } }));
    expect(m.kind === 'Service' && m.spec.readinessProbe?.successThreshold).toBe(2);
  });

  it('the message names the first problem with its path', () => {
    expect(() => parseManifest(svc({ livenessProbe: {} }))).toThrow('manifest: Service "web" is invalid: spec.livenessProbe: must set exactly one of exec, httpGet, tcpSocket');
  });
});

describe('tenant network policy', () => {
  const details = (doc: unknown): { path: string; message: string }[] => {
    try {
      parseManifest(doc);
    } catch (e) {
      if (e instanceof CarapaceError) return e.details;
      throw e;
    }
    return [];
  };
  const tenant = (network: unknown): unknown => ({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' }, spec: { network } });

  it('defaults egress to allow, and leaves a tenant without network settings as it was', () => {
    const m = parseManifest(tenant({}));
    expect(m.kind === 'Tenant' && m.spec.network).toEqual({ egress: { default: 'allow', allow: [] } });
    const plain = parseManifest({ apiVersion: 'carapace/v1', kind: 'Tenant', metadata: { name: 'acme' } });
    expect(plain.kind === 'Tenant' && 'network' in plain.spec).toBe(false);
    const deny = parseManifest(tenant({ egress: { default: 'deny', allow: [{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443] }, { cidr: '198.51.100.7/32' }] } }));
    expect(deny.kind === 'Tenant' && deny.spec.network?.egress.allow).toHaveLength(2);
  });

  it('refuses bad egress rules at their exact field paths', () => {
    const rules = (allow: unknown[]): unknown => tenant({ egress: { default: 'deny', allow } });
    expect(details(rules([{ cidr: '192.0.2.0/33' }]))).toEqual([{ path: 'spec.network.egress.allow[0].cidr', message: 'must be an IPv4 CIDR such as 192.0.2.0/24' }]);
    expect(details(rules([{ cidr: '192.0.2.0/24' }, { cidr: '10.1.2.3/16' }]))).toEqual([{ path: 'spec.network.egress.allow[1].cidr', message: 'has host bits set; did you mean 10.1.0.0/16?' }]);
    expect(details(rules([{ cidr: '192.0.2.0/24', protocol: 'tcp', ports: [443, 0, 70000] }])).map((d) => d.path)).toEqual(['spec.network.egress.allow[0].ports[1]', 'spec.network.egress.allow[0].ports[2]']);
    expect(details(rules([{ cidr: '192.0.2.0/24', ports: [53] }]))).toEqual([{ path: 'spec.network.egress.allow[0].protocol', message: 'is required when ports are given (tcp or udp)' }]);
    expect(issues(rules([{ cidr: '192.0.2.0/24', protocol: 'icmp' }])).paths).toEqual(['spec.network.egress.allow[0].protocol']);
    expect(issues(rules([{ cidr: '192.0.2.0/24', port: 80 }])).paths).toEqual(['spec.network.egress.allow[0].port']);
    expect(issues(tenant({ egress: { default: 'block' } })).paths).toEqual(['spec.network.egress.default']);
    expect(issues(tenant({ egress: { allow: [{ cidr: '192.0.2.0/24' }] } })).paths).toEqual(['spec.network.egress.allow']);
    expect(issues(tenant({ ingress: {} })).paths).toEqual(['spec.network.ingress']);
  });

  it('refuses a service name that is not a DNS label, at metadata.name', () => {
    for (const name of ['Web', 'web_1', '-web', 'web.api', 'a'.repeat(64)]) {
      expect(issues(svc({}, { metadata: { name, tenant: 'acme' } })), name).toEqual({ code: 'CARAPACE_E_VALIDATION', paths: ['metadata.name'] });
    }
  });
});
