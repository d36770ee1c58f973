/**
 * A service in the details drawer, its rollout first: the current revision, replica counts
 * (updated, ready, available of `replicas`) and the `Progressing` condition, live from the
 * services watch the page already follows; the revision history (who made each revision and
 * when, from `GET …/services/NAME/rollout`, read again whenever the watched status shows a
 * new revision or a completed one). Tenant-admins and cluster-admins get the operations of
 * `carapace rollout`: undo to a chosen revision (after a confirmation), restart, pause and
 * resume; viewers see the same state and history without buttons (the API refuses them
 * anyway). Errors are shown with their code.
 */
import { useCallback, useEffect, useState } from 'react';
import type { Service } from '../../../src/model/objects.js';
import type { RevisionReport, RolloutReport } from '../../../src/model/rollout.js';
import { ApiError, seg } from '../api';
import { keyOf } from '../cluster';
import { age, cores, mib, time } from '../format';
import { templateChanges } from '../revisions';
import { canWrite, useCluster, useSession } from '../session';

type Op = 'undo' | 'restart' | 'pause' | 'resume';

/** Colour class of a Progressing reason (same palette as the states). */
function reasonClass(reason: string | undefined): string {
  switch (reason) {
    case 'RolloutComplete':
      return 's-ok';
    case 'NewReplicasRolling':
      return 's-start';
    case 'Paused':
    case 'RolledBack':
      return 's-warn';
    case 'ProgressDeadlineExceeded':
      return 's-bad';
    default:
      return 's-pending';
  }
}

function errorText(e: unknown): string {
  if (e instanceof ApiError) return `${e.code}: ${e.message}`;
  return String(e);
}

