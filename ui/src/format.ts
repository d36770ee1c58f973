/** Display helpers: numbers, sizes, ages and the colour class of a state. Pure. */

/** CSS class of a phase/state: one colour per meaning, the same everywhere. */
export function stateClass(phase: string | undefined): string {
  switch (phase) {
    case 'Running':
    case 'Ready':
      return 's-ok';
    case 'Succeeded':
    case 'Stopped':
      return 's-done';
    case 'Pulling':
    case 'Starting':
    case 'Booting':
      return 's-start';
    case 'Pending':
      return 's-pending';
    case 'Backoff':
    case 'Cordoned':
    case 'Draining':
      return 's-warn';
    case 'Failed':
    case 'Lost':
    case 'NotReady':
      return 's-bad';
    case 'Stopping':
    case 'Retiring':
    case 'Deleted':
      return 's-stop';
    default:
      return 's-pending';
  }
}

/** The order states are listed in (problems first). */
export const PHASE_ORDER = ['Failed', 'Backoff', 'Pending', 'Pulling', 'Starting', 'Running', 'Stopping', 'Succeeded'] as const;

export function cores(n: number): string {
  return n >= 10 ? n.toFixed(0) : n >= 1 ? n.toFixed(2).replace(/\.?0+$/, '') : n.toFixed(3).replace(/\.?0+$/, '') || '0';
}

export function mib(n: number): string {
  if (n >= 1024) return `${(n / 1024).toFixed(n >= 10240 ? 0 : 1)} GiB`;
  return `${Math.round(n)} MiB`;
}

/** A short age: `42s`, `5m`, `3h`, `2d`. */
export function age(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 90) return `${s}s`;
  if (s < 5400) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

export function time(iso: string | undefined): string {
  if (!iso) return '-';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { hour12: false, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** CPU-microseconds (exact decimal string) to core-seconds. */
export function cpuSeconds(cpuUs: string): number {
  return Number(cpuUs) / 1e6;
}

/** Byte-milliseconds (exact decimal string) to MiB-seconds. */
export function mibSeconds(memByteMs: string): number {
  return Number(memByteMs) / (1024 * 1024 * 1000);
}

/** A compact number: 1234 -> 1.23k. */
export function compact(n: number): string {
  const a = Math.abs(n);
  if (a >= 1e9) return `${(n / 1e9).toFixed(2)}G`;
  if (a >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (a >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  if (a >= 100) return n.toFixed(0);
  if (a >= 1) return n.toFixed(2);
  return n === 0 ? '0' : n.toFixed(3);
}

export function pct(used: number, of: number): number {
  return of > 0 ? Math.min(100, (used / of) * 100) : 0;
}
