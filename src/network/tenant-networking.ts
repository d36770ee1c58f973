/**
 * The host data plane of tenant networks (TenantNetworking, types.ts), driven by the agent: per
 * tenant a segment (bridge with the gateway, VXLAN to the tenant's other hosts, a dnsmasq, its
 * firewall chains), per workload an endpoint (a network namespace with a veth, or a tap for a VM)
 * with a fixed address and MAC, anti-spoofing, published ports, and per tenant its services
 * balanced in the kernel. See README.md for the objects and rules.
 *
 * Habits kept from the container network (network-manager.ts): the record is written before
 * the kernel is touched when something is made; per-endpoint kernel state is only nft set and
 * map elements changed in atomic `nft -f` transactions; every operation is idempotent and runs
 * under an flock on the state directory, so a manager killed with -9 at any moment leaves
 * nothing that recover/gc cannot finish or undo.
 */
import { existsSync, promises as fs } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { Logger } from 'pino';
import { CarapaceError } from '../model/errors.js';
import { acquireFileLock, FileLockTimeoutError } from '../proc/file-lock.js';
import { CommandError } from '../proc/run.js';
import { readFileIfExists, writeFileAtomic } from './atomic-file.js';
import { dhcpHostsText, dnsmasqArgs, hostsFileText, upstreamsFromResolvConf, type DnsFiles } from './dns-config.js';
import { ensureDnsmasq, reloadDnsmasq, stopDnsmasq } from './dnsmasq.js';
import { NetworkError } from './errors.js';
import { hostExec, ignoreExisting, ignoreMissing, NETNS_DIR, type HostExec } from './host-exec.js';
import { addBoundPorts, PROC_NET_FILES, type BoundPorts } from './host-ports.js';
import { allocateIp, gatewayOf, intToIp, ipToInt, macFor, netnsName, parseSubnet, shadows, validateSetup, type Issue } from './ipam.js';
import { chainNames, namesFor, PREFIX_PATTERN, tenantHash, type Names } from './names.js';
import {
  dispatchScript,
  endpointElements,
  endpointRemovalScript,
  fullSyncScript,
  infrastructureScript,
  publishedChangeScript,
  segmentChainsScript,
  segmentElements,
  servicesScript,
  VXLAN_PORT,
  type FwEndpoint,
  type FwPresent,
  type FwSegment,
  type FwState,
} from './nft-rules.js';
import { loadState, saveState, type EndpointRecord, type SegmentRecord, type TenantState } from './tenant-state.js';
import type { DnsName, Endpoint, EndpointRequest, PublishedPort, SegmentSpec, ServiceEntry, TenantNetworking } from './types.js';
import { validateAddresses, validateEndpoint, validateNames, validateSegment, validateServices } from './validate.js';

export type * from './types.js';

/** How a tenant data plane is set up; one per agent (prefix) per network namespace. */
export interface TenantNetworkingOptions {
  /** Directory for the state file and its lock; created if missing. */
  stateDir: string;
  logger: Logger;
  /** Prefix of every kernel object's name, so agents sharing a namespace never collide; default `c`. */
  prefix?: string;
  /**
   * The network namespace to manage (a name under /var/run/netns or a path); default: the
   * caller's own. For tests' namespace "hosts" and agents managing a namespace they are not in.
   */
  netns?: string;
  /**
   * Directory of the dnsmasq files (one subdirectory per segment). dnsmasq drops root for
   * `nobody`, which must read them, so it must be traversable by everyone: default
   * `/run/carapace/network-<8 hex of the state dir and namespace>` (regenerated from the state
   * file by recover after a reboot, like every kernel object).
   */
  runDir?: string;
  /** MTU of the underlay; default: that of the device with the segment's underlay address, else of the default route's, else 1500. */
  mtu?: number;
  /** Where the host's resolvers are read (upstreams of tenants with egress `allow`); default /etc/resolv.conf. */
  resolvConf?: string;
}

/** VXLAN's own headers take 50 bytes of the underlay's MTU. */
const VXLAN_OVERHEAD = 50;
/** How long an operation waits for another instance's operation on the same state directory. */
const LOCK_TIMEOUT_MS = 30_000;
/** The all-zero MAC of a VXLAN flood entry: broadcast, multicast and unknown unicast go to every such `dst`. */
const FLOOD_MAC = '00:00:00:00:00:00';

/** The tenant data plane for one agent. Cheap: nothing touches the kernel until the first call. */
export function createTenantNetworking(o: TenantNetworkingOptions): TenantNetworking {
  const prefix = o.prefix ?? 'c';
  if (!PREFIX_PATTERN.test(prefix)) throw new Error(`prefix must match ${PREFIX_PATTERN.source}: ${JSON.stringify(prefix)}`);
  return new TenantDataPlane(o, prefix);
}

function invalid(what: string, issues: Issue[]): CarapaceError {
  return new CarapaceError('CARAPACE_E_VALIDATION', `invalid ${what}`, issues);
}

/** One `ip -j -d link show` entry, the fields read here. */
interface LinkJson {
  ifname: string;
  mtu?: number;
  master?: string;
  address?: string;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; local?: string; port?: number } };
}

class TenantDataPlane implements TenantNetworking {
  private readonly names: Names;
  private readonly exec: HostExec;
  private readonly table: string;
  private readonly stateDir: string;
  private readonly runDir: string;
  private readonly lockFile: string;
  private readonly log: Logger;
  private queue: Promise<unknown> = Promise.resolve();
  private baseReady = false;

