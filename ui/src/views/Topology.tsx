/**
 * The estate at a glance: hosts -> cells (per tenant and group, with fill level) -> instances,
 * beside each host's `host` (runc) and `sandbox` (gVisor) instances and its machines. Chips are
 * coloured by state and open the details drawer. Cluster-admins see every host with its
 * capacity and can cordon or drain it; tenant tokens see only their own objects, grouped by
 * the host names their instances carry (hosts themselves are infrastructure).
 */
import { memo, useMemo, useState } from 'react';
import type { Cell, Host, Instance, Machine } from '../../../src/model/objects.js';
import { Bar } from '../components/Bar';
import { State } from '../components/State';
import { cores, mib, stateClass, PHASE_ORDER, age } from '../format';
import { isAdmin, useCluster, useSession } from '../session';
import { keyOf, type AuditRecord, type FeedEvent } from '../cluster';
import { ApiError } from '../api';

interface CellView {
  cell: Cell;
  instances: Instance[];
  cpu: number;
  mem: number;
}

interface HostView {
  name: string;
  host?: Host;
  groups: { tenant: string; group: string; cells: CellView[] }[];
  hostLane: Instance[];
  sandboxLane: Instance[];
  waiting: Instance[];
  machines: Machine[];
  reqCpu: number;
  reqMem: number;
}

function instanceMatches(i: Instance, text: string, phases: ReadonlySet<string>, tenant: string): boolean {
  if (tenant !== '' && i.metadata.tenant !== tenant) return false;
  if (phases.size > 0 && !phases.has(i.status.phase)) return false;
  if (text === '') return true;
  const hay = `${i.metadata.tenant ?? ''}/${i.metadata.name} ${i.spec.owner.name} ${i.spec.host} ${i.spec.cell ?? ''} ${i.status.phase}`.toLowerCase();
  return hay.includes(text);
}

/** Groups what the token can see by host. Pure over the snapshot's maps. */
function buildTopology(
  hosts: ReadonlyMap<string, Host>,
  cells: ReadonlyMap<string, Cell>,
  instances: readonly Instance[],
  machines: ReadonlyMap<string, Machine>,
  tenant: string,
): { hostViews: HostView[]; unplaced: Instance[] } {
  const byHost = new Map<string, HostView>();
  const view = (name: string): HostView => {
    let v = byHost.get(name);
    if (!v) {
      const host = hosts.get(name);
      v = { name, ...(host ? { host } : {}), groups: [], hostLane: [], sandboxLane: [], waiting: [], machines: [], reqCpu: 0, reqMem: 0 };
      byHost.set(name, v);
    }
    return v;
  };
  for (const h of hosts.keys()) view(h);
  const cellViews = new Map<string, CellView>();
  for (const c of cells.values()) {
    if (tenant !== '' && c.spec.tenant !== tenant) continue;
    const cv: CellView = { cell: c, instances: [], cpu: 0, mem: 0 };
    cellViews.set(c.metadata.name, cv);
    const hv = view(c.spec.host);
    hv.reqCpu += c.spec.cpu;
    hv.reqMem += c.spec.memoryMiB;
    const t = c.spec.tenant || '(warm)';
    let g = hv.groups.find((x) => x.tenant === t && x.group === c.spec.group);
    if (!g) {
      g = { tenant: t, group: c.spec.group, cells: [] };
      hv.groups.push(g);
    }
    g.cells.push(cv);
  }
  const unplaced: Instance[] = [];
  for (const i of instances) {
    if (!i.spec.host) {
      unplaced.push(i);
      continue;
    }
    const hv = view(i.spec.host);
    const cv = i.spec.cell ? cellViews.get(i.spec.cell) : undefined;
    if (cv) {
      cv.instances.push(i);
      cv.cpu += i.spec.container.cpu;
      cv.mem += i.spec.container.memory;
    } else if (i.spec.container.isolation === 'sandbox') {
      hv.sandboxLane.push(i);
    } else if (i.spec.container.isolation === 'host') {
      hv.hostLane.push(i);
    } else {
      hv.waiting.push(i);
    }
    if (!cv && (i.spec.container.isolation === 'host' || i.spec.container.isolation === 'sandbox')) {
      hv.reqCpu += i.spec.container.cpu;
      hv.reqMem += i.spec.container.memory;
    }
  }
  for (const m of machines.values()) {
    if (tenant !== '' && m.metadata.tenant !== tenant) continue;
    if (!m.status.host) continue;
    const hv = view(m.status.host);
    hv.machines.push(m);
    hv.reqCpu += m.spec.cpu;
    hv.reqMem += m.spec.memory;
  }
  const hostViews = [...byHost.values()].sort((a, b) => a.name.localeCompare(b.name));
  for (const hv of hostViews) hv.groups.sort((a, b) => a.tenant.localeCompare(b.tenant) || a.group.localeCompare(b.group));
  return { hostViews, unplaced };
}

