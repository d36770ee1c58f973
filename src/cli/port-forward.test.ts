import { describe, expect, it } from 'vitest';
import { parseForwardTarget, parsePortSpecs } from './port-forward.js';

describe('port-forward arguments', () => {
  it('reads [LOCAL:]REMOTE', () => {
    expect(parsePortSpecs(['8080:80', '443', ':5432', '0:22'])).toEqual([
      { local: 8080, remote: 80 },
      { local: 443, remote: 443 },
      { local: 0, remote: 5432 },
      { local: 0, remote: 22 },
    ]);
  });

  it('refuses bad ports naming each word', () => {
    expect(() => parsePortSpecs(['80', 'x:1', '1:0', '70000'])).toThrow(expect.objectContaining({ code: 'CARAPACE_E_USAGE', details: [expect.objectContaining({ path: 'ports[1]' }), expect.objectContaining({ path: 'ports[2]' }), expect.objectContaining({ path: 'ports[3]' })] }));
    expect(() => parsePortSpecs([])).toThrow(expect.objectContaining({ code: 'CARAPACE_E_USAGE' }));
  });

  it('reads instance and service targets, with or without --tenant', () => {
    expect(parseForwardTarget('acme/web-0', undefined)).toEqual({ tenant: 'acme', kind: 'instance', name: 'web-0' });
    expect(parseForwardTarget('acme/service/web', undefined)).toEqual({ tenant: 'acme', kind: 'service', name: 'web' });
    expect(parseForwardTarget('acme/svc/web', 'other')).toEqual({ tenant: 'acme', kind: 'service', name: 'web' });
    expect(parseForwardTarget('service/web', 'acme')).toEqual({ tenant: 'acme', kind: 'service', name: 'web' });
    expect(parseForwardTarget('web-0', 'acme')).toEqual({ tenant: 'acme', kind: 'instance', name: 'web-0' });
    for (const bad of ['web-0', 'service/web', 'a/b/c', 'acme/', 'a/service/b/c']) expect(() => parseForwardTarget(bad, undefined), bad).toThrow(expect.objectContaining({ code: 'CARAPACE_E_USAGE' }));
  });
});
