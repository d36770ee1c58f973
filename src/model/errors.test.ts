import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERROR_CATALOGUE } from './errors.js';

describe('error catalogue', () => {
  const codes = Object.keys(ERROR_CATALOGUE);
  it('has unique, well-formed codes with statuses', () => {
    expect(new Set(codes).size).toBe(codes.length);
    for (const [code, e] of Object.entries(ERROR_CATALOGUE)) {
      expect(code).toMatch(/^CARAPACE_E_[A-Z_]+$/);
      expect(e.status === 0 || (e.status >= 400 && e.status < 600)).toBe(true);
      expect(e.description.length).toBeGreaterThan(10);
    }
  });
  it('is documented row by row in docs/errors.md', () => {
    const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
    for (const [code, e] of Object.entries(ERROR_CATALOGUE)) {
      expect(doc).toContain(`| \`${code}\` | ${e.status || 'CLI'} | ${e.description} |`);
    }
  });
});