export function ServiceDetails({ s }: { s: Service }): React.JSX.Element {
  const { api, who, cluster } = useSession();
  const snap = useCluster();
  const write = canWrite(who);
  const tenant = s.metadata.tenant ?? '';
  const base = `/v1/tenants/${seg(tenant)}/services/${seg(s.metadata.name)}/rollout`;
  const [report, setReport] = useState<RolloutReport | undefined>(undefined);
  const [loadError, setLoadError] = useState<string | undefined>(undefined);
  const [busy, setBusy] = useState<string | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const [reload, setReload] = useState(0);
  const [to, setTo] = useState('');

  // The history changes only with a new revision, a completed one, or a new generation: read the report again then.
  const history = s.status.history ?? [];
  const key = `${s.metadata.generation}:${s.status.revision ?? 0}:${history.map((h) => `${h.revision}${h.completedAt ? '+' : ''}`).join(',')}:${reload}`;
  useEffect(() => {
    const ac = new AbortController();
    api
      .json<RolloutReport>(base, { signal: ac.signal })
      .then((r) => {
        setReport(r);
        setLoadError(undefined);
      })
      .catch((e: unknown) => {
        if (!ac.signal.aborted) setLoadError(errorText(e));
      });
    return () => ac.abort();
  }, [api, base, key]);

  const run = useCallback(
    (op: Op, question: string, toRevision?: number): void => {
      if (!window.confirm(question)) return;
      setBusy(op);
      setError(undefined);
      api
        .request(`${base}/${op}${toRevision !== undefined ? `?toRevision=${toRevision}` : ''}`, { method: 'POST' })
        .then(() => {
          cluster.refresh('services');
          setReload((n) => n + 1);
        })
        .catch((e: unknown) => setError(errorText(e)))
        .finally(() => setBusy(undefined));
    },
    [api, base, cluster],
  );

  const replicas = s.spec.replicas;
  const updated = s.status.updatedReplicas ?? 0;
  const ready = s.status.readyReplicas ?? s.status.ready;
  const available = s.status.availableReplicas ?? s.status.ready;
  const condition = s.status.conditions?.find((c) => c.type === 'Progressing');
  const paused = s.spec.rollout?.paused === true;
  const seen = s.status.observedGeneration === s.metadata.generation;
  const names = snap.tokenNames;
  const rows = report?.history ?? [];
  const summaryOf = (n: number): string => rows.find((r) => r.revision === n)?.summary ?? `revision ${n}`;

  const undoTo = (n: number): void => run('undo', `Undo ${keyOf(s)} to revision ${n}?\n\n${summaryOf(n)}\n\nIts replicas are replaced in waves by a new revision with this template.`, n);
  const submitUndo = (e: React.FormEvent): void => {
    e.preventDefault();
    const n = Number(to);
    if (to.trim() === '' || !Number.isInteger(n)) {
      setError('Give the revision number to return to (the history lists them).');
      return;
    }
    undoTo(n);
  };

  return (
    <>
      <div className="detail-state">
        <span className={s.status.ready >= replicas ? 'ok-text' : 'warn-text'}>
          {s.status.ready}/{replicas} ready
        </span>
        <span className="tag">{s.spec.isolation}</span>
        <span className="muted mono small ellipsis">{s.spec.image}</span>
      </div>
      <section
        className="rollout"
        aria-label="Rollout"
        data-rollout={keyOf(s)}
        data-revision={s.status.revision ?? ''}
        data-reason={condition?.reason ?? ''}
        data-updated={updated}
        data-ready={ready}
        data-available={available}
        data-replicas={replicas}
        data-observed={seen ? 'true' : 'false'}
      >
        <div className="panel-head">
          <h3>Rollout</h3>
          <span className="rollout-revision">
            revision <b data-current-revision>{s.status.revision ?? '-'}</b>
          </span>
          {paused && <span className="tag">paused</span>}
        </div>
        <div className="rollout-condition">
          {condition ? (
            <>
              <span className={`badge ${reasonClass(condition.reason)}`} data-condition-reason title={`Progressing=${condition.status} since ${time(condition.lastTransitionTime)}`}>
                {condition.reason}
              </span>{' '}
              <span className="muted" data-condition-message>
                {condition.message}
              </span>
            </>
          ) : (
            <span className="muted">No rollout status yet (the controller has not looked at this service since rollouts existed).</span>
          )}
          {!seen && <span className="muted small"> · the controller has not yet seen generation {s.metadata.generation}</span>}
        </div>
        <div className="rollout-meters">
          <Meter label="updated" n={updated} of={replicas} />
          <Meter label="ready" n={ready} of={replicas} />
          <Meter label="available" n={available} of={replicas} />
        </div>
        <p className="muted small">
          maxSurge {String(report?.settings.maxSurge ?? s.spec.rollout?.maxSurge ?? 1)} · maxUnavailable {String(report?.settings.maxUnavailable ?? s.spec.rollout?.maxUnavailable ?? 0)} · deadline{' '}
          {report?.settings.progressDeadlineSeconds ?? s.spec.rollout?.progressDeadlineSeconds ?? 600} s · automatic rollback {(report?.settings.autoRollback ?? s.spec.rollout?.autoRollback ?? true) ? 'on' : 'off'}
          {s.status.stableRevision !== undefined ? ` · last complete revision ${s.status.stableRevision}` : ''}
        </p>
        {write && (
          <div className="rollout-actions">
            <button type="button" disabled={busy !== undefined} data-rollout-op="restart" onClick={() => run('restart', `Restart ${keyOf(s)}? Every replica is replaced in waves (a new revision with the same template).`)}>
              Restart
            </button>
            {paused ? (
              <button type="button" disabled={busy !== undefined} data-rollout-op="resume" onClick={() => run('resume', `Resume the rollout of ${keyOf(s)}?`)}>
                Resume
              </button>
            ) : (
              <button type="button" disabled={busy !== undefined} data-rollout-op="pause" onClick={() => run('pause', `Pause the rollout of ${keyOf(s)}? No replica is replaced until it is resumed (scaling still happens).`)}>
                Pause
              </button>
            )}
            <form className="scale" onSubmit={submitUndo}>
              <label className="inline-label">
                undo to revision
                <input className="num" type="number" min={1} value={to} onChange={(e) => setTo(e.target.value)} aria-label="Revision to undo to" data-undo-revision />
              </label>
              <button type="submit" disabled={busy !== undefined} data-rollout-op="undo">
                Undo
              </button>
            </form>
          </div>
        )}
        {error && (
          <div className="form-error" role="alert" data-rollout-error>
            {error}
          </div>
        )}
      </section>
      <h3>Revisions</h3>
      {loadError && (
        <div className="form-error" role="alert">
          {loadError}
        </div>
      )}
      <table className="table revisions" data-revisions>
        <thead>
          <tr>
            <th>Rev</th>
            <th>When</th>
            <th>Who</th>
            <th>Template</th>
            {write && <th className="actions-col" />}
          </tr>
        </thead>
        <tbody>
          {[...rows].reverse().map((r) => (
            <RevisionRow key={r.revision} r={r} prev={rows[rows.indexOf(r) - 1]} who={r.changedBy ? (names.get(r.changedBy) ?? r.changedBy) : undefined} write={write} busy={busy !== undefined} onUndo={undoTo} />
          ))}
          {report === undefined && !loadError && (
            <tr>
              <td colSpan={5} className="muted">
                Loading…
              </td>
            </tr>
          )}
          {report !== undefined && rows.length === 0 && (
            <tr>
              <td colSpan={5} className="muted">
                No revisions recorded yet.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <h3>Service</h3>
      <dl className="facts">
        {(
          [
            ['group', s.spec.group],
            ['replicas', String(replicas)],
            ['request', `${cores(s.spec.cpu)} cpu · ${mib(s.spec.memory)}`],
            ['address', s.status.address ?? '-'],
            ['generation', `${s.metadata.generation} (seen ${s.status.observedGeneration})`],
            ['age', age(s.metadata.createdAt)],
          ] as const
        ).map(([k, v]) => (
          <div key={k} className="fact">
            <dt>{k}</dt>
            <dd>{v}</dd>
          </div>
        ))}
      </dl>
    </>
  );
}

/** One count of the rollout against the replicas wanted. */
function Meter({ label, n, of }: { label: string; n: number; of: number }): React.JSX.Element {
  const p = of > 0 ? Math.min(100, Math.round((n / of) * 100)) : n > 0 ? 100 : 0;
  return (
    <div className="bar meter" role="meter" aria-label={`${label} replicas`} aria-valuemin={0} aria-valuemax={of} aria-valuenow={n} data-meter={label}>
      <span className="bar-label">{label}</span>
      <span className="bar-track">
        <span className={`bar-fill ${n >= of ? 'full' : 'part'}`} style={{ width: `${p}%` }} />
      </span>
      <span className="bar-text">
        {n}/{of}
      </span>
    </div>
  );
}

function RevisionRow({ r, prev, who, write, busy, onUndo }: { r: RevisionReport; prev: RevisionReport | undefined; who: string | undefined; write: boolean; busy: boolean; onUndo: (n: number) => void }): React.JSX.Element {
  const changes = templateChanges(prev?.template, r.template);
  const when = r.changedAt ?? r.createdAt;
  return (
    <tr data-revision={r.revision} data-current={r.current ? 'true' : 'false'} className={r.current ? 'current' : undefined}>
      <td className="mono strong">
        {r.revision}
        {r.current ? '*' : ''}
      </td>
      <td title={time(when)}>{age(when)} ago</td>
      <td className="mono small" data-changed-by title={r.changedBy}>
        {who ?? <span className="muted">unknown</span>}
      </td>
      <td className="small" title={r.summary}>
        <span className="tag">{r.cause}</span> <span className="mono">{r.template.image.split('/').pop()}</span>
        {changes.length > 0 && <span className="muted"> · {changes.join(', ')}</span>}
        {r.completedAt ? null : <span className="muted"> · not completed</span>}
      </td>
      {write && (
        <td className="actions-col">
          {!r.current && (
            <button type="button" className="small" disabled={busy} data-undo-to={r.revision} onClick={() => onUndo(r.revision)}>
              Undo to {r.revision}
            </button>
          )}
        </td>
      )}
    </tr>
  );
}
