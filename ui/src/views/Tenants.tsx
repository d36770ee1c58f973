/**
 * Tenants: quota against what the tenant's workloads request (the same `requestedBy` the API
 * checks quotas with), usage over time from the usage report (one report per time bucket),
 * and its cells with what each cost over the window. A tenant token sees only its own tenant.
 */
import { useEffect, useMemo, useState } from 'react';
import type { Tenant } from '../../../src/model/objects.js';
import { requestedBy } from '../../../src/core/quota.js';
import { Bar } from '../components/Bar';
import { Chart } from '../components/Chart';
import { State } from '../components/State';
import { compact, cores, cpuSeconds, mib, mibSeconds } from '../format';
import { useCluster, useSession } from '../session';
import { seg } from '../api';

/** One row of `GET /v1/usage?format=json` (exact integers as decimal strings). */
export interface UsageRow {
  tenant: string;
  group?: string;
  cell?: string;
  charged: { cpuUs: string; memByteMs: string };
  used: { cpuUs: string; memByteMs: string };
}

const RANGES = [
  { label: '15 m', ms: 900_000 },
  { label: '1 h', ms: 3_600_000 },
  { label: '6 h', ms: 6 * 3_600_000 },
  { label: '24 h', ms: 24 * 3_600_000 },
] as const;
const BUCKETS = 12;

export function Tenants({ tenant }: { tenant: string | undefined }): React.JSX.Element {
  const snap = useCluster();
  const { navigate } = useSession();
  const tenants = useMemo(() => [...snap.tenants.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)), [snap.tenants]);
  const current = tenants.find((t) => t.metadata.name === tenant) ?? tenants[0];
  const counts = useMemo(() => {
    const c = new Map<string, { services: number; instances: number; cells: number }>();
    const get = (t: string): { services: number; instances: number; cells: number } => {
      let v = c.get(t);
      if (!v) c.set(t, (v = { services: 0, instances: 0, cells: 0 }));
      return v;
    };
    for (const s of snap.services.values()) get(s.metadata.tenant ?? '').services++;
    for (const i of snap.instances.values()) get(i.metadata.tenant ?? '').instances++;
    for (const cl of snap.cells.values()) if (cl.spec.tenant) get(cl.spec.tenant).cells++;
    return c;
  }, [snap.services, snap.instances, snap.cells]);

  return (
    <div className="tenants-layout">
      <nav className="tenant-list" aria-label="Tenants">
        {tenants.map((t) => {
          const c = counts.get(t.metadata.name);
          const on = t === current;
          return (
            <button key={t.metadata.name} type="button" className={`tenant-item ${on ? 'on' : ''}`} aria-current={on ? 'true' : undefined} onClick={() => navigate(`tenants/${t.metadata.name}`)} data-tenant={t.metadata.name}>
              <b>{t.metadata.name}</b>
              {t.spec.displayName && <span className="muted small">{t.spec.displayName}</span>}
              <span className="muted small">
                {c?.services ?? 0} services · {c?.instances ?? 0} instances · {c?.cells ?? 0} cells
              </span>
            </button>
          );
        })}
        {tenants.length === 0 && <div className="muted pad">No tenants.</div>}
      </nav>
      {current ? <TenantDetail key={current.metadata.name} t={current} /> : <div className="empty">No tenant selected.</div>}
    </div>
  );
}

