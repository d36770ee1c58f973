/**
 * Reading manifest files as `carapace apply -f` does: every problem, YAML's own included
 * (aliases that point nowhere, alias bombs), is a coded error naming the file and document,
 * never an uncaught exception.
 */
import { describe, expect, it } from 'vitest';
import { instanceProgress, parseManifestText } from './apply.js';
import type { Instance } from '../model/objects.js';
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

describe('apply --wait reading an instance', () => {
  const inst = (status: Record<string, unknown>): Instance =>
    ({ kind: 'Instance', metadata: { name: 'web-0', tenant: 'acme' }, spec: { host: 'h1', container: { image: 'x' } }, status: { restarts: 1, ...status } }) as unknown as Instance; // only what instanceProgress reads

  it('gives up on a start that failed, waits through a runtime that did not answer', () => {
    expect(instanceProgress(inst({ phase: 'Backoff', reason: 'StartFailed', message: 'exec: "nope": not found' }), false).state).toBe('failed');
    expect(instanceProgress(inst({ phase: 'Backoff', reason: 'RuntimeUnavailable', message: 'cell guest did not answer run within 30000 ms' }), false)).toEqual({ state: 'waiting', text: 'retrying: RuntimeUnavailable: cell guest did not answer run within 30000 ms' });
  });
});
