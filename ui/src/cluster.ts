/**
 * The live picture of the estate the signed-in token may see. Lists each kind once, then
 * follows the API's watch streams (instances, cells, services) from the list's revision and
 * the event stream (audit + lifecycle) for the activity feed; kinds without a stream of their
 * own here (tenants, jobs, machines, volumes, volume snapshots, secrets, configs, hosts) are
 * listed again when an event concerns them (volumes also when an instance that mounts one
 * changes: its attachedTo follows; snapshots also every 2 s while one is Pending: its agent's
 * status write makes no event).
 * Everything is narrowed by the server (a tenant token only ever receives its tenant's
 * objects); this class only keeps what arrives. Views read snapshots through `useCluster`.
 *
 * At most four streams stay open (browsers allow six HTTP/1.1 connections per server).
 */
import type { Cell, Host, Instance, Job, Machine, Service, Tenant } from '../../src/model/objects.js';
import type { Volume } from '../../src/model/volumes.js';
import type { VolumeSnapshot } from '../../src/model/volume-snapshots.js';
import type { Config, Secret } from '../../src/model/secrets.js';
import { ApiError, type Api, type WhoAmI } from './api';

/** A line of the activity feed: an audit record or a lifecycle change, as the API sent it. */
export type FeedEvent =
  | { type: 'audit'; id: string; record: AuditRecord }
  | { type: 'lifecycle'; id: string; change: LifecycleChange };

/** The audit record shape of /v1/events and /v1/audit/records. */
export interface AuditRecord {
  seq: number;
  time: string;
  actor: { kind: 'user' | 'system'; id: string; tenant?: string };
  source?: string;
  action: string;
  target: { kind: string; tenant?: string; name: string };
  outcome: 'success' | 'failure';
  detail?: Record<string, unknown>;
  hash?: string;
}

/** A `lifecycle` event of /v1/events. */
export interface LifecycleChange {
  kind: 'Instance' | 'Cell' | 'Machine' | 'Host';
  name: string;
  tenant?: string;
  phase: string;
  reason?: string;
  message?: string;
  host?: string;
  cell?: string;
  revision: number;
  /** Added here: when the browser received it. */
  receivedAt: string;
}

export type Streams = 'connecting' | 'live' | 'reconnecting';

/** An immutable view for rendering; a new object whenever anything changed. */
export interface Snapshot {
  version: number;
  loaded: boolean;
  streams: Streams;
  error?: string;
  instances: ReadonlyMap<string, Instance>;
  cells: ReadonlyMap<string, Cell>;
  services: ReadonlyMap<string, Service>;
  jobs: ReadonlyMap<string, Job>;
  machines: ReadonlyMap<string, Machine>;
  volumes: ReadonlyMap<string, Volume>;
  volumesnapshots: ReadonlyMap<string, VolumeSnapshot>;
  /** Secrets as the API shows them: names, keys and sizes, never values. */
  secrets: ReadonlyMap<string, Secret>;
  configs: ReadonlyMap<string, Config>;
  tenants: ReadonlyMap<string, Tenant>;
  hosts: ReadonlyMap<string, Host>;
  feed: readonly FeedEvent[];
  /** Names of the tokens this caller may list, by audit actor id (`token:<id>`). */
  tokenNames: ReadonlyMap<string, string>;
}

type Listed = 'instances' | 'cells' | 'services' | 'jobs' | 'machines' | 'volumes' | 'volumesnapshots' | 'secrets' | 'configs' | 'tenants' | 'hosts';
type AnyObj = { metadata: { name: string; tenant?: string } };

/** Map key of an object: `tenant/name` for tenant-scoped kinds, `name` otherwise. */
export function keyOf(o: AnyObj): string {
  return o.metadata.tenant !== undefined ? `${o.metadata.tenant}/${o.metadata.name}` : o.metadata.name;
}

const FEED_MAX = 500;
const WATCHED: readonly Listed[] = ['instances', 'cells', 'services'];

export class Cluster {
  private readonly maps: Record<Listed, Map<string, AnyObj>> = {
    instances: new Map(),
    cells: new Map(),
    services: new Map(),
    jobs: new Map(),
    machines: new Map(),
    volumes: new Map(),
    volumesnapshots: new Map(),
    secrets: new Map(),
    configs: new Map(),
    tenants: new Map(),
    hosts: new Map(),
  };
  private feed: FeedEvent[] = [];
  private tokenNames = new Map<string, string>();
  private snap: Snapshot;
  private readonly listeners = new Set<() => void>();
  private readonly ac = new AbortController();
  private notifyTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly relist = new Map<Listed, ReturnType<typeof setTimeout>>();
  private streamState = new Map<string, boolean>();
  private loaded = false;
  private error: string | undefined;
  private version = 0;

  constructor(
    private readonly api: Api,
    readonly who: WhoAmI,
  ) {
    this.snap = this.build();
  }

