/**
 * Apply manifests: paste or upload YAML (one or more documents), and each document is sent
 * to the API as is (application/yaml, PUT to its URL; tenants first, like the CLI). The API
 * validates; its errors come back with field paths, which are mapped to lines of the text
 * and shown at the field, in the editor. Only tenant-admins and cluster-admins get here.
 */
import { useMemo, useRef, useState } from 'react';
import { ApiError } from '../api';
import { issuesAtLines, splitManifests, targetOf, type LineIssue } from '../manifests';
import { useCluster, useSession } from '../session';

const DRAFT_KEY = 'carapace.draft';

interface Outcome {
  doc: number;
  what: string;
  ok: boolean;
  message: string;
  warnings?: string[];
}

function template(tenant: string): string {
  return `apiVersion: carapace/v1
kind: Service
metadata:
  name: hello
  tenant: ${tenant}
spec:
  image: 127.0.0.1:5000/carapace-examples/web:1
  isolation: host
  replicas: 1
  cpu: 0.1
  memory: 32Mi
`;
}

/** Warning headers (`299 - "text"`) as plain texts. */
function warningsOf(res: Response): string[] {
  const h = res.headers.get('warning');
  if (!h) return [];
  return [...h.matchAll(/299 - ("(?:[^"\\]|\\.)*")/g)].map((m) => {
    try {
      return JSON.parse(m[1] ?? '""') as string; // each warning is a JSON string
    } catch {
      return m[1] ?? '';
    }
  });
}

