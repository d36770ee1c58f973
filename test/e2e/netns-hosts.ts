/**
 * Hosts as network namespaces, for the end-to-end tests that run several agents: a bridge in
 * the test's own namespace (the gateway, where the server's agent API and the registry
 * listen) and one namespace per host with a veth onto it and an address the test assigns.
 * Cutting a host off is `ip link set VETH down` on its bridge side: the agent keeps running,
 * it just reaches nothing. Shared by multihost.test.ts and partition.test.ts.
 */
import { join } from 'node:path';
import { run, runOrThrow } from '../../src/proc/run.js';
import { Agent } from './helpers.js';

export interface NetnsHost {
  name: string;
  /** The network namespace (`ip netns`). */
  ns: string;
  /** The bridge side of its veth (cut it to partition the host). */
  veth: string;
  ip: string;
  zone: string;
}

export interface NetnsLan {
  bridge: string;
  /** The bridge's address: the hosts' default route, where the server and the registry listen. */
  gw: string;
  hosts: NetnsHost[];
}

export async function ip(...args: string[]): Promise<void> {
  await runOrThrow('ip', args);
}

/**
 * Removes a host namespace and its veth: processes still in it (a DNS server of a tenant
 * segment, a workload) keep a namespace alive after `ip netns del`, and its veth with it.
 */
export async function removeHostNs(h: NetnsHost): Promise<void> {
  const pids = (await run('ip', ['netns', 'pids', h.ns])).stdout.split('\n').filter(Boolean);
  if (pids.length > 0) await run('kill', ['-9', ...pids]);
  await ip('netns', 'del', h.ns).catch(() => undefined);
  await ip('link', 'del', h.veth).catch(() => undefined);
}

/** Makes the bridge and every host's namespace (removing what a run cut short left). */
export async function makeLan(lan: NetnsLan): Promise<void> {
  await ip('link', 'add', lan.bridge, 'type', 'bridge').catch(() => undefined);
  await ip('addr', 'replace', `${lan.gw}/24`, 'dev', lan.bridge);
  await ip('link', 'set', lan.bridge, 'up');
  for (const h of lan.hosts) {
    await removeHostNs(h);
    await ip('netns', 'add', h.ns);
    await ip('link', 'add', h.veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns);
    await ip('link', 'set', h.veth, 'master', lan.bridge);
    await ip('link', 'set', h.veth, 'up');
    await ip('-n', h.ns, 'addr', 'add', `${h.ip}/24`, 'dev', 'eth0');
    await ip('-n', h.ns, 'link', 'set', 'eth0', 'up');
    await ip('-n', h.ns, 'link', 'set', 'lo', 'up');
    await ip('-n', h.ns, 'route', 'add', 'default', 'via', lan.gw);
  }
}

/** Removes every host's namespace and the bridge. */
export async function removeLan(lan: NetnsLan): Promise<void> {
  for (const h of lan.hosts) await removeHostNs(h);
  await ip('link', 'del', lan.bridge).catch(() => undefined);
}

/**
 * `carapace agent` of host `h`, joining the server's agent API at `https://GW:agentPort`,
 * its state in `dir/<name>`. nsenter joins only the host's network namespace and execs the
 * agent (the process handle is the agent's). `ip netns exec` would also remount /sys,
 * hiding the cgroup hierarchy runc needs.
 */
export function netnsAgent(lan: NetnsLan, h: NetnsHost, o: { dir: string; agentPort: number; registry: string; token?: string; args?: string[]; env?: Record<string, string> }): Agent {
  return new Agent(
    join(o.dir, h.name),
    [
      '--join', `https://${lan.gw}:${o.agentPort}`,
      ...(o.token ? ['--join-token', o.token] : []),
      '--host-name', h.name,
      '--label', `zone=${h.zone}`,
      '--insecure-registry', o.registry,
      ...(o.args ?? []),
    ],
    o.env ?? {},
    ['nsenter', `--net=/run/netns/${h.ns}`, '--'],
  );
}
