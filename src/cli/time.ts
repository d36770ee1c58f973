/**
 * The one parser of the CLI's time options, so every command takes the same forms:
 * - a duration (`--ttl`, `--timeout`): `90s`, `30m`, `24h`, `7d`, or a plain number of seconds;
 * - a point in time (`--since`, `--until`): an ISO 8601 time, a duration ago (`10m`), or `now`.
 * Points are turned into ISO 8601 here, so the API takes one form only. Pure apart from the
 * clock, which callers (and tests) may pass.
 */
import { CliError } from './client.js';

const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
/** A whole number with an optional unit; a bare number counts seconds. */
const DURATION_RE = /^(\d{1,9})(s|m|h|d)?$/;

/** Examples of durations with a unit, for help texts and error messages. */
export const DURATION_EXAMPLES = '90s, 30m, 24h, 7d';
/** The forms a duration takes, for help texts and error messages. */
export const DURATION_FORMS = `${DURATION_EXAMPLES}, or a number of seconds`;

/** The milliseconds of `v` (a duration as above), or CARAPACE_E_BAD_QUERY naming `flag`. */
export function durationMs(v: string, flag: string): number {
  const m = DURATION_RE.exec(v.trim());
  if (!m) throw new CliError('CARAPACE_E_BAD_QUERY', `${flag} must be a duration (${DURATION_FORMS}), got "${v}"`, [{ path: flag, message: `"${v}" is not a duration` }]);
  const unit = (m[2] ?? 's') as keyof typeof UNIT_MS; // the regex admits only these units
  return Number(m[1]) * UNIT_MS[unit];
}

/**
 * The ISO 8601 time `v` names: `now`, a duration ago (`10m`: ten minutes before `now`), or an
 * ISO 8601 time. A bare number is not a time (it would be read as a year): it is refused.
 */
export function timeArg(v: string, flag: string, now: number = Date.now()): string {
  const s = v.trim();
  if (s === 'now') return new Date(now).toISOString();
  const ago = DURATION_RE.exec(s);
  if (ago?.[2] !== undefined) return new Date(now - durationMs(s, flag)).toISOString();
  // An ISO 8601 time has at least a full date: "2026", "10" or "5" are not times.
  if (/^\d{4}-\d{2}-\d{2}/.test(s) && !Number.isNaN(Date.parse(s))) return new Date(Date.parse(s)).toISOString();
  throw new CliError('CARAPACE_E_BAD_QUERY', `${flag} must be an ISO 8601 time, a duration ago (${DURATION_EXAMPLES}), or now; got "${v}"`, [
    { path: flag, message: `"${v}" is not a time` },
  ]);
}
