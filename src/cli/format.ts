/**
 * How objects look in a terminal: one table layout per kind for `get`, and a readable
 * multi-line `describe`. Pure (returns strings), so it is unit-tested.
 */
import YAML from 'yaml';
import { formatMemory } from '../model/quantity.js';
import { instanceReady, KINDS, type AnyObject, type Cell, type Host, type Instance, type InstanceLastState, type Job, type Kind, type Machine, type Service, type Tenant } from '../model/objects.js';
import type { Config, Secret } from '../model/secrets.js';
import { egressOf, type Egress, type Probe } from '../model/schemas.js';
import type { Volume } from '../model/volumes.js';
import { fencingSummary, instanceFencing } from '../model/fencing.js';
import type { VolumeSnapshot } from '../model/volume-snapshots.js';

/** `5s`, `3m`, `2h`, `4d` since an RFC 3339 time. */
export function age(since: string | undefined, now = Date.now()): string {
  if (!since) return '-';
  const s = Math.max(0, Math.floor((now - Date.parse(since)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** Left-aligned columns separated by three spaces, like kubectl. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('   ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

type Columns<T> = { header: string[]; row: (o: T) => string[] };

const COLUMNS: { [K in Kind]: Columns<Extract<AnyObject, { kind: K }>> } = {
  Tenant: {
    header: ['NAME', 'DISPLAY NAME', 'AGE'],
    row: (t: Tenant) => [t.metadata.name, t.spec.displayName ?? '', age(t.metadata.createdAt)],
  },
  Service: {
    header: ['TENANT', 'NAME', 'READY', 'ISOLATION', 'IMAGE', 'AGE'],
    row: (s: Service) => [s.metadata.tenant ?? '', s.metadata.name, `${s.status.ready}/${s.spec.replicas}`, s.spec.isolation, s.spec.image, age(s.metadata.createdAt)],
  },
  Job: {
    header: ['TENANT', 'NAME', 'PHASE', 'COMPLETIONS', 'ISOLATION', 'AGE'],
    row: (j: Job) => [j.metadata.tenant ?? '', j.metadata.name, j.status.phase, `${j.status.succeeded}/${j.spec.completions}`, j.spec.isolation, age(j.metadata.createdAt)],
  },
  Instance: {
    header: ['TENANT', 'NAME', 'OWNER', 'HOST', 'ISOLATION', 'PHASE', 'READY', 'RESTARTS', 'AGE', 'REASON'],
    row: (i: Instance) => [
      i.metadata.tenant ?? '',
      i.metadata.name,
      `${i.spec.owner.kind.toLowerCase()}/${i.spec.owner.name}`,
      i.spec.host || '-',
      i.spec.container.isolation,
      i.metadata.deletionRequestedAt ? 'Terminating' : i.status.phase,
      instanceReady(i) ? 'yes' : 'no',
      String(i.status.restarts),
      age(i.status.startedAt ?? i.metadata.createdAt),
      // A running instance shows a reason only while it is not ready (e.g. NotReady); else the last one.
      i.status.phase === 'Running' && instanceReady(i) ? '' : (i.status.reason ?? ''),
    ],
  },
  Host: {
    header: ['NAME', 'STATE', 'ISOLATION', 'CPU', 'MEMORY', 'AGE'],
    row: (h: Host) => [
      h.metadata.name,
      h.spec.unschedulable ? `${h.status.state},Cordoned` : h.status.state,
      h.status.isolation.join(',') || '-',
      String(h.status.capacity.cpu),
      formatMemory(h.status.capacity.memoryMiB),
      age(h.metadata.createdAt),
    ],
  },
  Machine: {
    header: ['TENANT', 'NAME', 'HOST', 'PHASE', 'CPU', 'MEMORY', 'RESTARTS', 'AGE', 'REASON'],
    row: (m: Machine) => [
      m.metadata.tenant ?? '',
      m.metadata.name,
      m.status.host || '-',
      m.status.phase,
      String(m.spec.cpu),
      formatMemory(m.spec.memory),
      String(m.status.restarts),
      age(m.status.startedAt ?? m.metadata.createdAt),
      m.status.phase === 'Running' ? '' : (m.status.reason ?? ''),
    ],
  },
  Volume: {
    header: ['TENANT', 'NAME', 'SIZE', 'PHASE', 'HOST', 'ATTACHED'],
    row: (v: Volume) => [v.metadata.tenant ?? '', v.metadata.name, v.spec.size, v.status.phase, v.status.host ?? v.spec.host ?? '-', v.status.attachedTo.join(',') || '-'],
  },
  Cell: {
    header: ['NAME', 'TENANT', 'GROUP', 'HOST', 'SIZE', 'PHASE', 'BOOT', 'AGE'],
    row: (c: Cell) => [
      c.metadata.name,
      c.spec.tenant || '(warm)',
      c.spec.tenant ? c.spec.group : '-',
      c.spec.host,
      `${c.spec.cpu}cpu/${formatMemory(c.spec.memoryMiB)}${c.spec.dedicated ? ' dedicated' : ''}`,
      c.metadata.deletionRequestedAt ? 'Retiring' : c.status.phase,
      c.status.bootMs !== undefined ? `${(c.status.bootMs / 1000).toFixed(1)}s` : '-',
      age(c.metadata.createdAt),
    ],
  },
  // Secrets show keys only: the API never returns their values.
  Secret: {
    header: ['TENANT', 'NAME', 'KEYS', 'ON CHANGE', 'AGE'],
    row: (x: Secret) => [x.metadata.tenant ?? '', x.metadata.name, x.spec.keys.map((k) => k.key).join(',') || '-', x.spec.onChange, age(x.metadata.createdAt)],
  },
  Config: {
    header: ['TENANT', 'NAME', 'KEYS', 'ON CHANGE', 'AGE'],
    row: (x: Config) => [x.metadata.tenant ?? '', x.metadata.name, Object.keys(x.spec.data).sort().join(',') || '-', x.spec.onChange, age(x.metadata.createdAt)],
  },
  VolumeSnapshot: {
    header: ['TENANT', 'NAME', 'VOLUME', 'PHASE', 'SIZE', 'AGE'],
    row: (x: VolumeSnapshot) => [x.metadata.tenant ?? '', x.metadata.name, x.spec.volume, x.status.phase, snapshotSize(x), age(x.metadata.createdAt)],
  },
};

/** The size of the volume a snapshot was taken of (what it restores into at least), `-` until taken. */
function snapshotSize(x: VolumeSnapshot): string {
  return x.status.sizeBytes !== undefined ? formatMemory(Math.ceil(x.status.sizeBytes / (1024 * 1024))) : '-';
}

/** The ports a service's instances listen on, as `containerPort/protocol` (published ones as `hostPort->containerPort/protocol`). */
function servicePorts(s: Service): string {
  return s.spec.ports.map((p) => `${p.hostPort !== undefined ? `${p.hostPort}->` : ''}${p.containerPort}/${p.protocol}`).join(',') || '-';
}

/** The columns `-o wide` adds after the usual ones (addresses, and where things run). */
const WIDE: { [K in Kind]?: Columns<Extract<AnyObject, { kind: K }>> } = {
  Tenant: { header: ['CIDR', 'EGRESS'], row: (t: Tenant) => [t.status?.network?.cidr ?? '-', egressOf(t.spec).default] },
  Service: { header: ['ADDRESS', 'PORTS'], row: (s: Service) => [s.status.address ?? '-', servicePorts(s)] },
  Instance: { header: ['ADDRESS', 'CELL', 'IMAGE'], row: (i: Instance) => [i.status.address ?? '-', i.spec.cell ?? '-', i.spec.container.image] },
  Machine: { header: ['ADDRESS'], row: (m: Machine) => [m.status.address ?? '-'] },
  Cell: { header: ['ADDRESS'], row: (c: Cell) => [c.status.address ?? '-'] },
  Host: { header: ['ADDRESS'], row: (h: Host) => [h.status.address ?? '-'] },
  Volume: { header: ['USED', 'FILESYSTEM', 'AGE', 'SOURCE'], row: (v: Volume) => [usedOf(v), v.spec.filesystem, age(v.metadata.createdAt), v.spec.source ? `snapshot/${v.spec.source.snapshot}` : '-'] },
  VolumeSnapshot: { header: ['HOST', 'TAKEN', 'REASON'], row: (x: VolumeSnapshot) => [x.status.host ?? '-', x.status.takenAt ?? '-', x.status.phase === 'Ready' ? '' : (x.status.reason ?? '')] },
};

/** A volume's used space as `formatMemory` writes sizes (`-` until its agent reported it). */
function usedOf(v: Volume): string {
  return v.status.usedBytes !== undefined ? formatMemory(Math.ceil(v.status.usedBytes / (1024 * 1024))) : '-';
}

/** The `get` table for a list of objects of one kind; `wide` adds the WIDE columns. */
export function formatTable(kind: Kind, items: AnyObject[], wide = false): string {
  if (items.length === 0) return `No ${kind.toLowerCase()}s found.`;
  const cols = COLUMNS[kind] as Columns<AnyObject>; // items are all of `kind`
  const extra = wide ? (WIDE[kind] as Columns<AnyObject> | undefined) : undefined; // likewise
  if (!extra) return table(cols.header, items.map((o) => cols.row(o)));
  return table([...cols.header, ...extra.header], items.map((o) => [...cols.row(o), ...extra.row(o)]));
}

/** `get -o`'s formats. */
export const OUTPUT_FORMATS = ['table', 'wide', 'json', 'yaml', 'name'] as const;

/**
 * An object as `-o name` prints it: `kind/NAME` for cluster kinds, `kind/TENANT/NAME` for
 * per-tenant ones (kubectl's `-o name`, with the tenant). `get`, `describe` and `delete` take
 * it back as their argument, so `-o name` output can be piped into them.
 */
export function objectRef(o: AnyObject): string {
  const tenant = KINDS[o.kind].scoped ? `${o.metadata.tenant ?? ''}/` : '';
  return `${o.kind.toLowerCase()}/${tenant}${o.metadata.name}`;
}

/** `get`'s output: json, yaml, name lines (nothing for none), the table, or the wide table. */
export function formatOutput(kind: Kind, items: AnyObject[], output: string, single: boolean): string {
  if (output === 'json') return JSON.stringify(single ? items[0] : { items }, null, 2);
  if (output === 'yaml') return YAML.stringify(single ? items[0] : { items }).trimEnd();
  if (output === 'name') return items.map(objectRef).join('\n');
  return formatTable(kind, items, output === 'wide');
}

/** What happened to an object, as `get --watch` says it (kubectl's watch event types). */
export type WatchChange = 'ADDED' | 'MODIFIED' | 'DELETED';

/**
 * `get --watch`'s output, one object change at a time. Tables get an EVENT column and keep
 * the widths of the first listing (growing when a value is wider), and print a change only
 * when its row differs from the one last printed for that object: a host's heartbeat rewrites
 * the host every few seconds without changing anything a table shows. `name`, `json` and
 * `yaml` are for programs: every change is printed (json: one `{"type","object"}` per line,
 * yaml: one such document per change). Pure: lines in, lines out.
 */
export class WatchPrinter {
  private readonly cols: Columns<AnyObject>;
  private widths: number[] = [];
  /** The row last printed per object (tables), and the objects that exist as far as we know. */
  private readonly shown = new Map<string, string>();
  private readonly known = new Set<string>();

  constructor(
    kind: Kind,
    private readonly output: (typeof OUTPUT_FORMATS)[number],
  ) {
    const base = COLUMNS[kind] as Columns<AnyObject>; // objects of `kind` only are printed
    const extra = output === 'wide' ? (WIDE[kind] as Columns<AnyObject> | undefined) : undefined; // likewise
    this.cols = extra ? { header: [...base.header, ...extra.header], row: (o) => [...base.row(o), ...extra.row(o)] } : base;
  }

  /** The first listing: the table's header and a row per object (ADDED), or one line per object. */
  start(items: AnyObject[]): string[] {
    if (!this.isTable()) return items.flatMap((o) => this.change('put', o));
    const header = ['EVENT', ...this.cols.header];
    const rows = items.map((o) => ['ADDED', ...this.cols.row(o)]);
    // EVENT is as wide as its widest word (MODIFIED) from the start, so later rows line up.
    this.widths = header.map((h, i) => Math.max(i === 0 ? 'MODIFIED'.length : h.length, ...rows.map((r) => (r[i] ?? '').length)));
    items.forEach((o, i) => this.remember(o, rows[i] ?? []));
    return [this.line(header), ...rows.map((r) => this.line(r))];
  }

  /** One event of the watch stream (`put` or `delete`, with the object's new or last value). */
  change(type: 'put' | 'delete', o: AnyObject): string[] {
    const key = `${o.metadata.tenant ?? ''}/${o.metadata.name}`;
    const change: WatchChange = type === 'delete' ? 'DELETED' : this.known.has(key) ? 'MODIFIED' : 'ADDED';
    if (type === 'delete') this.known.delete(key);
    else this.known.add(key);
    switch (this.output) {
      case 'name':
        return [objectRef(o)];
      case 'json':
        return [JSON.stringify({ type: change, object: o })];
      case 'yaml':
        return [`---\n${YAML.stringify({ type: change, object: o }).trimEnd()}`];
      default: {
        const row = [change, ...this.cols.row(o)];
        const same = this.shown.get(key) === row.slice(1).join('\u0000');
        if (type === 'delete') this.shown.delete(key);
        else this.remember(o, row);
        if (same && change === 'MODIFIED') return [];
        this.widths = row.map((c, i) => Math.max(this.widths[i] ?? 0, c.length));
        return [this.line(row)];
      }
    }
  }

  private isTable(): boolean {
    return this.output === 'table' || this.output === 'wide';
  }

  private remember(o: AnyObject, row: string[]): void {
    const key = `${o.metadata.tenant ?? ''}/${o.metadata.name}`;
    this.known.add(key);
    this.shown.set(key, row.slice(1).join('\u0000'));
  }

  /** Columns padded to the widths so far, three spaces apart, like `table`. */
  private line(cells: string[]): string {
    return cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(this.widths[i] ?? 0))).join('   ').trimEnd();
  }
}

function kv(pairs: [string, string | number | undefined][], indent = ''): string {
  const present = pairs.filter((p): p is [string, string | number] => p[1] !== undefined && p[1] !== '');
  const w = Math.max(...present.map(([k]) => k.length)) + 2;
  return present.map(([k, v]) => `${indent}${`${k}:`.padEnd(w)}${v}`).join('\n');
}

function containerLines(c: Service['spec'] | Job['spec'] | Instance['spec']['container']): [string, string | number | undefined][] {
  return [
    ['Image', c.image],
    ['Command', c.command ? JSON.stringify(c.command) : undefined],
    ['Args', c.args ? JSON.stringify(c.args) : undefined],
    ['Isolation', c.isolation],
    ['Group', c.group],
    ['Resources', `cpu ${c.cpu}, memory ${formatMemory(c.memory)}, pids ${c.pids}${c.readOnlyRootfs ? ', read-only rootfs' : ''}`],
    ['Ports', c.ports.length ? c.ports.map((p) => `${p.hostPort ?? '-'}->${p.containerPort}/${p.protocol}`).join(', ') : undefined],
    ['Env', Object.keys(c.env).length ? Object.entries(c.env).map(([k, v]) => `${k}=${v}`).join(' ') : undefined],
    ['Volumes', (c.volumes ?? []).length ? (c.volumes ?? []).map((v) => `${v.volume} at ${v.mountPath}${v.readOnly ? ' (read-only)' : ''}`).join(', ') : undefined],
    ['Liveness', c.livenessProbe ? describeProbe(c.livenessProbe) : undefined],
    ['Readiness', c.readinessProbe ? describeProbe(c.readinessProbe) : undefined],
  ];
}

/** A tenant's egress policy on one line: `allow (everything but the infrastructure)` or `deny, except 192.0.2.0/24 tcp 443; …`. */
export function describeEgress(e: Egress): string {
  if (e.default === 'allow') return 'allow (everything but the infrastructure)';
  if (e.allow.length === 0) return 'deny (only the tenant network)';
  return `deny, except ${e.allow.map((r) => [r.cidr, r.protocol, r.ports?.join(',')].filter((x) => x !== undefined).join(' ')).join('; ')}`;
}

/** A probe on one line, as kubectl describes it: `http-get :8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`. */
export function describeProbe(p: Probe): string {
  const what = p.exec ? `exec ${JSON.stringify(p.exec.command)}` : p.httpGet ? `http-get :${p.httpGet.port}${p.httpGet.path}` : p.tcpSocket ? `tcp-socket :${p.tcpSocket.port}` : '(no handler)';
  return `${what} delay=${p.initialDelaySeconds}s timeout=${p.timeoutSeconds}s period=${p.periodSeconds}s #success=${p.successThreshold} #failure=${p.failureThreshold}`;
}

/** A spec's stop grace as describe shows it (absent: the agent's default). */
function stopGraceOf(seconds: number | undefined): string {
  return seconds === undefined ? "the agent's default (10s unless set otherwise)" : `${seconds}s`;
}

/**
 * How an instance's previous container ended, on one line:
 * `Terminated (OOMKilled), exit code 137, started …, finished … (ran 12s)`.
 */
export function describeLastState(l: InstanceLastState): string {
  const ran = l.startedAt !== undefined ? (Date.parse(l.finishedAt) - Date.parse(l.startedAt)) / 1000 : NaN;
  const times = l.startedAt !== undefined ? `started ${l.startedAt}, finished ${l.finishedAt}${Number.isFinite(ran) && ran >= 0 ? ` (ran ${ran.toFixed(ran < 10 ? 1 : 0)}s)` : ''}` : `never started, failed at ${l.finishedAt}`;
  return `Terminated (${l.reason}), exit code ${l.exitCode}, ${times}`;
}

/** The `describe` view of one object, with its instances when it owns some. */
export function formatDescribe(o: AnyObject, instances: Instance[] = []): string {
  const md = o.metadata;
  const head: [string, string | number | undefined][] = [
    ['Kind', o.kind],
    ['Name', md.name],
    ['Tenant', md.tenant],
    ['UID', md.uid],
    ['Created', `${md.createdAt} (${age(md.createdAt)} ago)`],
    ['Resource version', md.resourceVersion],
    ['Generation', md.generation],
    ['Labels', Object.keys(md.labels).length ? Object.entries(md.labels).map(([k, v]) => `${k}=${v}`).join(', ') : undefined],
    ['Deletion', md.deletionRequestedAt ? `requested at ${md.deletionRequestedAt}` : undefined],
  ];
  const parts = [kv(head)];
  switch (o.kind) {
    case 'Tenant':
      parts.push(
        kv([
          ['Display name', o.spec.displayName],
          ['Contact', o.spec.contact],
          ['Network', o.status?.network ? `${o.status.network.cidr} (VNI ${o.status.network.vni})` : '(none yet: made with its first placed work)'],
          ['Egress', describeEgress(egressOf(o.spec))],
        ]),
      );
      break;
    case 'Service':
      parts.push(
        kv([
          ['Address', o.status.address ?? '(none yet)'],
          ...containerLines(o.spec),
          ['Volume templates', o.spec.volumeTemplates?.length ? o.spec.volumeTemplates.map((t) => `${t.name}-<ordinal> (${t.size}) at ${t.mountPath}`).join(', ') : undefined],
          ['Replicas', `${o.spec.replicas} desired, ${o.status.ready} ready`],
          ['Restart policy', o.spec.restartPolicy],
          ['Stop grace', stopGraceOf(o.spec.stopGracePeriodSeconds)],
          ['Fencing', fencingSummary(o.spec)],
        ]),
      );
      break;
    case 'Volume':
      parts.push(
        kv([
          ['Size', `${o.spec.size} (${o.spec.filesystem})`],
          ['Used', o.status.usedBytes !== undefined ? usedOf(o) : undefined],
          ['Phase', o.status.phase],
          ['Host', o.status.host ?? (o.spec.host ? `${o.spec.host} (pinned, not bound yet)` : '(not bound: the first placement of a user binds it)')],
          ['Attached to', o.status.attachedTo.join(', ') || '(none)'],
          ['Source', o.spec.source ? `snapshot ${o.spec.source.snapshot}${o.status.restoredFrom ? ` (uid ${o.status.restoredFrom.snapshotUid}, of volume uid ${o.status.restoredFrom.volumeUid})` : ''}` : undefined],
          ['Message', o.status.message],
        ]),
      );
      break;
    case 'VolumeSnapshot':
      parts.push(
        kv([
          ['Volume', o.spec.volume],
          ['Phase', o.status.phase],
          ['Host', o.status.host ?? '(none: the volume was bound to no host)'],
          ['Size', o.status.sizeBytes !== undefined ? `${snapshotSize(o)} (restores into a volume at least this large)` : undefined],
          ['Taken', o.status.takenAt],
          ['Volume uid', o.status.volumeUid],
          ['Reason', o.status.reason],
          ['Message', o.status.message],
        ]),
      );
      break;
    case 'Job':
      parts.push(
        kv([
          ...containerLines(o.spec),
          ['Phase', o.status.phase],
          ['Completions', `${o.status.succeeded}/${o.spec.completions} (parallelism ${o.spec.parallelism})`],
          ['Failures', `${o.status.failed} (backoffLimit ${o.spec.backoffLimit} per index)`],
          ['Reason', o.status.reason],
          ['Stop grace', stopGraceOf(o.spec.stopGracePeriodSeconds)],
          ['Fencing', fencingSummary(o.spec)],
        ]),
      );
      break;
    case 'Instance': {
      const s = o.status;
      parts.push(
        kv([
          ['Owner', `${o.spec.owner.kind.toLowerCase()}/${o.spec.owner.name}`],
          ['Host', o.spec.host || '(not placed)'],
          ['Cell', o.spec.cell || undefined],
          ['Address', s.address],
          ['Phase', s.phase],
          ['Ready', instanceReady(o) ? 'true' : 'false'],
          ['Reason', s.reason],
          ['Message', s.message],
          ['Container', s.containerId],
          ['PID', s.pid],
          ['Image digest', s.imageDigest],
          ['Started', s.startedAt],
          ['Finished', s.finishedAt],
          ['Exit code', s.exitCode],
          ['Restarts', s.restarts],
          ['Last state', s.lastState ? describeLastState(s.lastState) : undefined],
          ['Last message', s.lastState?.message],
          ['Next restart', s.nextRestartAt],
          ['Published', s.hostPorts?.map((p) => `${p.hostPort}->${p.containerPort}/${p.protocol}`).join(', ')],
          ...containerLines(o.spec.container),
          ['Mounts', (o.spec.mounts ?? []).length ? (o.spec.mounts ?? []).map((m) => `${m.volume} at ${m.mountPath}${m.readOnly ? ' (read-only)' : ''}`).join(', ') : undefined],
          ['Restart policy', o.spec.restartPolicy],
          ['Stop grace', stopGraceOf(o.spec.stopGracePeriodSeconds)],
          ['Fencing', instanceFencing(o.spec)],
        ]),
      );
      break;
    }
    case 'Machine':
      parts.push(
        kv([
          ['Host', o.status.host || '(not placed)'],
          ['Address', o.status.address],
          ['MAC', o.status.mac],
          ['Phase', o.status.phase],
          ['Reason', o.status.reason],
          ['Message', o.status.message],
          ['Desired', o.spec.running ? 'running' : 'stopped'],
          ['Boot', o.spec.kernel ? `kernel ${o.spec.kernel}${o.spec.initrd ? ` + initrd ${o.spec.initrd}` : ''}${o.spec.cmdline ? ` (${o.spec.cmdline})` : ''}` : undefined],
          ['Disk', o.spec.disk ? `${o.spec.disk.image} (${o.spec.disk.format}, copy-on-write)` : undefined],
          ['Resources', `cpu ${o.spec.cpu}, memory ${formatMemory(o.spec.memory)}`],
          ['Ports', o.spec.ports.length ? o.spec.ports.map((p) => `${p.hostPort}->${p.guestPort}/${p.protocol}`).join(', ') : undefined],
          ['QEMU pid', o.status.pid],
          ['Acceleration', o.status.accel],
          ['Started', o.status.startedAt],
          ['Finished', o.status.finishedAt],
          ['Exit code', o.status.exitCode],
          ['Restarts', o.status.restarts],
          ['Restart policy', o.spec.restartPolicy],
        ]),
      );
      break;
    case 'Secret':
      // Keys and sizes only: the API never returns a secret's values.
      parts.push(kv([['On change', o.spec.onChange], ['Keys', o.spec.keys.map((k) => `${k.key} (${k.size} bytes)`).join(', ') || '(none)']]));
      break;
    case 'Config':
      parts.push(kv([['On change', o.spec.onChange], ['Keys', Object.keys(o.spec.data).sort().map((k) => `${k} (${new TextEncoder().encode(o.spec.data[k] ?? '').length} bytes)`).join(', ') || '(none)']]));
      break;
    case 'Cell':
      parts.push(
        kv([
          ['Tenant', o.spec.tenant || '(warm, unassigned)'],
          ['Group', o.spec.tenant ? o.spec.group : undefined],
          ['Host', o.spec.host],
          ['Address', o.status.address],
          ['Size', `cpu ${o.spec.cpu}, memory ${formatMemory(o.spec.memoryMiB)}${o.spec.dedicated ? ' (dedicated: one instance)' : ''}`],
          ['Phase', o.status.phase],
          ['Message', o.status.message],
          ['Acceleration', o.status.accel],
          ['QEMU pid', o.status.pid],
          ['Boot started', o.status.bootStartedAt],
          ['Ready at', o.status.readyAt],
          ['Boot time', o.status.bootMs !== undefined ? `${o.status.bootMs} ms` : undefined],
          ['Assigned at', o.status.assignedAt],
          ['Empty since', o.status.emptySince],
        ]),
      );
      break;
    case 'Host':
      parts.push(
        kv([
          ['State', o.status.state],
          ['Address', o.status.address ?? '(none reported: joins no overlay)'],
          ['Schedulable', o.spec.unschedulable ? 'no (cordoned)' : 'yes'],
          ['Isolation', o.status.isolation.join(', ') || 'none'],
          ['Capacity', `cpu ${o.status.capacity.cpu}, memory ${formatMemory(o.status.capacity.memoryMiB)}`],
          ['Overcommit', o.spec.overcommit ? `cpu x${o.spec.overcommit.cpu}, memory x${o.spec.overcommit.memory}` : undefined],
          ['Heartbeat', `${o.status.lastHeartbeatAt} (${age(o.status.lastHeartbeatAt)} ago)`],
          ['Agent', o.status.agentVersion],
          ['Message', o.status.message],
          ['Lost', o.status.lostAt],
          ['Fenced', o.status.fencedAt ? `${o.status.fencedAt} (lease silent past the fence wait: its fencing=stop instances may be replaced)` : undefined],
        ]),
      );
      break;
  }
  if (instances.length > 0) parts.push(`Instances:\n${formatTable('Instance', instances).replace(/^/gm, '  ')}`);
  return parts.join('\n\n');
}
