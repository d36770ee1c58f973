/**
 * An exec session in the browser: xterm.js on one end, the API's exec WebSocket
 * (src/exec/frames.ts) on the other, with `tty=true`. Keys are stdin frames (Ctrl-C is the
 * byte 0x03: the remote terminal turns it into SIGINT for its foreground process); stdout is
 * written to the terminal; the terminal's size (fitted to its box, again on every resize of
 * the box) is sent as resize frames; the status frame ends the session with an exit code, or
 * with the refusal the server sent after the handshake.
 *
 * The token travels as a WebSocket subprotocol (`bearerProtocol`), never in the URL: browsers
 * cannot set an Authorization header on a WebSocket, and URLs are written to logs.
 *
 * Loaded on demand (import()) by the Terminal view: xterm.js is as large as the rest of the
 * dashboard, and only an admin opening a terminal needs it.
 */
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { bearerProtocol, CHANNEL, decodeFrame, encodeFrame, EXEC_PROTOCOL, execQuery, parseStatus, type ExecStatus } from '../../src/exec/frames.js';

/** What the view is told while a session runs. */
export interface SessionEvents {
  /** The session is connected (the handshake completed). */
  onOpen(): void;
  /** The terminal's size changed (fitted to its box); sent to the process as well. */
  onSize(cols: number, rows: number): void;
  /** The session ended: how the process ended or why it could not run; undefined when the connection was cut. */
  onEnd(status: ExecStatus | undefined): void;
}

/** A running session; `dispose` ends it (closing the socket ends the process in the container) and frees the terminal. */
export interface TerminalSession {
  dispose(): void;
  focus(): void;
}

/**
 * Opens a terminal in `box` and an exec session of `command` in the instance at
 * `instancePath` (`/v1/tenants/T/instances/N`) with `token`.
 */
export function openTerminal(box: HTMLElement, instancePath: string, command: string[], token: string, on: SessionEvents): TerminalSession {
  allowStyleElements(box.ownerDocument);
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: "'DejaVu Sans Mono', ui-monospace, Menlo, Consolas, monospace",
    fontSize: 13,
    scrollback: 5000,
    theme: { background: '#14202b', foreground: '#e5e9ee' },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  on.onSize(term.cols, term.rows);

  const url = new URL(`${instancePath}/exec?${execQuery({ command, tty: true, stdin: true, cols: term.cols, rows: term.rows })}`, window.location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url, [EXEC_PROTOCOL, bearerProtocol(token)]);
  ws.binaryType = 'arraybuffer';
  const send = (channel: (typeof CHANNEL)[keyof typeof CHANNEL], payload?: Uint8Array | string): void => {
    if (ws.readyState === WebSocket.OPEN) ws.send(encodeFrame(channel, payload));
  };
  let status: ExecStatus | undefined;
  let ended = false;
  const end = (): void => {
    if (ended) return;
    ended = true;
    term.options.cursorBlink = false;
    if (status && 'exitCode' in status) term.write(`\r\n\x1b[2m[exited with code ${status.exitCode}]\x1b[0m\r\n`);
    else if (status) term.write(`\r\n\x1b[31m[${status.error.code}: ${status.error.message}]\x1b[0m\r\n`);
    else term.write('\r\n\x1b[31m[the connection was closed]\x1b[0m\r\n');
    on.onEnd(status);
  };
  ws.onopen = () => on.onOpen();
  ws.onmessage = (m: MessageEvent<ArrayBuffer | string>) => {
    if (typeof m.data === 'string') return; // the protocol is binary frames only
    const f = decodeFrame(new Uint8Array(m.data));
    if (!f) return;
    if (f.channel === CHANNEL.stdout || f.channel === CHANNEL.stderr) term.write(f.payload);
    else if (f.channel === CHANNEL.status) status = parseStatus(f.payload);
  };
  ws.onclose = end;

  const input = term.onData((d) => send(CHANNEL.stdin, d));
  // Bytes xterm reports outside UTF-8 (some mouse reports): one byte per character.
  const binary = term.onBinary((d) => send(CHANNEL.stdin, Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
  const resized = term.onResize(({ cols, rows }) => {
    on.onSize(cols, rows);
    send(CHANNEL.resize, JSON.stringify({ cols, rows }));
  });
  // The box follows the window (and the layout): fit the terminal to it, which resizes the remote one.
  const observer = new ResizeObserver(() => {
    if (box.clientWidth > 0 && box.clientHeight > 0) fit.fit();
  });
  observer.observe(box);
  term.focus();
  return {
    dispose() {
      observer.disconnect();
      input.dispose();
      binary.dispose();
      resized.dispose();
      ws.onclose = null;
      ws.close();
      term.dispose();
    },
    focus: () => term.focus(),
  };
}

/**
 * The page's CSP allows `<style>` elements only with the page's nonce (the server puts it in
 * a meta element of index.html, fresh per response). xterm.js writes its theme and cell
 * sizes into style elements it creates with `document.createElement('style')` and has no
 * nonce option: elements it creates this way get the nonce. Scripts are untouched (never
 * inline). Installed once per document.
 */
function allowStyleElements(doc: Document): void {
  if (patched.has(doc)) return;
  patched.add(doc);
  const nonce = doc.querySelector<HTMLMetaElement>('meta[name="carapace-style-nonce"]')?.content;
  if (!nonce || nonce.startsWith('__')) return; // the Vite dev server (no CSP) leaves the placeholder
  const create = doc.createElement.bind(doc) as (tag: string, options?: ElementCreationOptions) => HTMLElement; // the generic overload; the tag-map overloads are views of it
  Object.defineProperty(doc, 'createElement', {
    configurable: true,
    value: (tag: string, options?: ElementCreationOptions): HTMLElement => {
      const el = create(tag, options);
      if (el instanceof HTMLStyleElement) el.nonce = nonce;
      return el;
    },
  });
}
const patched = new WeakSet<Document>();