  constructor(private readonly o: TenantNetworkingOptions, prefix: string) {
    this.names = namesFor(prefix);
    this.exec = hostExec(o.netns);
    this.table = this.names.table;
    this.stateDir = o.stateDir;
    const scope = createHash('sha256').update(`${path.resolve(o.stateDir)}\0${this.exec.netnsPath ?? ''}`).digest('hex').slice(0, 8);
    this.runDir = o.runDir ?? `/run/carapace/network-${scope}`;
    this.lockFile = path.join(o.stateDir, 'tenant-network.lock');
    this.log = o.logger.child({ component: 'tenant-network', prefix });
  }

  // ---- the interface ---------------------------------------------------------------------

  ensureSegment(s: SegmentSpec): Promise<void> {
    const issues = validateSegment(s);
    if (issues.length > 0) return Promise.reject(invalid(`segment for ${JSON.stringify(s.tenant)}`, issues));
    return this.exclusive(async (state) => {
      const th = tenantHash(s.tenant);
      const clash = Object.keys(state.segments).find((t) => t !== s.tenant && tenantHash(t) === th);
      if (clash !== undefined) throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `tenants ${s.tenant} and ${clash} hash to the same name ${th}`);
      await this.refuseShadowedBlock(s.tenant, s.block, this.names.bridge(s.tenant));
      const old = state.segments[s.tenant];
      const moved = old !== undefined && (old.spec.cidr !== s.cidr || old.spec.block !== s.block);
      if (old && moved) {
        const users = this.endpointsOf(state, s.tenant);
        if (users.length > 0) {
          throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `segment of ${s.tenant} has endpoints (${users.join(', ')}); its network ${old.spec.cidr} block ${old.spec.block} cannot change to ${s.cidr} block ${s.block}`);
        }
        delete state.segments[s.tenant];
        await saveState(this.stateDir, state);
        await this.removeSegmentKernel(state, s.tenant);
      }
      // Services, names and peers are the agent's desired sets: they stay with the tenant.
      const rec: SegmentRecord = old ? { ...old, spec: s, cursor: moved ? null : old.cursor } : { spec: s, cursor: null, peers: [], services: [], names: [] };
      state.segments[s.tenant] = rec;
      await saveState(this.stateDir, state);
      await this.ensureBase(state);
      await this.ensureSegmentLinks(s.tenant, rec);
      await this.nft(
        segmentChainsScript(this.table, this.fwSegment(s.tenant, rec)) +
          servicesScript(this.table, tenantHash(s.tenant), rec.services, (await this.present()).chains) +
          segmentElements('add', this.table, this.fwSegment(s.tenant, rec)).join('\n') + '\n' +
          dispatchScript(this.table, Object.keys(state.segments).map(tenantHash)),
      );
      await this.ensureDns(state, s.tenant);
      this.log.info({ tenant: s.tenant, bridge: this.names.bridge(s.tenant), block: s.block, vxlan: s.underlay !== undefined }, 'segment ensured');
    });
  }

  removeSegment(tenant: string): Promise<void> {
    return this.exclusive(async (state) => {
      const users = this.endpointsOf(state, tenant);
      if (users.length > 0) throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `segment of ${tenant} still has endpoints: ${users.join(', ')}`);
      // The record goes first: should we die before the kernel is clean, what is left is
      // unexplained by any record, and recover/gc remove it.
      if (state.segments[tenant]) {
        delete state.segments[tenant];
        await saveState(this.stateDir, state);
      }
      await this.removeSegmentKernel(state, tenant);
      this.log.info({ tenant }, 'segment removed');
    });
  }

  segments(): Promise<string[]> {
    return this.exclusive(async (state) => Object.keys(state.segments).sort());
  }

  attach(req: EndpointRequest): Promise<Endpoint> {
    const issues = validateEndpoint(req);
    if (issues.length > 0) return Promise.reject(invalid(`endpoint ${JSON.stringify(req.id)}`, issues));
    return this.exclusive((state) => this.attachLocked(state, req));
  }

  detach(id: string): Promise<void> {
    return this.exclusive((state) => this.detachLocked(state, id));
  }

  inspect(id: string): Promise<Endpoint | undefined> {
    return this.exclusive(async (state) => {
      const e = state.endpoints[id];
      return e ? this.describe(state, id, e) : undefined;
    });
  }

  recover(): Promise<string[]> {
    return this.exclusive(async (state) => {
      this.baseReady = false;
      await this.ensureBase(state);
      for (const [tenant, rec] of Object.entries(state.segments)) {
        await this.ensureSegmentLinks(tenant, rec);
        await this.ensureDns(state, tenant);
      }
      await this.removeStrays(state);
      const ids = Object.keys(state.endpoints).sort();
      const incomplete: string[] = [];
      for (const id of ids) if (!(await this.isComplete(state, id, state.endpoints[id] as EndpointRecord))) incomplete.push(id); // safe: id is a key of endpoints
      this.log.info({ segments: Object.keys(state.segments).length, endpoints: ids.length, incomplete }, 'tenant network recovered');
      return ids;
    });
  }

  gc(keep: ReadonlySet<string>): Promise<string[]> {
    return this.exclusive(async (state) => {
      const removed: string[] = [];
      // Reserved taps (reserveTap) are endpoints too: one whose VM is gone would stay forever.
      for (const id of [...new Set([...Object.keys(state.endpoints), ...Object.keys(state.reserved ?? {})])]) {
        if (!keep.has(id)) {
          await this.detachLocked(state, id);
          removed.push(id);
        }
      }
      await this.ensureBase(state);
      await this.removeStrays(state);
      if (removed.length > 0) this.log.info({ removed }, 'tenant network gc');
      return removed;
    });
  }

  setServices(tenant: string, services: ServiceEntry[]): Promise<void> {
    const issues = validateServices(services);
    if (issues.length > 0) return Promise.reject(invalid(`services of ${JSON.stringify(tenant)}`, issues));
    return this.exclusive(async (state) => {
      const rec = this.segmentOf(state, tenant);
      rec.services = services.map((s) => ({ name: s.name, vip: s.vip, ports: s.ports.map((p) => ({ ...p })), endpoints: [...s.endpoints] }));
      await saveState(this.stateDir, state);
      await this.ensureBase(state);
      await this.nft(servicesScript(this.table, tenantHash(tenant), rec.services, (await this.present()).chains));
      await this.ensureDns(state, tenant);
    });
  }

  setNames(tenant: string, names: DnsName[]): Promise<void> {
    const issues = validateNames(names);
    if (issues.length > 0) return Promise.reject(invalid(`names of ${JSON.stringify(tenant)}`, issues));
    return this.exclusive(async (state) => {
      const rec = this.segmentOf(state, tenant);
      rec.names = names.map((n) => ({ name: n.name, ip: n.ip }));
      await saveState(this.stateDir, state);
      await this.ensureDns(state, tenant);
    });
  }

  setPeers(tenant: string, peers: string[]): Promise<void> {
    const issues = validateAddresses('peers', peers, false);
    if (issues.length > 0) return Promise.reject(invalid(`peers of ${JSON.stringify(tenant)}`, issues));
    return this.exclusive(async (state) => {
      const rec = this.segmentOf(state, tenant);
      rec.peers = [...new Set(peers)].filter((p) => p !== rec.spec.underlay).sort();
      await saveState(this.stateDir, state);
      await this.ensureOverlay(tenant, rec);
    });
  }

  setInfrastructure(addresses: string[]): Promise<void> {
    const issues = validateAddresses('addresses', addresses, true);
    if (issues.length > 0) return Promise.reject(invalid('infrastructure addresses', issues));
    return this.exclusive(async (state) => {
      state.infrastructure = [...new Set(addresses)].sort();
      await saveState(this.stateDir, state);
      await this.ensureBase(state);
      await this.nft(infrastructureScript(this.table, state.infrastructure));
    });
  }

  egressDenied(): Promise<Record<string, number>> {
    return this.exclusive(async (state) => {
      const byHash = new Map(Object.keys(state.segments).map((t) => [chainNames.denied(tenantHash(t)), t]));
      const out: Record<string, number> = {};
      for (const t of Object.keys(state.segments)) out[t] = 0;
      let json: string;
      try {
        json = await this.exec.run('nft', ['-j', 'list', 'counters', 'table', 'inet', this.table]);
      } catch {
        return out; // no table yet: nothing was denied
      }
      const parsed = JSON.parse(json) as { nftables: { counter?: { name: string; table: string; packets: number } }[] }; // safe: the shape `nft -j list counters` prints
      for (const o of parsed.nftables) {
        const tenant = o.counter && o.counter.table === this.table ? byHash.get(o.counter.name) : undefined;
        if (tenant !== undefined && o.counter) out[tenant] = o.counter.packets;
      }
      return out;
    });
  }

  reserveTap(id: string): Promise<{ tap: string; mac: string }> {
    const issues = validateSetup(id, []);
    if (issues.length > 0) return Promise.reject(invalid(`tap ${JSON.stringify(id)}`, issues));
    return this.exclusive(async (state) => {
      const e = state.endpoints[id];
      if (e) {
        if (e.kind !== 'tap') throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `endpoint ${id} is not a tap`);
        return { tap: e.ifname, mac: e.mac };
      }
      const r = state.reserved?.[id] ?? { ifname: this.names.endpointIf(id, 'tap'), mac: reservedMac(id) };
      // Recorded first, as every endpoint: a crash leaves a record that detach/gc can undo.
      state.reserved = { ...state.reserved, [id]: r };
      await saveState(this.stateDir, state);
      await this.ensureTap(r.ifname);
      return { tap: r.ifname, mac: r.mac };
    });
  }

  removeAll(): Promise<void> {
    return this.exclusive(async (state) => {
      for (const id of Object.keys(state.reserved ?? {})) await this.detachLocked(state, id);
      for (const id of Object.keys(state.endpoints)) await this.detachLocked(state, id);
      for (const tenant of Object.keys(state.segments)) {
        delete state.segments[tenant];
        await saveState(this.stateDir, state);
        await this.removeSegmentKernel(state, tenant);
      }
      await this.removeStrays(state);
      for (const family of ['inet', 'bridge']) await this.exec.run('nft', ['delete', 'table', family, this.table]).catch(() => undefined); // absent already: fine
      this.baseReady = false;
      await fs.rm(this.runDir, { recursive: true, force: true });
      this.log.info('tenant networks removed');
    });
  }

  // ---- segments --------------------------------------------------------------------------

  private segmentOf(state: TenantState, tenant: string): SegmentRecord {
    const rec = state.segments[tenant];
    if (!rec) throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `tenant ${tenant} has no segment on this host: ensureSegment first`);
    return rec;
  }

  private endpointsOf(state: TenantState, tenant: string): string[] {
    return Object.entries(state.endpoints).filter(([, e]) => e.tenant === tenant).map(([id]) => id).sort();
  }

  private fwSegment(tenant: string, rec: SegmentRecord): FwSegment {
    return { th: tenantHash(tenant), bridge: this.names.bridge(tenant), gateway: gatewayAddress(rec.spec), cidr: rec.spec.cidr, egress: rec.spec.egress };
  }

  /** The bridge (gateway address, fixed MAC, MTU, sysctls) and, with peers, the VXLAN device with its flood list. */
  private async ensureSegmentLinks(tenant: string, rec: SegmentRecord): Promise<void> {
    const br = this.names.bridge(tenant);
    const gw = gatewayAddress(rec.spec);
    const mtu = (await this.underlayMtu(rec.spec.underlay)) - VXLAN_OVERHEAD;
    await this.exec.run('ip', ['link', 'add', br, 'type', 'bridge']).catch(ignoreExisting);
    // A bridge takes the lowest MAC of its ports unless given one: set it, so the gateway's MAC
    // in the workloads' ARP caches does not change as ports come and go.
    // The gateway has the host block's prefix, the rest of the tenant network a route of lower
    // preference through the bridge (its other blocks are on other hosts, reached over VXLAN):
    // so two agents sharing one network namespace (tests) each route their own block to their
    // own bridge, while workloads keep the whole tenant network on-link.
    await this.exec.run('ip', ['-batch', '-'], [
      `link set ${br} address ${macFor(gw)} mtu ${mtu}`,
      `addr replace ${gw}/${parseSubnet(rec.spec.block).prefixLength} dev ${br}`,
      `link set ${br} up`,
      `route replace ${rec.spec.cidr} dev ${br} src ${gw} metric 1024`,
      '',
    ].join('\n'));
    await this.exec.run('sysctl', [
      '-q', '-w',
      // Routing between segments and the uplink (egress, published ports, services).
      'net.ipv4.ip_forward=1',
      // Lets OUTPUT-DNATed packets from 127.0.0.1 leave through the bridge (published ports
      // reached on loopback); the postrouting masquerade gives them the gateway's address.
      `net.ipv4.conf.${br}.route_localnet=1`,
      // Hairpinned traffic (services, published ports) leaves by the bridge it came in: no
      // redirects telling a workload to bypass the translation.
      `net.ipv4.conf.${br}.send_redirects=0`,
      `net.ipv6.conf.${br}.disable_ipv6=1`,
    ]);
    await this.ensureOverlay(tenant, rec, br, mtu);
  }

  /**
   * Another interface holding an address in the block with a prefix as long as the block's (a
   * bridge left by an agent of another prefix, a second cluster in one namespace, a LAN on the
   * same addresses) has a route that ties with or beats the bridge's: the host's replies to the
   * block (DNS, published ports, the gateway) would leave through it and the workloads reach
   * nothing, with no error anywhere. Refused here, naming the interface, instead. A shorter
   * prefix (a /8 on the uplink) loses to the bridge's route and is left alone.
   */
  private async refuseShadowedBlock(tenant: string, block: string, br: string): Promise<void> {
    const mine = parseSubnet(block);
    const links = JSON.parse(await this.exec.run('ip', ['-j', '-4', 'addr', 'show'])) as { ifname: string; addr_info?: { local?: string; prefixlen?: number }[] }[]; // safe: `ip -j addr` prints an array of links with their addresses
    for (const l of links) {
      if (l.ifname === br) continue;
      for (const a of l.addr_info ?? []) {
        if (a.local === undefined || a.prefixlen === undefined) continue;
        if (shadows({ address: ipToInt(a.local), prefixLength: a.prefixlen }, mine)) {
          throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `block ${block} of tenant ${tenant} is already on interface ${l.ifname} (${a.local}/${a.prefixlen}), which is not this agent's bridge ${br}: the host would route the block's traffic there. Remove that interface or give this cluster another network pool`);
        }
      }
    }
  }

  /**
   * The VXLAN device, there only while the segment has an underlay address and peers: a host
   * running all of a tenant's work has no use for one, and a device per network identifier and
   * port is all a network namespace can hold (a second cluster, or an agent left from a test,
   * would collide with it for nothing).
   */
  private async ensureOverlay(tenant: string, rec: SegmentRecord, br = this.names.bridge(tenant), mtu?: number): Promise<void> {
    const vx = this.names.vxlan(tenant);
    const current = await this.linkInfo(vx);
    const want = overlayWanted(rec) ? rec.spec.underlay : undefined;
    const matches = current?.linkinfo?.info_data?.id === rec.spec.vni && current.linkinfo.info_data.local === want && current.linkinfo.info_data.port === VXLAN_PORT;
    if (current && (want === undefined || !matches)) await this.exec.run('ip', ['link', 'del', vx]).catch(ignoreMissing);
    if (want === undefined) return;
    if (!current || !matches) {
      await this.exec.run('ip', ['link', 'add', vx, 'type', 'vxlan', 'id', String(rec.spec.vni), 'local', want, 'dstport', String(VXLAN_PORT)]).catch((e: unknown) => {
        // The kernel allows one device per VNI and port in a namespace, whatever its name: two
        // agents (prefixes) sharing a namespace collide here, as tenants of two clusters would.
        if (e instanceof CommandError && /VNI already exists/.test(e.stderr)) {
          throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `VNI ${rec.spec.vni} of ${tenant} is used by another VXLAN device on port ${VXLAN_PORT} in this network namespace (another agent's?)`);
        }
        throw e;
      });
    }
    const linkMtu = mtu ?? (await this.underlayMtu(rec.spec.underlay)) - VXLAN_OVERHEAD;
    await this.exec.run('ip', ['link', 'set', vx, 'mtu', String(linkMtu), 'master', br, 'up']);
    await this.syncFlood(vx, rec.peers);
  }

  /** Makes the VXLAN device's flood entries exactly one per peer. */
  private async syncFlood(vx: string, peers: readonly string[]): Promise<void> {
    const entries = JSON.parse(await this.exec.run('bridge', ['-j', 'fdb', 'show', 'dev', vx])) as { mac: string; dst?: string }[]; // safe: `bridge -j fdb` prints an array of entries
    const have = new Set(entries.filter((e) => e.mac === FLOOD_MAC && e.dst !== undefined).map((e) => e.dst as string)); // safe: filtered on dst defined
    // Entries the VXLAN device learned (a remote workload's MAC -> its host) go with their host
    // too: left to age out (5 min), they would keep sending to a host the tenant has left.
    const learned = entries.filter((e) => e.mac !== FLOOD_MAC && e.dst !== undefined && !peers.includes(e.dst));
    const cmds = [
      ...[...have].filter((d) => !peers.includes(d)).map((d) => `fdb del ${FLOOD_MAC} dev ${vx} dst ${d}`),
      ...learned.map((e) => `fdb del ${e.mac} dev ${vx} dst ${e.dst ?? ''}`),
      ...peers.filter((p) => !have.has(p)).map((p) => `fdb append ${FLOOD_MAC} dev ${vx} dst ${p}`),
    ];
    // -force: an entry that aged out meanwhile must not stop the others.
    if (cmds.length > 0) await this.exec.run('bridge', ['-force', '-batch', '-'], cmds.join('\n') + '\n');
  }

  /** Everything of a segment in the kernel and its dnsmasq, whether or not a record is left. */
  private async removeSegmentKernel(state: TenantState, tenant: string): Promise<void> {
    const th = tenantHash(tenant);
    await stopDnsmasq(this.dnsFiles(th).pidFile);
    await fs.rm(path.join(this.runDir, th), { recursive: true, force: true });
    await this.ensureBase(state);
    await this.fullSync(state);
    for (const link of [this.names.vxlan(tenant), this.names.bridge(tenant)]) {
      await this.exec.run('ip', ['link', 'del', link]).catch(ignoreMissing);
    }
  }

  // ---- DNS -------------------------------------------------------------------------------

  private dnsFiles(th: string): DnsFiles {
    const dir = path.join(this.runDir, th);
    return { pidFile: path.join(dir, 'dnsmasq.pid'), hostsFile: path.join(dir, 'hosts'), dhcpHostsFile: path.join(dir, 'dhcp-hosts'), logFile: path.join(dir, 'dnsmasq.log') };
  }

  /** Writes the segment's names and leases, and makes its dnsmasq run with them. */
  private async ensureDns(state: TenantState, tenant: string): Promise<void> {
    const rec = this.segmentOf(state, tenant);
    const th = tenantHash(tenant);
    const files = this.dnsFiles(th);
    await fs.mkdir(path.dirname(files.pidFile), { recursive: true, mode: 0o755 });
    const tenantDomain = `${tenant}.${rec.spec.domain}`;
    const leases = Object.values(state.endpoints).filter((e) => e.tenant === tenant && e.dhcp).map((e) => ({ mac: e.mac, ip: e.ip }));
    const changed = [
      await writeIfChanged(files.hostsFile, hostsFileText(tenantDomain, rec.services, rec.names)),
      await writeIfChanged(files.dhcpHostsFile, dhcpHostsText(leases)),
    ].some(Boolean);
    const upstreams = rec.spec.egress.default === 'allow' ? upstreamsFromResolvConf((await readFileIfExists(this.o.resolvConf ?? '/etc/resolv.conf')) ?? '') : [];
    const args = dnsmasqArgs({ bridge: this.names.bridge(tenant), gateway: gatewayAddress(rec.spec), cidr: rec.spec.cidr, tenantDomain, domain: rec.spec.domain, upstreams, files });
    const started = await ensureDnsmasq(this.exec, files.pidFile, args);
    if (!started && changed) await reloadDnsmasq(files.pidFile);
  }

  // ---- endpoints -------------------------------------------------------------------------

  private async attachLocked(state: TenantState, req: EndpointRequest): Promise<Endpoint> {
    const started = performance.now();
    const seg = this.segmentOf(state, req.tenant);
    const ports: PublishedPort[] = req.ports.filter((p): p is PublishedPort => p.hostPort !== undefined)
      .map((p) => ({ containerPort: p.containerPort, hostPort: p.hostPort, protocol: p.protocol }));
    const dhcp = req.dhcp ?? false;
    const existing = state.endpoints[req.id];
    if (existing) {
      if (sameEndpoint(existing, req, dhcp) && (await this.isComplete(state, req.id, existing))) {
        if (samePorts(existing.ports, ports)) return this.describe(state, req.id, existing);
        return this.republish(state, req.id, existing, ports);
      }
      // A different request, or an attach cut short by a crash: start over from a clean slate.
      await this.detachLocked(state, req.id);
    }
    const ns = netnsName(req.id);
    if (req.kind === 'netns' && existsSync(path.join(NETNS_DIR, ns))) {
      throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `network namespace ${ns} exists but is not an endpoint of this host; remove it or use another id`);
    }
    const ifname = this.names.endpointIf(req.id, req.kind);
    for (const [other, e] of Object.entries(state.endpoints)) {
      if (e.ifname === ifname) throw new NetworkError('CARAPACE_E_NETWORK_CONFLICT', `interface name ${ifname} of ${req.id} collides with endpoint ${other}`);
    }
    await this.checkPorts(state, req.id, ports);
    const block = parseSubnet(seg.spec.block);
    const used = new Set(Object.values(state.endpoints).map((e) => ipToInt(e.ip)));
    const ipNum = allocateIp(block, used, seg.cursor ? ipToInt(seg.cursor) : undefined);
    if (ipNum === undefined) throw new NetworkError('CARAPACE_E_ADDRESS_POOL_EXHAUSTED', `no free address left in block ${seg.spec.block} of ${req.tenant}`);
    const ip = intToIp(ipNum);
    // A reserved tap keeps the MAC its VM was started with.
    const reservation = req.kind === 'tap' ? state.reserved?.[req.id] : undefined;
    const rec: EndpointRecord = { tenant: req.tenant, kind: req.kind, ip, mac: reservation?.mac ?? macFor(ip), ifname, dhcp, ports };
    if (reservation) delete state.reserved?.[req.id];

    // Reserve first, then build: a crash mid-way leaves a record that recover/gc/attach can
    // finish or undo, never a namespace, link or rule nobody knows about.
    state.endpoints[req.id] = rec;
    seg.cursor = ip;
    await saveState(this.stateDir, state);
    try {
      await this.ensureBase(state);
      // Filter entries go in before the link exists: an endpoint's port is never on the bridge
      // unfiltered (the bridge chain passes frames of ports it does not know as someone else's).
      await this.nft(endpointElements('add', this.table, fwEndpoint(rec)).join('\n') + '\n');
      await this.buildEndpoint(state, req.id, rec);
      if (dhcp) await this.ensureDns(state, req.tenant);
    } catch (e) {
      this.log.warn({ id: req.id, err: e }, 'endpoint attach failed; rolling back');
      await this.detachLocked(state, req.id).catch((e2: unknown) => this.log.error({ id: req.id, err: e2 }, 'endpoint rollback failed'));
      throw new NetworkError('CARAPACE_E_NETWORK_FAILED', `attaching ${req.id} failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.log.info({ id: req.id, tenant: req.tenant, kind: req.kind, ip, ifname, ports, ms: Math.round(performance.now() - started) }, 'endpoint attached');
    return this.describe(state, req.id, rec);
  }

  /**
   * Changes only the published ports of an attached endpoint, in one nft transaction: a running
   * VM holds the tap and a cell's ports change as instances land in it and leave, so the link,
   * address and MAC stay. The record is written first; should we die before the transaction,
   * the next instance's first operation (fullSync) programs what the record says.
   */
  private async republish(state: TenantState, id: string, e: EndpointRecord, ports: PublishedPort[]): Promise<Endpoint> {
    await this.checkPorts(state, id, ports);
    const before = fwEndpoint(e);
    e.ports = ports;
    await saveState(this.stateDir, state);
    await this.ensureBase(state);
    await this.nft(publishedChangeScript(this.table, before, fwEndpoint(e)));
    this.log.info({ id, ports }, 'endpoint ports changed');
    return this.describe(state, id, e);
  }

  /** The kernel side of an endpoint: namespace and veth with address and route, or the tap. */
  private async buildEndpoint(state: TenantState, id: string, e: EndpointRecord): Promise<void> {
    const seg = this.segmentOf(state, e.tenant);
    const br = this.names.bridge(e.tenant);
    const mtu = (await this.underlayMtu(seg.spec.underlay)) - VXLAN_OVERHEAD;
    if (e.kind === 'tap') {
      await this.ensureTap(e.ifname); // a reserved tap may be open in its VM already: reused as it is
      await this.exec.run('ip', ['link', 'set', e.ifname, 'mtu', String(mtu), 'master', br, 'up']);
      await this.exec.run('ip', ['link', 'set', e.ifname, 'type', 'bridge_slave', 'hairpin', 'on']);
      return;
    }
    const ns = netnsName(id);
    await this.exec.run('ip', ['-batch', '-'], [
      `netns add ${ns}`,
      `link add ${e.ifname} mtu ${mtu} type veth peer name eth0 mtu ${mtu} address ${e.mac} netns ${ns}`,
      `link set ${e.ifname} master ${br} up`,
      // A workload reaching its own service address: with br_netfilter, the DNATed frame is
      // bridged back out of the port it came in by, which a bridge port refuses unless hairpin.
      `link set ${e.ifname} type bridge_slave hairpin on`,
      '',
    ].join('\n'));
    const inside = ['link set lo up', 'link set eth0 up'];
    if (!e.dhcp) {
      inside.push(`addr add ${e.ip}/${parseSubnet(seg.spec.cidr).prefixLength} dev eth0`, `route add default via ${gatewayAddress(seg.spec)}`);
    }
    await this.exec.run('ip', ['-n', ns, '-batch', '-'], inside.join('\n') + '\n');
  }

  private async detachLocked(state: TenantState, id: string): Promise<void> {
    const reservation = state.reserved?.[id];
    if (reservation) {
      await this.exec.run('ip', ['link', 'del', reservation.ifname]).catch(ignoreMissing);
      delete state.reserved?.[id];
      await saveState(this.stateDir, state);
    }
    const e = state.endpoints[id];
    if (!e) return;
    const started = performance.now();
    // Deleting the host end removes a veth pair even while a process still holds the namespace.
    if (await this.linkInfo(e.ifname)) await this.exec.run('ip', ['link', 'del', e.ifname]).catch(ignoreMissing);
    const ns = netnsName(id);
    if (e.kind === 'netns' && existsSync(path.join(NETNS_DIR, ns))) await this.exec.run('ip', ['netns', 'del', ns]).catch(ignoreMissing);
    await this.ensureBase(state);
    await this.removeEndpointElements(e);
    delete state.endpoints[id];
    await saveState(this.stateDir, state);
    if (e.dhcp && state.segments[e.tenant]) await this.ensureDns(state, e.tenant);
    this.log.info({ id, ms: Math.round(performance.now() - started) }, 'endpoint detached');
  }

  private async removeEndpointElements(e: EndpointRecord): Promise<void> {
    try {
      await this.nft(endpointRemovalScript(this.table, fwEndpoint(e)));
    } catch {
      // An element changed under us (e.g. a published port now mapped elsewhere): delete each on its own.
      for (const line of endpointElements('delete', this.table, fwEndpoint(e))) await this.nft(line + '\n').catch(() => undefined);
    }
  }

  /**
   * Makes the persistent tap `ifname` (root-owned, single queue) unless it exists: `ip tuntap
   * add` refuses an existing one with EBUSY (it asks for IFF_TUN_EXCL), which is not "File
   * exists", so the link is looked up first. A reserved tap, or one a crash left, is reused as it
   * is (a running VM may hold it).
   */
  private async ensureTap(ifname: string): Promise<void> {
    const link = await this.linkInfo(ifname);
    if (link?.linkinfo?.info_kind === 'tun') return;
    if (link) await this.exec.run('ip', ['link', 'del', ifname]).catch(ignoreMissing); // ours by name, but not a tap
    await this.exec.run('ip', ['tuntap', 'add', 'dev', ifname, 'mode', 'tap']);
  }

  /** Whether the kernel still has every piece of a recorded endpoint. */
  private async isComplete(state: TenantState, id: string, e: EndpointRecord): Promise<boolean> {
    const link = await this.linkInfo(e.ifname);
    if (link?.master !== this.names.bridge(e.tenant)) return false;
    if (e.kind === 'tap') return true;
    if (!existsSync(path.join(NETNS_DIR, netnsName(id)))) return false;
    if (e.dhcp) return true;
    try {
      const out = await this.exec.run('ip', ['-n', netnsName(id), '-j', '-4', 'addr', 'show', 'dev', 'eth0']);
      return out.includes(`"${e.ip}"`) && state.segments[e.tenant] !== undefined;
    } catch {
      return false;
    }
  }

  /** Refuses host ports another endpoint publishes or a process in this namespace has bound. */
  private async checkPorts(state: TenantState, id: string, ports: readonly PublishedPort[]): Promise<void> {
    if (ports.length === 0) return;
    for (const p of ports) {
      for (const [other, e] of Object.entries(state.endpoints)) {
        if (other !== id && e.ports.some((q) => q.hostPort === p.hostPort && q.protocol === p.protocol)) {
          throw new NetworkError('CARAPACE_E_PORT_IN_USE', `host port ${p.hostPort}/${p.protocol} is already published by endpoint ${other}`, p);
        }
      }
    }
    const bound: BoundPorts = { tcp: new Set(), udp: new Set() };
    for (const f of PROC_NET_FILES) {
      const text = await this.exec.run('cat', [`/proc/net/${f.file}`]).catch(() => undefined); // absent: e.g. IPv6 disabled
      if (text !== undefined) addBoundPorts(bound, f.protocol, f.listenOnly, text);
    }
    for (const p of ports) {
      if (bound[p.protocol].has(p.hostPort)) throw new NetworkError('CARAPACE_E_PORT_IN_USE', `host port ${p.hostPort}/${p.protocol} is in use by a process on the host`, p);
    }
  }

  private async describe(state: TenantState, id: string, e: EndpointRecord): Promise<Endpoint> {
    const seg = this.segmentOf(state, e.tenant);
    const gw = gatewayAddress(seg.spec);
    const out: Endpoint = {
      mtu: (await this.underlayMtu(seg.spec.underlay)) - VXLAN_OVERHEAD,
      id,
      tenant: e.tenant,
      kind: e.kind,
      ip: e.ip,
      prefixLength: parseSubnet(seg.spec.cidr).prefixLength,
      gateway: gw,
      dns: gw,
      mac: e.mac,
      hostPorts: e.ports.map((p) => ({ ...p })),
    };
    if (e.kind === 'netns') out.netnsPath = path.join(NETNS_DIR, netnsName(id));
    else out.tap = e.ifname;
    return out;
  }

  // ---- kernel base, strays ---------------------------------------------------------------

  /**
   * The first operation of an instance makes the tables exactly what the records say
   * (fullSync): after an agent restart, a crash or an `nft flush ruleset`, this is the repair.
   */
  private async ensureBase(state: TenantState): Promise<void> {
    if (this.baseReady) return;
    await this.exec.run('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
    await this.fullSync(state);
    this.baseReady = true;
  }

  private async fullSync(state: TenantState): Promise<void> {
    const want: FwState = {
      segments: Object.entries(state.segments).map(([t, rec]) => ({ ...this.fwSegment(t, rec), services: rec.services })),
      endpoints: Object.values(state.endpoints).map(fwEndpoint),
      infrastructure: state.infrastructure,
    };
    await this.nft(fullSyncScript(this.table, want, await this.present()));
  }

  /** Chain and counter names of our inet table as the kernel has them now. */
  private async present(): Promise<FwPresent> {
    const list = async (what: string[]): Promise<{ nftables: Record<string, { name?: string; table?: string; family?: string }>[] }> => {
      try {
        return JSON.parse(await this.exec.run('nft', ['-j', 'list', ...what])) as { nftables: Record<string, { name?: string; table?: string }>[] }; // safe: `nft -j list` prints {nftables: [...objects]}
      } catch {
        return { nftables: [] }; // no table yet
      }
    };
    const names = (json: Awaited<ReturnType<typeof list>>, kind: string): string[] =>
      json.nftables.map((o) => o[kind]).filter((c) => c?.table === this.table && c.name !== undefined).map((c) => c?.name as string); // safe: filtered on name defined
    return {
      chains: names(await list(['chains', 'inet']), 'chain'),
      counters: names(await list(['counters', 'table', 'inet', this.table]), 'counter'),
    };
  }

  /** Removes links of ours no record explains and dnsmasq directories of segments no record has, then syncs the tables. */
  private async removeStrays(state: TenantState): Promise<void> {
    const explained = new Set<string>([...Object.values(state.endpoints).map((e) => e.ifname), ...Object.values(state.reserved ?? {}).map((r) => r.ifname)]);
    for (const [t, rec] of Object.entries(state.segments)) {
      explained.add(this.names.bridge(t));
      if (overlayWanted(rec)) explained.add(this.names.vxlan(t));
    }
    const links = JSON.parse(await this.exec.run('ip', ['-j', 'link', 'show'])) as LinkJson[]; // safe: `ip -j link` prints an array of link objects
    for (const l of links) {
      if (this.names.isOurLink(l.ifname) && !explained.has(l.ifname)) {
        this.log.warn({ ifname: l.ifname }, 'removing stray link');
        await this.exec.run('ip', ['link', 'del', l.ifname]).catch(ignoreMissing);
      }
    }
    const recorded = new Set(Object.keys(state.segments).map(tenantHash));
    let dirs: string[] = [];
    try {
      dirs = await fs.readdir(this.runDir);
    } catch {
      // no run directory yet
    }
    for (const d of dirs) {
      if (/^[0-9a-f]{8}$/.test(d) && !recorded.has(d)) {
        this.log.warn({ dir: d }, 'removing stray dnsmasq');
        await stopDnsmasq(this.dnsFiles(d).pidFile);
        await fs.rm(path.join(this.runDir, d), { recursive: true, force: true });
      }
    }
    await this.fullSync(state);
  }

  // ---- small helpers ---------------------------------------------------------------------

  private nft(script: string): Promise<string> {
    return this.exec.run('nft', ['-f', '-'], script);
  }

  private async linkInfo(name: string): Promise<LinkJson | undefined> {
    try {
      return (JSON.parse(await this.exec.run('ip', ['-j', '-d', 'link', 'show', 'dev', name])) as LinkJson[])[0]; // safe: `ip -j link` prints an array of link objects
    } catch {
      return undefined;
    }
  }

  /** The underlay's MTU: the option, the device holding the underlay address, the default route's device, or 1500. */
  private async underlayMtu(underlay: string | undefined): Promise<number> {
    if (this.o.mtu !== undefined) return this.o.mtu;
    try {
      const addrs = JSON.parse(await this.exec.run('ip', ['-j', '-4', 'addr', 'show'])) as { ifname: string; mtu?: number; addr_info?: { local?: string }[] }[]; // safe: `ip -j addr` prints an array of links with their addresses
      const byAddr = underlay === undefined ? undefined : addrs.find((l) => l.addr_info?.some((a) => a.local === underlay));
      if (byAddr?.mtu !== undefined) return byAddr.mtu;
      const routes = JSON.parse(await this.exec.run('ip', ['-j', '-4', 'route', 'show', 'default'])) as { dev?: string }[]; // safe: `ip -j route` prints an array of route objects
      const dev = addrs.find((l) => l.ifname === routes[0]?.dev);
      if (dev?.mtu !== undefined) return dev.mtu;
    } catch {
      // fall through to Ethernet's
    }
    return 1500;
  }

  /**
   * Runs `fn` with the state loaded, this instance's operations serialised and the state
   * directory's flock held (src/proc/file-lock.ts): the kernel releases it when its holder dies,
   * so an agent killed with -9 at any moment never leaves it stuck.
   */
  private exclusive<T>(fn: (state: TenantState) => Promise<T>): Promise<T> {
    const next = this.queue.then(async () => {
      await fs.mkdir(this.stateDir, { recursive: true });
      const lock = await acquireFileLock(this.lockFile, { timeoutMs: LOCK_TIMEOUT_MS }).catch((e: unknown) => {
        throw e instanceof FileLockTimeoutError ? new NetworkError('CARAPACE_E_NETWORK_FAILED', e.message) : e;
      });
      try {
        return await fn(await loadState(this.stateDir, this.names.prefix));
      } finally {
        await lock.release();
      }
    });
    this.queue = next.catch(() => undefined);
    return next;
  }
}

/**
 * The MAC of a reserved tap's VM, before it has an address: locally administered, from the
 * endpoint id (a collision only matters on one segment, where addresses' MACs are 02:ca:…).
 */
function reservedMac(id: string): string {
  const h = createHash('sha256').update(id).digest();
  return ['02', 'cb', ...[...h.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** The segment's gateway: the first host address of the host's block. */
function gatewayAddress(spec: SegmentSpec): string {
  return intToIp(gatewayOf(parseSubnet(spec.block)));
}

function fwEndpoint(e: EndpointRecord): FwEndpoint {
  return { ifname: e.ifname, mac: e.mac, ip: e.ip, dhcp: e.dhcp, ports: e.ports };
}

/** Whether a recorded endpoint is the link the request asks for (published ports aside). */
function sameEndpoint(e: EndpointRecord, req: EndpointRequest, dhcp: boolean): boolean {
  return e.tenant === req.tenant && e.kind === req.kind && e.dhcp === dhcp;
}

function samePorts(a: readonly PublishedPort[], b: readonly PublishedPort[]): boolean {
  const norm = (ps: readonly PublishedPort[]): string => ps.map((p) => `${p.protocol}/${p.hostPort}/${p.containerPort}`).sort().join(',');
  return norm(a) === norm(b);
}

/** Writes a world-readable file (dnsmasq reads it as `nobody`) when its content differs; true when written. */
async function writeIfChanged(file: string, text: string): Promise<boolean> {
  if ((await readFileIfExists(file)) === text) return false;
  await writeFileAtomic(file, text, 0o644);
  return true;
}

/** A segment needs its VXLAN device when it has an underlay address and other hosts to reach. */
function overlayWanted(rec: SegmentRecord): boolean {
  return rec.spec.underlay !== undefined && rec.peers.length > 0;
}