function TenantDetail({ t }: { t: Tenant }): React.JSX.Element {
  const snap = useCluster();
  const name = t.metadata.name;
  const mine = <T extends { metadata: { tenant?: string } }>(m: ReadonlyMap<string, T>): T[] => [...m.values()].filter((o) => o.metadata.tenant === name);
  const services = mine(snap.services);
  const jobs = mine(snap.jobs);
  const machines = mine(snap.machines);
  const req = requestedBy(services, jobs, machines);
  const cells = [...snap.cells.values()].filter((c) => c.spec.tenant === name);
  const q = t.spec.quota ?? {};
  const dims: { label: string; used: number; limit: number | undefined; fmt: (n: number) => string }[] = [
    { label: 'cpu', used: req.cpu, limit: q.cpu, fmt: (n) => `${cores(n)} cores` },
    { label: 'memory', used: req.memory, limit: q.memory, fmt: mib },
    { label: 'instances', used: req.instances, limit: q.instances, fmt: String },
    { label: 'machines', used: req.machines, limit: q.machines, fmt: String },
    { label: 'cells', used: Math.max(req.cells, cells.length), limit: q.cells, fmt: String },
  ];
  return (
    <section className="tenant-detail" aria-label={`Tenant ${name}`} data-tenant-detail={name}>
      <header className="detail-head">
        <h2>{name}</h2>
        {t.spec.displayName && <span className="muted">{t.spec.displayName}</span>}
        {t.spec.minIsolation && <span className="tag">min isolation: {t.spec.minIsolation}</span>}
        {t.spec.allowedRegistries && <span className="tag">registries: {t.spec.allowedRegistries.join(', ')}</span>}
        {t.spec.contact && <span className="muted">contact: {t.spec.contact}</span>}
      </header>
      <div className="panel">
        <h3>Quota and use</h3>
        <p className="muted small">What the tenant's services, unfinished jobs and machines request (counted as the API counts them for quotas); cells: the most of what they need and what runs.</p>
        <div className="quota-grid">
          {dims.map((d) => (
            <div key={d.label} className="quota-row" data-quota={d.label}>
              <span className="quota-label">{d.label}</span>
              {d.limit !== undefined ? (
                <Bar used={d.used} total={d.limit} text={`${d.fmt(d.used)} of ${d.fmt(d.limit)}`} />
              ) : (
                <span className="muted">{d.fmt(d.used)} · no limit</span>
              )}
            </div>
          ))}
        </div>
      </div>
      <UsagePanel tenant={name} cells={cells} />
    </section>
  );
}

