import { afterEach, describe, expect, it } from 'vitest';
import { useUtcWithoutZone } from './start.js';

describe('the guest agent time zone', () => {
  const saved = process.env.TZ;
  afterEach(() => {
    if (saved === undefined) delete process.env.TZ;
    else process.env.TZ = saved;
  });

  it('is UTC when none is given (a cell has no zone: ICU would search the shared zoneinfo for one)', () => {
    delete process.env.TZ;
    useUtcWithoutZone({});
    expect(process.env.TZ).toBe('UTC');
    expect(new Date(Date.UTC(2026, 0, 1, 0, 30)).getHours()).toBe(0); // applied at once
    process.env.TZ = '';
    useUtcWithoutZone({ TZ: '' });
    expect(process.env.TZ).toBe('UTC');
  });

  it('keeps a zone the agent was given', () => {
    process.env.TZ = 'Asia/Kolkata';
    useUtcWithoutZone({ TZ: 'Asia/Kolkata' });
    expect(process.env.TZ).toBe('Asia/Kolkata');
    expect(new Date(Date.UTC(2026, 0, 1, 0, 30)).getHours()).toBe(6); // +05:30
  });
});
