import { describe, expect, it } from 'vitest';
import { ContainerSpecSchema, containerSpecOf, JobSpecSchema, ServiceSpecSchema } from './schemas.js';

describe('containerSpecOf', () => {
  it("takes exactly the container fields of a service or job, probes included, none of the owner's own", () => {
    const svc = ServiceSpecSchema.parse({ image: 'reg/app:1', replicas: 3, maxUnavailable: 2, command: ['sh'], readinessProbe: { tcpSocket: { port: 80 } } });
    const c = containerSpecOf(svc);
    expect(c).toEqual({
      image: 'reg/app:1',
      command: ['sh'],
      env: {},
      cpu: 0.1,
      memory: 64,
      pids: 1024,
      readOnlyRootfs: false,
      isolation: 'cell',
      group: 'default',
      ports: [],
      readinessProbe: { tcpSocket: { port: 80 }, initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 1, failureThreshold: 3, successThreshold: 1 },
    });
    // What an instance carries parses as a container spec unchanged (the cell protocol sends it as is).
    expect(ContainerSpecSchema.parse(c)).toEqual(c);
    const job = JobSpecSchema.parse({ image: 'reg/app:1', completions: 2, workingDir: '/srv' });
    expect(containerSpecOf(job)).toEqual(ContainerSpecSchema.parse({ image: 'reg/app:1', workingDir: '/srv' }));
  });

  it("a container spec refuses a service's fields (strict, like the manifests)", () => {
    const r = ContainerSpecSchema.safeParse({ image: 'reg/app:1', replicas: 2 });
    expect(r.success).toBe(false);
  });
});
