/**
 * fast-check arbitraries derived from the zod schemas (through zod's JSON Schema export, so
 * a field added to a schema is generated without touching this file), and mutations that
 * turn a valid document into a hostile one: a field dropped, duplicated or retyped, huge
 * strings, hostile Unicode, deep nesting, numbers at the edges, unknown and prototype keys.
 */
import fc from 'fast-check';
import { z } from 'zod';

type JsonSchema = {
  type?: string | string[];
  const?: unknown;
  enum?: unknown[];
  oneOf?: JsonSchema[];
  anyOf?: JsonSchema[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  propertyNames?: JsonSchema;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
};

/**
 * Fields whose zod schema is a transform (not representable in JSON Schema) get generators
 * of their own: quantities as users write them, valid or not.
 */
const QUANTITY = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom<unknown>(0.1, 0.25, 1, 2, 64, 128, '100m', '250m', '0.5', '64Mi', '128Mi', '1Gi', '512') },
  fc.double({ min: 0, max: 2048, noNaN: true }),
  fc.integer({ min: -5, max: 100_000 }),
  fc.constantFrom('100m', '0.5', '1', '250m', '1000m', '1Gi', '64Mi', '128', '4Mi', '16Ti', '17Ti', '0', '-1', '1e3', '0x10', ' 1', 'Infinity', 'NaN', '1.5Gi', '500Ki', ''),
  fc.stringMatching(/^-?[0-9]{1,7}(\.[0-9]{1,3})?(m|Ki|Mi|Gi|Ti|k|M|G)?$/),
);
const HINTS: Record<string, fc.Arbitrary<unknown>> = { cpu: QUANTITY, memory: QUANTITY };

