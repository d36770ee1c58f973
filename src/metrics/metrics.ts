/**
 * Prometheus metrics for the management tools above Carapace (prom-client). State gauges
 * (instances, cells, machines, hosts by tenant/group/cell/phase) are computed from the store
 * at scrape time, so they can never drift from the truth; timings (reconcile passes, scheduler
 * calls, cell boots, API requests) are recorded where the work happens. One registry per
 * process; `metrics` is the shared instance the loops record into.
 */
import { Counter, Histogram, Registry, Gauge, collectDefaultMetrics } from 'prom-client';
import type { Resources } from '../core/resources.js';

const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: 'carapace_process_' });

const seconds = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Timings and counters the control plane records into. */
export const metrics = {
  registry,
  reconcileSeconds: new Histogram({
    name: 'carapace_reconcile_duration_seconds',
    help: 'Duration of one reconcile pass',
    labelNames: ['loop', 'outcome'] as const,
    buckets: seconds,
    registers: [registry],
  }),
  scheduleSeconds: new Histogram({
    name: 'carapace_scheduler_duration_seconds',
    help: 'Duration of one scheduler call (snapshot to plan)',
    labelNames: ['tenant'] as const,
    buckets: seconds,
    registers: [registry],
  }),
  unplaced: new Counter({
    name: 'carapace_scheduler_unplaced_total',
    help: 'Instances a plan could not place',
    labelNames: ['tenant'] as const,
    registers: [registry],
  }),
  cellBootSeconds: new Histogram({
    name: 'carapace_cell_boot_seconds',
    help: 'QEMU launch to guest agent ready, per cell',
    labelNames: ['tenant', 'group'] as const,
    buckets: [0.5, 1, 2, 5, 10, 20, 30, 60, 120],
    registers: [registry],
  }),
  probeSeconds: new Histogram({
    name: 'carapace_probe_duration_seconds',
    help: 'Duration of one liveness or readiness check, by handler, isolation and result',
    labelNames: ['probe', 'handler', 'isolation', 'result'] as const,
    buckets: seconds,
    registers: [registry],
  }),
  egressDenied: new Gauge({
    // The kernel's counters (nftables, one per tenant segment) are the running totals; a gauge
    // carries them as read, per host (prom-client counters cannot be set to a value).
    name: 'carapace_egress_denied_packets',
    help: "Packets of new connections the tenant network's firewall refused (egress policy, infrastructure, other tenants), per tenant and host",
    labelNames: ['tenant', 'host'] as const,
    registers: [registry],
  }),
  leader: new Gauge({
    name: 'carapace_leader',
    help: '1 while this server is the control-plane leader (runs the scheduler, reconcilers and host monitor), else 0',
    labelNames: ['server'] as const,
    registers: [registry],
  }),
  apiRequests: new Counter({
    name: 'carapace_api_requests_total',
    help: 'API requests by route and status code',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  }),
};

/** Names of the scrape-time state gauges. */
const STATE_GAUGES = ['carapace_instances', 'carapace_instance_restarts', 'carapace_cells', 'carapace_cell_reserved_cpu_cores', 'carapace_cell_reserved_memory_bytes', 'carapace_machines', 'carapace_hosts'] as const;

/**
 * Registers the scrape-time state gauges over `resources`. Call once per process that
 * serves /metrics.
 */
export function registerStateGauges(resources: Resources): void {
  // A process may start the control plane more than once (tests restart it in-process): the
  // gauges then read the newest store instead of failing on a duplicate name.
  for (const name of STATE_GAUGES) registry.removeSingleMetric(name);
  new Gauge({
    name: 'carapace_instances',
    help: 'Instances by tenant, group, isolation, cell and phase',
    labelNames: ['tenant', 'group', 'isolation', 'cell', 'phase'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const i of (await resources.list('Instance')).items) {
        this.inc({ tenant: i.metadata.tenant ?? '', group: i.spec.container.group, isolation: i.spec.container.isolation, cell: i.spec.cell ?? '', phase: i.status.phase });
      }
    },
  });
  new Gauge({
    name: 'carapace_instance_restarts',
    help: 'Restarts of each instance',
    labelNames: ['tenant', 'group', 'cell', 'instance'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const i of (await resources.list('Instance')).items) {
        this.set({ tenant: i.metadata.tenant ?? '', group: i.spec.container.group, cell: i.spec.cell ?? '', instance: i.metadata.name }, i.status.restarts);
      }
    },
  });
  new Gauge({
    name: 'carapace_cells',
    help: 'Cells by tenant (empty for warm cells), group, host and phase',
    labelNames: ['tenant', 'group', 'host', 'phase'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const c of (await resources.list('Cell')).items) this.inc({ tenant: c.spec.tenant, group: c.spec.group, host: c.spec.host, phase: c.status.phase });
    },
  });
  new Gauge({
    name: 'carapace_cell_reserved_cpu_cores',
    help: 'vCPUs reserved by each cell',
    labelNames: ['tenant', 'group', 'cell', 'host'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const c of (await resources.list('Cell')).items) this.set({ tenant: c.spec.tenant, group: c.spec.group, cell: c.metadata.name, host: c.spec.host }, c.spec.cpu);
    },
  });
  new Gauge({
    name: 'carapace_cell_reserved_memory_bytes',
    help: 'Guest memory reserved by each cell',
    labelNames: ['tenant', 'group', 'cell', 'host'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const c of (await resources.list('Cell')).items) this.set({ tenant: c.spec.tenant, group: c.spec.group, cell: c.metadata.name, host: c.spec.host }, c.spec.memoryMiB * 1024 * 1024);
    },
  });
  new Gauge({
    name: 'carapace_machines',
    help: 'Machines by tenant and phase',
    labelNames: ['tenant', 'phase'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const m of (await resources.list('Machine')).items) this.inc({ tenant: m.metadata.tenant ?? '', phase: m.status.phase });
    },
  });
  new Gauge({
    name: 'carapace_hosts',
    help: 'Hosts by state',
    labelNames: ['state'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const h of (await resources.list('Host')).items) this.inc({ state: h.status.state });
    },
  });
}

/** Measures an async call into a histogram with an outcome label. */
export async function timed<T>(h: Histogram<'loop' | 'outcome'>, loop: string, fn: () => Promise<T>): Promise<T> {
  const end = h.startTimer({ loop });
  try {
    const r = await fn();
    end({ outcome: 'ok' });
    return r;
  } catch (e) {
    end({ outcome: 'error' });
    throw e;
  }
}
