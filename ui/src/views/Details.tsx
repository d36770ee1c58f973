/**
 * The details drawer: one instance, cell, host, machine or service (its rollout: views/Rollout.tsx), live from the cluster snapshot,
 * with its events (lifecycle changes seen by this page plus its audit records), its logs
 * tail, its usage and, for instances, why it was placed where it is.
 */
import { useEffect, useMemo, useRef, useState } from 'react';
import type { Cell, Host, Instance, Machine } from '../../../src/model/objects.js';
import { seg, type Api } from '../api';
import type { AuditRecord } from '../cluster';
import { keyOf } from '../cluster';
import { State } from '../components/State';
import { age, compact, cores, cpuSeconds, mib, mibSeconds, time } from '../format';
import { canWrite, useCluster, useSession, type Selection } from '../session';
import { ServiceDetails } from './Rollout';
import { TerminalPanel } from './Terminal';
import type { UsageRow } from './Tenants';

export function Details({ selection, onClose }: { selection: Selection; onClose: () => void }): React.JSX.Element {
  const snap = useCluster();
  const closeRef = useRef<HTMLButtonElement>(null);
  useEffect(() => closeRef.current?.focus(), [selection]);
  let body: React.JSX.Element;
  let title = selection.key;
  switch (selection.kind) {
    case 'instance': {
      const i = snap.instances.get(selection.key);
      body = i ? <InstanceDetails i={i} /> : <Gone what="instance" />;
      break;
    }
    case 'cell': {
      const c = snap.cells.get(selection.key);
      title = `cell ${selection.key}`;
      body = c ? <CellDetails c={c} /> : <Gone what="cell" />;
      break;
    }
    case 'host': {
      const h = snap.hosts.get(selection.key);
      title = `host ${selection.key}`;
      body = h ? <HostDetails h={h} /> : <Gone what="host" />;
      break;
    }
    case 'machine': {
      const m = snap.machines.get(selection.key);
      title = `machine ${selection.key}`;
      body = m ? <MachineDetails m={m} /> : <Gone what="machine" />;
      break;
    }
    case 'service': {
      const s = snap.services.get(selection.key);
      title = `service ${selection.key}`;
      body = s ? <ServiceDetails s={s} /> : <Gone what="service" />;
      break;
    }
  }
  return (
    <aside className="drawer" role="dialog" aria-label={`Details of ${title}`} data-details={selection.key}>
      <div className="drawer-head">
        <h2 className="mono">{title}</h2>
        <button ref={closeRef} type="button" className="ghost" onClick={onClose} aria-label="Close details (Esc)">
          ✕
        </button>
      </div>
      <div className="drawer-body">{body}</div>
    </aside>
  );
}

function Gone({ what }: { what: string }): React.JSX.Element {
  return <div className="muted pad">This {what} no longer exists (or is not visible to this token).</div>;
}

function Facts({ rows }: { rows: [string, React.ReactNode][] }): React.JSX.Element {
  return (
    <dl className="facts">
      {rows.map(([k, v]) => (
        <div key={k} className="fact">
          <dt>{k}</dt>
          <dd>{v}</dd>
        </div>
      ))}
    </dl>
  );
}

/** Audit records about one object since `since` (the server narrows them to the caller's tenant). */
function useAuditOf(api: Api, kind: string, name: string, tenant: string | undefined, since: string | undefined, admin: boolean): AuditRecord[] | undefined {
  const [recs, setRecs] = useState<AuditRecord[] | undefined>(undefined);
  const snap = useCluster();
  const seen = snap.feed.filter((e) => e.type === 'audit' && e.record.target.name === name).length;
  useEffect(() => {
    const ac = new AbortController();
    const q = new URLSearchParams({ format: 'jsonl' });
    if (since) q.set('since', new Date(Date.parse(since) - 1000).toISOString());
    if (tenant && admin) q.set('tenant', tenant);
    api
      .text(`/v1/audit/records?${q.toString()}`, { signal: ac.signal })
      .then((t) =>
        setRecs(
          t
            .split('\n')
            .filter((l) => l.trim() !== '')
            .map((l) => JSON.parse(l) as AuditRecord) // one record per line
            .filter((r) => r.target.name === name && (r.target.kind === kind || r.target.kind.includes(`/${kind.toLowerCase()}s/`)) && (tenant === undefined || r.target.tenant === tenant))
            .reverse(),
        ),
      )
      .catch(() => setRecs([]));
    return () => ac.abort();
  }, [api, kind, name, tenant, since, admin, seen]);
  return recs;
}

