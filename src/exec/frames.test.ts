import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { isCarapaceError } from '../model/errors.js';
import { BEARER_PROTOCOL_PREFIX, bearerFromProtocols, bearerProtocol, CHANNEL, decodeFrame, encodeFrame, EXEC_PROTOCOL, execQuery, offersProtocol, parseExecQuery, parseResize, parseStatus, MAX_COMMAND_ARGS } from './frames.js';

const q = (s: string): URLSearchParams => new URLSearchParams(s);

function issuesOf(f: () => unknown): string[] {
  try {
    f();
  } catch (e) {
    if (isCarapaceError(e, 'CARAPACE_E_BAD_QUERY')) return e.details.map((d) => d.path);
    throw e;
  }
  return [];
}

describe('exec query', () => {
  it('round-trips any options through the URL', () => {
    const arg = fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !s.includes('\0'));
    fc.assert(
      fc.property(fc.array(arg, { minLength: 1, maxLength: 8 }), fc.boolean(), fc.boolean(), fc.option(fc.integer({ min: 1, max: 4096 }), { nil: undefined }), (command, tty, stdin, cols) => {
        const o = { command, tty, stdin, ...(cols !== undefined ? { cols, rows: cols } : {}) };
        expect(parseExecQuery(q(execQuery(o)))).toEqual(o);
      }),
    );
  });
  it('names each bad parameter', () => {
    expect(issuesOf(() => parseExecQuery(q('tty=true')))).toEqual(['query.command']);
    expect(issuesOf(() => parseExecQuery(q('command=&command=x')))).toEqual(['query.command[0]']);
    expect(issuesOf(() => parseExecQuery(q('command=sh&tty=yes&cols=0&rows=99999')))).toEqual(['query.tty', 'query.cols', 'query.rows']);
    expect(issuesOf(() => parseExecQuery(q(`command=a%00b`)))).toEqual(['query.command[0]']);
    expect(issuesOf(() => parseExecQuery(q(Array.from({ length: MAX_COMMAND_ARGS + 1 }, () => 'command=x').join('&'))))).toEqual(['query.command']);
  });
});

describe('exec frames', () => {
  it('round-trips every channel and payload', () => {
    fc.assert(
      fc.property(fc.constantFrom(...Object.values(CHANNEL)), fc.uint8Array({ maxLength: 64 }), (c, p) => {
        expect(decodeFrame(encodeFrame(c, p))).toEqual({ channel: c, payload: p });
      }),
    );
  });
  it('ignores empty frames and unknown channels', () => {
    expect(decodeFrame(new Uint8Array(0))).toBeUndefined();
    expect(decodeFrame(Uint8Array.of(6, 1))).toBeUndefined();
  });
  it('reads resize and status payloads, refusing malformed ones', () => {
    const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
    expect(parseResize(enc({ cols: 100, rows: 40 }))).toEqual({ cols: 100, rows: 40 });
    expect(parseResize(enc({ cols: 0, rows: 40 }))).toBeUndefined();
    expect(parseResize(new TextEncoder().encode('{'))).toBeUndefined();
    expect(parseStatus(enc({ exitCode: 3 }))).toEqual({ exitCode: 3 });
    // A cell's guest timing passes through; a nonsensical one is dropped, the exit code kept.
    expect(parseStatus(enc({ exitCode: 0, guestMs: 12.5 }))).toEqual({ exitCode: 0, guestMs: 12.5 });
    expect(parseStatus(enc({ exitCode: 0, guestMs: -1 }))).toEqual({ exitCode: 0 });
    expect(parseStatus(enc({ exitCode: 0, guestMs: 'soon' }))).toEqual({ exitCode: 0 });
    expect(parseStatus(enc({ error: { code: 'CARAPACE_E_X', message: 'm' } }))).toEqual({ error: { code: 'CARAPACE_E_X', message: 'm' } });
    expect(parseStatus(enc({ exitCode: 'x' }))).toMatchObject({ error: { code: 'CARAPACE_E_INTERNAL' } });
  });
});

describe('the token as a WebSocket subprotocol', () => {
  it('round-trips any token through a header list, in subprotocol characters only', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 200, unit: 'grapheme' }).filter((s) => /^\S+$/.test(s)), (token) => {
        const p = bearerProtocol(token);
        // RFC 6455: a subprotocol is a token of RFC 2616 (no '=', '/', '+').
        expect(p).toMatch(/^[A-Za-z0-9._-]+$/);
        expect(bearerFromProtocols(`${EXEC_PROTOCOL}, ${p}`)).toBe(token);
      }),
    );
    expect(bearerFromProtocols(bearerProtocol('cpt_abc.def'))).toBe('cpt_abc.def');
  });

  it('reads a missing or malformed token as none', () => {
    expect(bearerFromProtocols(undefined)).toBeUndefined();
    expect(bearerFromProtocols(EXEC_PROTOCOL)).toBeUndefined();
    expect(bearerFromProtocols(`${BEARER_PROTOCOL_PREFIX}`)).toBeUndefined();
    expect(bearerFromProtocols(`${BEARER_PROTOCOL_PREFIX}a+b/c=`)).toBeUndefined();
    expect(bearerFromProtocols(`${BEARER_PROTOCOL_PREFIX}${'A'.repeat(3000)}`)).toBeUndefined();
    expect(bearerFromProtocols(bearerProtocol('a b'))).toBeUndefined();
    expect(bearerFromProtocols(`${BEARER_PROTOCOL_PREFIX}_-8`)).toBeUndefined(); // not UTF-8
  });

  it('says whether a list offers a protocol', () => {
    expect(offersProtocol(`x, ${EXEC_PROTOCOL}`, EXEC_PROTOCOL)).toBe(true);
    expect(offersProtocol(`${EXEC_PROTOCOL}x`, EXEC_PROTOCOL)).toBe(false);
    expect(offersProtocol(undefined, EXEC_PROTOCOL)).toBe(false);
  });
});
