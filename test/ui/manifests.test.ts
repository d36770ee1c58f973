/**
 * The dashboard's pure helpers: splitting pasted YAML into documents, routing each to its API
 * URL, mapping the API's field paths back to lines of the text, and parsing SSE read with
 * fetch(). Error paths come from the real manifest parser, so the mapping is tested against
 * what the API really answers.
 */
import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { APPLY_KINDS, issuesAtLines, lineOfPath, parsePath, splitManifests, targetOf } from '../../ui/src/manifests.js';
import { SseParser } from '../../ui/src/sse.js';
import { parseManifest } from '../../src/model/manifest.js';
import { CarapaceError } from '../../src/model/errors.js';
import { KINDS } from '../../src/model/objects.js';
import { MANIFEST_SCHEMAS } from '../../src/model/schemas.js';

const TEXT = `# two documents
apiVersion: carapace/v1
kind: Tenant
metadata: {name: acme}
---
apiVersion: carapace/v1
kind: Service
metadata:
  name: web
  tenant: acme
spec:
  image: 127.0.0.1:5000/web:1
  replicas: two
  ports:
    - containerPort: 8080
      hostPort: 99999
  env: {A: b}
`;

/** The field issues the API's own parser reports for a document. */
function apiIssues(text: string): { path: string; message: string }[] {
  try {
    parseManifest(YAML.parse(text));
  } catch (e) {
    if (e instanceof CarapaceError) return e.details;
    throw e;
  }
  return [];
}

describe('manifests in the dashboard', () => {
  it('splits documents, keeps each one as written, and routes it to its URL', () => {
    const { docs, syntax } = splitManifests(TEXT);
    expect(syntax).toEqual([]);
    expect(docs.map((d) => [d.kind, d.tenant, d.name, d.line])).toEqual([
      ['Tenant', undefined, 'acme', 2],
      ['Service', 'acme', 'web', 6],
    ]);
    expect(YAML.parse(docs[1]!.text)).toMatchObject({ kind: 'Service', spec: { replicas: 'two' } });
    expect(targetOf(docs[0]!, 'x')).toEqual({ method: 'PUT', path: '/v1/tenants/acme' });
    expect(targetOf(docs[1]!, 'x')).toEqual({ method: 'PUT', path: '/v1/tenants/acme/services/web' });
    // Without a name the collection gets it (the API then says what is missing); without a kind nothing is sent.
    const [noName] = splitManifests('kind: Job\nmetadata: {tenant: t}\n').docs;
    expect(targetOf(noName!, 'x')).toEqual({ method: 'POST', path: '/v1/tenants/t/jobs' });
    expect(targetOf(splitManifests('a: 1\n').docs[0]!, 'x')).toEqual({ error: 'kind is required' });
  });

  it('routes every kind the API applies, to the collection the server keeps it in', () => {
    // A kind missing here could not be applied from the dashboard (the guestbook's Secret was).
    expect(Object.keys(APPLY_KINDS).sort()).toEqual(Object.keys(MANIFEST_SCHEMAS).sort());
    for (const [kind, k] of Object.entries(APPLY_KINDS)) expect(k, kind).toEqual(KINDS[kind as keyof typeof KINDS]);
  });

  it("maps the API's field paths to the lines of their fields (and missing fields to their parent)", () => {
    const { docs, lines } = splitManifests(TEXT);
    const svc = docs[1]!;
    const issues = apiIssues(svc.text);
    expect(issues.map((i) => i.path).sort()).toEqual(['spec.ports[0].hostPort', 'spec.replicas']);
    const at = issuesAtLines(svc, lines, issues, 'x');
    expect(Object.fromEntries(at.map((i) => [i.path, [i.line, i.exact]]))).toEqual({ 'spec.replicas': [13, true], 'spec.ports[0].hostPort': [16, true] });
    expect(lineOfPath(svc, lines, 'spec.env.A')).toEqual({ line: 17, exact: true });
    // A required field that is absent points at its parent.
    const missing = splitManifests('apiVersion: carapace/v1\nkind: Service\nmetadata:\n  name: x\n  tenant: t\nspec:\n  replicas: 1\n');
    const req = apiIssues(missing.docs[0]!.text);
    expect(req).toContainEqual({ path: 'spec.image', message: 'is required' });
    expect(lineOfPath(missing.docs[0]!, missing.lines, 'spec.image')).toEqual({ line: 6, exact: false });
    expect(lineOfPath(missing.docs[0]!, missing.lines, '(root)')).toEqual({ line: 1, exact: true });
    // Without field paths the message sits on the document's first line.
    expect(issuesAtLines(svc, lines, [], 'CARAPACE_E_CONFLICT: stale')).toEqual([{ line: 6, path: '(document)', message: 'CARAPACE_E_CONFLICT: stale', exact: false }]);
  });

  it('reports YAML syntax errors at their line and sends nothing', () => {
    const { syntax } = splitManifests('kind: Service\nspec:\n  image: [unclosed\n');
    expect(syntax.length).toBeGreaterThan(0);
    expect(syntax[0]!.line).toBeGreaterThanOrEqual(3);
    expect(parsePath('spec.ports[0].containerPort')).toEqual(['spec', 'ports', 0, 'containerPort']);
    expect(parsePath('(root)')).toEqual([]);
  });

  it('parses Server-Sent Events in any chunking, with ids, comments and CRLF', () => {
    const stream = ': watching from 7\n\nid: 8\nevent: put\ndata: {"a":1}\n\nid: 9\r\nevent: delete\r\ndata: x\r\ndata: y\r\n\r\n: ping\n\n';
    for (const size of [1, 2, 5, stream.length]) {
      const p = new SseParser();
      const got = [];
      for (let i = 0; i < stream.length; i += size) got.push(...p.push(stream.slice(i, i + size)));
      expect(got, `chunks of ${size}`).toEqual([
        { event: 'put', data: '{"a":1}', id: '8' },
        { event: 'delete', data: 'x\ny', id: '9' },
      ]);
      expect(p.id).toBe('9');
    }
  });
});
