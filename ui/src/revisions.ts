/**
 * What a revision changed, for the rollout history table (views/Rollout.tsx): the fields of
 * a service template that differ from the revision before it, env by key. Pure. Values are
 * not shown (an env value may be a credential someone pasted): the report's one-line summary
 * (`rollout history`'s TEMPLATE column) is one hover away for who wants them.
 */
import type { ServiceTemplate } from '../../src/model/rollout.js';

/** Deep equality of JSON data, key order and undefined members ignored. */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  // `as`: both are non-null objects here, compared by their own enumerable keys.
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  const ka = Object.keys(ra).filter((k) => ra[k] !== undefined);
  const kb = Object.keys(rb).filter((k) => rb[k] !== undefined);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(rb, k) && same(ra[k], rb[k]));
}

/**
 * The changes from `prev` to `cur`, in a stable order: `image`, `env +KEY` (added), `env -KEY`
 * (removed), `env ~KEY` (changed value), `restart` (only `restartedAt` moved), then any other
 * top-level field by name (`command`, `readinessProbe`…). Empty when `prev` is absent (the
 * first revision kept) or the templates are the same.
 */
export function templateChanges(prev: ServiceTemplate | undefined, cur: ServiceTemplate): string[] {
  if (!prev) return [];
  const out: string[] = [];
  if (prev.image !== cur.image) out.push('image');
  const pe = prev.env ?? {};
  const ce = cur.env ?? {};
  for (const k of Object.keys(ce).sort()) {
    if (!Object.hasOwn(pe, k)) out.push(`env +${k}`);
    else if (pe[k] !== ce[k]) out.push(`env ~${k}`);
  }
  for (const k of Object.keys(pe).sort()) if (!Object.hasOwn(ce, k)) out.push(`env -${k}`);
  if (prev.restartedAt !== cur.restartedAt) out.push('restart');
  // `as`: a template is a JSON object; compared field by field.
  const p = prev as Record<string, unknown>;
  const c = cur as Record<string, unknown>;
  const others = new Set([...Object.keys(p), ...Object.keys(c)].filter((k) => k !== 'image' && k !== 'env' && k !== 'restartedAt'));
  for (const k of [...others].sort()) if (!same(p[k], c[k])) out.push(k);
  return out;
}
