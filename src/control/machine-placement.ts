/**
 * Where a machine goes: the Ready, schedulable host that can run VMs (`machine` tier) with the
 * most room left after everything already there (host-run instances, cells, machines). Pure.
 * Machines stay on their host once placed: their disk overlay lives there.
 */
import { TERMINAL_PHASES, type Cell, type Host, type Instance, type Machine } from '../model/objects.js';

export type MachinePlacement = { ok: true; host: string } | { ok: false; reason: string };

/** Chooses a host for `m`, or says in plain words why none fits. */
export function placeMachine(m: Machine, hosts: Host[], instances: Instance[], cells: Cell[], machines: Machine[]): MachinePlacement {
  const used = new Map<string, { cpu: number; mem: number }>();
  const add = (host: string, cpu: number, mem: number): void => {
    const u = used.get(host) ?? { cpu: 0, mem: 0 };
    u.cpu += cpu;
    u.mem += mem;
    used.set(host, u);
  };
  for (const i of instances) if (i.spec.host && !i.spec.cell && !TERMINAL_PHASES.includes(i.status.phase)) add(i.spec.host, i.spec.container.cpu, i.spec.container.memory);
  for (const c of cells) add(c.spec.host, c.spec.cpu, c.spec.memoryMiB);
  for (const o of machines) if (o.status.host && o.metadata.uid !== m.metadata.uid) add(o.status.host, o.spec.cpu, o.spec.memory);
  const rejections: string[] = [];
  let best: { host: string; score: number } | undefined;
  for (const h of [...hosts].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))) {
    const name = h.metadata.name;
    if (h.status.state !== 'Ready') rejections.push(`${name}: not ready`);
    else if (h.spec.unschedulable) rejections.push(`${name}: cordoned`);
    else if (!h.status.isolation.includes('machine')) rejections.push(`${name}: cannot run VMs${h.status.message ? ` (${h.status.message})` : ''}`);
    else {
      const u = used.get(name) ?? { cpu: 0, mem: 0 };
      const freeCpu = h.status.capacity.cpu - u.cpu;
      const freeMem = h.status.capacity.memoryMiB - u.mem;
      if (freeMem < m.spec.memory) rejections.push(`${name}: needs ${m.spec.memory} MiB memory, ${Math.max(0, freeMem)} MiB free`);
      else {
        // vCPUs are time-shared: a machine may ask for more vCPUs than are free, but hosts with more room win.
        const score = freeCpu / h.status.capacity.cpu + freeMem / h.status.capacity.memoryMiB;
        if (!best || score > best.score) best = { host: name, score };
      }
    }
  }
  if (best) return { ok: true, host: best.host };
  return { ok: false, reason: hosts.length === 0 ? 'no hosts are registered yet' : `no host fits: ${rejections.join('; ')}` };
}
