/**
 * `carapace apply -f FILE [--wait]`: reads multi-document YAML, validates every document
 * before sending any (so a typo in document 3 does not leave documents 1-2 half applied),
 * applies tenants first, then workloads, and optionally waits showing per-instance progress.
 */
import { readFile } from 'node:fs/promises';
import YAML from 'yaml';
import { CarapaceError } from '../model/errors.js';
import { parseManifest } from '../model/manifest.js';
import { instanceReady, KINDS, type Instance, type Job, type Machine, type Service } from '../model/objects.js';
import type { Manifest } from '../model/schemas.js';
import { ApiClient, CliError } from './client.js';

/** Parses one file's documents (YAML or JSON) into validated manifests. */
export function parseManifestText(text: string, file: string): Manifest[] {
  const docs = YAML.parseAllDocuments(text, { prettyErrors: true });
  const out: Manifest[] = [];
  let n = 0;
  for (const doc of docs) {
    n++;
    if (doc.errors.length > 0) {
      const e = doc.errors[0];
      const where = e?.linePos?.[0] ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '';
      throw new CliError('CARAPACE_E_MALFORMED_BODY', `${file}: document ${n} is not valid YAML${where}: ${(e?.message ?? '').split('\n')[0]}`);
    }
    let value: unknown;
    try {
      value = doc.toJS();
    } catch (e) {
      // Aliases are resolved here: one to a missing anchor, or an alias bomb, is bad input too.
      throw new CliError('CARAPACE_E_MALFORMED_BODY', `${file}: document ${n} is not valid YAML: ${(e as Error).message.split('\n')[0] ?? ''}`); // toJS throws Errors
    }
    if (value === null || value === undefined) continue; // empty document (e.g. a trailing ---)
    try {
      out.push(parseManifest(value, `${file}: document ${n}`));
    } catch (e) {
      if (e instanceof CarapaceError) throw new CliError(e.code, e.message, e.details);
      throw e;
    }
  }
  if (out.length === 0) throw new CliError('CARAPACE_E_VALIDATION', `${file}: no manifests found`);
  return out;
}

