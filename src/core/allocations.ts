/**
 * Keeps the usage allocation records (src/usage) in step with the objects that hold
 * resources: every write of an Instance, Cell or Machine carries, in the same store
 * transaction, the operations that close the subject's open allocation and open the new one.
 * So reserved usage is exact by construction: an acknowledged state change and its
 * accounting land together or not at all, and no sampler or timer can miss a transition.
 *
 * Layout: a subject's open record lives at `usage/open/<object key>` (one per object, found
 * with one read, and the compare-and-set point that stops two writers from both closing it);
 * when it ends it is written once, closed, to `usage/intervals/<id>` and never changed again.
 * Reports read both prefixes.
 */
import type { AnyObject } from '../model/objects.js';
import type { Entry, Store, TxnOp } from '../store/store.js';
import { allocationOf, closeInterval, openInterval, type Allocation } from '../usage/intervals.js';
import type { AllocationInterval } from '../usage/types.js';
import { intervalKey, isPlacedKey, openAllocationKey, VOLUME_PREFIX } from '../model/keys.js';

/** True when writes to `key` must carry allocation records (instances, cells and machines hold capacity; volumes storage). */
export function holdsResources(key: string): boolean {
  return isPlacedKey(key) || key.startsWith(VOLUME_PREFIX);
}

function same(r: AllocationInterval, a: Allocation): boolean {
  const s = r.subject;
  const t = a.subject;
  return r.cpu === a.cpu && r.memoryMiB === a.memoryMiB && (r.storageMiB ?? 0) === (a.storageMiB ?? 0) && s.kind === t.kind && s.uid === t.uid && s.tenant === t.tenant && s.group === t.group && s.cell === t.cell && s.name === t.name;
}

/**
 * The operations that make the allocation records of the object at `key` match `after`
 * (the object as this write leaves it; undefined when it is deleted). Idempotent: nothing
 * when the open record already says the same. `now` and `newId` come from the caller (the
 * store never makes times or ids). Read fresh on every attempt: the open record's version is
 * the precondition.
 */
export async function allocationOps(store: Store, key: string, after: AnyObject | undefined, now: string, newId: () => string): Promise<TxnOp[]> {
  if (!holdsResources(key)) return [];
  const want = after && (after.kind === 'Instance' || after.kind === 'Cell' || after.kind === 'Machine' || after.kind === 'Volume') ? allocationOf(after) : undefined;
  const openKey = openAllocationKey(key);
  const open: Entry<AllocationInterval> | undefined = await store.get<AllocationInterval>(openKey);
  if (open && want && same(open.value, want)) return [];
  if (!open && !want) return [];
  const ops: TxnOp[] = [];
  if (open) {
    // Never before its start, even if clocks of two writers disagree a little.
    const end = Date.parse(now) < Date.parse(open.value.start) ? open.value.start : now;
    ops.push({ op: 'put', key: intervalKey(open.value.id), value: closeInterval(open.value, end), expect: { absent: true } });
  }
  if (want) ops.push({ op: 'put', key: openKey, value: openInterval(newId(), want, now), expect: open ? { version: open.version } : { absent: true } });
  else if (open) ops.push({ op: 'delete', key: openKey, expect: { version: open.version } });
  return ops;
}
