/**
 * Services, jobs, machines, volumes and their snapshots with everyday actions for tenant-admins and cluster-admins:
 * a service's name opens its details and rollout (views/Rollout.tsx); scale a service (an apply of its stored manifest with new replicas, guarded by its
 * resourceVersion) and delete. Viewers see the same tables without the actions.
 */
import { useMemo, useState } from 'react';
import type { Job, Machine, Service } from '../../../src/model/objects.js';
import type { Volume } from '../../../src/model/volumes.js';
import type { VolumeSnapshot } from '../../../src/model/volume-snapshots.js';
import { ApiError, seg } from '../api';
import { State } from '../components/State';
import { age, cores, mib } from '../format';
import { canWrite, useCluster, useSession } from '../session';
import { keyOf } from '../cluster';

function errorText(e: unknown): string {
  if (e instanceof ApiError) return `${e.code}: ${e.message}${e.details.length ? ` (${e.details.map((d) => `${d.path}: ${d.message}`).join('; ')})` : ''}`;
  return String(e);
}

/** The stored object as a manifest again: what `apply` takes. */
function manifestOf(o: Service | Job | Machine, spec: Record<string, unknown>): unknown {
  return {
    apiVersion: 'carapace/v1',
    kind: o.kind,
    metadata: { name: o.metadata.name, tenant: o.metadata.tenant, labels: o.metadata.labels, resourceVersion: o.metadata.resourceVersion },
    spec,
  };
}

function pathOf(o: { kind: string; metadata: { name: string; tenant?: string } }): string {
  return `/v1/tenants/${seg(o.metadata.tenant ?? '')}/${o.kind.toLowerCase()}s/${seg(o.metadata.name)}`;
}

/** The objects whose `tenant/name` contains `q`, by name. */
function filterSorted<T extends { metadata: { name: string; tenant?: string } }>(m: ReadonlyMap<string, T>, q: string): T[] {
  return [...m.values()].filter((o) => q === '' || keyOf(o).toLowerCase().includes(q)).sort((a, b) => keyOf(a).localeCompare(keyOf(b), undefined, { numeric: true }));
}

