/** The CLI's one parser of durations and points in time. */
import { describe, expect, it } from 'vitest';
import { CliError } from './client.js';
import { durationMs, timeArg } from './time.js';

const NOW = Date.parse('2026-03-01T12:00:00.000Z');

function refusal(f: () => unknown): CliError {
  try {
    f();
  } catch (e) {
    if (e instanceof CliError) return e;
    throw e;
  }
  throw new Error('expected a CliError');
}

describe('durationMs', () => {
  it('takes every unit and plain seconds', () => {
    expect(durationMs('90s', '--ttl')).toBe(90_000);
    expect(durationMs('30m', '--ttl')).toBe(1_800_000);
    expect(durationMs('24h', '--ttl')).toBe(86_400_000);
    expect(durationMs('7d', '--ttl')).toBe(604_800_000);
    expect(durationMs('300', '--timeout')).toBe(300_000);
  });

  it('refuses anything else with a stable code and the flag as the field path', () => {
    for (const bad of ['', '10x', '1.5h', '-5m', 'h', '24 h', 'forever', '1e3']) {
      const e = refusal(() => durationMs(bad, '--ttl'));
      expect(e.code).toBe('CARAPACE_E_BAD_QUERY');
      expect(e.details).toEqual([{ path: '--ttl', message: `"${bad}" is not a duration` }]);
    }
  });
});

describe('timeArg', () => {
  it('takes now, a duration ago and ISO 8601 times, and answers ISO 8601', () => {
    expect(timeArg('now', '--until', NOW)).toBe('2026-03-01T12:00:00.000Z');
    expect(timeArg('10m', '--since', NOW)).toBe('2026-03-01T11:50:00.000Z');
    expect(timeArg('90s', '--since', NOW)).toBe('2026-03-01T11:58:30.000Z');
    expect(timeArg('7d', '--since', NOW)).toBe('2026-02-22T12:00:00.000Z');
    expect(timeArg('2026-01-02', '--since', NOW)).toBe('2026-01-02T00:00:00.000Z');
    expect(timeArg('2026-01-02T03:04:05+01:00', '--since', NOW)).toBe('2026-01-02T02:04:05.000Z');
  });

  it('refuses a bare number (it would be read as a year) and non-times', () => {
    for (const bad of ['10', '2026', 'yesterday', '2026-13-45', '']) {
      const e = refusal(() => timeArg(bad, '--since', NOW));
      expect(e.code).toBe('CARAPACE_E_BAD_QUERY');
      expect(e.details[0]?.path).toBe('--since');
    }
  });
});
