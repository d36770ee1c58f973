/**
 * WebSocket upgrades routed through fastify like any request, so a WebSocket endpoint is an
 * ordinary route of the route table: its onRequest hook (authentication, RBAC) and the
 * checks before the handshake answer with ordinary HTTP errors (`{error: {code, …}}` with the
 * catalogue's status), and only a request that passed them is switched to WebSocket.
 *
 * Node hands a request with `Upgrade:` to the server's 'upgrade' event (when one is listened
 * to) with the bare socket; we give fastify a response on that socket and let it route. This
 * is what @fastify/websocket does, in the few lines we need without its plugin loading order
 * (it must be registered before routes, which makes building the app asynchronous).
 */
import { ServerResponse, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { WebSocketServer, type WebSocket } from 'ws';

/** Largest frame accepted from a peer (stdin chunks are far smaller). */
const MAX_PAYLOAD = 1024 * 1024;

interface Pending {
  socket: Duplex;
  head: Buffer;
}

/** Upgrades of one app: which requests asked for one, and the sessions open. */
export class WsUpgrades {
  private readonly pending = new WeakMap<IncomingMessage, Pending>();
  private readonly open = new Set<WebSocket>();
  private readonly wss: WebSocketServer;

  /**
   * Routes `app`'s upgrade requests through its routes; open sessions end when the app closes.
   * `protocols`: the subprotocols this server speaks; the handshake answers with the first
   * of them the client offered, never with another one the client offered (ws's default
   * would echo the client's first, which may carry its token).
   */
  constructor(app: FastifyInstance, protocols: readonly string[] = []) {
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: MAX_PAYLOAD,
      handleProtocols: (offered: Set<string>) => protocols.find((p) => offered.has(p)) ?? false,
    });
    app.server.on('upgrade', (raw: IncomingMessage, socket: Duplex, head: Buffer) => {
      // Node takes its own error listener off an upgraded socket: a reset must not crash us.
      socket.on('error', () => socket.destroy());
      this.pending.set(raw, { socket, head });
      const res = new ServerResponse(raw);
      res.assignSocket(socket as never); // ServerResponse takes the upgrade's socket (a net.Socket typed as Duplex by the event)
      // A refusal (or a route that does not upgrade) is an ordinary response, then the end of the connection.
      res.on('finish', () => socket.destroy());
      app.routing(raw, res);
    });
    app.addHook('preClose', async () => {
      for (const ws of this.open) ws.terminate();
    });
  }

  /** True when `req` asked to switch to WebSocket. */
  wants(req: FastifyRequest): boolean {
    return this.pending.has(req.raw);
  }

  /** Completes the handshake of `req` (call from its handler, after every check passed). */
  accept(req: FastifyRequest, reply: FastifyReply): Promise<WebSocket> {
    const p = this.pending.get(req.raw);
    if (!p) return Promise.reject(new Error('not an upgrade request'));
    reply.hijack();
    return new Promise((resolve, reject) => {
      // A handshake ws refuses (a bad key) ends the socket without calling back.
      p.socket.once('close', () => reject(new Error('the WebSocket handshake failed')));
      this.wss.handleUpgrade(req.raw, p.socket, p.head, (ws) => {
        this.open.add(ws);
        ws.on('close', () => this.open.delete(ws));
        ws.on('error', () => ws.terminate());
        resolve(ws);
      });
    });
  }
}
