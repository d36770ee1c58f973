/**
 * Container networking for host-run containers (runc, runsc), after Podman's default
 * rootful bridge network: one Linux bridge with the gateway address, one named network
 * namespace and veth pair per container, egress NAT, published ports by kernel DNAT, and
 * tenant isolation on the bridge. Everything lives in the kernel (netns, links, nftables
 * tables) plus one small JSON allocation file, so containers keep their network when the
 * agent dies and a restarted agent picks up where the last one stopped. See README.md.
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import { acquireFileLock, FileLockTimeoutError } from '../proc/file-lock.js';
import { CommandError, runOrThrow } from '../proc/run.js';
import { writeFileAtomic } from './atomic-file.js';
import { NetworkError } from './errors.js';
import { NETNS_DIR } from './host-exec.js';
import { addBoundPorts, PROC_NET_FILES, type BoundPorts } from './host-ports.js';
import {
  allocateIp,
  allocateMark,
  contains,
  gatewayOf,
  hostIfName,
  intToIp,
  ipToInt,
  netnsName,
  parseSubnet,
  validateSetup,
  type PortRequest,
  type Subnet,
} from './ipam.js';
import type { PublishedPort } from './types.js';

export type { PortRequest } from './ipam.js';
export type { PublishedPort } from './types.js';

/** Where `ip netns add` keeps its namespaces; a netnsPath handed to the runtime is below it. */
export { NETNS_DIR } from './host-exec.js';

/** How a network manager is set up; one per bridge per host. */
export interface NetworkManagerOptions {
  /** Directory for the allocation file (`network.json`) and its lock; created if missing. */
  stateDir: string;
  logger: Logger;
  /** Bridge device name, also used to name the nftables tables; `[a-z][a-z0-9]{0,14}`. Default `carapace0`. */
  bridge?: string;
  /** IPv4 subnet of the bridge; the gateway gets its first address. Default `10.88.0.0/16`. */
  subnet?: string;
  /** MTU of the container links; default: the MTU of the host's default-route device, else 1500. */
  mtu?: number;
}

/**
 * Whether a network device exists in this process's network namespace. Asked of `ip`, not
 * /sys: an agent that joined a host's namespace with `nsenter --net` still sees the /sys
 * mounted for the namespace it came from.
 */
async function linkExists(name: string): Promise<boolean> {
  try {
    await tool('ip', ['link', 'show', 'dev', name]);
    return true;
  } catch {
    return false;
  }
}

/** What a container asks of the network. */
export interface SetupOptions {
  ports: PortRequest[];
  /**
   * The tenant (or any trust domain): containers on the bridge talk to each other only when
   * they share this key. Omitted: the container is isolated from every other container.
   */
  isolationKey?: string;
}

/** The network a container got; hand `netnsPath` to the runtime driver (StartRequest.netnsPath). */
export interface NetworkSetup {
  id: string;
  /** /var/run/netns/carapace-<id>: the namespace the container must join. */
  netnsPath: string;
  /** The container's address on the bridge (eth0 inside the namespace). */
  ip: string;
  prefixLength: number;
  gateway: string;
  /** The host end of the veth pair on the bridge. */
  hostInterface: string;
  hostPorts: PublishedPort[];
  isolationKey?: string;
}

export { NetworkError, type NetworkErrorCode } from './errors.js';