function useUsage(api: Api, tenant: string, by: 'group' | 'cell'): UsageRow[] | undefined {
  const [rows, setRows] = useState<UsageRow[] | undefined>(undefined);
  useEffect(() => {
    const ac = new AbortController();
    const until = Date.now();
    api
      .json<{ rows: UsageRow[] }>(`/v1/usage?by=${by}&tenant=${seg(tenant)}&since=${new Date(until - 3_600_000).toISOString()}&until=${new Date(until).toISOString()}&format=json`, { signal: ac.signal })
      .then((r) => setRows(r.rows))
      .catch(() => setRows([]));
    return () => ac.abort();
  }, [api, tenant, by]);
  return rows;
}

function UsageLine({ row, what }: { row: UsageRow | undefined; what: string }): React.JSX.Element {
  if (!row) return <div className="muted small">No usage recorded for {what} in the last hour.</div>;
  return (
    <div className="usage-line" data-usage={what}>
      <span>
        <b>{compact(cpuSeconds(row.charged.cpuUs))}</b> core-s charged
      </span>
      <span>
        <b>{compact(cpuSeconds(row.used.cpuUs))}</b> core-s used
      </span>
      <span>
        <b>{compact(mibSeconds(row.charged.memByteMs))}</b> MiB-s charged
      </span>
      <span className="muted">({what}, last hour)</span>
    </div>
  );
}

function InstanceDetails({ i }: { i: Instance }): React.JSX.Element {
  const { api, who, select } = useSession();
  const snap = useCluster();
  const tenant = i.metadata.tenant ?? '';
  const audit = useAuditOf(api, 'Instance', i.metadata.name, tenant, i.metadata.createdAt, who.role === 'cluster-admin');
  const groups = useUsage(api, tenant, 'group');
  const cellsUsage = useUsage(api, tenant, 'cell');
  const lifecycle = snap.feed.filter((e) => e.type === 'lifecycle' && e.change.kind === 'Instance' && e.change.name === i.metadata.name && e.change.tenant === tenant);
  const placed = audit?.find((r) => r.action === 'instance.placed');
  const moved = audit?.filter((r) => r.action === 'instance.failover' || r.action === 'instance.evicted' || r.action === 'instance.recovered') ?? [];
  const c = i.spec.container;
  const [terminal, setTerminal] = useState(false);
  // Exec needs a running container; the server checks again (and refuses viewers).
  const execAllowed = canWrite(who);
  // The scheduler's own words when it has any (reason Scheduled/Unschedulable), else the audit record of the placement.
  const placement =
    i.status.reason === 'Unschedulable'
      ? `Not placed: ${i.status.message ?? 'no host fits'}`
      : placed
        ? `Placed ${placed.detail?.['cell'] ? `in cell ${String(placed.detail['cell'])} ` : ''}on host ${String(placed.detail?.['host'] ?? i.spec.host)} by ${placed.actor.id} at ${time(placed.time)}${i.status.reason === 'Scheduled' && i.status.message ? ` (${i.status.message})` : ''}`
        : i.spec.host
          ? `On host ${i.spec.host}${i.spec.cell ? ` in cell ${i.spec.cell}` : ''}${i.status.message && i.status.reason === 'Scheduled' ? ` (${i.status.message})` : ''}`
          : 'Waiting for the scheduler'
  return (
    <>
      <div className="detail-state">
        <State phase={i.status.phase} />
        {i.status.reason && <span className="tag">{i.status.reason}</span>}
        {i.status.message && <span className="muted">{i.status.message}</span>}
        {execAllowed && (
          <button
            type="button"
            className="primary small push-right"
            data-open-terminal
            disabled={i.status.phase !== 'Running'}
            title={i.status.phase === 'Running' ? 'Open a shell in this container (exec with a terminal)' : 'The container is not running'}
            onClick={() => setTerminal(true)}
          >
            Terminal
          </button>
        )}
      </div>
      {terminal && <TerminalPanel tenant={tenant} name={i.metadata.name} onClose={() => setTerminal(false)} />}
      <Facts
        rows={[
          ['owner', `${i.spec.owner.kind.toLowerCase()}/${tenant}/${i.spec.owner.name}`],
          ['isolation', c.isolation],
          ['group', c.group],
          ['host', i.spec.host || '-'],
          [
            'cell',
            i.spec.cell ? (
              <button type="button" className="link mono" onClick={() => select({ kind: 'cell', key: i.spec.cell ?? '' })}>
                {i.spec.cell}
              </button>
            ) : (
              '-'
            ),
          ],
          ['request', `${cores(c.cpu)} cpu · ${mib(c.memory)} · ${c.pids} pids`],
          ['image', <span className="mono small">{c.image}</span>],
          ['digest', <span className="mono small">{i.status.imageDigest ?? '-'}</span>],
          ['ready', i.status.ready ? 'yes' : 'no'],
          ['restarts', String(i.status.restarts)],
          ['started', i.status.startedAt ? `${time(i.status.startedAt)} (${age(i.status.startedAt)} ago)` : '-'],
          ['ports', i.status.hostPorts?.length ? i.status.hostPorts.map((p) => `${p.hostPort}->${p.containerPort}/${p.protocol}`).join(', ') : '-'],
        ]}
      />
      <h3>Placement</h3>
      <p className="placement" data-placement>
        {placement}
      </p>
      {moved.map((r) => (
        <p key={r.seq} className="placement muted">
          {r.action} at {time(r.time)}: {JSON.stringify(r.detail ?? {})}
        </p>
      ))}
      <h3>Usage</h3>
      <UsageLine row={groups?.find((r) => r.group === c.group)} what={`group ${tenant}/${c.group}`} />
      {i.spec.cell && <UsageLine row={cellsUsage?.find((r) => r.cell === i.spec.cell)} what={`cell ${i.spec.cell.slice(0, 12)}`} />}
      <p className="muted small">Usage is accounted per tenant, group and cell, not per instance.</p>
      <h3>Events</h3>
      <ol className="events">
        {lifecycle.map((e) =>
          e.type === 'lifecycle' ? (
            <li key={`l${e.id}`}>
              <span className="muted">{time(e.change.receivedAt)}</span> <State phase={e.change.phase} /> {e.change.reason ?? ''} {e.change.message ? <span className="muted">{e.change.message}</span> : null}
            </li>
          ) : null,
        )}
        {(audit ?? []).map((r) => (
          <li key={`a${r.seq}`}>
            <span className="muted">{time(r.time)}</span> <span className="tag">{r.action}</span> <span className="muted">by {r.actor.id}</span> {r.detail ? <span className="mono small">{JSON.stringify(r.detail)}</span> : null}
          </li>
        ))}
        {audit === undefined && <li className="muted">Loading…</li>}
        {audit?.length === 0 && lifecycle.length === 0 && <li className="muted">No events yet.</li>}
      </ol>
      <Logs path={`/v1/tenants/${seg(tenant)}/instances/${seg(i.metadata.name)}/logs`} />
    </>
  );
}

