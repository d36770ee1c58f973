/**
 * Every instance the token can see, in one virtualised table (only the rows on screen are in
 * the page, so thousands stay fast), with a text filter, a state filter and sorting. Rows
 * update live from the watch stream and open the details drawer.
 */
import { useMemo, useRef, useState } from 'react';
import { useVirtualizer } from '@tanstack/react-virtual';
import type { Instance } from '../../../src/model/objects.js';
import { State } from '../components/State';
import { age, cores, mib, PHASE_ORDER } from '../format';
import { useCluster, useSession } from '../session';
import { keyOf } from '../cluster';

type SortKey = 'name' | 'phase' | 'host' | 'age' | 'restarts';

const ROW = 28;

function compare(a: Instance, b: Instance, key: SortKey): number {
  switch (key) {
    case 'phase':
      return a.status.phase.localeCompare(b.status.phase);
    case 'host':
      return a.spec.host.localeCompare(b.spec.host);
    case 'age':
      return (b.metadata.createdAt ?? '').localeCompare(a.metadata.createdAt ?? '');
    case 'restarts':
      return b.status.restarts - a.status.restarts;
    default:
      return 0;
  }
}

export function Instances(): React.JSX.Element {
  const snap = useCluster();
  const { select } = useSession();
  const [text, setText] = useState('');
  const [phase, setPhase] = useState('');
  const [sort, setSort] = useState<SortKey>('name');
  const q = text.trim().toLowerCase();
  const rows = useMemo(() => {
    const out = [...snap.instances.values()].filter((i) => {
      if (phase !== '' && i.status.phase !== phase) return false;
      if (q === '') return true;
      return `${keyOf(i)} ${i.spec.owner.name} ${i.spec.host} ${i.spec.cell ?? ''} ${i.spec.container.isolation} ${i.status.reason ?? ''}`.toLowerCase().includes(q);
    });
    out.sort((a, b) => compare(a, b, sort) || keyOf(a).localeCompare(keyOf(b), undefined, { numeric: true }));
    return out;
  }, [snap.instances, q, phase, sort]);

  const scroller = useRef<HTMLDivElement>(null);
  // useVirtualizer returns functions the React Compiler cannot memoise; this component does not rely on it.
  // eslint-disable-next-line react-hooks/incompatible-library
  const v = useVirtualizer({ count: rows.length, getScrollElement: () => scroller.current, estimateSize: () => ROW, overscan: 12 });
  const head = (key: SortKey, label: string): React.JSX.Element => (
    <button type="button" className={`th-btn ${sort === key ? 'on' : ''}`} onClick={() => setSort(key)} aria-pressed={sort === key}>
      {label}
    </button>
  );

  return (
    <section className="instances" aria-label="Instances">
      <div className="toolbar">
        <input data-filter className="filter" type="search" placeholder="Filter by tenant, name, host, cell, reason (/)" value={text} onChange={(e) => setText(e.target.value)} aria-label="Filter instances" />
        <select value={phase} onChange={(e) => setPhase(e.target.value)} aria-label="State">
          <option value="">Every state</option>
          {PHASE_ORDER.map((p) => (
            <option key={p} value={p}>
              {p}
            </option>
          ))}
        </select>
        <span className="muted" data-count="rows">
          {rows.length === snap.instances.size ? `${rows.length} instances` : `${rows.length} of ${snap.instances.size} instances`}
        </span>
      </div>
      <div className="vtable" role="table" aria-label="Instances" aria-rowcount={rows.length}>
        <div className="vrow vhead" role="row">
          <span role="columnheader">{head('phase', 'State')}</span>
          <span role="columnheader">{head('name', 'Instance')}</span>
          <span role="columnheader">Owner</span>
          <span role="columnheader">Isolation</span>
          <span role="columnheader">{head('host', 'Host')}</span>
          <span role="columnheader">Cell</span>
          <span role="columnheader">Request</span>
          <span role="columnheader">{head('restarts', 'Restarts')}</span>
          <span role="columnheader">{head('age', 'Age')}</span>
          <span role="columnheader">Reason</span>
        </div>
        <div className="vbody" ref={scroller} data-testid="instances-scroller">
          <div style={{ height: `${v.getTotalSize()}px`, position: 'relative' }}>
            {v.getVirtualItems().map((r) => {
              const i = rows[r.index];
              if (!i) return null;
              const k = keyOf(i);
              return (
                <div
                  key={k}
                  className="vrow"
                  role="row"
                  tabIndex={0}
                  data-row={k}
                  aria-rowindex={r.index + 1}
                  style={{ transform: `translateY(${r.start}px)`, height: `${ROW}px` }}
                  onClick={() => select({ kind: 'instance', key: k })}
                  onKeyDown={(e) => {
                    if (e.key === 'Enter') select({ kind: 'instance', key: k });
                    if (e.key === 'ArrowDown') (e.currentTarget.nextElementSibling as HTMLElement | null)?.focus(); // rows are HTMLElements
                    if (e.key === 'ArrowUp') (e.currentTarget.previousElementSibling as HTMLElement | null)?.focus();
                  }}
                >
                  <span role="cell">
                    <State phase={i.status.phase} />
                  </span>
                  <span role="cell" className="mono strong">
                    {k}
                  </span>
                  <span role="cell">
                    {i.spec.owner.kind.toLowerCase()}/{i.spec.owner.name}
                  </span>
                  <span role="cell">{i.spec.container.isolation}</span>
                  <span role="cell">{i.spec.host || '-'}</span>
                  <span role="cell" className="mono">
                    {i.spec.cell ?? '-'}
                  </span>
                  <span role="cell">
                    {cores(i.spec.container.cpu)} cpu · {mib(i.spec.container.memory)}
                  </span>
                  <span role="cell">{i.status.restarts}</span>
                  <span role="cell">{age(i.metadata.createdAt)}</span>
                  <span role="cell" className="muted ellipsis" title={i.status.message}>
                    {i.status.reason ?? ''}
                    {i.status.message ? ` · ${i.status.message}` : ''}
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
