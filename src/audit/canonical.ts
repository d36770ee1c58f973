/**
 * Canonical JSON: the one byte encoding the audit chain hashes and the checkpoints sign.
 * Object keys sorted (by UTF-16 code unit, as RFC 8785), no whitespace, strings and numbers
 * as JSON.stringify writes them (ECMAScript shortest round-trip numbers, well-formed string
 * escapes). Two values that are equal as JSON data encode to the same string, whatever the
 * key order they were built or stored in. Pure: no I/O.
 */

/**
 * Encode `value` canonically. Follows JSON.stringify's data model (toJSON is honoured, object
 * properties whose value is undefined are dropped, undefined in arrays becomes null) but
 * refuses what JSON cannot carry faithfully instead of silently changing it: non-finite
 * numbers, bigints, functions, symbols and cycles throw a TypeError. Any caller may use it.
 */
export function canonicalJson(value: unknown): string {
  const out: string[] = [];
  write(value, out, new Set());
  return out.join('');
}

function write(value: unknown, out: string[], stack: Set<object>): void {
  if (value !== null && typeof value === 'object' && typeof (value as { toJSON?: unknown }).toJSON === 'function') {
    // Same rule as JSON.stringify: an object with toJSON (e.g. Date) is encoded as its result.
    value = (value as { toJSON: () => unknown }).toJSON();
  }
  if (value === null) {
    out.push('null');
    return;
  }
  switch (typeof value) {
    case 'boolean':
      out.push(value ? 'true' : 'false');
      return;
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`canonical JSON cannot encode the number ${value}`);
      out.push(JSON.stringify(value));
      return;
    case 'string':
      out.push(JSON.stringify(value));
      return;
    case 'object':
      break;
    default:
      throw new TypeError(`canonical JSON cannot encode a ${typeof value}`);
  }
  const obj = value as object; // typeof is 'object' and not null (checked above)
  if (stack.has(obj)) throw new TypeError('canonical JSON cannot encode a cyclic structure');
  stack.add(obj);
  if (Array.isArray(obj)) {
    out.push('[');
    obj.forEach((item: unknown, i) => {
      if (i > 0) out.push(',');
      if (item === undefined || typeof item === 'function' || typeof item === 'symbol') out.push('null');
      else write(item, out, stack);
    });
    out.push(']');
  } else {
    const rec = obj as Record<string, unknown>; // a non-array object: its own enumerable string keys are its JSON members
    const keys = Object.keys(rec)
      .filter((k) => rec[k] !== undefined)
      .sort();
    out.push('{');
    keys.forEach((k, i) => {
      if (i > 0) out.push(',');
      out.push(JSON.stringify(k), ':');
      write(rec[k], out, stack);
    });
    out.push('}');
  }
  stack.delete(obj);
}