export function Apply(): React.JSX.Element {
  const { api, who, cluster } = useSession();
  const snap = useCluster();
  const fallbackTenant = who.tenant ?? [...snap.tenants.keys()].sort()[0] ?? 'my-tenant';
  const [text, setTextState] = useState(() => sessionStorage.getItem(DRAFT_KEY) ?? template(fallbackTenant));
  const [issues, setIssues] = useState<LineIssue[]>([]);
  const [outcomes, setOutcomes] = useState<Outcome[]>([]);
  const [busy, setBusy] = useState(false);
  const area = useRef<HTMLTextAreaElement>(null);
  const back = useRef<HTMLDivElement>(null);
  const gutter = useRef<HTMLDivElement>(null);
  const escaped = useRef(false);

  const setText = (t: string): void => {
    setTextState(t);
    sessionStorage.setItem(DRAFT_KEY, t);
    // Lines move as the text changes: old positions would point at the wrong fields.
    setIssues([]);
  };

  const lines = useMemo(() => text.split('\n'), [text]);
  const byLine = useMemo(() => {
    const m = new Map<number, LineIssue[]>();
    for (const i of issues) m.set(i.line, [...(m.get(i.line) ?? []), i]);
    return m;
  }, [issues]);

  const apply = async (): Promise<void> => {
    setBusy(true);
    const split = splitManifests(text);
    if (split.syntax.length > 0) {
      setIssues(split.syntax);
      setOutcomes([{ doc: 0, what: 'YAML', ok: false, message: `not sent: ${split.syntax.length} syntax error(s)` }]);
      setBusy(false);
      return;
    }
    const docs = [...split.docs].sort((a, b) => (a.kind === 'Tenant' ? 0 : 1) - (b.kind === 'Tenant' ? 0 : 1) || a.index - b.index);
    const found: LineIssue[] = [];
    const out: Outcome[] = [];
    for (const d of docs) {
      const target = targetOf(d, fallbackTenant);
      const what = `${(d.kind ?? 'document').toLowerCase()}/${d.tenant ? `${d.tenant}/` : ''}${d.name ?? '?'}`;
      if ('error' in target) {
        found.push({ line: d.line, path: 'kind', message: target.error, exact: false });
        out.push({ doc: d.index, what, ok: false, message: target.error });
        continue;
      }
      try {
        const res = await api.request(target.path, { method: target.method, body: d.text, contentType: 'application/yaml' });
        const warnings = warningsOf(res);
        out.push({ doc: d.index, what, ok: true, message: res.status === 201 ? 'created' : 'configured', ...(warnings.length ? { warnings } : {}) });
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        found.push(...issuesAtLines(d, split.lines, e.details, `${e.code}: ${e.message}`));
        out.push({ doc: d.index, what, ok: false, message: `${e.code}: ${e.message}` });
      }
    }
    setIssues(found);
    setOutcomes(out);
    setBusy(false);
    for (const k of ['tenants', 'volumes', 'volumesnapshots', 'services', 'jobs', 'machines'] as const) cluster.refresh(k);
  };

  const goToLine = (line: number): void => {
    const ta = area.current;
    if (!ta) return;
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    ta.focus();
    ta.setSelectionRange(start, start + (lines[line - 1]?.length ?? 0));
    ta.scrollTop = Math.max(0, (line - 5) * 20);
  };

  const onScroll = (): void => {
    const ta = area.current;
    if (!ta) return;
    if (back.current) {
      back.current.scrollTop = ta.scrollTop;
      back.current.scrollLeft = ta.scrollLeft;
    }
    if (gutter.current) gutter.current.scrollTop = ta.scrollTop;
  };

  const onKeyDown = (e: React.KeyboardEvent<HTMLTextAreaElement>): void => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      void apply();
      return;
    }
    if (e.key === 'Escape') {
      escaped.current = true;
      e.stopPropagation();
      return;
    }
    // Tab indents (YAML needs it); Esc then Tab leaves the editor.
    if (e.key === 'Tab' && !e.shiftKey && !escaped.current) {
      e.preventDefault();
      const ta = e.currentTarget;
      const { selectionStart: s, selectionEnd: en } = ta;
      const next = `${text.slice(0, s)}  ${text.slice(en)}`;
      setText(next);
      requestAnimationFrame(() => ta.setSelectionRange(s + 2, s + 2));
    }
    escaped.current = false;
  };

  const upload = (f: File | undefined): void => {
    if (!f) return;
    void f.text().then(setText);
  };

  return (
    <section className="apply" aria-label="Apply manifests">
      <div className="toolbar">
        <button type="button" className="primary" onClick={() => void apply()} disabled={busy} data-action="apply">
          {busy ? 'Applying…' : 'Apply'}
        </button>
        <span className="muted small">Ctrl+Enter</span>
        <label className="button-like">
          Upload YAML…
          <input type="file" accept=".yaml,.yml,.json,application/yaml,text/yaml" className="sr-only" onChange={(e) => upload(e.target.files?.[0])} />
        </label>
        <button type="button" className="ghost" onClick={() => setText(template(fallbackTenant))}>
          Example
        </button>
        <span className="muted small">One or more documents separated by ---. Each is validated by the API; errors show at their field. Tab indents; Esc then Tab leaves the editor.</span>
      </div>
      <div className="editor" data-issues={issues.length}>
        <div className="gutter" ref={gutter} aria-hidden="true">
          {lines.map((_, i) => (
            <div key={i} className={byLine.has(i + 1) ? 'ln err' : 'ln'}>
              {i + 1}
            </div>
          ))}
        </div>
        <div className="code">
          <div className="backdrop" ref={back} aria-hidden="true">
            {lines.map((l, i) => {
              const here = byLine.get(i + 1);
              return (
                <div key={i} className={here ? 'line err' : 'line'} data-line={i + 1}>
                  <span className="line-text">{l || ' '}</span>
                  {here && (
                    <span className="err-msg" data-path={here.map((x) => x.path).join(' ')}>
                      {here.map((x) => `${x.exact ? '' : 'missing: '}${x.path}: ${x.message}`).join(' · ')}
                    </span>
                  )}
                </div>
              );
            })}
          </div>
          <textarea
            ref={area}
            value={text}
            onChange={(e) => setText(e.target.value)}
            onScroll={onScroll}
            onKeyDown={onKeyDown}
            spellCheck={false}
            autoCapitalize="off"
            autoComplete="off"
            wrap="off"
            aria-label="Manifest YAML"
            aria-invalid={issues.length > 0}
            aria-describedby="apply-results"
            data-filter
          />
        </div>
      </div>
      <div id="apply-results" className="results" aria-live="polite">
        {outcomes.map((o) => (
          <div key={`${o.doc}-${o.what}`} className={`result ${o.ok ? 'ok' : 'bad'}`} data-result={o.ok ? 'ok' : 'error'}>
            <b>{o.what}</b> {o.message}
            {o.warnings?.map((w) => (
              <div key={w} className="warning">
                warning: {w}
              </div>
            ))}
          </div>
        ))}
        {issues.length > 0 && (
          <ul className="issues">
            {issues.map((i) => (
              <li key={`${i.line}-${i.path}-${i.message}`}>
                <button type="button" className="link" onClick={() => goToLine(i.line)}>
                  line {i.line}
                </button>{' '}
                <code>{i.path}</code> {i.message}
              </li>
            ))}
          </ul>
        )}
      </div>
    </section>
  );
}
