/**
 * Secrets and Configs: the stored objects, and the pure rules about how a container uses
 * them (which objects it references, where they are mounted, which env names they set).
 * Checks that need the store (the objects exist, a key is there) are core/'s. Pure.
 *
 * A stored Secret never holds its values, not even encrypted: they live in a separate sealed
 * record (`sealedSecretKey`, written in the same transaction, encrypted by keyring/keyring.ts),
 * so every read path of objects (GET, list, watch, events, the dashboard) shows keys and
 * sizes only, by construction.
 */
import { CarapaceError, type FieldIssue } from './errors.js';
import type { Metadata } from './objects.js';
import type { ContainerSpec, OnChange } from './schemas.js';

/** One key of a Secret as the API shows it: its name and the size of its value, never the value. */
export interface SecretKeyInfo {
  key: string;
  /** Bytes of the value (UTF-8). */
  size: number;
}

/** A stored Secret: keys, sizes and onChange; the values are in its sealed record only. */
export interface Secret {
  kind: 'Secret';
  metadata: Metadata;
  spec: {
    onChange: OnChange;
    /** Sorted by key. */
    keys: SecretKeyInfo[];
  };
}

/** A stored Config: its data is not secret and is stored and shown as applied. */
export interface Config {
  kind: 'Config';
  metadata: Metadata;
  spec: {
    data: Record<string, string>;
    onChange: OnChange;
  };
}

/** A Secret's or Config's content version: changes exactly when its data (or onChange) does, also across delete and re-create. */
export function contentVersion(o: { metadata: { uid: string; generation: number } }): string {
  return `${o.metadata.uid}:${o.metadata.generation}`;
}

/** The keys and sizes of secret data, as stored in Secret.spec.keys. */
export function keyInfos(data: Record<string, string>): SecretKeyInfo[] {
  const enc = new TextEncoder();
  return Object.keys(data)
    .sort()
    .map((key) => ({ key, size: enc.encode(data[key] ?? '').length }));
}

/** The stored (and answered) spec of a Secret applied with `spec`: its values never leave the sealed record. */
export function storedSecretSpec(spec: { data: Record<string, string>; onChange: OnChange }): Secret['spec'] {
  return { onChange: spec.onChange, keys: keyInfos(spec.data) };
}

/** What a container references, by kind, each name once (in order of first use). */
export function referencesOf(c: Pick<ContainerSpec, 'secrets' | 'configs' | 'envFrom'>): { secrets: string[]; configs: string[] } {
  const secrets = new Set<string>();
  const configs = new Set<string>();
  for (const s of c.secrets ?? []) secrets.add(s.secret);
  for (const x of c.configs ?? []) configs.add(x.config);
  for (const e of c.envFrom ?? []) {
    if (e.secret !== undefined) secrets.add(e.secret);
    if (e.config !== undefined) configs.add(e.config);
  }
  return { secrets: [...secrets], configs: [...configs] };
}

/** True when `inner` is `outer` or lies inside it (path-segment wise). */
function within(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(`${outer}/`);
}

/**
 * The stateless problems of a container's secret and config use, thrown as one
 * CarapaceError: a secret or config mount path that collides (equal, or one inside the
 * other) with another mount of the container, whether a secret, a config, a volume or a
 * volume template (CARAPACE_E_MOUNT_PATH_CONFLICT; volumes among themselves are checked by
 * the manifest schema, model/volumes.ts), and env names set twice, in `env` and `envFrom` or
 * twice in `envFrom` (CARAPACE_E_ENV_CONFLICT). `prefix` is the spec's path (`spec`).
 */
export function checkContainerRefs(
  c: Pick<ContainerSpec, 'secrets' | 'configs' | 'envFrom' | 'env' | 'volumes'> & { volumeTemplates?: readonly { mountPath: string }[] | undefined },
  prefix = 'spec',
): void {
  // Volumes first, so a collision names the secret's or config's field (the later one).
  const mounts: { path: string; field: string; volume: boolean }[] = [
    ...(c.volumes ?? []).map((v, i) => ({ path: v.mountPath, field: `${prefix}.volumes[${i}].mountPath`, volume: true })),
    ...(c.volumeTemplates ?? []).map((t, i) => ({ path: t.mountPath, field: `${prefix}.volumeTemplates[${i}].mountPath`, volume: true })),
    ...(c.secrets ?? []).map((s, i) => ({ path: s.mountPath, field: `${prefix}.secrets[${i}].mountPath`, volume: false })),
    ...(c.configs ?? []).map((x, i) => ({ path: x.mountPath, field: `${prefix}.configs[${i}].mountPath`, volume: false })),
  ];
  const mountIssues: FieldIssue[] = [];
  for (let i = 0; i < mounts.length; i++) {
    for (let j = 0; j < i; j++) {
      const a = mounts[j];
      const b = mounts[i];
      if (!a || !b) continue;
      if (a.volume && b.volume) continue; // the schema's rule (equal paths refused, nesting allowed)
      if (within(a.path, b.path) || within(b.path, a.path)) {
        mountIssues.push({ path: b.field, message: a.path === b.path ? `"${b.path}" is also the mount path of ${a.field}` : `"${b.path}" and "${a.path}" (${a.field}) lie one inside the other` });
      }
    }
  }
  if (mountIssues.length > 0) throw new CarapaceError('CARAPACE_E_MOUNT_PATH_CONFLICT', `mount paths collide: ${mountIssues.map((x) => `${x.path}: ${x.message}`).join('; ')}`, mountIssues);
  const envIssues: FieldIssue[] = [];
  const seen = new Map<string, string>();
  for (const name of Object.keys(c.env ?? {})) seen.set(name, `${prefix}.env.${name}`);
  (c.envFrom ?? []).forEach((e, i) => {
    const field = `${prefix}.envFrom[${i}].name`;
    const first = seen.get(e.name);
    if (first !== undefined) envIssues.push({ path: field, message: `${e.name} is also set by ${first}` });
    else seen.set(e.name, field);
  });
  if (envIssues.length > 0) throw new CarapaceError('CARAPACE_E_ENV_CONFLICT', `environment variables set twice: ${envIssues.map((x) => `${x.path}: ${x.message}`).join('; ')}`, envIssues);
}