export async function readManifests(files: string[]): Promise<Manifest[]> {
  const all: Manifest[] = [];
  for (const f of files) {
    let text: string;
    try {
      text = f === '-' ? await readStdin() : await readFile(f, 'utf8');
    } catch (e) {
      throw new CliError('CARAPACE_E_MANIFEST_FILE', `cannot read ${f}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
    }
    all.push(...parseManifestText(text, f === '-' ? 'stdin' : f));
  }
  return all;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** The API path of a manifest's object. */
export function manifestPath(m: Manifest): string {
  const plural = KINDS[m.kind].plural;
  return m.kind === 'Tenant' ? `/v1/${plural}/${m.metadata.name}` : `/v1/tenants/${m.metadata.tenant}/${plural}/${m.metadata.name}`;
}

function label(m: Manifest): string {
  return m.kind === 'Tenant' ? `tenant/${m.metadata.name}` : `${m.kind.toLowerCase()}/${m.metadata.tenant}/${m.metadata.name}`;
}

// Volumes, Secrets and Configs before the services and jobs that mount or reference them
// (apply checks they exist); snapshots after the volumes they are taken of.
const ORDER = { Tenant: 0, Volume: 1, Secret: 1, Config: 1, VolumeSnapshot: 2, Service: 3, Job: 4, Machine: 5 } as const;

export interface Applied {
  manifest: Manifest;
  object: Service | Job | Machine | { kind: 'Tenant'; metadata: { uid: string; generation: number } };
}

/** Applies manifests in dependency order; prints one line per object. */
export async function applyAll(client: ApiClient, manifests: Manifest[], print: (s: string) => void): Promise<Applied[]> {
  const sorted = [...manifests].sort((a, b) => ORDER[a.kind] - ORDER[b.kind]);
  const out: Applied[] = [];
  for (const m of sorted) {
    const before = await client.call<{ metadata: { resourceVersion: number } } | undefined>('GET', manifestPath(m)).catch((e: unknown) => {
      if (e instanceof CliError && e.code === 'CARAPACE_E_NOT_FOUND') return undefined;
      throw e;
    });
    const obj = await client.call<Applied['object'] & { metadata: { resourceVersion: number } }>('PUT', manifestPath(m), m);
    const verb = !before ? 'created' : before.metadata.resourceVersion === obj.metadata.resourceVersion ? 'unchanged' : 'configured';
    print(`${label(m)} ${verb}`);
    out.push({ manifest: m, object: obj });
  }
  return out;
}

type Progress = { state: 'waiting' | 'done' | 'failed'; text: string };

/** How long a service replica must stay ready before `apply --wait` counts it (Kubernetes' minReadySeconds, in spirit). */
export const WAIT_SETTLE_MS = 2_000;

/** What one instance's status means for `apply --wait`. */
export function instanceProgress(i: Instance, wantsCompletion: boolean): Progress {
  const s = i.status;
  const why = [s.reason, s.message].filter(Boolean).join(': ');
  switch (s.phase) {
    case 'Running':
      if (wantsCompletion) return { state: 'waiting', text: 'running' };
      // A service replica counts once its readiness probe passes (at once without one).
      return instanceReady(i) ? { state: 'done', text: `running on ${i.spec.host}` } : { state: 'waiting', text: `running on ${i.spec.host}, not ready${s.message ? `: ${s.message}` : ''}` };
    case 'Succeeded':
      return { state: 'done', text: 'completed' };
    case 'Failed':
      return { state: 'failed', text: `failed: ${why}` };
    case 'Backoff':
      // The runtime did not answer (a cell's guest under load): the next try may well start it.
      if (s.reason === 'RuntimeUnavailable') return { state: 'waiting', text: `retrying: ${why}` };
      // An image that cannot be pulled or a command that cannot start will not fix itself.
      if (['ImageNotFound', 'ImageInvalid', 'StartFailed', 'RegistryUnreachable', 'ImagePullFailed'].includes(s.reason ?? '') || !wantsCompletion) {
        return { state: 'failed', text: `failing: ${why}` };
      }
      return { state: 'waiting', text: `restarting: ${why}` };
    case 'Pending':
      return { state: 'waiting', text: s.reason === 'Unschedulable' ? `unschedulable: ${s.message ?? ''}` : 'pending' };
    case 'Pulling':
      return { state: 'waiting', text: `pulling image ${i.spec.container.image}` };
    case 'Starting':
      return { state: 'waiting', text: 'starting' };
    case 'Stopping':
      return { state: 'waiting', text: 'stopping' };
  }
}

/**
 * Waits until every applied service has all its replicas Running (at the applied
 * generation) and every job has finished, or something failed, or the timeout passes.
 * Returns true when everything is running/complete.
 */
export async function waitFor(client: ApiClient, applied: Applied[], timeoutMs: number, out: NodeJS.WriteStream, settleMs = WAIT_SETTLE_MS): Promise<boolean> {
  // When each replica's current container was first seen ready (this process's clock, so the
  // server's does not matter): a replica counts once it has stayed ready for `settleMs`, so a
  // container that crashes right after it started is not taken for a success.
  const readySince = new Map<string, number>();
  const workloads = applied.filter((a) => a.manifest.kind === 'Service' || a.manifest.kind === 'Job' || a.manifest.kind === 'Machine');
  if (workloads.length === 0) return true;
  const tty = out.isTTY === true;
  const deadline = Date.now() + timeoutMs;
  const lastText = new Map<string, string>();
  let drawnLines = 0;
  for (;;) {
    const rows: { key: string; p: Progress }[] = [];
    let allDone = true;
    let anyFailed = false;
    for (const a of workloads) {
      const m = a.manifest;
      if (m.kind === 'Tenant') continue;
      const tenant = m.metadata.tenant;
      if (m.kind === 'Machine') {
        const mach = await client.call<Machine>('GET', manifestPath(m));
        const st = mach.status;
        const want = mach.spec.running;
        const p: Progress =
          st.phase === 'Running' && want
            ? { state: 'done', text: `running on ${st.host}` }
            : st.phase === 'Stopped' && !want
              ? { state: 'done', text: 'stopped' }
              : st.phase === 'Failed' || st.phase === 'Backoff'
                ? { state: 'failed', text: `${st.phase.toLowerCase()}: ${[st.reason, st.message].filter(Boolean).join(': ')}` }
                : { state: 'waiting', text: `${st.phase.toLowerCase()}${st.message ? `: ${st.message}` : ''}` };
        rows.push({ key: `machine/${tenant}/${mach.metadata.name}`, p });
        if (p.state !== 'done') allDone = false;
        if (p.state === 'failed') anyFailed = true;
        continue;
      }
      const owner = await client.call<Service | Job>('GET', manifestPath(m));
      const list = await client.call<{ items: Instance[] }>('GET', `/v1/tenants/${tenant}/instances`);
      const mine = list.items
        .filter((i) => i.spec.owner.uid === owner.metadata.uid && !i.metadata.deletionRequestedAt)
        .sort((x, y) => x.spec.index - y.spec.index);
      if (owner.kind === 'Job') {
        const j = owner;
        const done = j.status.phase === 'Succeeded';
        const failed = j.status.phase === 'Failed';
        rows.push({ key: `job/${tenant}/${j.metadata.name}`, p: { state: done ? 'done' : failed ? 'failed' : 'waiting', text: `${j.status.phase.toLowerCase()} ${j.status.succeeded}/${j.spec.completions}${j.status.reason ? `: ${j.status.reason}` : ''}` } });
        for (const i of mine) rows.push({ key: `  instance/${tenant}/${i.metadata.name}`, p: instanceProgress(i, true) });
        if (!done) allDone = false;
        if (failed) anyFailed = true;
        continue;
      }
      const want = owner.spec.replicas;
      // The rollout of what was applied failed: past its deadline, or rolled back by the
      // controller (which wrote a later generation: the applied template is no longer wanted).
      const cond = owner.status.conditions?.[0];
      const rolledBack = cond?.reason === 'RolledBack' && owner.metadata.generation > a.object.metadata.generation;
      if ((cond?.reason === 'ProgressDeadlineExceeded' && owner.status.observedGeneration === owner.metadata.generation) || rolledBack) {
        rows.push({ key: `service/${tenant}/${owner.metadata.name}`, p: { state: 'failed', text: `${rolledBack ? 'rolled back' : 'rollout stopped'}: ${cond.message}` } });
        anyFailed = true;
        allDone = false;
        continue;
      }
      const current = mine.filter((i) => i.spec.ownerGeneration === owner.metadata.generation);
      if (current.length < want) allDone = false;
      for (const i of mine) {
        let p = i.spec.ownerGeneration === owner.metadata.generation ? instanceProgress(i, false) : { state: 'waiting' as const, text: 'being replaced' };
        if (p.state === 'done') {
          const seen = `${i.metadata.name}/${i.status.containerId ?? ''}`;
          const since = readySince.get(seen) ?? Date.now();
          readySince.set(seen, since);
          if (Date.now() - since < settleMs) p = { state: 'waiting', text: `${p.text}, settling` };
        }
        rows.push({ key: `instance/${tenant}/${i.metadata.name}`, p });
        if (p.state !== 'done') allDone = false;
        if (p.state === 'failed') anyFailed = true;
      }
    }
    if (tty) {
      if (drawnLines > 0) out.write(`\x1b[${drawnLines}A\x1b[J`);
      const w = Math.max(0, ...rows.map((r) => r.key.length));
      const mark = { waiting: '…', done: '✓', failed: '✗' } as const;
      const text = rows.map((r) => `${mark[r.p.state]} ${r.key.padEnd(w)}  ${r.p.text}`).join('\n');
      out.write(`${text}\n`);
      drawnLines = rows.length;
    } else {
      for (const r of rows) {
        if (lastText.get(r.key) !== r.p.text) {
          out.write(`${r.key}: ${r.p.text}\n`);
          lastText.set(r.key, r.p.text);
        }
      }
    }
    if (anyFailed) return false;
    if (allDone) return true;
    if (Date.now() > deadline) {
      out.write(`timed out after ${Math.round(timeoutMs / 1000)}s waiting for the applied workloads\n`);
      return false;
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}
