/**
 * The dashboard: sign-in with an API token, then the shell (tabs, live indicator, who is
 * signed in) around one view at a time and the details drawer. Routes live in the URL hash
 * (`#/topology`), so the server serves one page. The token is kept in sessionStorage only
 * (gone when the tab closes) and sent as a bearer header, never in a URL.
 */
import { useCallback, useEffect, useMemo, useState } from 'react';
import { Api, ApiError, whoami, type WhoAmI } from './api';
import { Cluster } from './cluster';
import { SessionContext, canWrite, isAdmin, useCluster, useSession, type Selection, type SessionValue } from './session';
import { Topology } from './views/Topology';
import { Instances } from './views/Instances';
import { Workloads } from './views/Workloads';
import { Tenants } from './views/Tenants';
import { Audit } from './views/Audit';
import { Apply } from './views/Apply';
import { Details } from './views/Details';

const TOKEN_KEY = 'carapace.token';

interface Tab {
  route: string;
  label: string;
  /** Shown only when this holds for the signed-in principal. */
  when?: (who: WhoAmI) => boolean;
}

const TABS: Tab[] = [
  { route: 'topology', label: 'Topology' },
  { route: 'workloads', label: 'Workloads' },
  { route: 'instances', label: 'Instances' },
  { route: 'tenants', label: 'Tenants' },
  { route: 'audit', label: 'Audit' },
  { route: 'apply', label: 'Apply', when: canWrite },
];

