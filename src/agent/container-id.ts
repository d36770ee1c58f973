/**
 * Runtime container ids and labels. An id names one start attempt of one instance
 * (uid, generation, restart count), so a replaced or restarted attempt never collides with
 * the container it replaces, and a restarted agent can tell which container is current.
 */
import type { Instance } from '../model/objects.js';

/** Label keys the agent puts on every container it starts. */
export const LABELS = {
  uid: 'carapace.instance.uid',
  tenant: 'carapace.tenant',
  instance: 'carapace.instance',
  generation: 'carapace.instance.generation',
} as const;

/** `i<uid-prefix>-g<generation>-r<restarts>`: valid for runc, runsc and path names. */
export function containerIdFor(inst: Instance): string {
  const uid = inst.metadata.uid.replace(/[^a-z0-9]/gi, '').toLowerCase().slice(0, 16);
  return `i${uid}-g${inst.metadata.generation}-r${inst.status.restarts}`;
}
