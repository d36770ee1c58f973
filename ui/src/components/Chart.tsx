/**
 * A small time-series chart drawn as SVG (no chart library): one series over time buckets,
 * with its own scale, the latest (or hovered) value, and the window's start and end times.
 */
import { useState } from 'react';

export interface Series {
  name: string;
  unit: string;
  values: number[];
  className: string;
}

const fmtT = (t: number): string => new Date(t).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', hour12: false });
const fmtV = (v: number): string => (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toFixed(3));

export function Chart({ times, series, height = 120 }: { times: number[]; series: Series; height?: number }): React.JSX.Element {
  const [hover, setHover] = useState<number | undefined>(undefined);
  const W = 600;
  const H = height;
  const top = 6;
  const n = times.length;
  const x = (i: number): number => (n <= 1 ? 0 : (i / (n - 1)) * W);
  const max = Math.max(...series.values, 1e-9);
  const y = (v: number): number => top + (1 - v / max) * (H - top);
  const pts = series.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  const shown = hover ?? n - 1;
  const value = series.values[shown];
  const peak = Math.max(...series.values, 0);
  return (
    <figure className={`chart ${series.className}`} data-chart={series.name}>
      <figcaption className="chart-legend">
        <span className="legend">
          <i /> {series.name}
        </span>
        <b>{value === undefined ? '-' : fmtV(value)}</b> <span className="muted">{series.unit}</span>
        <span className="muted">{hover !== undefined && times[hover] !== undefined ? `at ${fmtT(times[hover])}` : 'latest'}</span>
        <span className="muted right">peak {fmtV(peak)}</span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={`${series.name} over time`} onMouseLeave={() => setHover(undefined)}>
        {[0.25, 0.5, 0.75].map((f) => (
          <line key={f} className="grid" x1={0} x2={W} y1={top + f * (H - top)} y2={top + f * (H - top)} />
        ))}
        {n > 0 && <polygon className="area" points={`0,${H} ${pts} ${W},${H}`} />}
        <polyline className="line" points={pts} />
        {times.map((t, i) => (
          <rect key={t} x={x(i) - W / Math.max(n, 1) / 2} y={0} width={W / Math.max(n, 1)} height={H} className="hit" onMouseEnter={() => setHover(i)} />
        ))}
        {hover !== undefined && <line className="cursor" x1={x(hover)} x2={x(hover)} y1={0} y2={H} />}
      </svg>
      {n > 1 && (
        <div className="chart-axis muted">
          <span>{fmtT((times[0] ?? 0) - ((times[1] ?? 0) - (times[0] ?? 0)))}</span>
          <span>{fmtT(times[n - 1] ?? 0)}</span>
        </div>
      )}
    </figure>
  );
}