export function Topology(): React.JSX.Element {
  const snap = useCluster();
  const { who } = useSession();
  const admin = isAdmin(who);
  const [text, setText] = useState('');
  const [phases, setPhases] = useState<ReadonlySet<string>>(new Set());
  const [tenant, setTenant] = useState('');
  const all = useMemo(() => [...snap.instances.values()].sort((a, b) => keyOf(a).localeCompare(keyOf(b), undefined, { numeric: true })), [snap.instances]);
  const q = text.trim().toLowerCase();
  const visible = useMemo(() => all.filter((i) => instanceMatches(i, q, phases, tenant)), [all, q, phases, tenant]);
  const topo = useMemo(() => buildTopology(snap.hosts, snap.cells, visible, snap.machines, tenant), [snap.hosts, snap.cells, visible, snap.machines, tenant]);
  const counts = useMemo(() => {
    const c = new Map<string, number>();
    for (const i of all) if (tenant === '' || i.metadata.tenant === tenant) c.set(i.status.phase, (c.get(i.status.phase) ?? 0) + 1);
    return c;
  }, [all, tenant]);
  // Names on chips while they fit; plain squares for big estates.
  const labelled = visible.length <= 120;
  const togglePhase = (p: string): void => {
    const next = new Set(phases);
    if (next.has(p)) next.delete(p);
    else next.add(p);
    setPhases(next);
  };
  const liveCells = [...snap.cells.values()].filter((c) => tenant === '' || c.spec.tenant === tenant);

  return (
    <div className="topology-layout">
      <section className="topology" aria-label="Topology">
        <div className="toolbar">
          <input data-filter className="filter" type="search" placeholder="Filter instances (/)" value={text} onChange={(e) => setText(e.target.value)} aria-label="Filter instances" />
          {admin && (
            <select value={tenant} onChange={(e) => setTenant(e.target.value)} aria-label="Tenant">
              <option value="">All tenants</option>
              {[...snap.tenants.keys()].sort().map((t) => (
                <option key={t} value={t}>
                  {t}
                </option>
              ))}
            </select>
          )}
          <div className="legend-row" role="group" aria-label="Filter by state">
            {PHASE_ORDER.filter((p) => counts.has(p)).map((p) => (
              <button key={p} type="button" className={`legend-btn ${stateClass(p)} ${phases.has(p) ? 'on' : ''}`} aria-pressed={phases.has(p)} onClick={() => togglePhase(p)}>
                <i /> {p} <b>{counts.get(p)}</b>
              </button>
            ))}
          </div>
          <div className="summary muted">
            {admin && <span>{snap.hosts.size} hosts · </span>}
            <span>{liveCells.length} cells · </span>
            <span data-count="instances">{visible.length === all.length ? `${all.length} instances` : `${visible.length} of ${all.length} instances`}</span>
            <span> · {snap.machines.size} machines</span>
          </div>
        </div>
        {topo.hostViews.length === 0 && topo.unplaced.length === 0 && <div className="empty">Nothing to show yet: apply a manifest to run something.</div>}
        <div className="hosts">
          {topo.hostViews.map((hv) => (
            <HostCard key={hv.name} hv={hv} admin={admin} labelled={labelled} />
          ))}
          {topo.unplaced.length > 0 && (
            <div className="host-card unplaced">
              <div className="host-head">
                <span className="host-name">Not placed</span>
                <span className="muted">waiting for the scheduler (see each instance's reason)</span>
              </div>
              <Chips items={topo.unplaced} labelled={labelled} />
            </div>
          )}
        </div>
      </section>
      <Feed feed={snap.feed} names={snap.tokenNames} />
    </div>
  );
}

const HostCard = memo(function HostCard({ hv, admin, labelled }: { hv: HostView; admin: boolean; labelled: boolean }): React.JSX.Element {
  const { select } = useSession();
  const h = hv.host;
  const allocCpu = h ? h.status.capacity.cpu * (h.spec.overcommit?.cpu ?? 1) : 0;
  const allocMem = h ? h.status.capacity.memoryMiB * (h.spec.overcommit?.memory ?? 1) : 0;
  const state = h ? (h.status.state !== 'Ready' ? h.status.state : h.spec.draining ? 'Draining' : h.spec.unschedulable ? 'Cordoned' : 'Ready') : undefined;
  return (
    <article className={`host-card ${h && h.status.state !== 'Ready' ? 'down' : ''}`} data-host={hv.name} aria-label={`host ${hv.name}`}>
      <div className="host-head">
        <button type="button" className="host-name link" onClick={() => select({ kind: 'host', key: hv.name })} disabled={!h}>
          {hv.name}
        </button>
        {state && <State phase={state} title={h?.status.message} />}
        {h && (
          <>
            <Bar label="cpu" used={hv.reqCpu} total={allocCpu} text={`${cores(hv.reqCpu)} / ${cores(allocCpu)}`} title={`requested cores / allocatable (${h.status.capacity.cpu} cores x ${h.spec.overcommit?.cpu ?? 1} overcommit)`} />
            <Bar label="mem" used={hv.reqMem} total={allocMem} text={`${mib(hv.reqMem)} / ${mib(allocMem)}`} />
            <span className="muted small">{h.status.isolation.join(' · ')}</span>
          </>
        )}
        {admin && h && <HostActions host={h} />}
      </div>
      {hv.groups.length > 0 && (
        <div className="lane">
          <div className="lane-title">cells</div>
          <div className="cell-groups">
            {hv.groups.map((g) => (
              <div className="cell-group" key={`${g.tenant}/${g.group}`} data-group={`${g.tenant}/${g.group}`}>
                <div className="group-title">
                  <b>{g.tenant}</b> / {g.group}
                </div>
                <div className="cells">
                  {g.cells.map((cv) => (
                    <CellBox key={cv.cell.metadata.name} cv={cv} labelled={labelled} />
                  ))}
                </div>
              </div>
            ))}
          </div>
        </div>
      )}
      {hv.hostLane.length > 0 && (
        <div className="lane" data-lane="host">
          <div className="lane-title" title="runc straight on the host">host</div>
          <Chips items={hv.hostLane} labelled={labelled} />
        </div>
      )}
      {hv.sandboxLane.length > 0 && (
        <div className="lane" data-lane="sandbox">
          <div className="lane-title" title="gVisor (runsc) sandboxes">sandbox</div>
          <Chips items={hv.sandboxLane} labelled={labelled} />
        </div>
      )}
      {hv.waiting.length > 0 && (
        <div className="lane">
          <div className="lane-title" title="placed on this host, waiting for their cell">waiting</div>
          <Chips items={hv.waiting} labelled={labelled} />
        </div>
      )}
      {hv.machines.length > 0 && (
        <div className="lane" data-lane="machines">
          <div className="lane-title">machines</div>
          <div className="chips">
            {hv.machines.map((m) => (
              <button key={keyOf(m)} type="button" className={`chip machine ${stateClass(m.status.phase)} labelled`} onClick={() => select({ kind: 'machine', key: keyOf(m) })} title={`${keyOf(m)} · ${m.status.phase} · ${m.spec.cpu} vCPU, ${mib(m.spec.memory)}`} data-machine={keyOf(m)}>
                {keyOf(m)}
              </button>
            ))}
          </div>
        </div>
      )}
      {hv.groups.length === 0 && hv.hostLane.length === 0 && hv.sandboxLane.length === 0 && hv.machines.length === 0 && hv.waiting.length === 0 && <div className="muted small pad">nothing placed here</div>}
    </article>
  );
});

function CellBox({ cv, labelled }: { cv: CellView; labelled: boolean }): React.JSX.Element {
  const { select } = useSession();
  const c = cv.cell;
  return (
    <div className={`cell-box ${stateClass(c.status.phase)}`} data-cell={c.metadata.name}>
      <div className="cell-head">
        <button type="button" className="link mono" onClick={() => select({ kind: 'cell', key: c.metadata.name })} title={`cell ${c.metadata.name}`}>
          {c.metadata.name}
        </button>
        <State phase={c.status.phase} title={c.status.message} />
        {c.spec.dedicated && <span className="tag">dedicated</span>}
      </div>
      <Bar label="cpu" used={cv.cpu} total={c.spec.cpu} text={`${cores(cv.cpu)}/${cores(c.spec.cpu)}`} />
      <Bar label="mem" used={cv.mem} total={c.spec.memoryMiB} text={`${mib(cv.mem)}/${mib(c.spec.memoryMiB)}`} />
      {cv.instances.length > 0 ? <Chips items={cv.instances} labelled={labelled} /> : <div className="muted small">empty</div>}
    </div>
  );
}

function Chips({ items, labelled }: { items: Instance[]; labelled: boolean }): React.JSX.Element {
  const { select } = useSession();
  return (
    <div className="chips">
      {items.map((i) => {
        const k = keyOf(i);
        return (
          <button
            key={k}
            type="button"
            className={`chip ${stateClass(i.status.phase)} ${labelled ? 'labelled' : ''}`}
            data-instance={k}
            data-phase={i.status.phase}
            title={`${k} · ${i.status.phase}${i.status.reason ? ` (${i.status.reason})` : ''} · ${i.spec.container.isolation}`}
            aria-label={`${k} ${i.status.phase}`}
            onClick={() => select({ kind: 'instance', key: k })}
          >
            {labelled ? k : ''}
          </button>
        );
      })}
    </div>
  );
}

function HostActions({ host }: { host: Host }): React.JSX.Element {
  const { api, cluster } = useSession();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>(undefined);
  const op = (name: 'cordon' | 'uncordon' | 'drain'): void => {
    if (name === 'drain' && !window.confirm(`Drain ${host.metadata.name}? Its instances move elsewhere within each service's maxUnavailable.`)) return;
    setBusy(true);
    setError(undefined);
    api
      .request(`/v1/hosts/${encodeURIComponent(host.metadata.name)}/${name}`, { method: 'POST' })
      .then(() => cluster.refresh('hosts'))
      .catch((e: unknown) => setError(e instanceof ApiError ? `${e.code}: ${e.message}` : String(e)))
      .finally(() => setBusy(false));
  };
  const cordoned = host.spec.unschedulable || host.spec.draining === true;
  return (
    <span className="host-actions">
      {cordoned ? (
        <button type="button" disabled={busy} onClick={() => op('uncordon')}>
          Uncordon
        </button>
      ) : (
        <button type="button" disabled={busy} onClick={() => op('cordon')}>
          Cordon
        </button>
      )}
      {!host.spec.draining && (
        <button type="button" className="danger" disabled={busy} onClick={() => op('drain')}>
          Drain
        </button>
      )}
      {error && (
        <span className="form-error inline" role="alert">
          {error}
        </span>
      )}
    </span>
  );
}

/** What an audit record is about, as a reader says it: `tenant acme`, `service acme/web`. */
export function targetText(t: AuditRecord['target']): string {
  if (t.kind === 'Tenant') return `tenant ${t.name}`;
  const kind = t.kind.startsWith('/') ? (t.kind.split('/').at(-2)?.replace(/s$/, '') ?? t.kind) : t.kind.toLowerCase();
  return `${kind} ${t.tenant ? `${t.tenant}/` : ''}${t.name}`;
}

/** The live activity feed: lifecycle changes and audit records as they arrive. */
function Feed({ feed, names }: { feed: readonly FeedEvent[]; names: ReadonlyMap<string, string> }): React.JSX.Element {
  const { select } = useSession();
  return (
    <aside className="feed" aria-label="Activity">
      <h3>Activity</h3>
      {feed.length === 0 && <div className="muted small">Changes appear here as they happen.</div>}
      <ol>
        {feed.slice(0, 80).map((e) =>
          e.type === 'lifecycle' ? (
            <li key={`l${e.id}-${e.change.kind}-${e.change.name}`} className="feed-item">
              <State phase={e.change.phase} />
              {e.change.kind === 'Instance' && e.change.tenant ? (
                <button type="button" className="link" onClick={() => select({ kind: 'instance', key: `${e.change.tenant ?? ''}/${e.change.name}` })}>
                  {e.change.tenant}/{e.change.name}
                </button>
              ) : (
                <span>
                  {e.change.kind.toLowerCase()} {e.change.tenant ? `${e.change.tenant}/` : ''}
                  {e.change.name}
                </span>
              )}
              {e.change.reason && <span className="muted">{e.change.reason}</span>}
              <span className="muted right">{age(e.change.receivedAt)}</span>
            </li>
          ) : (
            <li key={`a${e.record.seq}`} className={`feed-item ${e.record.outcome === 'failure' ? 'failed' : ''}`}>
              <span className="tag">{e.record.action}</span>
              {e.record.target.kind === 'Instance' && e.record.target.tenant ? (
                <button type="button" className="link" onClick={() => select({ kind: 'instance', key: `${e.record.target.tenant ?? ''}/${e.record.target.name}` })}>
                  {e.record.target.tenant}/{e.record.target.name}
                </button>
              ) : (
                <span>{targetText(e.record.target)}</span>
              )}
              <span className="muted">by {names.get(e.record.actor.id) ?? e.record.actor.id}</span>
              <span className="muted right">{age(e.record.time)}</span>
            </li>
          ),
        )}
      </ol>
    </aside>
  );
}
