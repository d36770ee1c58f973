import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson } from './canonical.js';

describe('canonicalJson', () => {
  it('sorts keys at every depth and writes no whitespace', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, 'x', null, true], c: 'é"\n' } })).toBe('{"a":{"c":"é\\"\\n","d":[1,"x",null,true]},"b":1}');
  });

  it('drops undefined properties and honours toJSON, like JSON.stringify', () => {
    expect(canonicalJson({ a: undefined, t: new Date(0), l: [undefined] })).toBe('{"l":[null],"t":"1970-01-01T00:00:00.000Z"}');
  });

  it('refuses what JSON cannot carry faithfully', () => {
    expect(() => canonicalJson({ n: NaN })).toThrow(TypeError);
    expect(() => canonicalJson({ n: Infinity })).toThrow(TypeError);
    expect(() => canonicalJson({ n: 1n })).toThrow(TypeError);
    expect(() => canonicalJson({ f: () => 1 })).toThrow(TypeError);
    const cyc: Record<string, unknown> = {};
    cyc.self = cyc;
    expect(() => canonicalJson(cyc)).toThrow(/cyclic/);
    // The same object twice (not a cycle) is fine.
    const shared = { x: 1 };
    expect(canonicalJson({ a: shared, b: shared })).toBe('{"a":{"x":1},"b":{"x":1}}');
  });

  it('is valid JSON that round-trips, and ignores key order', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const c = canonicalJson(v);
        const back: unknown = JSON.parse(c);
        expect(canonicalJson(back)).toBe(c);
        // Rebuild every object with reversed key order: same encoding.
        const reversed = (x: unknown): unknown =>
          Array.isArray(x) ? x.map(reversed) : x !== null && typeof x === 'object'
            ? Object.fromEntries(Object.entries(x).reverse().map(([k, y]) => [k, reversed(y)]))
            : x;
        expect(canonicalJson(reversed(back))).toBe(c);
        expect(/[\n\t]|": |, /.test(c.replace(/"(?:[^"\\]|\\.)*"/g, '""'))).toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});

describe('CSV export fields', () => {
  it('quotes per RFC 4180 and defuses spreadsheet formulas', async () => {
    const { csvField } = await import('./export.js');
    expect(csvField('web')).toBe('web');
    expect(csvField('a,b')).toBe('"a,b"');
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    for (const evil of ['=HYPERLINK("http://x")', '+1', '-2+3', '@SUM(A1)', '\tx', '\rx']) {
      const out = csvField(evil);
      expect(out.replace(/^"/, '').startsWith("'"), evil).toBe(true);
    }
    expect(csvField('=1,2')).toBe(`"'=1,2"`);
  });
});