  get isAdmin(): boolean {
    return this.who.role === 'cluster-admin';
  }

  /**
   * Lists everything, then follows the streams until `stop`. A list that cannot reach the
   * server (a dropped connection, a server restarting) is tried again with backoff while the
   * page says so; a refusal (an HTTP error) is final.
   */
  async start(): Promise<void> {
    const kinds: Listed[] = ['instances', 'cells', 'services', 'jobs', 'machines', 'volumes', 'volumesnapshots', 'secrets', 'configs', 'tenants', ...(this.isAdmin ? (['hosts'] as const) : [])];
    let delay = 500;
    for (;;) {
      try {
        const revs = await Promise.all(kinds.map((k) => this.list(k)));
        this.loaded = true;
        this.error = undefined;
        this.changed();
        const rev = new Map(kinds.map((k, i) => [k, revs[i] ?? 0]));
        for (const k of WATCHED) void this.follow(k, rev.get(k) ?? 0);
        void this.followEvents(Math.min(...revs));
        void this.recentAudit();
        void this.loadTokenNames();
        return;
      } catch (e) {
        if (this.ac.signal.aborted) return;
        const unreachable = e instanceof ApiError && e.status === 0;
        this.error = unreachable ? `${(e as Error).message} (trying again)` : (e as Error).message;
        this.changed();
        if (!unreachable) return;
        await new Promise((r) => setTimeout(r, delay));
        if (this.ac.signal.aborted) return;
        delay = Math.min(delay * 2, 10_000);
      }
    }
  }

  stop(): void {
    this.ac.abort();
    clearTimeout(this.notifyTimer);
    for (const t of this.relist.values()) clearTimeout(t);
  }

  subscribe = (fn: () => void): (() => void) => {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  };

  getSnapshot = (): Snapshot => this.snap;

  /** Lists a kind again now (after an action of this page, without waiting for its event). */
  refresh(kind: Listed): void {
    this.scheduleRelist(kind, 0);
  }

  private async list(kind: Listed): Promise<number> {
    const r = await this.api.json<{ items: AnyObj[]; resourceVersion: number }>(`/v1/${kind}`, { signal: this.ac.signal });
    const m = this.maps[kind];
    m.clear();
    for (const o of r.items) m.set(keyOf(o), o);
    // A snapshot becomes Ready by its agent's status write, which no event announces: look again soon.
    if (kind === 'volumesnapshots' && r.items.some((o) => (o as VolumeSnapshot).status?.phase === 'Pending')) this.scheduleRelist('volumesnapshots', 2_000);
    return r.resourceVersion;
  }

  private scheduleRelist(kind: Listed, delayMs = 300): void {
    if (kind === 'hosts' && !this.isAdmin) return;
    if (this.relist.has(kind)) return;
    this.relist.set(
      kind,
      setTimeout(() => {
        this.relist.delete(kind);
        this.list(kind)
          .then(() => this.changed())
          .catch(() => undefined);
      }, delayMs),
    );
  }

  private setStream(name: string, up: boolean): void {
    this.streamState.set(name, up);
    this.changed();
  }

