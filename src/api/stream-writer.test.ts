/**
 * StreamWriter over a real HTTP connection: chunks written together leave as one socket
 * write, and a client that stops reading is cut off once its backlog passes the bound (so it
 * cannot grow the server's memory) instead of being buffered without end.
 */
import { createServer, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { StreamWriter } from './stream-writer.js';

async function serve(handler: (res: ServerResponse) => void): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    handler(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  return { port: typeof addr === 'object' && addr ? addr.port : 0, close: () => new Promise((r) => server.close(() => r())) };
}

describe('StreamWriter', () => {
  it('writes the chunks written together as one write', async () => {
    let writes = 0;
    const done = new Promise<void>((resolve) => {
      void serve((res) => {
        const orig = res.write.bind(res);
        res.write = ((chunk: string) => (writes++, orig(chunk))) as typeof res.write;
        const w = new StreamWriter(res, () => undefined);
        for (let i = 0; i < 100; i++) w.write(`data: ${i}\n\n`);
        // Ended once the first socket write happened: the client must then have all 100.
        const ended = setInterval(() => {
          if (writes === 0) return;
          clearInterval(ended);
          res.end();
          resolve();
        }, 1);
      }).then(async (s) => {
        const r = await fetch(`http://127.0.0.1:${s.port}/`);
        expect((await r.text()).split('\n\n').filter(Boolean)).toHaveLength(100);
        await s.close();
      });
    });
    await done;
    expect(writes).toBe(1);
  });

  it('cuts a client that stops reading once its backlog passes the bound', async () => {
    let overflowed = 0;
    let destroyed = false;
    let written = 0;
    const s = await serve((res) => {
      const w = new StreamWriter(res, () => overflowed++, 1024 * 1024);
      const chunk = `data: ${'x'.repeat(64 * 1024)}\n\n`;
      const t = setInterval(() => {
        for (let i = 0; i < 8; i++) w.write(chunk);
        written += 8 * chunk.length;
        if (res.destroyed || written > 256 * 1024 * 1024) {
          destroyed = res.destroyed;
          clearInterval(t);
        }
      }, 1);
    });
    // A client that sends its request and never reads the answer.
    const sock = connect({ host: '127.0.0.1', port: s.port });
    sock.on('error', () => undefined);
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.pause();
    sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    for (let i = 0; i < 500 && !destroyed && written <= 256 * 1024 * 1024; i++) await new Promise((r) => setTimeout(r, 10));
    expect(destroyed).toBe(true);
    expect(overflowed).toBe(1);
    // Cut long before everything offered was buffered.
    expect(written).toBeLessThan(64 * 1024 * 1024);
    sock.destroy();
    await s.close();
  });
});