/** The contract the agent uses; see createNetworkManager. */
export interface NetworkManager {
  readonly bridge: string;
  readonly subnet: string;
  /**
   * Creates the namespace, link, address and published ports of container `id` and returns
   * them. Idempotent for an id already set up with the same ports and key (returns the same
   * setup); a half-made setup left by a crash is torn down and made again. Throws a
   * CarapaceError (CARAPACE_E_VALIDATION) for bad input and a NetworkError otherwise.
   */
  setup(id: string, opts: SetupOptions): Promise<NetworkSetup>;
  /** Removes everything `setup` made for `id`. Idempotent; unknown ids are a no-op. */
  teardown(id: string): Promise<void>;
  /** The setup of `id` as recorded, or undefined. */
  inspect(id: string): Promise<NetworkSetup | undefined>;
  /**
   * After an agent (re)start: makes sure the bridge and rules exist, re-adds the kernel state
   * of every recorded container whose namespace still exists, and returns the recorded ids.
   */
  recover(): Promise<string[]>;
  /**
   * Tears down every recorded container not in `keep`, and removes links on the bridge and
   * rule entries that no record explains (leftovers of a crash). Returns the ids torn down.
   */
  gc(keep: ReadonlySet<string>): Promise<string[]>;
  /**
   * Deletes the bridge and this manager's nftables tables (uninstall, tests). Refused while
   * any container is recorded: run `gc(new Set())` first.
   */
  removeBridge(): Promise<void>;
}

/** One container's record in the allocation file. */
interface Allocation {
  ip: string;
  hostIf: string;
  mark: number;
  isolationKey: string | null;
  ports: PublishedPort[];
}

interface StateFile {
  version: 1;
  bridge: string;
  subnet: string;
  /** The address handed out last; allocation continues after it. */
  cursor: string | null;
  containers: Record<string, Allocation>;
}

const BRIDGE_PATTERN = /^[a-z][a-z0-9]{0,14}$/;

/**
 * Packet-mark bit set on connections to a published port (DNATed) as they enter from our
 * bridge. With br_netfilter active, a container reaching another container's published
 * port through the gateway is DNATed inside the bridge path and then *bridged* straight
 * to the target port, so the tenant filter in the bridge forward chain sees it; this bit
 * (conntrack is not readable from the bridge family on this kernel) lets such flows pass,
 * as published ports are meant to be reachable by anyone. Other tools using this bit on
 * our bridge's traffic would open the same door, hence a high, rarely used bit.
 */
const PUBLISHED_MARK = '0x01000000';

/** How long an operation waits for another manager's operation on the same stateDir. */
const LOCK_TIMEOUT_MS = 30_000;

/**
 * Makes a network manager for one bridge. Cheap: nothing touches the kernel until the first
 * call. Only one manager per bridge should be active at a time on a host; a lock file in
 * stateDir serialises the operations of managers that do overlap (e.g. an old agent still
 * exiting while its successor starts).
 */
export function createNetworkManager(opts: NetworkManagerOptions): NetworkManager {
  const bridge = opts.bridge ?? 'carapace0';
  if (!BRIDGE_PATTERN.test(bridge)) throw new Error(`bridge name must match ${BRIDGE_PATTERN.source}: ${JSON.stringify(bridge)}`);
  const subnetText = opts.subnet ?? '10.88.0.0/16';
  const subnet = parseSubnet(subnetText);
  return new BridgeNetworkManager(opts, bridge, subnetText, subnet);
}

/**
 * A manager for the bridge and subnet recorded in `stateDir` (undefined when nothing was ever
 * recorded there): for cleaning up after an agent whose flags are not at hand. A manager
 * configured differently refuses state with live containers, so guessing would leak them.
 */
