/**
 * A terminal into an instance's container (exec with a pseudo-terminal), over the API's exec
 * WebSocket with the user's token, under the same rules as `carapace exec -it`: offered to
 * tenant-admins and cluster-admins (the server refuses viewers anyway), audited with its
 * command line. A full-width panel over the page; Esc goes to the terminal (vi needs it),
 * the ✕ button closes it. xterm.js is loaded when the first terminal opens.
 */
import { useEffect, useRef, useState } from 'react';
import type { ExecStatus } from '../../../src/exec/frames.js';
import { seg } from '../api';
import { useSession } from '../session';
import type { TerminalSession } from '../terminal';

type Phase = { kind: 'connecting' } | { kind: 'open' } | { kind: 'ended'; status: ExecStatus | undefined } | { kind: 'failed'; message: string };

export function TerminalPanel({ tenant, name, onClose }: { tenant: string; name: string; onClose: () => void }): React.JSX.Element {
  const { api } = useSession();
  const box = useRef<HTMLDivElement>(null);
  const session = useRef<TerminalSession | undefined>(undefined);
  const [command, setCommand] = useState('sh');
  const [run, setRun] = useState<{ command: string[]; n: number }>({ command: ['sh'], n: 0 });
  const [phase, setPhase] = useState<Phase>({ kind: 'connecting' });
  const [size, setSize] = useState<string>('');

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    let cancelled = false;
    setPhase({ kind: 'connecting' });
    import('../terminal')
      .then(({ openTerminal }) => {
        if (cancelled) return;
        session.current = openTerminal(el, `/v1/tenants/${seg(tenant)}/instances/${seg(name)}`, run.command, api.token, {
          onOpen: () => setPhase({ kind: 'open' }),
          onSize: (cols, rows) => setSize(`${cols}x${rows}`),
          onEnd: (status) => setPhase({ kind: 'ended', status }),
        });
      })
      .catch((e: unknown) => setPhase({ kind: 'failed', message: (e as Error).message }));
    return () => {
      cancelled = true;
      session.current?.dispose();
      session.current = undefined;
    };
  }, [api, tenant, name, run]);

  const restart = (e: React.FormEvent): void => {
    e.preventDefault();
    const argv = command.trim().split(/\s+/).filter((w) => w !== '');
    if (argv.length > 0) setRun((r) => ({ command: argv, n: r.n + 1 }));
  };

  return (
    <section className="terminal-panel" role="dialog" aria-label={`Terminal in ${tenant}/${name}`} data-terminal={`${tenant}/${name}`} data-size={size}>
      <div className="terminal-head">
        <h2 className="mono">
          {tenant}/{name}
        </h2>
        <form className="terminal-command" onSubmit={restart}>
          <label className="inline-label">
            command
            <input className="mono" value={command} onChange={(e) => setCommand(e.target.value)} aria-label="Command to run" spellCheck={false} />
          </label>
          <button type="submit" className="ghost small">
            {phase.kind === 'ended' || phase.kind === 'failed' ? 'Run again' : 'Restart'}
          </button>
        </form>
        <span className="terminal-status" data-terminal-status={phase.kind} role="status">
          {statusText(phase)}
        </span>
        <button type="button" className="ghost" onClick={onClose} aria-label="Close the terminal">
          ✕
        </button>
      </div>
      <div className="terminal-box" ref={box} key={run.n} onClick={() => session.current?.focus()} />
    </section>
  );
}

function statusText(p: Phase): string {
  switch (p.kind) {
    case 'connecting':
      return 'connecting…';
    case 'open':
      return 'connected';
    case 'failed':
      return `could not open the terminal: ${p.message}`;
    case 'ended':
      if (!p.status) return 'disconnected';
      return 'exitCode' in p.status ? `exited with code ${p.status.exitCode}` : `${p.status.error.code}: ${p.status.error.message}`;
  }
}
