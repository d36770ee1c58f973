/**
 * Host placement for host-run tiers (`host`, `sandbox`): the least-loaded Ready host that
 * supports the tier and has room. Pure. The scheduler (scheduler/) supersedes this for
 * cells and large clusters; this keeps the single-host path obvious and explainable.
 */
import { TERMINAL_PHASES, type Host, type Instance } from '../model/objects.js';
import type { ContainerSpec } from '../model/schemas.js';

export type Placement = { ok: true; host: string } | { ok: false; reason: string };

/** Chooses a host for a container, or says in plain words why none fits. */
export function placeOnHost(c: ContainerSpec, hosts: Host[], instances: Instance[]): Placement {
  const used = new Map<string, { cpu: number; memoryMiB: number }>();
  for (const i of instances) {
    if (i.spec.host === '' || TERMINAL_PHASES.includes(i.status.phase)) continue;
    const u = used.get(i.spec.host) ?? { cpu: 0, memoryMiB: 0 };
    u.cpu += i.spec.container.cpu;
    u.memoryMiB += i.spec.container.memory;
    used.set(i.spec.host, u);
  }
  if (hosts.length === 0) return { ok: false, reason: 'no hosts are registered yet (is an agent running?)' };
  const rejections: string[] = [];
  let best: { host: string; score: number } | undefined;
  for (const h of [...hosts].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))) {
    const name = h.metadata.name;
    if (h.status.state !== 'Ready') {
      rejections.push(`${name}: not ready`);
      continue;
    }
    if (h.spec.unschedulable) {
      rejections.push(`${name}: cordoned`);
      continue;
    }
    if (!h.status.isolation.includes(c.isolation)) {
      rejections.push(`${name}: cannot run isolation "${c.isolation}"${h.status.message ? ` (${h.status.message})` : ''}`);
      continue;
    }
    const u = used.get(name) ?? { cpu: 0, memoryMiB: 0 };
    const freeCpu = h.status.capacity.cpu - u.cpu;
    const freeMem = h.status.capacity.memoryMiB - u.memoryMiB;
    if (freeCpu + 1e-9 < c.cpu) {
      rejections.push(`${name}: needs ${c.cpu} cpu, ${Math.max(0, Math.round(freeCpu * 1000) / 1000)} free`);
      continue;
    }
    if (freeMem < c.memory) {
      rejections.push(`${name}: needs ${c.memory}Mi memory, ${Math.max(0, freeMem)}Mi free`);
      continue;
    }
    const score = freeCpu / h.status.capacity.cpu + freeMem / h.status.capacity.memoryMiB;
    if (!best || score > best.score) best = { host: name, score };
  }
  if (best) return { ok: true, host: best.host };
  return { ok: false, reason: `no host fits: ${rejections.join('; ')}` };
}