export async function recordedNetworkManager(stateDir: string, logger: Logger): Promise<NetworkManager | undefined> {
  let text: string;
  try {
    text = await fs.readFile(path.join(stateDir, 'network.json'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // safe: fs errors are ErrnoExceptions
    throw e;
  }
  const s = JSON.parse(text) as Pick<StateFile, 'bridge' | 'subnet'>; // safe: only this module writes the file
  return createNetworkManager({ stateDir, logger, bridge: s.bridge, subnet: s.subnet });
}

class BridgeNetworkManager implements NetworkManager {
  readonly bridge: string;
  readonly subnet: string;
  private readonly sub: Subnet;
  private readonly table: string;
  private readonly stateFile: string;
  private readonly lockFile: string;
  private readonly log: Logger;
  private queue: Promise<unknown> = Promise.resolve();
  private baseReady = false;
  private mtu: number | undefined;

  constructor(private readonly opts: NetworkManagerOptions, bridge: string, subnetText: string, sub: Subnet) {
    this.bridge = bridge;
    this.subnet = subnetText;
    this.sub = sub;
    this.table = `carapace_${bridge}`;
    this.stateFile = path.join(opts.stateDir, 'network.json');
    this.lockFile = path.join(opts.stateDir, 'network.lock');
    this.log = opts.logger.child({ component: 'network', bridge });
    this.mtu = opts.mtu;
  }

  setup(id: string, o: SetupOptions): Promise<NetworkSetup> {
    const issues = validateSetup(id, o.ports);
    if (o.isolationKey !== undefined && (typeof o.isolationKey !== 'string' || o.isolationKey.length === 0)) {
      issues.push({ path: 'isolationKey', message: 'must be a non-empty string when given' });
    }
    if (issues.length > 0) {
      return Promise.reject(new CarapaceError('CARAPACE_E_VALIDATION', `invalid network setup for ${JSON.stringify(id)}`, issues));
    }
    return this.exclusive(() => this.setupLocked(id, o));
  }

  teardown(id: string): Promise<void> {
    return this.exclusive(async () => {
      const state = await this.load();
      await this.teardownLocked(state, id);
    });
  }

  inspect(id: string): Promise<NetworkSetup | undefined> {
    return this.exclusive(async () => {
      const a = (await this.load()).containers[id];
      return a ? this.describe(id, a) : undefined;
    });
  }

  recover(): Promise<string[]> {
    return this.exclusive(async () => {
      const state = await this.load();
      this.baseReady = false;
      await this.ensureBase();
      const ids = Object.keys(state.containers).sort();
      const live = ids.filter((id) => existsSync(path.join(NETNS_DIR, netnsName(id))));
      // Adding an element that exists is a no-op in nftables, so this repairs rules lost to
      // e.g. an `nft flush ruleset` without disturbing the ones in place.
      const script = live.map((id) => this.elementsScript('add', state.containers[id] as Allocation)).join('');
      if (script) await tool('nft', ['-f', '-'], script);
      // The bridge is ours alone: links and rule elements no record explains were left by an
      // owner that died with its state (a crash, a state dir removed). Left in place, a veth of
      // a leaked namespace keeps answering for an address we hand out again, and a stale
      // published port keeps pointing at it: a new container would be unreachable.
      await this.removeStrays(state);
      const missing = ids.filter((id) => !live.includes(id));
      this.log.info({ recorded: ids.length, missingNetns: missing }, 'network recovered');
      return ids;
    });
  }

  gc(keep: ReadonlySet<string>): Promise<string[]> {
    return this.exclusive(async () => {
      const state = await this.load();
      const removed: string[] = [];
      for (const id of Object.keys(state.containers)) {
        if (!keep.has(id)) {
          await this.teardownLocked(state, id);
          removed.push(id);
        }
      }
      await this.removeStrays(state);
      if (removed.length > 0) this.log.info({ removed }, 'network gc');
      return removed;
    });
  }

  removeBridge(): Promise<void> {
    return this.exclusive(async () => {
      const state = await this.load();
      const ids = Object.keys(state.containers);
      if (ids.length > 0) throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `bridge ${this.bridge} still has containers: ${ids.join(', ')}`);
      if (await linkExists(this.bridge)) await tool('ip', ['link', 'del', this.bridge]).catch(ignoreMissing);
      for (const family of ['ip', 'bridge']) {
        await tool('nft', ['delete', 'table', family, this.table]).catch(ignoreMissing);
      }
      this.baseReady = false;
    });
  }

  // ---- setup / teardown ------------------------------------------------------------------

  private async setupLocked(id: string, o: SetupOptions): Promise<NetworkSetup> {
    const started = performance.now();
    const state = await this.load();
    const requested = o.ports.filter((p): p is PublishedPort => p.hostPort !== undefined)
      .map((p) => ({ containerPort: p.containerPort, hostPort: p.hostPort, protocol: p.protocol }));
    const existing = state.containers[id];
    if (existing) {
      if (sameSetup(existing, requested, o.isolationKey) && (await this.isComplete(id, existing))) {
        return this.describe(id, existing);
      }
      // A different request, or a setup cut short by a crash: start over from a clean slate.
      await this.teardownLocked(state, id);
    }
    const ns = netnsName(id);
    if (existsSync(path.join(NETNS_DIR, ns))) {
      throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `network namespace ${ns} exists but is not managed by bridge ${this.bridge}; remove it or use another id`);
    }
    const hostIf = hostIfName(id);
    for (const [other, a] of Object.entries(state.containers)) {
      if (a.hostIf === hostIf) throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `interface name ${hostIf} of ${id} collides with container ${other}`);
    }
    await this.checkPorts(state, id, requested);

    const used = new Set(Object.values(state.containers).map((a) => ipToInt(a.ip)));
    const ipNum = allocateIp(this.sub, used, state.cursor ? ipToInt(state.cursor) : undefined);
    if (ipNum === undefined) throw new NetworkError('CARAPACE_E_ADDRESS_POOL_EXHAUSTED', `no free address left in ${this.subnet} on bridge ${this.bridge}`);
    const ip = intToIp(ipNum);
    const alloc: Allocation = { ip, hostIf, mark: this.markFor(state, id, o.isolationKey), isolationKey: o.isolationKey ?? null, ports: requested };

    // Reserve first, then build: a crash mid-way leaves a record that recover/gc/setup can
    // clean, never a namespace or rule nobody knows about.
    state.containers[id] = alloc;
    state.cursor = ip;
    await this.save(state);
    try {
      await this.ensureBase();
      // Isolation entries go in before the link exists, so a container's port is never on
      // the bridge without its filter (the bridge chain drops frames of unknown ports of ours).
      await tool('nft', ['-f', '-'], this.elementsScript('add', alloc));
      const mtu = await this.linkMtu();
      await tool('ip', ['-batch', '-'], [
        `netns add ${ns}`,
        `link add ${hostIf} mtu ${mtu} type veth peer name eth0 mtu ${mtu} netns ${ns}`,
        `link set ${hostIf} master ${this.bridge} up`,
        '',
      ].join('\n'));
      await tool('ip', ['-n', ns, '-batch', '-'], [
        'link set lo up',
        `addr add ${ip}/${this.sub.prefixLength} dev eth0`,
        'link set eth0 up',
        `route add default via ${intToIp(gatewayOf(this.sub))}`,
        '',
      ].join('\n'));
    } catch (e) {
      this.log.warn({ id, err: e }, 'network setup failed; rolling back');
      await this.teardownLocked(state, id).catch((e2: unknown) => this.log.error({ id, err: e2 }, 'network rollback failed'));
      throw new NetworkError('CARAPACE_E_NETWORK_FAILED', `network setup of ${id} failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.log.info({ id, ip, hostIf, ports: requested, ms: Math.round(performance.now() - started) }, 'network set up');
    return this.describe(id, alloc);
  }

  private async teardownLocked(state: StateFile, id: string): Promise<void> {
    const a = state.containers[id];
    if (!a) return;
    const started = performance.now();
    // Deleting the host end removes the pair even while a process still holds the namespace
    // (a container that has not exited yet keeps the namespace itself alive).
    if (await linkExists(a.hostIf)) await tool('ip', ['link', 'del', a.hostIf]).catch(ignoreMissing);
    const ns = netnsName(id);
    if (existsSync(path.join(NETNS_DIR, ns))) await tool('ip', ['netns', 'del', ns]).catch(ignoreMissing);
    await this.deleteElements(a);
    delete state.containers[id];
    await this.save(state);
    this.log.info({ id, ms: Math.round(performance.now() - started) }, 'network torn down');
  }

  /** Whether the kernel still has every piece of a recorded setup. */
  private async isComplete(id: string, a: Allocation): Promise<boolean> {
    if (!existsSync(path.join(NETNS_DIR, netnsName(id))) || !(await linkExists(a.hostIf))) return false;
    try {
      const out = await tool('ip', ['-n', netnsName(id), '-j', '-4', 'addr', 'show', 'dev', 'eth0']);
      return out.includes(`"${a.ip}"`);
    } catch {
      return false;
    }
  }

  /** Refuses host ports that another container publishes or that a host socket listens on. */
  private async checkPorts(state: StateFile, id: string, ports: readonly PublishedPort[]): Promise<void> {
    if (ports.length === 0) return;
    for (const p of ports) {
      for (const [other, a] of Object.entries(state.containers)) {
        if (other !== id && a.ports.some((q) => q.hostPort === p.hostPort && q.protocol === p.protocol)) {
          throw new NetworkError('CARAPACE_E_PORT_IN_USE', `host port ${p.hostPort}/${p.protocol} is already published by container ${other}`, p);
        }
      }
    }
    const bound = await hostBoundPorts();
    for (const p of ports) {
      if (bound[p.protocol].has(p.hostPort)) {
        throw new NetworkError('CARAPACE_E_PORT_IN_USE', `host port ${p.hostPort}/${p.protocol} is in use by a process on the host`, p);
      }
    }
  }

  /** Containers with the same key share a mark; a container without a key gets its own. */
  private markFor(state: StateFile, id: string, key: string | undefined): number {
    const entries = Object.entries(state.containers).filter(([other]) => other !== id);
    if (key !== undefined) {
      const same = entries.find(([, a]) => a.isolationKey === key);
      if (same) return same[1].mark;
    }
    return allocateMark(new Set(entries.map(([, a]) => a.mark)));
  }

  // ---- kernel base state -----------------------------------------------------------------

  /**
   * Creates (or repairs) the bridge, the sysctls and the two nftables tables. Chains are
   * declared, flushed and refilled in one atomic nft transaction, so running it again is
   * harmless and the map/set elements (the per-container state) are kept.
   */
  private async ensureBase(): Promise<void> {
    if (this.baseReady) return;
    const gw = `${intToIp(gatewayOf(this.sub))}/${this.sub.prefixLength}`;
    // Asked of `ip`, not /sys: an agent that joined another network namespace (nsenter --net)
    // still sees the /sys of the namespace it was mounted in.
    await tool('ip', ['link', 'add', this.bridge, 'type', 'bridge']).catch((e: unknown) => {
      if (!(e instanceof CommandError && /File exists/.test(e.stderr))) throw e;
    });
    const addrs = await tool('ip', ['-j', '-4', 'addr', 'show', 'dev', this.bridge]);
    if (!addrs.includes(`"${intToIp(gatewayOf(this.sub))}"`)) {
      await tool('ip', ['addr', 'add', gw, 'dev', this.bridge]).catch((e: unknown) => {
        if (!(e instanceof CommandError && /File exists/.test(e.stderr))) throw e;
      });
    }
    await tool('ip', ['link', 'set', this.bridge, 'up']);
    // Routing between the bridge and the uplink (egress NAT, published ports).
    await fs.writeFile('/proc/sys/net/ipv4/ip_forward', '1');
    // Lets OUTPUT-DNATed packets from 127.0.0.1 leave through the bridge; the postrouting
    // masquerade below then gives them the gateway address, so the container can answer.
    await fs.writeFile(`/proc/sys/net/ipv4/conf/${this.bridge}/route_localnet`, '1');
    await tool('nft', ['-f', '-'], this.baseScript());
    this.baseReady = true;
  }

  private baseScript(): string {
    const t = this.table;
    const br = JSON.stringify(this.bridge);
    const net = this.subnet;
    return `
table ip ${t} {
  map tcp_ports {
    type inet_service : ipv4_addr . inet_service
  }
  map udp_ports {
    type inet_service : ipv4_addr . inet_service
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
  }
  chain output {
    type nat hook output priority -100; policy accept;
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
  }
  chain publish {
  }
  chain published {
    type filter hook prerouting priority filter; policy accept;
  }
}
flush chain ip ${t} prerouting
flush chain ip ${t} output
flush chain ip ${t} postrouting
flush chain ip ${t} publish
flush chain ip ${t} published
add rule ip ${t} prerouting fib daddr type local jump publish
add rule ip ${t} output fib daddr type local jump publish
add rule ip ${t} publish dnat ip to tcp dport map @tcp_ports
add rule ip ${t} publish dnat ip to udp dport map @udp_ports
add rule ip ${t} published iifname ${br} ct status dnat meta mark set meta mark or ${PUBLISHED_MARK}
add rule ip ${t} postrouting ip saddr ${net} ip daddr != ${net} oifname != ${br} masquerade
add rule ip ${t} postrouting oifname ${br} ip saddr 127.0.0.0/8 masquerade
add rule ip ${t} postrouting oifname ${br} ip saddr ${net} ct status dnat masquerade
table bridge ${t} {
  map ifkey {
    type ifname : mark
  }
  set ifaces {
    type ifname
  }
  set members {
    type ifname . mark
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
  }
}
flush chain bridge ${t} forward
add rule bridge ${t} forward iifname != @ifaces accept
add rule bridge ${t} forward meta mark and ${PUBLISHED_MARK} == ${PUBLISHED_MARK} accept
add rule bridge ${t} forward meta mark set iifname map @ifkey
add rule bridge ${t} forward oifname . meta mark @members accept
add rule bridge ${t} forward drop
`;
  }

  /** The nft statements adding or deleting one container's map and set elements. */
  private elementsScript(verb: 'add' | 'delete', a: Allocation): string {
    const t = this.table;
    const ifq = JSON.stringify(a.hostIf);
    const lines = [
      `${verb} element bridge ${t} ifaces { ${ifq} }`,
      `${verb} element bridge ${t} ifkey { ${ifq}${verb === 'add' ? ` : ${a.mark}` : ''} }`,
      `${verb} element bridge ${t} members { ${ifq} . ${a.mark} }`,
    ];
    for (const p of a.ports) {
      lines.push(`${verb} element ip ${t} ${p.protocol}_ports { ${p.hostPort}${verb === 'add' ? ` : ${a.ip} . ${p.containerPort}` : ''} }`);
    }
    return lines.join('\n') + '\n';
  }

  /**
   * Deletes a container's elements. nftables (1.0.6) has no "delete if present", so each
   * element is added then deleted in one transaction, which succeeds whether or not it was
   * there; if even that fails (an element changed under us) each is deleted on its own.
   */
  private async deleteElements(a: Allocation): Promise<void> {
    if (!this.baseReady && !(await this.tablesExist())) return;
    try {
      await tool('nft', ['-f', '-'], this.elementsScript('add', a) + this.elementsScript('delete', a));
    } catch {
      for (const line of this.elementsScript('delete', a).split('\n').filter(Boolean)) {
        await tool('nft', ['-f', '-'], line + '\n').catch(() => undefined);
      }
    }
  }

  private async tablesExist(): Promise<boolean> {
    try {
      await tool('nft', ['list', 'table', 'ip', this.table]);
      await tool('nft', ['list', 'table', 'bridge', this.table]);
      return true;
    } catch {
      return false;
    }
  }

  /** Removes links on our bridge and rule elements that no record explains. */
  private async removeStrays(state: StateFile): Promise<void> {
    const known = new Map(Object.values(state.containers).map((a) => [a.hostIf, a]));
    if (await linkExists(this.bridge)) {
      const links = JSON.parse(await tool('ip', ['-j', 'link', 'show', 'master', this.bridge])) as { ifname: string }[]; // safe: `ip -j` prints a JSON array of link objects
      for (const l of links) {
        if (!known.has(l.ifname)) {
          this.log.warn({ ifname: l.ifname }, 'removing stray link on bridge');
          await tool('ip', ['link', 'del', l.ifname]).catch(ignoreMissing);
        }
      }
    }
    if (!(await this.tablesExist())) return;
    const deletions: string[] = [];
    const t = this.table;
    for (const proto of ['tcp', 'udp'] as const) {
      const claimed = new Set(Object.values(state.containers).flatMap((a) => a.ports.filter((p) => p.protocol === proto).map((p) => p.hostPort)));
      for (const port of await this.mapKeys('ip', `${proto}_ports`)) {
        if (!claimed.has(Number(port))) deletions.push(`delete element ip ${t} ${proto}_ports { ${port} }`);
      }
    }
    for (const ifname of await this.mapKeys('bridge', 'ifaces')) {
      if (!known.has(ifname)) deletions.push(`delete element bridge ${t} ifaces { ${JSON.stringify(ifname)} }`);
    }
    for (const ifname of await this.mapKeys('bridge', 'ifkey')) {
      if (!known.has(ifname)) deletions.push(`delete element bridge ${t} ifkey { ${JSON.stringify(ifname)} }`);
    }
    for (const key of await this.mapKeys('bridge', 'members')) {
      const [ifname, mark] = key.split(' . ');
      if (ifname === undefined || known.get(ifname)?.mark !== Number(mark)) {
        deletions.push(`delete element bridge ${t} members { ${JSON.stringify(ifname)} . ${mark} }`);
      }
    }
    if (deletions.length > 0) {
      this.log.warn({ deletions }, 'removing stray nftables elements');
      await tool('nft', ['-f', '-'], deletions.join('\n') + '\n');
    }
  }

  /**
   * Keys of an nftables set or map, as text (`8080`, `cvabc`, `cvabc . 5`). Read from the
   * JSON listing so interface names come back unquoted.
   */
  private async mapKeys(family: 'ip' | 'bridge', name: string): Promise<string[]> {
    const kind = name.endsWith('_ports') || name === 'ifkey' ? 'map' : 'set';
    const json = JSON.parse(await tool('nft', ['-j', 'list', kind, family, this.table, name])) as { nftables: Record<string, { elem?: unknown[] }>[] }; // safe: nft -j output shape
    const obj = json.nftables.find((o) => o[kind] !== undefined)?.[kind];
    const keyText = (k: unknown): string => {
      if (typeof k === 'string' || typeof k === 'number') return String(k);
      if (k && typeof k === 'object' && 'concat' in k && Array.isArray(k.concat)) return k.concat.map(keyText).join(' . ');
      return JSON.stringify(k);
    };
    return (obj?.elem ?? []).map((e) => {
      // Map elements are [key, value] pairs; set elements are keys.
      const key = Array.isArray(e) ? e[0] : e;
      return keyText(key);
    });
  }

  private async linkMtu(): Promise<number> {
    if (this.mtu !== undefined) return this.mtu;
    let mtu = 1500;
    try {
      const routes = JSON.parse(await tool('ip', ['-j', '-4', 'route', 'show', 'default'])) as { dev?: string }[]; // safe: `ip -j route` prints an array of route objects
      const dev = routes[0]?.dev;
      const link = dev ? (JSON.parse(await tool('ip', ['-j', 'link', 'show', 'dev', dev])) as { mtu?: number }[]) : []; // safe: `ip -j link` prints an array of link objects
      mtu = link[0]?.mtu ?? 1500;
    } catch {
      // No default route (an isolated host): keep the Ethernet default.
    }
    this.mtu = mtu;
    return mtu;
  }

  // ---- state file and locking ------------------------------------------------------------

  private describe(id: string, a: Allocation): NetworkSetup {
    const s: NetworkSetup = {
      id,
      netnsPath: path.join(NETNS_DIR, netnsName(id)),
      ip: a.ip,
      prefixLength: this.sub.prefixLength,
      gateway: intToIp(gatewayOf(this.sub)),
      hostInterface: a.hostIf,
      hostPorts: a.ports.map((p) => ({ ...p })),
    };
    if (a.isolationKey !== null) s.isolationKey = a.isolationKey;
    return s;
  }

  private async load(): Promise<StateFile> {
    let text: string;
    try {
      text = await fs.readFile(this.stateFile, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') { // safe: fs errors are ErrnoExceptions
        return { version: 1, bridge: this.bridge, subnet: this.subnet, cursor: null, containers: {} };
      }
      throw e;
    }
    const s = JSON.parse(text) as StateFile; // safe: only this module writes the file, always whole (atomic rename)
    if (s.version !== 1) throw new Error(`${this.stateFile}: unknown version ${String(s.version)}`);
    if ((s.bridge !== this.bridge || s.subnet !== this.subnet) && Object.keys(s.containers).length > 0) {
      throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `${this.stateFile} records bridge ${s.bridge} ${s.subnet} with live containers; this manager is configured for ${this.bridge} ${this.subnet}`);
    }
    for (const [id, a] of Object.entries(s.containers)) {
      if (!contains(this.sub, ipToInt(a.ip))) throw new Error(`${this.stateFile}: ${id} has address ${a.ip} outside ${this.subnet}`);
    }
    s.bridge = this.bridge;
    s.subnet = this.subnet;
    return s;
  }

  /** Writes the file atomically (atomic-file.ts), so a crash leaves the old or the new state. */
  private async save(s: StateFile): Promise<void> {
    await writeFileAtomic(this.stateFile, JSON.stringify(s, null, 2) + '\n');
  }

  /**
   * Runs `fn` with this instance's operations serialised and the stateDir lock held. The lock
   * is an flock (src/proc/file-lock.ts): the kernel releases it when its holder dies, so an
   * agent killed with -9 at any moment, even while taking it, never leaves it stuck.
   */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(async () => {
      await fs.mkdir(this.opts.stateDir, { recursive: true });
      const lock = await acquireFileLock(this.lockFile, { timeoutMs: LOCK_TIMEOUT_MS }).catch((e: unknown) => {
        throw e instanceof FileLockTimeoutError ? new NetworkError('CARAPACE_E_NETWORK_FAILED', e.message) : e;
      });
      try {
        return await fn();
      } finally {
        await lock.release();
      }
    });
    this.queue = next.catch(() => undefined);
    return next;
  }
}

/**
 * Runs `ip` or `nft` with `input` on its stdin (scripts for `-f -` and `-batch -`) and resolves
 * with its stdout; rejects with a CommandError carrying the tool's stderr unless it exits 0.
 */
async function tool(cmd: 'ip' | 'nft', args: readonly string[], input?: string): Promise<string> {
  return (await runOrThrow(cmd, args, input === undefined ? {} : { input })).stdout;
}

function ignoreMissing(e: unknown): void {
  if (e instanceof CommandError && /Cannot find device|No such file|does not exist/.test(e.stderr)) return;
  throw e;
}

function sameSetup(a: Allocation, ports: readonly PublishedPort[], key: string | undefined): boolean {
  const norm = (ps: readonly PublishedPort[]): string => ps.map((p) => `${p.protocol}/${p.hostPort}/${p.containerPort}`).sort().join(',');
  return a.isolationKey === (key ?? null) && norm(a.ports) === norm(ports);
}

/**
 * Ports bound on the host, from /proc/net/{tcp,tcp6,udp,udp6} of this (the host's) network
 * namespace: listening TCP sockets and every bound UDP socket. DNAT of `fib daddr type local`
 * would shadow such a socket on every address, so any of them is a conflict.
 */
export async function hostBoundPorts(): Promise<BoundPorts> {
  const result: BoundPorts = { tcp: new Set<number>(), udp: new Set<number>() };
  for (const f of PROC_NET_FILES) {
    let text: string;
    try {
      text = await fs.readFile(`/proc/net/${f.file}`, 'utf8');
    } catch {
      continue; // e.g. IPv6 disabled: no tcp6 file
    }
    addBoundPorts(result, f.protocol, f.listenOnly, text);
  }
  return result;
}