/** A lookahead or lookbehind group, with at most one level of groups inside. */
const LOOKAROUND = /\(\?<?[=!](?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*\)/g;

/** Strings a pattern accepts, within the length bounds (most patterns here bound themselves). */
function stringArb(s: JsonSchema): fc.Arbitrary<string> {
  const min = s.minLength ?? 0;
  const max = s.maxLength ?? 64;
  if (s.pattern) {
    // fast-check cannot generate from lookarounds (the guest protocol's paths refuse `.` and
    // `..` segments with them): generate from the pattern without them, keep what the whole
    // pattern accepts.
    const whole = new RegExp(s.pattern);
    const generable = new RegExp(s.pattern.replace(LOOKAROUND, ''));
    return fc.stringMatching(generable).filter((x) => x.length >= min && x.length <= max && whole.test(x));
  }
  return fc.string({ minLength: min, maxLength: Math.min(max, min + 24) });
}

function integerArb(s: JsonSchema): fc.Arbitrary<number> {
  const min = Math.max(s.minimum ?? -1_000_000, Number.MIN_SAFE_INTEGER);
  const max = Math.min(s.maximum ?? 1_000_000, Number.MAX_SAFE_INTEGER);
  // The edges are where off-by-one bugs live.
  return fc.oneof(fc.constantFrom(min, max), fc.integer({ min: Math.max(min, -1_000_000), max: Math.min(max, 1_000_000) }));
}

/** An arbitrary of values valid for the JSON Schema `s` (as far as JSON Schema says). */
export function fromJsonSchema(s: JsonSchema, name = ''): fc.Arbitrary<unknown> {
  const hint = HINTS[name];
  if (hint && Array.isArray(s.type)) return hint;
  if (s.const !== undefined) return fc.constant(s.const);
  if (s.enum) return fc.constantFrom(...s.enum);
  const alts = s.oneOf ?? s.anyOf;
  if (alts) return fc.oneof(...alts.map((a) => fromJsonSchema(a, name)));
  if (Array.isArray(s.type)) return fc.oneof(...s.type.map((t) => fromJsonSchema({ ...s, type: t }, name)));
  switch (s.type) {
    case 'string':
      return stringArb(s);
    case 'integer':
      return integerArb(s);
    case 'number':
      return fc.double({ min: s.minimum ?? -1e9, max: s.maximum ?? 1e9, noNaN: true, noDefaultInfinity: true });
    case 'boolean':
      return fc.boolean();
    case 'null':
      return fc.constant(null);
    case 'array': {
      const min = s.minItems ?? 0;
      return fc.array(s.items ? fromJsonSchema(s.items, name) : fc.jsonValue({ maxDepth: 1 }), { minLength: min, maxLength: Math.min(s.maxItems ?? 4, min + 3) });
    }
    case 'object': {
      if (s.properties && Object.keys(s.properties).length > 0) {
        const props: Record<string, fc.Arbitrary<unknown>> = {};
        for (const [k, v] of Object.entries(s.properties)) props[k] = fromJsonSchema(v, k);
        return fc.record(props, { requiredKeys: (s.required ?? []).filter((k) => k in props) });
      }
      const value = typeof s.additionalProperties === 'object' ? fromJsonSchema(s.additionalProperties) : fc.jsonValue({ maxDepth: 1 });
      const key = s.propertyNames ? (stringArb(s.propertyNames) as fc.Arbitrary<string>) : fc.string({ maxLength: 12 });
      return fc.dictionary(key, value, { maxKeys: 3 });
    }
    default:
      return fc.jsonValue({ maxDepth: 2 });
  }
}

/** Values valid for a zod schema's input (JSON Schema's view of it; refinements aside). */
export function fromZod(schema: z.ZodType): fc.Arbitrary<unknown> {
  return fromJsonSchema(z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonSchema);
}

// ---------------------------------------------------------------- mutations

/** Paths to every value inside a document (objects and arrays), root excluded. */
export function pathsOf(v: unknown, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  const entries: [string | number, unknown][] = Array.isArray(v) ? v.map((x, i) => [i, x]) : v !== null && typeof v === 'object' ? Object.entries(v) : [];
  for (const [k, x] of entries) {
    out.push([...prefix, k]);
    pathsOf(x, [...prefix, k], out);
  }
  return out;
}

function setAt(doc: unknown, path: (string | number)[], value: unknown, remove = false): unknown {
  if (path.length === 0) return value;
  const copy: any = Array.isArray(doc) ? [...doc] : { ...(doc as object) };
  const [head, ...rest] = path as [string | number, ...(string | number)[]];
  if (rest.length === 0) {
    if (remove) {
      if (Array.isArray(copy)) copy.splice(head as number, 1);
      else delete copy[head];
    } else copy[head] = value;
    return copy;
  }
  copy[head] = setAt(copy[head], rest, value, remove);
  return copy;
}

function getAt(doc: unknown, path: (string | number)[]): unknown {
  let v: any = doc;
  for (const p of path) v = v?.[p];
  return v;
}

/** Strings that break naive code: control characters, bidi overrides, lone surrogates, NUL, long grapheme clusters, path and injection tricks. */
export const HOSTILE_STRING = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.constantFrom('\u0000', '\ud800', '\udfff', 'a\u202egnp.exe', '\u200b', '👩‍👩‍👧‍👦'.repeat(20), '../../etc/passwd', '/', '', ' ', 'NaN', '__proto__', 'constructor', '${jndi:ldap://x}', "'; DROP TABLE kv; --", '%00', '\r\nX-Injected: 1', 'Ａｃｍｅ', 'ǅ', 'i̇'),
);

/** Numbers at the edges of every range the schemas use. */
export const EDGE_NUMBER = fc.constantFrom(0, -0, -1, 1, 0.5, 1.5, 7, 8, 63, 64, 255, 256, 1023, 1024, 65535, 65536, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), 2 ** 32, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 2, 1e21, 1e308, -1e308, 5e-324, 1e-7, 0.0001, 0.001, 1024.0001);

