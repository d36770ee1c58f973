/**
 * Logs of instances and machines on other hosts, through the agent API. The server cannot
 * dial agents (they may sit behind NAT, and only they hold client certificates), so agents
 * keep one request stream open (`GET /agent/v1/log-requests`, NDJSON); when the API is asked
 * for the logs of something on host H, the hub sends H a request and H answers by uploading
 * the lines (`POST /agent/v1/log-streams/<id>`, a streaming NDJSON body), which the hub hands
 * to the API's reader. Closing either end ends the other: a client that stops reading cancels
 * the upload, an agent that dies ends the client's stream.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { LogLine, LogOptions } from '../runtime/driver.js';
import { CarapaceError } from '../model/errors.js';
import { ndjsonLines } from './ndjson.js';
import type { ExecOptions } from '../exec/frames.js';
import { endSession, relayPorts, type ExecPort } from '../exec/session.js';
import { afterStatus, DIAL_TIMEOUT_MS } from '../exec/forward.js';

/** What a host is asked to stream. */
export interface LogRequest {
  id: string;
  kind: 'instance' | 'machine';
  tenant: string;
  name: string;
  follow: boolean;
  tail?: number;
}

/**
 * What a host is asked to run: an exec session in one of its instances. It answers by
 * opening a WebSocket to `GET /agent/v1/exec-sessions/<id>` (the server never dials agents),
 * which the hub joins to the API client's; frames pass through unread (exec/frames.ts).
 * Sent down the same request stream as log requests: one stream per agent, one reconnect
 * logic.
 */
export interface ExecRequest {
  id: string;
  kind: 'exec';
  tenant: string;
  name: string;
  exec: ExecOptions;
}

/**
 * What a host is asked to connect: one TCP connection to `port` of one of its instances
 * (port-forward). It answers as for exec, on the same `GET /agent/v1/exec-sessions/<id>`
 * (a session of either kind is a frame stream the hub relays unread), then dials the
 * workload and sends a status frame first (exec/forward.ts): ok, or why not.
 */
export interface PortForwardRequest {
  id: string;
  kind: 'portforward';
  tenant: string;
  name: string;
  port: number;
}

/** Everything an agent's request stream carries. */
export type AgentRequest = LogRequest | ExecRequest | PortForwardRequest;

interface Waiting {
  host: string;
  resolve: (body: Readable) => void;
  reject: (e: Error) => void;
}

/** Server side: connects API readers with agents' uploads. */
export class LogHub {
  /** Per host, the open request streams of its agent (usually one). */
  private readonly agents = new Map<string, Set<(r: AgentRequest) => void>>();
  private readonly waiting = new Map<string, Waiting>();
  private readonly waitingExec = new Map<string, { host: string; resolve: (port: ExecPort) => void }>();

  /** An agent's request stream opened; returns the function that closes it. */
  attach(host: string, send: (r: AgentRequest) => void): () => void {
    const set = this.agents.get(host) ?? new Set();
    set.add(send);
    this.agents.set(host, set);
    return () => {
      set.delete(send);
      if (set.size === 0) this.agents.delete(host);
    };
  }

  /** An agent's upload for request `id` arrived; false when nobody waits for it (or another host sent it). */
  deliver(host: string, id: string, body: Readable): boolean {
    const w = this.waiting.get(id);
    if (!w || w.host !== host) return false;
    this.waiting.delete(id);
    w.resolve(body);
    return true;
  }

  /** True when an exec session `id` of `host` waits for its agent's connection. */
  awaitsExec(host: string, id: string): boolean {
    return this.waitingExec.get(id)?.host === host;
  }

  /** The agent's end of exec session `id` arrived; false when nobody waits for it (timed out, or another host's). */
  deliverExec(host: string, id: string, port: ExecPort): boolean {
    const w = this.waitingExec.get(id);
    if (!w || w.host !== host) return false;
    this.waitingExec.delete(id);
    w.resolve(port);
    return true;
  }

