/**
 * Pasted manifests: split a YAML stream into documents (each sent to the API as is, as
 * application/yaml), find where each goes (kind, tenant, name: routing only; the server
 * validates), and map the API's error paths (`spec.ports[0].containerPort`) back to lines of
 * the text so the editor can show each error at its field. Pure.
 */
import { LineCounter, isMap, isScalar, isSeq, parseAllDocuments, type Document, type Node as YamlNode } from 'yaml';

/** Kinds the API applies, with their collection names and whether they live in a tenant. */
export const APPLY_KINDS: Record<string, { plural: string; scoped: boolean }> = {
  Tenant: { plural: 'tenants', scoped: false },
  Service: { plural: 'services', scoped: true },
  Job: { plural: 'jobs', scoped: true },
  Machine: { plural: 'machines', scoped: true },
  Volume: { plural: 'volumes', scoped: true },
  VolumeSnapshot: { plural: 'volumesnapshots', scoped: true },
  Secret: { plural: 'secrets', scoped: true },
  Config: { plural: 'configs', scoped: true },
};

/** One document of the pasted text. */
export interface ManifestDoc {
  /** 0-based position in the stream. */
  index: number;
  /** The document's own text, sent unchanged. */
  text: string;
  /** 1-based line of the document's first content line in the whole text. */
  line: number;
  kind?: string;
  name?: string;
  tenant?: string;
  doc: Document;
}

/** A problem shown at a line of the editor. */
export interface LineIssue {
  /** 1-based line in the whole text. */
  line: number;
  /** The field path as the API named it (or `yaml` for syntax errors). */
  path: string;
  message: string;
  /** False when the field is missing from the text and the line is its nearest parent's. */
  exact: boolean;
}

export interface SplitResult {
  docs: ManifestDoc[];
  /** YAML syntax errors: nothing is sent while there are any. */
  syntax: LineIssue[];
  lines: LineCounter;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** Splits `source` into documents; empty documents (e.g. a trailing `---`) are dropped. */
export function splitManifests(source: string): SplitResult {
  const lines = new LineCounter();
  const parsed = parseAllDocuments(source, { lineCounter: lines, prettyErrors: false });
  const docs: ManifestDoc[] = [];
  const syntax: LineIssue[] = [];
  // parseAllDocuments returns an EmptyStream (not an array) for input without documents.
  const list = Array.isArray(parsed) ? parsed : [];
  list.forEach((doc) => {
    for (const e of doc.errors) syntax.push({ line: lines.linePos(e.pos[0]).line, path: 'yaml', message: e.message.split('\n')[0] ?? e.message, exact: true });
    if (doc.contents === null) return;
    const js: unknown = doc.errors.length === 0 ? doc.toJS() : undefined;
    const o = typeof js === 'object' && js !== null ? (js as Record<string, unknown>) : {};
    const md = typeof o['metadata'] === 'object' && o['metadata'] !== null ? (o['metadata'] as Record<string, unknown>) : {};
    const start = doc.range[0];
    const contentStart = doc.contents.range?.[0] ?? start;
    const kind = str(o['kind']);
    const name = str(md['name']);
    const tenant = str(md['tenant']);
    docs.push({
      index: docs.length,
      text: source.slice(start, doc.range[2]),
      line: lines.linePos(contentStart).line,
      ...(kind ? { kind } : {}),
      ...(name ? { name } : {}),
      ...(tenant ? { tenant } : {}),
      doc,
    });
  });
  return { docs, syntax, lines };
}

/** `spec.ports[0].containerPort` -> ['spec', 'ports', 0, 'containerPort']; `(root)` -> []. */
export function parsePath(path: string): (string | number)[] {
  if (path === '' || path === '(root)') return [];
  const out: (string | number)[] = [];
  for (const m of path.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) {
    if (m[2] !== undefined) out.push(Number(m[2]));
    else if (m[1] !== undefined) out.push(/^\d+$/.test(m[1]) ? Number(m[1]) : m[1]);
  }
  return out;
}

/**
 * The line of the field `path` in `doc`: the line of its key (for map entries) or item (for
 * sequence entries). A field that is not in the text (e.g. a required one) maps to the line
 * of the nearest ancestor that is, with `exact: false`.
 */
export function lineOfPath(doc: ManifestDoc, lines: LineCounter, path: string): { line: number; exact: boolean } {
  const segs = parsePath(path);
  let node: YamlNode | null = doc.doc.contents as YamlNode | null; // parsed documents hold nodes
  let line = doc.line;
  for (const [i, s] of segs.entries()) {
    if (isMap(node)) {
      const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(s));
      if (!pair) return { line, exact: false };
      const keyNode = isScalar(pair.key) ? pair.key : undefined;
      const at = keyNode?.range?.[0];
      if (at !== undefined) line = lines.linePos(at).line;
      node = (pair.value as YamlNode | null) ?? null; // values of a parsed document are nodes (or null)
    } else if (isSeq(node) && typeof s === 'number') {
      const item = node.items[s] as YamlNode | undefined; // items of a parsed sequence are nodes
      if (!item) return { line, exact: false };
      const at = item.range?.[0];
      if (at !== undefined) line = lines.linePos(at).line;
      node = item;
    } else {
      // A scalar (or nothing) where the path goes deeper: the error is about this value.
      return { line, exact: i === segs.length };
    }
  }
  return { line, exact: true };
}

/** Where a document is applied: `PUT` to its URL when it names itself, else `POST` to the collection (the server then reports what is missing). */
export function targetOf(d: ManifestDoc, fallbackTenant: string): { method: 'PUT' | 'POST'; path: string } | { error: string } {
  const k = d.kind ? APPLY_KINDS[d.kind] : undefined;
  if (!k) return { error: d.kind ? `unknown kind "${d.kind}" (known: ${Object.keys(APPLY_KINDS).join(', ')})` : 'kind is required' };
  const e = encodeURIComponent;
  const collection = k.scoped ? `/v1/tenants/${e(d.tenant ?? fallbackTenant)}/${k.plural}` : `/v1/${k.plural}`;
  return d.name ? { method: 'PUT', path: `${collection}/${e(d.name)}` } : { method: 'POST', path: collection };
}

/** The API's field issues of one document, placed on lines of the whole text. */
export function issuesAtLines(doc: ManifestDoc, lines: LineCounter, details: readonly { path: string; message: string }[], fallback: string): LineIssue[] {
  if (details.length === 0) return [{ line: doc.line, path: '(document)', message: fallback, exact: false }];
  return details.map((d) => ({ ...lineOfPath(doc, lines, d.path), path: d.path, message: d.message }));
}