/** A value of another JSON type than `v`. */
function retype(v: unknown): fc.Arbitrary<unknown> {
  const all = [fc.string({ maxLength: 8 }), EDGE_NUMBER, fc.boolean(), fc.constant(null), fc.constant([]), fc.constant({}), fc.array(fc.jsonValue({ maxDepth: 1 }), { maxLength: 2 })];
  const t = v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
  const others = all.filter((_, i) => ['string', 'number', 'boolean', 'null', 'array', 'object', 'array'][i] !== t);
  return fc.oneof(...others);
}

/** Builds `[[[…]]]` (or `{"a":{"a":…}}`) nested `depth` deep as JSON text, without recursion. */
export function deepJson(depth: number, kind: 'array' | 'object'): string {
  return kind === 'array' ? `${'['.repeat(depth)}${']'.repeat(depth)}` : `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
}

/** A mutated document: still an object to send as JSON or YAML, or raw text when JSON cannot say it. */
export type Mutated = { doc: unknown; raw?: undefined; what: string } | { doc?: undefined; raw: string; what: string };

/** One mutation of `doc` (a valid document). */
export function mutate(doc: unknown): fc.Arbitrary<Mutated> {
  const paths = pathsOf(doc);
  const path = paths.length > 0 ? fc.constantFrom(...paths) : fc.constant([] as (string | number)[]);
  return fc.oneof(
    path.map((p) => ({ doc: setAt(doc, p, undefined, true), what: `dropped ${p.join('.')}` })),
    path.chain((p) => retype(getAt(doc, p)).map((v) => ({ doc: setAt(doc, p, v), what: `retyped ${p.join('.')}` }))),
    path.chain((p) => HOSTILE_STRING.map((v) => ({ doc: setAt(doc, p, v), what: `hostile string at ${p.join('.')}` }))),
    path.chain((p) => EDGE_NUMBER.map((v) => ({ doc: setAt(doc, p, v), what: `edge number ${Object.is(v, -0) ? '-0' : String(v)} at ${p.join('.')}` }))),
    path.chain((p) => fc.constantFrom(1_000, 70_000, 600_000).map((n) => ({ doc: setAt(doc, p, 'x'.repeat(n)), what: `${n}-character string at ${p.join('.')}` }))),
    path.chain((p) => fc.constantFrom(50, 5_000, 100_000).map((n) => ({ raw: JSON.stringify(setAt(doc, p, '__DEEP__')).replace('"__DEEP__"', deepJson(n, n % 2 ? 'object' : 'array')), what: `${n}-deep nesting at ${p.join('.')}` }) as Mutated)),
    fc.record({ p: path, key: fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('__proto__', 'constructor', 'prototype', 'apiversion', 'Kind', 'spec ')) }).map(({ p, key }) => {
      const parent = p.slice(0, -1);
      const target = getAt(doc, parent);
      const obj = target !== null && typeof target === 'object' && !Array.isArray(target) ? target : doc;
      const at = obj === target ? parent : [];
      // As text, so a "__proto__" key is really in the body (an object literal would set the prototype).
      const text = JSON.stringify(setAt(doc, at, { ...(obj as object), ['\u0001KEY']: 1 })).replace('"\\u0001KEY"', JSON.stringify(key));
      return { raw: text, what: `unknown key ${JSON.stringify(key)} at ${at.join('.') || '(root)'}` } as Mutated;
    }),
    path.map((p) => {
      // The same key twice: JSON.parse keeps the last; a careless parser might keep the first.
      const key = p[p.length - 1];
      if (typeof key !== 'string') return { doc, what: 'unchanged' };
      const text = JSON.stringify(doc).replace(`"${key}":`, `"${key}":"duplicate","${key}":`);
      return { raw: text, what: `duplicated ${p.join('.')}` } as Mutated;
    }),
    fc.constantFrom<Mutated>({ doc: null, what: 'null' }, { doc: [], what: 'array' }, { doc: 'text', what: 'string' }, { doc: 42, what: 'number' }, { raw: '', what: 'empty body' }, { raw: '{', what: 'truncated' }, { raw: '\ufeff{}', what: 'BOM' }),
  );
}
