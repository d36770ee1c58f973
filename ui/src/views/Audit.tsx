/**
 * The audit log: records from `GET /v1/audit/records` (the server narrows a tenant token to
 * its tenant and applies the time window and, for cluster-admins, the tenant), filtered here
 * by who and what, newest first in a virtualised list, with new records appended live from
 * the event stream. Cluster-admins also see the hash chain's verification result.
 */
import { useEffect, useMemo, useRef, useState } from 'react';
import { useVirtualizer } from '@tanstack/react-virtual';
import { isAdmin, useCluster, useSession } from '../session';
import type { AuditRecord } from '../cluster';
import { time } from '../format';
import { seg } from '../api';
import { targetText } from './Topology';

interface VerifyResult {
  ok: boolean;
  records: number;
  lastSeq: number;
  checkpointedSeq: number;
  problems: { seq: number; kind: string; message: string }[];
}

const ROW = 28;

/** `datetime-local` value (local time) to ISO 8601, or undefined when empty. */
function isoOf(local: string): string | undefined {
  if (!local) return undefined;
  const t = new Date(local);
  return Number.isNaN(t.getTime()) ? undefined : t.toISOString();
}

export function Audit(): React.JSX.Element {
  const { api, who } = useSession();
  const snap = useCluster();
  const admin = isAdmin(who);
  const [who_, setWho] = useState('');
  const [what, setWhat] = useState('');
  const [tenant, setTenant] = useState('');
  const [since, setSince] = useState('');
  const [until, setUntil] = useState('');
  const [loaded, setLoaded] = useState<AuditRecord[] | undefined>(undefined);
  const [loadedAt, setLoadedAt] = useState(0);
  const [error, setError] = useState<string | undefined>(undefined);
  const [verify, setVerify] = useState<VerifyResult | string | undefined>(undefined);
  useEffect(() => {
    const ac = new AbortController();
    const q = new URLSearchParams({ format: 'jsonl' });
    const s = isoOf(since);
    const u = isoOf(until);
    if (s) q.set('since', s);
    if (u) q.set('until', u);
    if (admin && tenant) q.set('tenant', tenant);
    api
      .text(`/v1/audit/records?${q.toString()}`, { signal: ac.signal })
      .then((text) => {
        const recs = text
          .split('\n')
          .filter((l) => l.trim() !== '')
          .map((l) => JSON.parse(l) as AuditRecord); // one audit record per line
        setLoaded(recs.reverse());
        setLoadedAt(Date.now());
        setError(undefined);
      })
      .catch((e: unknown) => {
        if (!ac.signal.aborted) setError((e as Error).message);
      });
    return () => ac.abort();
  }, [api, admin, tenant, since, until]);

  useEffect(() => {
    if (!admin) return;
    api
      .json<VerifyResult>('/v1/audit/verify')
      .then(setVerify)
      .catch((e: unknown) => setVerify((e as Error).message));
  }, [api, admin, loadedAt]);

  // Records committed since the load, from the live stream (when the window is open-ended).
  const records = useMemo(() => {
    if (!loaded) return [];
    if (until) return loaded;
    const newest = loaded[0]?.seq ?? 0;
    const fresh = snap.feed
      .flatMap((e) => (e.type === 'audit' ? [e.record] : []))
      .filter((r) => r.seq > newest && (!admin || !tenant || r.actor.tenant === tenant || r.target.tenant === tenant));
    return [...fresh, ...loaded];
  }, [loaded, snap.feed, until, admin, tenant]);

  const actions = useMemo(() => [...new Set(records.map((r) => r.action))].sort(), [records]);
  const names = snap.tokenNames;
  const w = who_.trim().toLowerCase();
  const rows = useMemo(
    () =>
      records.filter((r) => {
        if (what && r.action !== what) return false;
        if (w === '') return true;
        return `${r.actor.kind} ${r.actor.id} ${names.get(r.actor.id) ?? ''} ${r.actor.tenant ?? ''} ${r.source ?? ''}`.toLowerCase().includes(w);
      }),
    [records, what, w, names],
  );

  const scroller = useRef<HTMLDivElement>(null);
  // eslint-disable-next-line react-hooks/incompatible-library -- useVirtualizer's functions are not memoised by the compiler; this component does not rely on that
  const v = useVirtualizer({ count: rows.length, getScrollElement: () => scroller.current, estimateSize: () => ROW, overscan: 12 });

  return (
    <section className="audit" aria-label="Audit log">
      <form className="toolbar" onSubmit={(e) => e.preventDefault()} aria-label="Audit filters">
        <input data-filter className="filter short" type="search" placeholder="Who (/)" value={who_} onChange={(e) => setWho(e.target.value)} aria-label="Who" />
        <select value={what} onChange={(e) => setWhat(e.target.value)} aria-label="What">
          <option value="">Every action</option>
          {actions.map((a) => (
            <option key={a} value={a}>
              {a}
            </option>
          ))}
        </select>
        {admin ? (
          <select value={tenant} onChange={(e) => setTenant(e.target.value)} aria-label="Tenant">
            <option value="">Every tenant</option>
            {[...snap.tenants.keys()].sort().map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        ) : (
          <span className="tag">tenant {who.tenant}</span>
        )}
        <label className="inline-label">
          from <input type="datetime-local" value={since} onChange={(e) => setSince(e.target.value)} aria-label="Since" />
        </label>
        <label className="inline-label">
          to <input type="datetime-local" value={until} onChange={(e) => setUntil(e.target.value)} aria-label="Until" />
        </label>
        <span className="muted" data-count="audit">
          {rows.length} of {records.length} records
        </span>
        <a className="button-link" href="#/audit" onClick={(e) => {
          e.preventDefault();
          const q = new URLSearchParams({ format: 'jsonl' });
          if (admin && tenant) q.set('tenant', tenant);
          void api.text(`/v1/audit/records?${q.toString()}`).then((t) => {
            const url = URL.createObjectURL(new Blob([t], { type: 'application/x-ndjson' }));
            const a = document.createElement('a');
            a.href = url;
            a.download = `carapace-audit${tenant ? `-${seg(tenant)}` : ''}.jsonl`;
            a.click();
            URL.revokeObjectURL(url);
          });
        }}>
          Export JSONL
        </a>
      </form>
      {admin && verify !== undefined && (
        <div className={`verify ${typeof verify === 'string' || !verify.ok ? 'bad' : 'ok'}`} role="status" data-verify={typeof verify === 'string' ? 'error' : verify.ok ? 'ok' : 'broken'}>
          {typeof verify === 'string' ? (
            <>Verification failed to run: {verify}</>
          ) : verify.ok ? (
            <>
              <b>Chain intact.</b> {verify.records} records verified (last seq {verify.lastSeq}); signed checkpoints cover up to seq {verify.checkpointedSeq}.
            </>
          ) : (
            <>
              <b>Chain broken:</b> {verify.problems.length} problems.{' '}
              {verify.problems.slice(0, 5).map((p) => (
                <span key={`${p.seq}-${p.kind}`} className="problem">
                  seq {p.seq} ({p.kind}): {p.message}
                </span>
              ))}
            </>
          )}
        </div>
      )}
      {error && <div className="form-error">{error}</div>}
      <div className="vtable audit-table" role="table" aria-label="Audit records" aria-rowcount={rows.length}>
        <div className="vrow vhead" role="row">
          <span role="columnheader">Seq</span>
          <span role="columnheader">Time</span>
          <span role="columnheader">Who</span>
          <span role="columnheader">Action</span>
          <span role="columnheader">Target</span>
          <span role="columnheader">Outcome</span>
          <span role="columnheader">Detail</span>
        </div>
        <div className="vbody" ref={scroller}>
          {loaded === undefined && <div className="muted pad">Loading…</div>}
          <div style={{ height: `${v.getTotalSize()}px`, position: 'relative' }}>
            {v.getVirtualItems().map((vr) => {
              const r = rows[vr.index];
              if (!r) return null;
              const name = names.get(r.actor.id);
              const detail = r.detail ? JSON.stringify(r.detail) : '';
              return (
                <div key={r.seq} className={`vrow ${r.outcome === 'failure' ? 'failed' : ''}`} role="row" data-seq={r.seq} style={{ transform: `translateY(${vr.start}px)`, height: `${ROW}px` }}>
                  <span role="cell" className="mono muted">
                    {r.seq}
                  </span>
                  <span role="cell">{time(r.time)}</span>
                  <span role="cell" title={`${r.actor.kind} ${r.actor.id}${r.source ? ` from ${r.source}` : ''}`}>
                    {r.actor.kind === 'system' ? <span className="tag">system</span> : null} {name ?? r.actor.id}
                    {r.actor.tenant ? <span className="muted"> · {r.actor.tenant}</span> : null}
                  </span>
                  <span role="cell">
                    <span className="tag">{r.action}</span>
                  </span>
                  <span role="cell" className="mono ellipsis" title={`${r.target.kind} ${r.target.tenant ?? ''}/${r.target.name}`}>
                    {targetText(r.target)}
                  </span>
                  <span role="cell" className={r.outcome === 'failure' ? 'bad-text' : 'ok-text'}>
                    {r.outcome}
                  </span>
                  <span role="cell" className="muted ellipsis mono" title={detail}>
                    {detail}
                  </span>
                </div>
              );
            })}
          </div>
        </div>
      </div>
    </section>
  );
}