function readHash(): string {
  return window.location.hash.replace(/^#\/?/, '') || 'topology';
}

export function App(): React.JSX.Element {
  const [session, setSession] = useState<{ token: string; who: WhoAmI } | undefined>(undefined);
  const [checking, setChecking] = useState(() => sessionStorage.getItem(TOKEN_KEY) !== null);

  // A token saved in this tab: check it is still valid.
  useEffect(() => {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (!saved) return;
    whoami(saved)
      .then((who) => setSession({ token: saved, who }))
      .catch(() => sessionStorage.removeItem(TOKEN_KEY))
      .finally(() => setChecking(false));
  }, []);

  const signOut = useCallback(() => {
    sessionStorage.removeItem(TOKEN_KEY);
    setSession(undefined);
  }, []);

  if (checking) return <div className="splash">Checking the saved token…</div>;
  if (!session)
    return (
      <SignIn
        onSignedIn={(token, who) => {
          sessionStorage.setItem(TOKEN_KEY, token);
          setSession({ token, who });
        }}
      />
    );
  return <Shell key={session.token} token={session.token} who={session.who} onSignOut={signOut} />;
}

function SignIn({ onSignedIn }: { onSignedIn: (token: string, who: WhoAmI) => void }): React.JSX.Element {
  const [token, setToken] = useState('');
  const [error, setError] = useState<string | undefined>(undefined);
  const [busy, setBusy] = useState(false);
  const submit = (e: React.FormEvent): void => {
    e.preventDefault();
    const t = token.trim();
    if (!t) return;
    setBusy(true);
    setError(undefined);
    whoami(t)
      .then((who) => onSignedIn(t, who))
      .catch((err: unknown) => setError(err instanceof ApiError && err.status === 401 ? 'This token is unknown, malformed or revoked.' : (err as Error).message))
      .finally(() => setBusy(false));
  };
  return (
    <div className="signin">
      <form className="signin-card" onSubmit={submit} aria-label="Sign in">
        <div className="brand big">
          <Logo /> Carapace
        </div>
        <p className="muted">Containers and VMs under one control plane.</p>
        <label htmlFor="token">API token</label>
        <input id="token" name="token" type="password" autoComplete="off" spellCheck={false} placeholder="cpt_…" value={token} onChange={(e) => setToken(e.target.value)} autoFocus />
        {error && (
          <div className="form-error" role="alert">
            {error}
          </div>
        )}
        <button type="submit" className="primary" disabled={busy || token.trim() === ''}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
        <p className="hint">
          An operator finds the first cluster-admin token in <code>STATE_DIR/admin-token</code>; tenant tokens come from <code>carapace token create</code>. The
          token stays in this tab only.
        </p>
      </form>
    </div>
  );
}

export function Logo(): React.JSX.Element {
  return (
    <svg className="logo" viewBox="0 0 32 32" aria-hidden="true">
      <path d="M16 2 28 8v9c0 7-5 11-12 13C9 28 4 24 4 17V8z" />
      <path d="M10 12h12M10 17h12M12 22h8" className="logo-lines" />
    </svg>
  );
}

function Shell({ token, who, onSignOut }: { token: string; who: WhoAmI; onSignOut: () => void }): React.JSX.Element {
  const api = useMemo(() => new Api(token, onSignOut), [token, onSignOut]);
  const cluster = useMemo(() => new Cluster(api, who), [api, who]);
  const [route, setRoute] = useState(readHash);
  const [selection, setSelection] = useState<Selection | undefined>(undefined);

  useEffect(() => {
    void cluster.start();
    return () => cluster.stop();
  }, [cluster]);

  useEffect(() => {
    const on = (): void => setRoute(readHash());
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);

  const navigate = useCallback((r: string) => {
    window.location.hash = `#/${r}`;
  }, []);

  const tabs = useMemo(() => TABS.filter((t) => !t.when || t.when(who)), [who]);
  const view = route.split('/')[0] ?? 'topology';

  // Keyboard: 1-6 switch views, / focuses the view's filter, Esc closes the drawer (outside a terminal).
  useEffect(() => {
    const on = (e: KeyboardEvent): void => {
      const el = e.target as HTMLElement | null; // key events target elements
      // Every key typed in a terminal is the remote program's (Esc included: vi needs it).
      if (el?.closest('[data-terminal]')) return;
      const typing = el !== null && (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT' || el.isContentEditable);
      if (e.key === 'Escape') {
        setSelection(undefined);
        return;
      }
      if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
      const n = Number(e.key);
      const tab = tabs[n - 1];
      if (Number.isInteger(n) && tab) {
        e.preventDefault();
        navigate(tab.route);
      } else if (e.key === '/') {
        const f = document.querySelector<HTMLInputElement>('[data-filter]');
        if (f) {
          e.preventDefault();
          f.focus();
        }
      }
    };
    window.addEventListener('keydown', on);
    return () => window.removeEventListener('keydown', on);
  }, [navigate, tabs]);

  const value: SessionValue = useMemo(() => ({ api, who, cluster, select: setSelection, navigate }), [api, who, cluster, navigate]);
  const current = tabs.find((t) => t.route === view) ? view : 'topology';

  return (
    <SessionContext.Provider value={value}>
      <div className="shell">
        <header className="top">
          <div className="brand">
            <Logo /> Carapace
          </div>
          <nav className="tabs" aria-label="Views">
            {tabs.map((t, i) => (
              <a key={t.route} href={`#/${t.route}`} className={current === t.route ? 'tab active' : 'tab'} aria-current={current === t.route ? 'page' : undefined} title={`${t.label} (${i + 1})`}>
                {t.label}
              </a>
            ))}
          </nav>
          <LiveIndicator />
          <div className="who" data-role={who.role}>
            <span className="who-name">{who.name}</span>
            <span className={`role r-${who.role}`}>
              {who.role}
              {who.tenant ? ` · ${who.tenant}` : ''}
            </span>
            <button type="button" className="ghost" onClick={onSignOut}>
              Sign out
            </button>
          </div>
        </header>
        <main className="main" data-view={current}>
          <ViewBody view={current} route={route} />
        </main>
        {selection && <Details selection={selection} onClose={() => setSelection(undefined)} />}
      </div>
    </SessionContext.Provider>
  );
}

function ViewBody({ view, route }: { view: string; route: string }): React.JSX.Element {
  const snap = useCluster();
  const { who } = useSession();
  if (snap.error) return <div className="empty error">Could not load the cluster: {snap.error}</div>;
  if (!snap.loaded) return <div className="empty">Loading…</div>;
  switch (view) {
    case 'workloads':
      return <Workloads />;
    case 'instances':
      return <Instances />;
    case 'tenants':
      return <Tenants tenant={route.split('/')[1]} />;
    case 'audit':
      return <Audit />;
    case 'apply':
      return canWrite(who) ? <Apply /> : <Topology />;
    default:
      return <Topology />;
  }
}

function LiveIndicator(): React.JSX.Element {
  const snap = useCluster();
  const { who } = useSession();
  const label = snap.streams === 'live' ? 'Live' : snap.streams === 'connecting' ? 'Connecting' : 'Reconnecting';
  return (
    <div className={`live live-${snap.streams}`} title={`Event streams: ${label.toLowerCase()}${isAdmin(who) ? '' : ` (narrowed to tenant ${who.tenant ?? ''})`}`} data-live={snap.streams}>
      <i /> {label}
    </div>
  );
}