function UsagePanel({ tenant, cells }: { tenant: string; cells: { metadata: { name: string }; spec: { host: string; group: string; cpu: number; memoryMiB: number }; status: { phase: string } }[] }): React.JSX.Element {
  const { api } = useSession();
  const [range, setRange] = useState<number>(RANGES[1].ms);
  const [series, setSeries] = useState<{ range: number; times: number[]; cpu: number[]; mem: number[] } | undefined>(undefined);
  const [byCell, setByCell] = useState<UsageRow[] | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const [tick, setTick] = useState(0);

  // Refresh every 30 s while shown: usage grows as workloads run.
  useEffect(() => {
    const t = setInterval(() => setTick((n) => n + 1), 30_000);
    return () => clearInterval(t);
  }, []);

  useEffect(() => {
    const ac = new AbortController();
    const until = Date.now();
    const step = range / BUCKETS;
    const report = (since: number, to: number, by: string): Promise<UsageRow[]> =>
      api
        .json<{ rows: UsageRow[] }>(`/v1/usage?by=${by}&tenant=${seg(tenant)}&since=${new Date(since).toISOString()}&until=${new Date(to).toISOString()}&format=json`, { signal: ac.signal })
        .then((r) => r.rows);
    (async () => {
      // Two at a time: the page's event streams hold most of the browser's connections.
      const times: number[] = [];
      const cpu: number[] = [];
      const mem: number[] = [];
      for (let b = 0; b < BUCKETS; b += 2) {
        const part = await Promise.all(
          [b, b + 1].map(async (i) => {
            const s = until - range + i * step;
            const rows = await report(s, s + step, 'tenant');
            const row = rows.find((r) => r.tenant === tenant);
            return { t: s + step, cpu: row ? cpuSeconds(row.charged.cpuUs) / (step / 1000) : 0, mem: row ? mibSeconds(row.charged.memByteMs) / (step / 1000) : 0 };
          }),
        );
        for (const p of part) {
          times.push(p.t);
          cpu.push(p.cpu);
          mem.push(p.mem);
        }
      }
      setSeries({ range, times, cpu, mem });
      setByCell(await report(until - range, until, 'cell'));
      setError(undefined);
    })().catch((e: unknown) => {
      if (!ac.signal.aborted) setError((e as Error).message);
    });
    return () => ac.abort();
  }, [api, tenant, range, tick]);

  const cellRows = useMemo(() => {
    const rows = new Map<string, { name: string; group: string; cpuS: number; memS: number; usedS: number }>();
    for (const r of byCell ?? []) {
      if (!r.cell) continue;
      rows.set(r.cell, { name: r.cell, group: r.group ?? '', cpuS: cpuSeconds(r.charged.cpuUs), memS: mibSeconds(r.charged.memByteMs), usedS: cpuSeconds(r.used.cpuUs) });
    }
    for (const c of cells) if (!rows.has(c.metadata.name)) rows.set(c.metadata.name, { name: c.metadata.name, group: c.spec.group, cpuS: 0, memS: 0, usedS: 0 });
    return [...rows.values()].sort((a, b) => b.cpuS - a.cpuS);
  }, [byCell, cells]);
  const total = (byCell ?? []).reduce((n, r) => n + cpuSeconds(r.charged.cpuUs), 0);
  const hostRun = (byCell ?? []).filter((r) => !r.cell).reduce((n, r) => n + cpuSeconds(r.charged.cpuUs), 0);

  return (
    <>
      <div className="panel" data-usage-range={series?.range}>
        <div className="panel-head">
          <h3>Usage over time</h3>
          <div className="seg" role="group" aria-label="Window">
            {RANGES.map((r) => (
              <button key={r.ms} type="button" className={range === r.ms ? 'on' : ''} aria-pressed={range === r.ms} onClick={() => setRange(r.ms)}>
                {r.label}
              </button>
            ))}
          </div>
        </div>
        {error && <div className="form-error">{error}</div>}
        {series ? (
          <div className="charts">
            <Chart times={series.times} series={{ name: 'charged cpu', unit: 'cores (average per bucket)', values: series.cpu, className: 'c1' }} />
            <Chart times={series.times} series={{ name: 'charged memory', unit: 'MiB (average per bucket)', values: series.mem, className: 'c2' }} />
          </div>
        ) : (
          <div className="muted pad">Loading usage…</div>
        )}
      </div>
      <div className="panel">
        <h3>Cells and their cost</h3>
        <p className="muted small">
          Charged over the window: a cell is charged for its whole size while it runs. Total {compact(total)} core-s
          {hostRun > 0 ? `, of which ${compact(hostRun)} core-s outside cells (host, sandbox, machines)` : ''}.
        </p>
        <table className="table">
          <thead>
            <tr>
              <th>Cell</th>
              <th>Group</th>
              <th>State</th>
              <th>Host</th>
              <th>Size</th>
              <th className="num">Charged core-s</th>
              <th className="num">Charged MiB-s</th>
              <th className="num">Used core-s</th>
            </tr>
          </thead>
          <tbody>
            {cellRows.map((r) => {
              const c = cells.find((x) => x.metadata.name === r.name);
              return (
                <tr key={r.name} data-cell-row={r.name}>
                  <td className="mono">{r.name.slice(0, 18)}</td>
                  <td>{r.group}</td>
                  <td>{c ? <State phase={c.status.phase} /> : <span className="muted">retired</span>}</td>
                  <td>{c?.spec.host ?? '-'}</td>
                  <td>{c ? `${cores(c.spec.cpu)} cpu · ${mib(c.spec.memoryMiB)}` : '-'}</td>
                  <td className="num">{compact(r.cpuS)}</td>
                  <td className="num">{compact(r.memS)}</td>
                  <td className="num">{compact(r.usedS)}</td>
                </tr>
              );
            })}
            {cellRows.length === 0 && (
              <tr>
                <td colSpan={8} className="muted">
                  No cells in this window.
                </td>
              </tr>
            )}
          </tbody>
        </table>
      </div>
    </>
  );
}