/** The last lines of a log, optionally followed live. */
function Logs({ path }: { path: string }): React.JSX.Element {
  const { api } = useSession();
  const [lines, setLines] = useState<{ time?: string; stream?: string; text?: string }[]>([]);
  const [follow, setFollow] = useState(false);
  const [error, setError] = useState<string | undefined>(undefined);
  const [reload, setReload] = useState(0);
  const box = useRef<HTMLPreElement>(null);
  useEffect(() => {
    const ac = new AbortController();
    const got: { time?: string; stream?: string; text?: string }[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    const flush = (): void => {
      timer = undefined;
      setLines(got.slice(-500));
    };
    api
      .ndjson<{ time?: string; stream?: string; text?: string; error?: { message?: string } }>(
        `${path}?tail=100${follow ? '&follow=true' : ''}`,
        (l) => {
          if (l.error) {
            setError(l.error.message);
            return;
          }
          if (got.length === 0) setError(undefined);
          got.push(l);
          timer ??= setTimeout(flush, 100);
        },
        ac.signal,
      )
      .then(() => {
        flush();
        setError(undefined);
      })
      .catch((e: unknown) => {
        if (!ac.signal.aborted) setError((e as Error).message);
      });
    return () => {
      ac.abort();
      clearTimeout(timer);
    };
  }, [api, path, follow, reload]);
  useEffect(() => {
    if (box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [lines]);
  return (
    <>
      <div className="panel-head">
        <h3>Logs</h3>
        <label className="inline-label">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} /> follow
        </label>
        {!follow && (
          <button type="button" className="ghost small" onClick={() => setReload((n) => n + 1)}>
            Refresh
          </button>
        )}
      </div>
      {error && <div className="form-error">{error}</div>}
      <pre className="logs" ref={box} data-logs>
        {lines.length === 0 ? <span className="muted">(no output)</span> : lines.map((l, n) => <div key={n} className={l.stream === 'stderr' ? 'stderr' : ''}>{l.text}</div>)}
      </pre>
    </>
  );
}

function CellDetails({ c }: { c: Cell }): React.JSX.Element {
  const { api, select } = useSession();
  const snap = useCluster();
  const inside = useMemo(() => [...snap.instances.values()].filter((i) => i.spec.cell === c.metadata.name), [snap.instances, c.metadata.name]);
  const usage = useUsage(api, c.spec.tenant || '', 'cell');
  const cpu = inside.reduce((n, i) => n + i.spec.container.cpu, 0);
  const mem = inside.reduce((n, i) => n + i.spec.container.memory, 0);
  return (
    <>
      <div className="detail-state">
        <State phase={c.status.phase} />
        {c.status.message && <span className="muted">{c.status.message}</span>}
      </div>
      <Facts
        rows={[
          ['tenant / group', c.spec.tenant ? `${c.spec.tenant} / ${c.spec.group}` : 'warm (unassigned)'],
          ['host', c.spec.host],
          ['size', `${cores(c.spec.cpu)} vCPU · ${mib(c.spec.memoryMiB)}`],
          ['fill', `${cores(cpu)} cpu · ${mib(mem)} requested by ${inside.length} instance(s)`],
          ['kind', c.spec.dedicated ? 'dedicated' : c.spec.warm ? 'from the warm pool' : 'shared by the group'],
          ['accel', c.status.accel ?? '-'],
          ['boot', c.status.bootMs !== undefined ? `${(c.status.bootMs / 1000).toFixed(1)} s` : '-'],
          ['ready at', time(c.status.readyAt)],
        ]}
      />
      {c.spec.tenant && (
        <>
          <h3>Usage</h3>
          <UsageLine row={usage?.find((r) => r.cell === c.metadata.name)} what="this cell" />
        </>
      )}
      <h3>Instances</h3>
      <ul className="plain">
        {inside.map((i) => (
          <li key={keyOf(i)}>
            <State phase={i.status.phase} />{' '}
            <button type="button" className="link mono" onClick={() => select({ kind: 'instance', key: keyOf(i) })}>
              {keyOf(i)}
            </button>
          </li>
        ))}
        {inside.length === 0 && <li className="muted">empty</li>}
      </ul>
    </>
  );
}

function HostDetails({ h }: { h: Host }): React.JSX.Element {
  const snap = useCluster();
  const n = [...snap.instances.values()].filter((i) => i.spec.host === h.metadata.name).length;
  const cells = [...snap.cells.values()].filter((c) => c.spec.host === h.metadata.name).length;
  return (
    <>
      <div className="detail-state">
        <State phase={h.status.state} />
        {h.spec.unschedulable && <span className="tag">cordoned</span>}
        {h.spec.draining && <span className="tag">draining</span>}
        {h.status.message && <span className="muted">{h.status.message}</span>}
      </div>
      <Facts
        rows={[
          ['capacity', `${h.status.capacity.cpu} cores · ${mib(h.status.capacity.memoryMiB)}`],
          ['overcommit', `cpu x${h.spec.overcommit?.cpu ?? 1} · memory x${h.spec.overcommit?.memory ?? 1}`],
          ['isolation', h.status.isolation.join(', ')],
          ['labels', Object.entries(h.spec.labels).map(([k, v]) => `${k}=${v}`).join(', ') || '-'],
          ['agent', h.status.agentVersion],
          ['heartbeat', `${time(h.status.lastHeartbeatAt)} (${age(h.status.lastHeartbeatAt)} ago)`],
          ['runs', `${n} instances · ${cells} cells`],
        ]}
      />
    </>
  );
}

function MachineDetails({ m }: { m: Machine }): React.JSX.Element {
  return (
    <>
      <div className="detail-state">
        <State phase={m.status.phase} />
        {m.status.reason && <span className="tag">{m.status.reason}</span>}
        {m.status.message && <span className="muted">{m.status.message}</span>}
      </div>
      <Facts
        rows={[
          ['host', m.status.host || '-'],
          ['size', `${m.spec.cpu} vCPU · ${mib(m.spec.memory)}`],
          ['boot', m.spec.disk ? `disk ${m.spec.disk.image}` : `kernel ${m.spec.kernel ?? '-'}`],
          ['running', m.spec.running ? 'yes (desired)' : 'no (stopped on request)'],
          ['restarts', String(m.status.restarts)],
          ['started', time(m.status.startedAt)],
        ]}
      />
      <Logs path={`/v1/tenants/${seg(m.metadata.tenant ?? '')}/machines/${seg(m.metadata.name)}/logs`} />
    </>
  );
}
