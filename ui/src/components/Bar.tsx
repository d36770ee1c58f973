/** A fill bar: used of total, with the figures beside it; over 100 % shows red. */
import { pct } from '../format';

export function Bar({ used, total, label, text, title }: { used: number; total: number; label?: string; text: string; title?: string }): React.JSX.Element {
  const p = pct(used, total);
  const level = total > 0 && used > total + 1e-9 ? 'over' : p >= 90 ? 'high' : p >= 70 ? 'mid' : 'low';
  return (
    <div className="bar" title={title ?? `${label ? `${label}: ` : ''}${text}`} role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={total} aria-valuenow={used}>
      {label && <span className="bar-label">{label}</span>}
      <span className="bar-track">
        <span className={`bar-fill ${level}`} style={{ width: `${p}%` }} />
      </span>
      <span className="bar-text">{text}</span>
    </div>
  );
}
