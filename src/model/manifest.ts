/**
 * Manifest parsing: from untrusted input (a parsed YAML/JSON document) to a validated,
 * normalised Manifest, or a CarapaceError naming every offending field path. Pure.
 */
import type { z } from 'zod';
import { CarapaceError, type FieldIssue } from './errors.js';
import { API_VERSION, MANIFEST_SCHEMAS, type ApplyKind, type Manifest } from './schemas.js';

/** Renders a zod path as users write it: `spec.ports[0].containerPort`. */
export function formatPath(path: readonly PropertyKey[], prefix = ''): string {
  let out = prefix;
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? String(p) : `.${String(p)}`;
  }
  return out === '' ? '(root)' : out;
}

/** Turns zod issues into field issues; unknown keys become one issue per key. */
export function zodIssues(error: z.ZodError, prefix = ''): FieldIssue[] {
  const out: FieldIssue[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push({ path: formatPath([...issue.path, key], prefix), message: 'unknown field' });
    } else if (issue.code === 'invalid_type' && issue.input === undefined) {
      out.push({ path: formatPath(issue.path, prefix), message: 'is required' });
    } else {
      out.push({ path: formatPath(issue.path, prefix), message: issue.message });
    }
  }
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Validates one manifest document. `where` prefixes messages (e.g. `document 2`), so a
 * multi-document file tells the user which document is wrong.
 */
export function parseManifest(doc: unknown, where = 'manifest'): Manifest {
  if (!isRecord(doc)) {
    throw new CarapaceError('CARAPACE_E_VALIDATION', `${where}: must be a mapping with apiVersion, kind, metadata and spec`, [
      { path: '(root)', message: 'must be a mapping' },
    ]);
  }
  const kind = doc['kind'];
  if (typeof kind !== 'string' || kind === '') {
    throw new CarapaceError('CARAPACE_E_VALIDATION', `${where}: kind is required`, [{ path: 'kind', message: 'is required' }]);
  }
  if (!Object.hasOwn(MANIFEST_SCHEMAS, kind)) {
    throw new CarapaceError(
      'CARAPACE_E_UNKNOWN_KIND',
      `${where}: unknown kind "${kind}" (known: ${Object.keys(MANIFEST_SCHEMAS).join(', ')})`,
      [{ path: 'kind', message: `unknown kind "${kind}"` }],
    );
  }
  if (doc['apiVersion'] !== API_VERSION) {
    const got = typeof doc['apiVersion'] === 'string' ? `"${doc['apiVersion']}"` : 'nothing';
    throw new CarapaceError('CARAPACE_E_UNSUPPORTED_API_VERSION', `${where}: apiVersion must be "${API_VERSION}", got ${got}`, [
      { path: 'apiVersion', message: `must be "${API_VERSION}"` },
    ]);
  }
  const schema = MANIFEST_SCHEMAS[kind as ApplyKind]; // checked by hasOwn above
  const result = schema.safeParse(doc);
  if (!result.success) {
    const details = zodIssues(result.error);
    const first = details[0];
    const summary = first ? `${first.path}: ${first.message}` : 'invalid';
    const more = details.length > 1 ? ` (and ${details.length - 1} more)` : '';
    throw new CarapaceError('CARAPACE_E_VALIDATION', `${where}: ${kind} ${describeName(doc)}is invalid: ${summary}${more}`, details);
  }
  return result.data;
}

function describeName(doc: Record<string, unknown>): string {
  const md = doc['metadata'];
  if (isRecord(md) && typeof md['name'] === 'string') return `"${md['name']}" `;
  return '';
}