  /** Follows /v1/watch/KIND from `from`, resuming after drops; lists again when the revision was compacted. */
  private async follow(kind: Listed, from: number): Promise<void> {
    let rev = from;
    let delay = 500;
    while (!this.ac.signal.aborted) {
      try {
        await this.api.sse(
          `/v1/watch/${kind}?resourceVersion=${rev}`,
          (ev) => {
            if (ev.id !== undefined) rev = Number(ev.id);
            if (ev.event !== 'put' && ev.event !== 'delete') return;
            const o = JSON.parse(ev.data) as AnyObj; // a stored object of this kind
            if (ev.event === 'put') this.maps[kind].set(keyOf(o), o);
            else this.maps[kind].delete(keyOf(o));
            if (kind === 'instances' && (o as Instance).spec?.owner?.kind === 'Job') this.scheduleRelist('jobs');
            if (kind === 'instances' && ((o as Instance).spec?.mounts ?? []).length > 0) this.scheduleRelist('volumes');
            delay = 500;
            this.changed();
          },
          this.ac.signal,
          () => this.setStream(kind, true),
        );
      } catch (e) {
        if (this.ac.signal.aborted) return;
        // A compacted resume point: start over from a fresh list.
        if (e instanceof ApiError && e.status === 400) rev = await this.list(kind).catch(() => rev);
      }
      if (this.ac.signal.aborted) return;
      this.setStream(kind, false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  }

  private async followEvents(from: number): Promise<void> {
    let rev = from;
    let delay = 500;
    while (!this.ac.signal.aborted) {
      try {
        await this.api.sse(
          `/v1/events?resourceVersion=${rev}`,
          (ev) => {
            if (ev.id !== undefined) rev = Number(ev.id);
            if (ev.event === 'audit') {
              const record = JSON.parse(ev.data) as AuditRecord; // the audit record shape
              this.push({ type: 'audit', id: ev.id ?? '', record });
              const k = record.target.kind;
              if (k === 'Tenant' || k.includes('tenants') || k === 'Host' || k.includes('hosts')) this.scheduleRelist(k.toLowerCase().includes('host') ? 'hosts' : 'tenants');
              if (k === 'Job' || k.includes('/jobs')) this.scheduleRelist('jobs');
              if (k === 'Machine' || k.includes('/machines')) this.scheduleRelist('machines');
              if (k === 'Volume' || k.includes('/volumes')) this.scheduleRelist('volumes');
              if (k === 'VolumeSnapshot' || k.includes('/volumesnapshots')) this.scheduleRelist('volumesnapshots');
              if (k === 'Secret' || k.includes('/secrets')) this.scheduleRelist('secrets');
              if (k === 'Config' || k.includes('/configs')) this.scheduleRelist('configs');
            } else if (ev.event === 'lifecycle') {
              const change = { ...(JSON.parse(ev.data) as Omit<LifecycleChange, 'receivedAt'>), receivedAt: new Date().toISOString() }; // the lifecycle event shape
              this.push({ type: 'lifecycle', id: ev.id ?? '', change });
              if (change.kind === 'Machine') this.scheduleRelist('machines');
              if (change.kind === 'Host') this.scheduleRelist('hosts');
            }
            delay = 500;
          },
          this.ac.signal,
          () => this.setStream('events', true),
        );
      } catch {
        if (this.ac.signal.aborted) return;
      }
      if (this.ac.signal.aborted) return;
      this.setStream('events', false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  }

  /** Token names make audit actors readable; a caller lists only the tokens it may manage. */
  private async loadTokenNames(): Promise<void> {
    const r = await this.api.json<{ items: { id: string; name: string }[] }>('/v1/tokens', { signal: this.ac.signal }).catch(() => ({ items: [] }));
    this.tokenNames = new Map(r.items.map((t) => [`token:${t.id}`, t.name]));
    this.changed();
  }

  /** Fills the feed with the last hour's audit records, so it does not start empty. */
  private async recentAudit(): Promise<void> {
    const since = new Date(Date.now() - 3_600_000).toISOString();
    const text = await this.api.text(`/v1/audit/records?format=jsonl&since=${since}`, { signal: this.ac.signal }).catch(() => '');
    const recent = text
      .split('\n')
      .filter((l) => l.trim() !== '')
      .slice(-100)
      .map((l): FeedEvent => ({ type: 'audit', id: '', record: JSON.parse(l) as AuditRecord })); // one audit record per line
    const seen = new Set(this.feed.flatMap((e) => (e.type === 'audit' ? [e.record.seq] : [])));
    const older = recent.filter((e) => e.type === 'audit' && !seen.has(e.record.seq)).reverse();
    this.feed = [...this.feed, ...older].slice(0, FEED_MAX);
    this.changed();
  }

  private push(e: FeedEvent): void {
    // A record may arrive twice (the recent-audit load and the stream overlap): keep one.
    if (e.type === 'audit' && this.feed.some((f) => f.type === 'audit' && f.record.seq === e.record.seq)) return;
    this.feed = [e, ...this.feed].slice(0, FEED_MAX);
    this.changed();
  }

  /** Coalesces bursts (a 1,000-instance change is one render, not 1,000). */
  private changed(): void {
    if (this.notifyTimer !== undefined) return;
    this.notifyTimer = setTimeout(() => {
      this.notifyTimer = undefined;
      this.snap = this.build();
      for (const l of this.listeners) l();
    }, 40);
  }

  private build(): Snapshot {
    const states = [...WATCHED, 'events'].map((s) => this.streamState.get(s));
    const streams: Streams = states.every((s) => s === true) ? 'live' : states.some((s) => s === false) ? 'reconnecting' : 'connecting';
    // `as`: each map holds objects of its kind only (filled from that kind's list and watch).
    return {
      version: ++this.version,
      loaded: this.loaded,
      streams,
      ...(this.error ? { error: this.error } : {}),
      instances: new Map(this.maps.instances) as Map<string, Instance>,
      cells: new Map(this.maps.cells) as Map<string, Cell>,
      services: new Map(this.maps.services) as Map<string, Service>,
      jobs: new Map(this.maps.jobs) as Map<string, Job>,
      machines: new Map(this.maps.machines) as Map<string, Machine>,
      volumes: new Map(this.maps.volumes) as Map<string, Volume>,
      volumesnapshots: new Map(this.maps.volumesnapshots) as Map<string, VolumeSnapshot>,
      secrets: new Map(this.maps.secrets) as Map<string, Secret>,
      configs: new Map(this.maps.configs) as Map<string, Config>,
      tenants: new Map(this.maps.tenants) as Map<string, Tenant>,
      hosts: new Map(this.maps.hosts) as Map<string, Host>,
      feed: this.feed,
      tokenNames: this.tokenNames,
    };
  }
}
