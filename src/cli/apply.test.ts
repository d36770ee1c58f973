/**
 * Reading manifest files as `carapace apply -f` does: every problem, YAML's own included
 * (aliases that point nowhere, alias bombs), is a coded error naming the file and document,
 * never an uncaught exception.
 */
import { describe, expect, it } from 'vitest';
import { parseManifestText } from './apply.js';
import { CliError } from './client.js';

function refusal(text: string): CliError {
  try {
    parseManifestText(text, 'm.yaml');
  } catch (e) {
    if (e instanceof CliError) return e;
    throw e;
  }
  throw new Error('accepted');
}

describe('parseManifestText', () => {
  it('reads several documents and skips empty ones', () => {
    const ms = parseManifestText('apiVersion: carapace/v1\nkind: Tenant\nmetadata: {name: a}\n---\n---\napiVersion: carapace/v1\nkind: Tenant\nmetadata: {name: b}\n', 'm.yaml');
    expect(ms.map((m) => m.metadata.name)).toEqual(['a', 'b']);
  });

  it('refuses an alias to a missing anchor with a coded error', () => {
    const e = refusal('apiVersion: carapace/v1\nkind: Tenant\nmetadata: *nowhere\n');
    expect(e.code).toBe('CARAPACE_E_MALFORMED_BODY');
    expect(e.message).toMatch(/m\.yaml: document 1/);
  });

  it('refuses an alias bomb with a coded error', () => {
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x]', 'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]', 'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]', 'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]', 'e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]'].join('\n');
    const e = refusal(bomb);
    expect(e.code).toBe('CARAPACE_E_MALFORMED_BODY');
    expect(e.message).toMatch(/document 1/);
  });
});
