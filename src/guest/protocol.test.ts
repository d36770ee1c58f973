import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeLine, GuestMessageSchema, LineSplitter, LineTooLongError, MAX_GUEST_LINE_BYTES, parseGuestLine, parseHostLine, TokenBucket, type GuestMessage } from './protocol.js';

const id = fc.stringMatching(/^[a-z0-9][a-z0-9_.-]{0,20}$/);
const guestMsg: fc.Arbitrary<GuestMessage> = fc.oneof(
  fc.record({ type: fc.constant('ready' as const), version: fc.integer({ min: 0, max: 9 }), bootMs: fc.nat(), agentStartMs: fc.nat() }),
  fc.record({ type: fc.constant('ack' as const), requestId: fc.string({ minLength: 1, maxLength: 64 }) }),
  fc.record({ type: fc.constant('state' as const), containerId: id, state: fc.constant({ status: 'created' as const }) }),
  fc.record({ type: fc.constant('log' as const), containerId: id, stream: fc.constantFrom('stdout' as const, 'stderr' as const), time: fc.constant('2024-01-01T00:00:00Z'), text: fc.string({ maxLength: 200, unit: 'binary' }), seq: fc.nat() }),
  fc.record({ type: fc.constant('pong' as const), seq: fc.nat() }),
  fc.record({ type: fc.constant('dropped' as const), containerId: id, count: fc.nat() }),
  fc.record({ type: fc.constant('checkResult' as const), requestId: fc.string({ minLength: 1, maxLength: 64 }), ok: fc.boolean(), message: fc.string({ maxLength: 1024 }) }),
);

describe('protocol', () => {
  it('every guest message round-trips through encodeLine/parseGuestLine', () => {
    fc.assert(
      fc.property(guestMsg, (m) => {
        const line = encodeLine(m, MAX_GUEST_LINE_BYTES).toString('utf8');
        expect(line.endsWith('\n')).toBe(true);
        expect(line.slice(0, -1)).not.toContain('\n');
        const r = parseGuestLine(line.slice(0, -1));
        expect(r.ok && r.msg).toEqual(m);
      }),
      { numRuns: 2000 },
    );
  });

  it('parsers never throw on arbitrary text or JSON', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary' }), fc.json()), (s) => {
        const g = parseGuestLine(s);
        const h = parseHostLine(s);
        if (g.ok) expect(GuestMessageSchema.safeParse(JSON.parse(s)).success).toBe(true);
        expect(typeof h.ok).toBe('boolean');
      }),
      { numRuns: 3000 },
    );
  });

  it('rejects unknown fields, bad ids and foreign types', () => {
    expect(parseGuestLine('{"type":"pong","seq":1,"extra":1}').ok).toBe(false);
    expect(parseGuestLine('{"type":"state","containerId":"../etc","state":{"status":"created"}}').ok).toBe(false);
    expect(parseGuestLine('{"type":"run"}').ok).toBe(false);
    expect(parseGuestLine('{"type":"pong","seq":1}').ok).toBe(true);
    const r = parseGuestLine('not json');
    expect(!r.ok && r.reason).toBe('json');
  });

  it('check requests and results: one handler, bounded fields, nothing else', () => {
    const check = (action: unknown, timeoutMs: unknown = 1000): boolean => parseHostLine(JSON.stringify({ type: 'check', requestId: 'r1', containerId: 'c1', action, timeoutMs })).ok;
    expect(check({ exec: { command: ['cat', '/ok'] } })).toBe(true);
    expect(check({ httpGet: { path: '/healthz', port: 8080 } })).toBe(true);
    expect(check({ tcpSocket: { port: 5432 } })).toBe(true);
    expect(check({ exec: { command: [] } })).toBe(false);
    expect(check({ httpGet: { path: '/a\r\nX: y', port: 80 } })).toBe(false);
    expect(check({ httpGet: { path: '/', port: 80, host: '10.0.0.1' } })).toBe(false); // the guest only probes its own loopback
    expect(check({ tcpSocket: { port: 80 }, exec: { command: ['true'] } })).toBe(false);
    expect(check({ tcpSocket: { port: 0 } })).toBe(false);
    expect(check({ tcpSocket: { port: 80 } }, 0)).toBe(false);
    expect(check({ tcpSocket: { port: 80 } }, 600_001)).toBe(false);
    expect(parseGuestLine(JSON.stringify({ type: 'checkResult', requestId: 'r1', ok: true, message: 'x'.repeat(1024) })).ok).toBe(true);
    expect(parseGuestLine(JSON.stringify({ type: 'checkResult', requestId: 'r1', ok: true, message: 'x'.repeat(1025) })).ok).toBe(false);
    expect(parseGuestLine(JSON.stringify({ type: 'checkResult', requestId: 'r1', ok: 'yes', message: '' })).ok).toBe(false);
    expect(parseGuestLine(JSON.stringify({ type: 'checkResult', requestId: 'r1', ok: true, message: '', extra: 1 })).ok).toBe(false);
  });

  it('encodeLine refuses lines over the limit', () => {
    expect(() => encodeLine({ type: 'ack', requestId: 'x'.repeat(60) }, 20)).toThrow(LineTooLongError);
  });

  it('LineSplitter matches a plain split model for any chunking, holding at most max bytes', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 80 }), { maxLength: 20 }), fc.integer({ min: 1, max: 64 }), (chunks, max) => {
        const s = new LineSplitter(max);
        const got: string[] = [];
        for (const c of chunks) {
          got.push(...s.push(Buffer.from(c)));
          expect(s.bufferedBytes).toBeLessThanOrEqual(max);
        }
        const all = Buffer.concat(chunks.map((c) => Buffer.from(c)));
        const parts: Buffer[] = [];
        let start = 0;
        for (let i = 0; i < all.length; i++) if (all[i] === 10) {
          parts.push(all.subarray(start, i));
          start = i + 1;
        }
        const complete = parts.filter((p) => p.length > 0);
        expect(got).toEqual(complete.filter((p) => p.length <= max).map((p) => p.toString('utf8')));
        expect(s.oversized).toBe(complete.filter((p) => p.length > max).length);
      }),
      { numRuns: 3000 },
    );
  });

  it('TokenBucket allows burst then perSec', () => {
    const b = new TokenBucket(10, 5, 0);
    let ok = 0;
    for (let i = 0; i < 100; i++) if (b.take(0)) ok++;
    expect(ok).toBe(5);
    for (let i = 0; i < 100; i++) if (b.take(1000)) ok++;
    expect(ok).toBe(10);
  });
});
