/**
 * For tests only: the control plane's write path and controller over a real SQLite store and
 * audit log in a temporary directory (no agents: hosts are registered by the test, nothing
 * runs). Shared by the control-loop tests so they build their world one way. Deterministic
 * clock and ids: each call of `env.now()`/`env.newId()` moves them on.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { AuditLog } from '../audit/log.js';
import type { AuditRecord } from '../audit/record.js';
import type { Env } from '../core/actions.js';
import { ControlPlane, type ActionResult } from '../core/control-plane.js';
import { Resources } from '../core/resources.js';
import { parseManifest } from '../model/manifest.js';
import type { Host } from '../model/objects.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite.js';
import { WorkloadController } from './controller.js';

export interface ControlHarness {
  dir: string;
  store: SqliteStore;
  audit: AuditLog;
  resources: Resources;
  cp: ControlPlane;
  controller: WorkloadController;
  env: Env;
  /** Applies a manifest (apiVersion added) through the control plane's front door. */
  apply(m: Record<string, unknown>): Promise<ActionResult>;
  /** Registers a Ready, schedulable host with every tier. */
  addHost(name: string, cpu?: number, memoryMiB?: number): Promise<void>;
  /** Every audit record so far. */
  records(): Promise<AuditRecord[]>;
  close(): Promise<void>;
}

/** Opens a harness; `close()` it in afterEach. */
export async function openControlHarness(prefix = 'carapace-control-'): Promise<ControlHarness> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  let n = 0;
  const env: Env = { now: () => new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString(), newId: () => `id${++n}` };
  const store = await openSqliteStore({ path: join(dir, 'store.db') });
  const audit = await AuditLog.open({ store, keyDir: join(dir, 'keys') });
  const resources = new Resources(store, audit, env);
  const cp = new ControlPlane(resources, env);
  const controller = new WorkloadController({ resources, env, logger: pino({ level: 'silent' }) });
  return {
    dir,
    store,
    audit,
    resources,
    cp,
    controller,
    env,
    apply: (m) => cp.handle({ type: 'apply', manifest: parseManifest({ apiVersion: 'carapace/v1', ...m }) }),
    addHost: async (name, cpu = 8, memoryMiB = 16384) => {
      const host: Host = {
        kind: 'Host',
        metadata: { name, uid: name, labels: {}, resourceVersion: 0, generation: 1, createdAt: env.now(), updatedAt: env.now() },
        spec: { labels: {}, unschedulable: false, overcommit: { cpu: 4, memory: 1 } },
        status: { state: 'Ready', lastHeartbeatAt: env.now(), isolation: ['cell', 'dedicated', 'host', 'machine', 'sandbox'], capacity: { cpu, memoryMiB }, agentVersion: 'test' },
      };
      await resources.write(host, 0);
    },
    records: async () => (await audit.read()).records as AuditRecord[], // written by this harness's log: well-formed
    close: async () => {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