  /**
   * Runs an exec session on `host` for the client at `client`: asks its agent, waits (10 s)
   * for the agent's end, then relays frames both ways until either end closes. Never throws:
   * a host that is not connected or does not answer ends the session with an error status.
   */
  async exec(host: string, req: Omit<ExecRequest, 'id' | 'kind'>, client: ExecPort): Promise<void> {
    const senders = this.agents.get(host);
    const send = senders ? [...senders].pop() : undefined;
    if (!send) {
      endSession(client, { error: { code: 'CARAPACE_E_UNAVAILABLE', message: `host ${host} is not connected to this server: exec cannot reach it now` } });
      return;
    }
    const id = randomBytes(12).toString('hex');
    const agent = await new Promise<ExecPort | undefined>((resolve) => {
      const timer = setTimeout(() => {
        this.waitingExec.delete(id);
        resolve(undefined);
      }, 10_000);
      this.waitingExec.set(id, { host, resolve: (p) => (clearTimeout(timer), resolve(p)) });
      send({ ...req, id, kind: 'exec' });
    });
    if (!agent) {
      endSession(client, { error: { code: 'CARAPACE_E_UNAVAILABLE', message: `host ${host} did not answer an exec request within 10 s` } });
      return;
    }
    await relayPorts(client, agent);
  }

  /**
   * Connects to a port of an instance on `host` through its agent: asks it, waits (10 s) for
   * its stream, then for its status frame (the agent's dial, up to its own 10 s timeout).
   * Resolves with the connection's frames after the status; throws the agent's error
   * (CARAPACE_E_PORT_UNREACHABLE, …) or CARAPACE_E_UNAVAILABLE for a host that is not
   * connected or does not answer.
   */
  async portForward(host: string, req: Omit<PortForwardRequest, 'id' | 'kind'>): Promise<ExecPort> {
    const senders = this.agents.get(host);
    const send = senders ? [...senders].pop() : undefined;
    if (!send) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', `host ${host} is not connected to this server: port-forward cannot reach it now`);
    const id = randomBytes(12).toString('hex');
    const agent = await new Promise<ExecPort | undefined>((resolve) => {
      const timer = setTimeout(() => {
        this.waitingExec.delete(id);
        resolve(undefined);
      }, 10_000);
      this.waitingExec.set(id, { host, resolve: (p) => (clearTimeout(timer), resolve(p)) });
      send({ ...req, id, kind: 'portforward' });
    });
    if (!agent) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', `host ${host} did not answer a port-forward request within 10 s`);
    return afterStatus(agent, DIAL_TIMEOUT_MS + 5_000);
  }

  /** The lines of `kind tenant/name` on `host`, streamed by its agent. */
  async *stream(host: string, req: Omit<LogRequest, 'id'>, opts: LogOptions): AsyncIterable<LogLine> {
    const senders = this.agents.get(host);
    const send = senders ? [...senders].pop() : undefined;
    if (!send) throw new CarapaceError('CARAPACE_E_UNAVAILABLE', `host ${host} is not connected to this server: its logs cannot be read now`);
    const id = randomBytes(12).toString('hex');
    const body = await new Promise<Readable>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new CarapaceError('CARAPACE_E_UNAVAILABLE', `host ${host} did not answer a log request within 10 s`));
      }, 10_000);
      this.waiting.set(id, { host, resolve: (b) => (clearTimeout(timer), resolve(b)), reject });
      send({ ...req, id });
    });
    const onAbort = (): void => void body.destroy();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const value of ndjsonLines(body)) {
        const l = value as LogLine; // checked field by field below
        if (typeof l.text === 'string' && typeof l.time === 'string' && (l.stream === 'stdout' || l.stream === 'stderr')) yield { time: l.time, stream: l.stream, text: l.text };
      }
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
      body.destroy();
    }
  }
}
