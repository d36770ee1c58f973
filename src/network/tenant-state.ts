/**
 * The tenant data plane's record of what it made on this host (`<stateDir>/tenant-network.json`):
 * segments with their desired services, names and peers, endpoints with their addresses, and
 * the infrastructure set. Written before the kernel is touched when something is made, so a crash
 * leaves a record that recover/gc can finish or undo, never an object nobody knows about. The
 * kernel state is derived from it (tenant-networking.ts).
 */
import path from 'node:path';
import { readFileIfExists, writeFileAtomic } from './atomic-file.js';
import type { DnsName, PublishedPort, SegmentSpec, ServiceEntry } from './types.js';

/** One segment (tenant) on this host. */
export interface SegmentRecord {
  spec: SegmentSpec;
  /** The endpoint address handed out last; allocation continues after it (round robin). */
  cursor: string | null;
  peers: string[];
  services: ServiceEntry[];
  names: DnsName[];
}

/** One endpoint on this host. */
export interface EndpointRecord {
  tenant: string;
  kind: 'netns' | 'tap';
  ip: string;
  mac: string;
  /** The host end: veth or tap. */
  ifname: string;
  dhcp: boolean;
  ports: PublishedPort[];
}

/** The whole file. */
export interface TenantState {
  version: 1;
  /** The agent prefix the objects were named with; another prefix on this state is refused. */
  prefix: string;
  segments: Record<string, SegmentRecord>;
  endpoints: Record<string, EndpointRecord>;
  infrastructure: string[];
  /**
   * Taps made before their tenant is known (a warm cell's VM boots on one): on no bridge, so
   * nothing passes, until `attach` puts them on a segment with the MAC the VM already has.
   * Absent in files written before reservations existed.
   */
  reserved?: Record<string, { ifname: string; mac: string }>;
}

/** The state file's name in the state directory. */
export const STATE_FILE = 'tenant-network.json';

/** Reads the state of `stateDir` (empty when there is none yet). */
export async function loadState(stateDir: string, prefix: string): Promise<TenantState> {
  const file = path.join(stateDir, STATE_FILE);
  const text = await readFileIfExists(file);
  if (text === undefined) return { version: 1, prefix, segments: {}, endpoints: {}, infrastructure: [] };
  const s = JSON.parse(text) as TenantState; // safe: only saveState writes the file, always whole (atomic rename)
  if (s.version !== 1) throw new Error(`${file}: unknown version ${String(s.version)}`);
  if (s.prefix !== prefix && (Object.keys(s.segments).length > 0 || Object.keys(s.endpoints).length > 0)) {
    throw new Error(`${file} records objects named with prefix ${JSON.stringify(s.prefix)}; this instance uses ${JSON.stringify(prefix)}`);
  }
  s.prefix = prefix;
  return s;
}

/** Writes the state atomically. */
export async function saveState(stateDir: string, s: TenantState): Promise<void> {
  await writeFileAtomic(path.join(stateDir, STATE_FILE), JSON.stringify(s, null, 2) + '\n');
}
