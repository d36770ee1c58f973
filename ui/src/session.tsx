/**
 * What every view needs: the API client, who is signed in (role and tenant decide which
 * actions are offered; the server decides what is allowed), the live cluster, and the
 * details drawer's selection.
 */
import { createContext, useContext, useSyncExternalStore } from 'react';
import type { Api, WhoAmI } from './api';
import type { Cluster, Snapshot } from './cluster';

/** What the details drawer shows. */
export type Selection =
  | { kind: 'instance'; key: string }
  | { kind: 'cell'; key: string }
  | { kind: 'host'; key: string }
  | { kind: 'machine'; key: string }
  | { kind: 'service'; key: string };

export interface SessionValue {
  api: Api;
  who: WhoAmI;
  cluster: Cluster;
  select: (s: Selection | undefined) => void;
  navigate: (route: string) => void;
}

export const SessionContext = createContext<SessionValue | undefined>(undefined);

export function useSession(): SessionValue {
  const s = useContext(SessionContext);
  if (!s) throw new Error('useSession outside a signed-in session');
  return s;
}

/** The live snapshot; re-renders on every (coalesced) change. */
export function useCluster(): Snapshot {
  const { cluster } = useSession();
  return useSyncExternalStore(cluster.subscribe, cluster.getSnapshot);
}

/** Cluster-admins operate hosts and see every tenant. */
export function isAdmin(who: WhoAmI): boolean {
  return who.role === 'cluster-admin';
}

/** Roles that may change workloads (the server checks again). */
export function canWrite(who: WhoAmI): boolean {
  return who.role === 'cluster-admin' || who.role === 'tenant-admin';
}