export function Workloads(): React.JSX.Element {
  const snap = useCluster();
  const { who } = useSession();
  const write = canWrite(who);
  const [text, setText] = useState('');
  const q = text.trim().toLowerCase();
  const services = useMemo(() => filterSorted(snap.services, q), [snap.services, q]);
  const jobs = useMemo(() => filterSorted(snap.jobs, q), [snap.jobs, q]);
  const machines = useMemo(() => filterSorted(snap.machines, q), [snap.machines, q]);
  const volumes = useMemo(() => filterSorted(snap.volumes, q), [snap.volumes, q]);
  const snapshots = useMemo(() => filterSorted(snap.volumesnapshots, q), [snap.volumesnapshots, q]);
  const secrets = useMemo(() => filterSorted(snap.secrets, q), [snap.secrets, q]);
  const configs = useMemo(() => filterSorted(snap.configs, q), [snap.configs, q]);

  return (
    <section className="workloads" aria-label="Workloads">
      <div className="toolbar">
        <input data-filter className="filter" type="search" placeholder="Filter by tenant/name (/)" value={text} onChange={(e) => setText(e.target.value)} aria-label="Filter workloads" />
        {!write && <span className="muted">Read-only ({who.role})</span>}
      </div>
      <h2>
        Services <span className="muted">{services.length}</span>
      </h2>
      <table className="table">
        <thead>
          <tr>
            <th>Service</th>
            <th>Ready</th>
            <th>Rollout</th>
            <th>Isolation</th>
            <th>Group</th>
            <th>Image</th>
            <th>Request</th>
            <th>Age</th>
            {write && <th className="actions-col">Actions</th>}
          </tr>
        </thead>
        <tbody>
          {services.map((s) => (
            <ServiceRow key={keyOf(s)} s={s} write={write} />
          ))}
          {services.length === 0 && (
            <tr>
              <td colSpan={9} className="muted">
                No services.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <h2>
        Jobs <span className="muted">{jobs.length}</span>
      </h2>
      <table className="table">
        <thead>
          <tr>
            <th>Job</th>
            <th>State</th>
            <th>Done</th>
            <th>Isolation</th>
            <th>Image</th>
            <th>Age</th>
            {write && <th className="actions-col">Actions</th>}
          </tr>
        </thead>
        <tbody>
          {jobs.map((j) => (
            <tr key={keyOf(j)} data-job={keyOf(j)}>
              <td className="mono strong">{keyOf(j)}</td>
              <td>
                <State phase={j.status.phase} title={j.status.reason} />
              </td>
              <td>
                {j.status.succeeded}/{j.spec.completions}
                {j.status.failed > 0 ? <span className="muted"> · {j.status.failed} failed</span> : null}
              </td>
              <td>{j.spec.isolation}</td>
              <td className="mono ellipsis">{j.spec.image}</td>
              <td>{age(j.metadata.createdAt)}</td>
              {write && (
                <td className="actions-col">
                  <DeleteButton o={j} />
                </td>
              )}
            </tr>
          ))}
          {jobs.length === 0 && (
            <tr>
              <td colSpan={7} className="muted">
                No jobs.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <h2>
        Machines <span className="muted">{machines.length}</span>
      </h2>
      <table className="table">
        <thead>
          <tr>
            <th>Machine</th>
            <th>State</th>
            <th>Host</th>
            <th>Size</th>
            <th>Restarts</th>
            <th>Age</th>
            {write && <th className="actions-col">Actions</th>}
          </tr>
        </thead>
        <tbody>
          {machines.map((m) => (
            <tr key={keyOf(m)} data-machine={keyOf(m)}>
              <td className="mono strong">{keyOf(m)}</td>
              <td>
                <State phase={m.status.phase} title={m.status.message} />
              </td>
              <td>{m.status.host || '-'}</td>
              <td>
                {m.spec.cpu} vCPU · {mib(m.spec.memory)}
              </td>
              <td>{m.status.restarts}</td>
              <td>{age(m.metadata.createdAt)}</td>
              {write && (
                <td className="actions-col">
                  <DeleteButton o={m} />
                </td>
              )}
            </tr>
          ))}
          {machines.length === 0 && (
            <tr>
              <td colSpan={7} className="muted">
                No machines.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <h2>
        Volumes <span className="muted">{volumes.length}</span>
      </h2>
      <table className="table" data-table="volumes">
        <thead>
          <tr>
            <th>Volume</th>
            <th>Size</th>
            <th>Used</th>
            <th>Host</th>
            <th>Attached to</th>
            <th>Age</th>
            {write && <th className="actions-col">Actions</th>}
          </tr>
        </thead>
        <tbody>
          {volumes.map((v) => (
            <tr key={keyOf(v)} data-volume={keyOf(v)}>
              <td className="mono strong">{keyOf(v)}</td>
              <td>{v.spec.size}</td>
              <td>{v.status.usedBytes !== undefined ? mib(Math.ceil(v.status.usedBytes / 1_048_576)) : '-'}</td>
              <td title={v.status.message}>{v.status.host ?? (v.spec.host ? `${v.spec.host} (pinned)` : 'not bound')}</td>
              <td className="mono">{v.status.attachedTo.join(', ') || '-'}</td>
              <td>{age(v.metadata.createdAt)}</td>
              {write && (
                <td className="actions-col">
                  <DeleteButton o={v} />
                </td>
              )}
            </tr>
          ))}
          {volumes.length === 0 && (
            <tr>
              <td colSpan={7} className="muted">
                No volumes.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <h2>
        Volume snapshots <span className="muted">{snapshots.length}</span>
      </h2>
      <table className="table" data-table="volumesnapshots">
        <thead>
          <tr>
            <th>Snapshot</th>
            <th>Volume</th>
            <th>Phase</th>
            <th>Size</th>
            <th>Host</th>
            <th>Age</th>
            {write && <th className="actions-col">Actions</th>}
          </tr>
        </thead>
        <tbody>
          {snapshots.map((x) => (
            <tr key={keyOf(x)} data-volumesnapshot={keyOf(x)}>
              <td className="mono strong">{keyOf(x)}</td>
              <td className="mono">{x.spec.volume}</td>
              <td title={x.status.message}>{x.status.phase === 'Failed' ? `Failed (${x.status.reason ?? ''})` : x.status.phase}</td>
              <td>{x.status.sizeBytes !== undefined ? mib(Math.ceil(x.status.sizeBytes / 1_048_576)) : '-'}</td>
              <td>{x.status.host ?? '-'}</td>
              <td>{age(x.metadata.createdAt)}</td>
              {write && (
                <td className="actions-col">
                  <DeleteButton o={x} />
                </td>
              )}
            </tr>
          ))}
          {snapshots.length === 0 && (
            <tr>
              <td colSpan={7} className="muted">
                No volume snapshots.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <DataTable title="Secrets" rows={secrets.map((x) => ({ key: keyOf(x), keys: x.spec.keys.map((k) => `${k.key} (${k.size} B)`), onChange: x.spec.onChange, created: x.metadata.createdAt }))} />
      <DataTable title="Configs" rows={configs.map((x) => ({ key: keyOf(x), keys: Object.keys(x.spec.data).sort(), onChange: x.spec.onChange, created: x.metadata.createdAt }))} />
    </section>
  );
}

function ServiceRow({ s, write }: { s: Service; write: boolean }): React.JSX.Element {
  const { api, cluster, select } = useSession();
  const [replicas, setReplicas] = useState(String(s.spec.replicas));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>(undefined);
  const [shown, setShown] = useState(s.spec.replicas);
  // Follow changes made elsewhere (another user, the CLI) unless the field is being edited.
  if (shown !== s.spec.replicas) {
    setShown(s.spec.replicas);
    setReplicas(String(s.spec.replicas));
  }
  const scale = (e: React.FormEvent): void => {
    e.preventDefault();
    const n = Number(replicas);
    setBusy(true);
    setError(undefined);
    // Read it fresh, so the apply carries the current resourceVersion and every other field as stored.
    api
      .json<Service>(pathOf(s))
      .then((cur) => api.request(pathOf(s), { method: 'PUT', body: manifestOf(cur, { ...cur.spec, replicas: Number.isFinite(n) && replicas.trim() !== '' ? n : replicas }) }))
      .then(() => cluster.refresh('services'))
      .catch((err: unknown) => setError(errorText(err)))
      .finally(() => setBusy(false));
  };
  const k = keyOf(s);
  const progressing = s.status.conditions?.find((c) => c.type === 'Progressing');
  return (
    <tr data-service={k}>
      <td className="mono strong">
        <button type="button" className="link mono strong" data-open-service={k} title="Details and rollout" onClick={() => select({ kind: 'service', key: k })}>
          {k}
        </button>
      </td>
      <td>
        <span className={s.status.ready >= s.spec.replicas ? 'ok-text' : 'warn-text'}>
          {s.status.ready}/{s.spec.replicas}
        </span>
      </td>
      <td className="small" title={progressing?.message}>
        {s.status.revision !== undefined ? `rev ${s.status.revision}` : '-'}
        {progressing && progressing.reason !== 'RolloutComplete' ? <span className="muted"> · {progressing.reason}</span> : null}
      </td>
      <td>{s.spec.isolation}</td>
      <td>{s.spec.group}</td>
      <td className="mono ellipsis" title={s.spec.image}>
        {s.spec.image}
      </td>
      <td>
        {cores(s.spec.cpu)} cpu · {mib(s.spec.memory)}
      </td>
      <td>{age(s.metadata.createdAt)}</td>
      {write && (
        <td className="actions-col">
          <form className="scale" onSubmit={scale}>
            <label className="sr-only" htmlFor={`rep-${k}`}>
              Replicas of {k}
            </label>
            <input id={`rep-${k}`} className="num" type="number" min={0} value={replicas} onChange={(e) => setReplicas(e.target.value)} aria-label={`Replicas of ${k}`} />
            <button type="submit" disabled={busy || replicas === String(s.spec.replicas)}>
              Scale
            </button>
            <DeleteButton o={s} />
          </form>
          {error && (
            <div className="form-error" role="alert">
              {error}
            </div>
          )}
        </td>
      )}
    </tr>
  );
}

function DeleteButton({ o }: { o: Service | Job | Machine | Volume | VolumeSnapshot }): React.JSX.Element {
  const { api, cluster } = useSession();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>(undefined);
  const del = (): void => {
    const question = o.kind === 'Volume' ? `Delete volume ${keyOf(o)} and its data?` : o.kind === 'VolumeSnapshot' ? `Delete volume snapshot ${keyOf(o)} and its copy?` : `Delete ${o.kind.toLowerCase()} ${keyOf(o)}? Its instances are stopped.`;
    if (!window.confirm(question)) return;
    setBusy(true);
    api
      .request(`${pathOf(o)}?resourceVersion=${o.metadata.resourceVersion}`, { method: 'DELETE' })
      .then(() => cluster.refresh(o.kind === 'Service' ? 'services' : o.kind === 'Job' ? 'jobs' : o.kind === 'Volume' ? 'volumes' : o.kind === 'VolumeSnapshot' ? 'volumesnapshots' : 'machines'))
      .catch((err: unknown) => setError(errorText(err)))
      .finally(() => setBusy(false));
  };
  return (
    <>
      <button type="button" className="danger" disabled={busy} onClick={del}>
        Delete
      </button>
      {error && (
        <span className="form-error inline" role="alert">
          {error}
        </span>
      )}
    </>
  );
}

/**
 * Secrets and configs by name and keys only: the API never returns a secret's values, and
 * the dashboard shows no config values either (they are one `get` away for who may read them).
 */
function DataTable({ title, rows }: { title: string; rows: { key: string; keys: string[]; onChange: string; created: string }[] }): React.JSX.Element {
  return (
    <>
      <h2>
        {title} <span className="muted">{rows.length}</span>
      </h2>
      <table className="table" aria-label={title}>
        <thead>
          <tr>
            <th>{title.slice(0, -1)}</th>
            <th>Keys</th>
            <th>On change</th>
            <th>Age</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.key}>
              <td className="mono">{r.key}</td>
              <td>{r.keys.join(', ') || <span className="muted">none</span>}</td>
              <td>{r.onChange}</td>
              <td>{age(r.created)}</td>
            </tr>
          ))}
          {rows.length === 0 && (
            <tr>
              <td colSpan={4} className="muted">
                No {title.toLowerCase()}.
              </td>
            </tr>
          )}
        </tbody>
      </table>
    </>
  );
}
