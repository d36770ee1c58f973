#!/usr/bin/env node
/**
 * `carapace`: the command-line front end. Every command talks to the API server (from
 * --server, CARAPACE_SERVER or the config file), except `up`, `server` and `agent`, which run
 * Carapace itself (the all-in-one, the control plane, a host's agent).
 * Errors are one line on stderr (`error CODE: message`, plus field paths) and exit 1.
 */
import { CarapaceError } from '../model/errors.js';
import { Argument, Command, Option } from 'commander';
import { KIND_ALIASES, kindFromWord, KINDS, type AnyObject, type Instance, type Kind } from '../model/objects.js';
import { parseIpv4 } from '../model/netaddr.js';
import { formatMemory } from '../model/quantity.js';
import { defaultSnapshotName, type VolumeSnapshot } from '../model/volume-snapshots.js';
import { MIN_VOLUME_MIB, type Volume } from '../model/volumes.js';
import { applyAll, readManifests, waitFor, manifestPath } from './apply.js';
import { ApiClient, CliError } from './client.js';
import { bashCompletion, completionSpec, zshCompletion } from './completion.js';
import { formatDescribe, formatOutput, OUTPUT_FORMATS, table } from './format.js';
import { watchObjects } from './watch.js';
import { versionInfo, type VersionInfo } from '../model/version.js';
import { DURATION_EXAMPLES, DURATION_FORMS, durationMs, timeArg } from './time.js';
import type { LogLine } from '../runtime/driver.js';
import type { RolloutReport } from '../model/rollout.js';
import type { StoreFlags } from '../server/run.js';

const program = new Command();
program
  .name('carapace')
  .description('Containers and VMs under one control plane.')
  .option('-s, --server <url>', 'API server address (default: $CARAPACE_SERVER, the config file, or http://127.0.0.1:7070)')
  .option('--token <token>', 'API token (default: $CARAPACE_TOKEN, or the config file written by `carapace up`)')
  .option('--ca-file <file>', "the CA (PEM) an https server's certificate must chain to (default: $CARAPACE_CA_FILE, or the CA pinned in the config file by `carapace up`, `carapace server` or `carapace login`)")
  // Commander's own refusals (unknown command or option, missing argument, a value outside
  // the choices) carry a stable code like every other error; set before the commands are
  // added, which copy it.
  .configureOutput({ outputError: (text, write) => write(text.replace(/^error: /, 'error CARAPACE_E_USAGE: ')) })
  .showHelpAfterError();

function client(): ApiClient {
  const o = program.opts<{ server?: string; token?: string; caFile?: string }>();
  return new ApiClient(o.server, o.token, o.caFile);
}

/** The kinds as `get --help` lists them: plural, other words for it, and how names are given. Read from the model's KINDS. */
function kindsHelp(): string {
  const rows = (Object.keys(KINDS) as Kind[]).map((k) => { // KINDS' keys are exactly the kinds
    const { plural, scoped } = KINDS[k];
    const aliases = Object.entries(KIND_ALIASES).filter(([, kind]) => kind === k).map(([w]) => w);
    return [`  ${plural}`, [k.toLowerCase(), ...aliases].join(', '), scoped ? 'per tenant: TENANT/NAME, or NAME with -t' : 'cluster-wide: NAME'];
  });
  return `\nKinds:\n${table(['  KIND', 'ALSO', 'NAMES'], rows)}\n\nAn object may also be named KIND/[TENANT/]NAME, as \`-o name\` prints it (\`get service/acme/web\`).`;
}

/**
 * A command's KIND and NAME arguments, also given as one `KIND/[TENANT/]NAME` word (what
 * `-o name` prints) when no NAME follows.
 */
function splitRef(word: string, name: string | undefined): { word: string; name: string | undefined } {
  const slash = word.indexOf('/');
  if (slash < 0) return { word, name };
  if (name !== undefined) {
    throw new CliError('CARAPACE_E_USAGE', `give KIND NAME or KIND/NAME, not both ("${word}" and "${name}")`, [{ path: 'name', message: 'not allowed after KIND/NAME' }]);
  }
  const rest = word.slice(slash + 1);
  if (rest === '') throw new CliError('CARAPACE_E_USAGE', `"${word}" names no object: write KIND/[TENANT/]NAME`, [{ path: 'kind', message: 'no name after the slash' }]);
  return { word: word.slice(0, slash), name: rest };
}

function parseKind(word: string): Kind {
  const k = kindFromWord(word);
  if (!k) throw new CliError('CARAPACE_E_UNKNOWN_KIND', `unknown kind "${word}" (known: ${Object.values(KINDS).map((k) => k.plural).join(', ')})`, [{ path: 'kind', message: 'not a kind: `carapace get --help` lists them' }]);
  return k;
}

/** Splits `tenant/name` or uses --tenant for tenant-scoped kinds. */
function resolveName(kind: Kind, name: string, tenant: string | undefined): { tenant?: string; name: string } {
  if (!KINDS[kind].scoped) return { name };
  const slash = name.indexOf('/');
  if (slash > 0) return { tenant: name.slice(0, slash), name: name.slice(slash + 1) };
  if (!tenant) throw new CliError('CARAPACE_E_BAD_QUERY', `${kind.toLowerCase()} names are per tenant: write TENANT/${name} or pass --tenant`);
  return { tenant, name };
}

function itemPath(kind: Kind, n: { tenant?: string; name: string }): string {
  const plural = KINDS[kind].plural;
  return n.tenant !== undefined ? `/v1/tenants/${n.tenant}/${plural}/${n.name}` : `/v1/${plural}/${n.name}`;
}

/** The store flags of `server` and `agent` as commander gives them. */
interface StoreFlagOptions {
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  insecureStore?: boolean;
}

/** The store flags given, for `openStoreUrl` (which checks them against the URL). */
function storeFlags(o: StoreFlagOptions): StoreFlags {
  return { ...(o.etcdCa !== undefined ? { etcdCa: o.etcdCa } : {}), ...(o.etcdCert !== undefined ? { etcdCert: o.etcdCert } : {}), ...(o.etcdKey !== undefined ? { etcdKey: o.etcdKey } : {}), ...(o.insecureStore ? { insecureStore: true } : {}) };
}

/** The store flags given, by their names on the command line. */
function storeFlagsGiven(o: StoreFlagOptions): string[] {
  const given: [string, unknown][] = [['--etcd-ca', o.etcdCa], ['--etcd-cert', o.etcdCert], ['--etcd-key', o.etcdKey], ['--insecure-store', o.insecureStore]];
  return given.filter(([, v]) => v !== undefined && v !== false).map(([flag]) => flag);
}

/** Refuses an `--advertise-address` that is not an IPv4 address, before anything starts. */
function checkAdvertiseAddress(a: string | undefined): void {
  if (a !== undefined && parseIpv4(a) === undefined) {
    throw new CliError('CARAPACE_E_BAD_QUERY', `--advertise-address must be an IPv4 address such as 192.0.2.10, got "${a}"`, [{ path: '--advertise-address', message: 'not an IPv4 address' }]);
  }
}

program
  .command('up')
  .description('Run an all-in-one Carapace (API server, host agent, embedded SQLite store) in the foreground')
  .option('--state-dir <dir>', 'where state, images and containers live', '/var/lib/carapace')
  .option('--port <n>', 'API port', '7070')
  .option('--listen <addr>', 'API listen address', '127.0.0.1')
  .option('--host-name <name>', 'name of this host (default: the machine hostname)')
  .option('-f, --apply <file...>', 'apply these manifest files once the server is up')
  .option('--warm-cells <n>', 'pre-booted, unassigned cells to keep on this host', '0')
  .option('--cpu-overcommit <ratio>', 'cpu requests this host accepts per core (vCPUs are time-shared)', '4')
  .option('--machine-images <dir>', 'where machine kernels, initrds and disks are looked up (default STATE_DIR/machine-images)')
  .option('--net-prefix <p>', 'prefix of the kernel network objects (bridges, taps, nft tables) of this host, [a-z][a-z0-9]{0,3} (default c; two on one machine need two)')
  .option('--advertise-address <ipv4>', "this host's underlay address, where other hosts reach it (default: the source address of the default route)")
  .addOption(new Option('--accel <mode>', 'VM acceleration (auto: a timed probe boot decides)').choices(['auto', 'kvm', 'tcg']).default('auto'))
  .option('--keyring <file>', 'the cluster keyring (keyId:base64key lines, mode 0600; or its text in CARAPACE_KEYRING); default STATE_DIR/keyring, made on first start')
  .option('--audit-copy <file...>', 'also append every audit checkpoint to FILE, kept off the store; check with carapace audit verify --against FILE')
  .action(async (o: { keyring?: string; stateDir: string; port: string; listen: string; hostName?: string; apply?: string[]; warmCells: string; accel: 'auto' | 'kvm' | 'tcg'; machineImages?: string; cpuOvercommit: string; netPrefix?: string; advertiseAddress?: string; auditCopy?: string[] }) => {
    const { runAllInOne } = await import('../allinone/allinone.js');
    const port = Number(o.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CliError('CARAPACE_E_BAD_QUERY', `--port must be a port number, got "${o.port}"`);
    const warmCells = Number(o.warmCells);
    if (!Number.isInteger(warmCells) || warmCells < 0 || warmCells > 64) throw new CliError('CARAPACE_E_BAD_QUERY', `--warm-cells must be a whole number from 0 to 64, got "${o.warmCells}"`);
    const cpuOvercommit = Number(o.cpuOvercommit);
    if (!Number.isFinite(cpuOvercommit) || cpuOvercommit < 1 || cpuOvercommit > 64) throw new CliError('CARAPACE_E_BAD_QUERY', `--cpu-overcommit must be a number from 1 to 64, got "${o.cpuOvercommit}"`);
    checkAdvertiseAddress(o.advertiseAddress);
    // Read and validated before anything starts: a bad file is refused, not found after boot.
    const apply = o.apply ? await readManifests(o.apply) : [];
    await runAllInOne({
      cpuOvercommit, stateDir: o.stateDir, port, listen: o.listen, ...(o.hostName ? { hostName: o.hostName } : {}), apply, warmCells, accel: o.accel, ...(o.machineImages ? { machineImagesDir: o.machineImages } : {}),
      ...(o.netPrefix ? { netPrefix: o.netPrefix } : {}),
      ...(o.keyring !== undefined ? { keyring: o.keyring } : {}),
      ...(o.advertiseAddress ? { advertiseAddress: o.advertiseAddress } : {}),
      ...(o.auditCopy ? { auditCopies: o.auditCopy } : {}) });
  });

program
  .command('server')
  .description('Run the control plane (API, controller, host monitor) without a host agent; agents join through its agent API')
  .option('--store <url>', 'sqlite:PATH (default STATE_DIR/store.db), etcds://HOST:PORT[,HOST:PORT...] (etcd over TLS with client certificates) or etcd://HOST:PORT[,...] (plain: loopback, or with --insecure-store)')
  .option('--etcd-ca <file>', 'with etcds://: the CA certificate (PEM) that signed the etcd members\' certificates')
  .option('--etcd-cert <file>', 'with etcds://: this server\'s etcd client certificate (PEM, clientAuth)')
  .option('--etcd-key <file>', 'with etcds://: its private key (PEM, mode 0600)')
  .option('--insecure-store', 'accept a plain etcd:// on a non-loopback address (anyone who reaches it can read and change the whole store)')
  .option('--state-dir <dir>', 'audit keys and the admin token live here', '/var/lib/carapace-server')
  .option('--port <n>', 'API port', '7070')
  .option('--listen <addr>', 'API listen address', '127.0.0.1')
  .option('--agent-port <n>', 'agent API port (HTTPS with client certificates; 0 picks one; off with --no-agent-api)', '7443')
  .option('--no-agent-api', 'do not serve the agent API')
  .option('--agent-listen <addr>', 'agent API listen address', '0.0.0.0')
  .option('--advertise <addr...>', 'addresses clients and agents use to reach this server (added to its certificates)')
  .option('--tls-cert <file>', "the API's certificate chain (PEM, leaf first) instead of one from the cluster CA; with --tls-key")
  .option('--tls-key <file>', "the API certificate's private key (PEM, mode 0600); with --tls-cert")
  .option('--keyring <file>', 'the cluster keyring (same file on every server of the store): one keyId:base64key per line, the first the primary, mode 0600; it seals the CA key, audit signing keys and secrets. Or its text in CARAPACE_KEYRING. Default: STATE_DIR/keyring, made on first start')
  .option('--secrets-keyring <file>', 'older name of --keyring')
  .option('--audit-copy <file...>', 'also append every audit checkpoint this server signs to FILE, kept off the store (append-only storage, another machine); check with carapace audit verify --against FILE')
  .action(async (o: { store?: string; stateDir: string; port: string; listen: string; agentPort: string; agentApi: boolean; agentListen: string; advertise?: string[]; keyring?: string; secretsKeyring?: string; auditCopy?: string[]; tlsCert?: string; tlsKey?: string } & StoreFlagOptions) => {
    const { runServer } = await import('../server/run.js');
    const port = Number(o.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CliError('CARAPACE_E_BAD_QUERY', `--port must be a port number, got "${o.port}"`);
    const agentPort = Number(o.agentPort);
    if (!Number.isInteger(agentPort) || agentPort < 0 || agentPort > 65535) throw new CliError('CARAPACE_E_BAD_QUERY', `--agent-port must be a port number, got "${o.agentPort}"`);
    if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) {
      const missing = o.tlsCert === undefined ? '--tls-cert' : '--tls-key';
      throw new CliError('CARAPACE_E_USAGE', '--tls-cert and --tls-key go together: give both, or neither for a certificate from the cluster CA', [{ path: missing, message: 'missing' }]);
    }
    await runServer({
      stateDir: o.stateDir,
      port,
      listen: o.listen,
      ...(o.store ? { store: o.store } : {}),
      storeFlags: storeFlags(o),
      ...(o.agentApi ? { agentApi: { port: agentPort, listen: o.agentListen, ...(o.advertise ? { advertise: o.advertise } : {}) } } : {}),
      ...(o.keyring !== undefined ? { keyring: o.keyring } : {}),
      ...(o.secretsKeyring !== undefined ? { secretsKeyring: o.secretsKeyring } : {}),
      ...(o.auditCopy ? { auditCopies: o.auditCopy } : {}),
      ...(o.tlsCert !== undefined && o.tlsKey !== undefined ? { tlsCert: o.tlsCert, tlsKey: o.tlsKey } : {}),
      ...(o.advertise ? { advertise: o.advertise } : {}),
    });
  });

program
  .command('agent')
  .description("Run this host's agent (containers, cells, machines) against the cluster's store")
  .option('--join <url>', "a server's agent API, https://HOST:PORT (mutual TLS; the normal way)")
  .option('--join-token <token>', 'join token (carapace join-token create); needed only the first time')
  .option('--store <url>', 'or reach the store directly: etcds://HOST:PORT[,HOST:PORT...] with --etcd-ca/--etcd-cert/--etcd-key, or plain etcd://HOST:PORT[,...] (loopback, or with --insecure-store)')
  .option('--etcd-ca <file>', 'with --store etcds://: the CA certificate (PEM) that signed the etcd members\' certificates')
  .option('--etcd-cert <file>', 'with --store etcds://: this agent\'s etcd client certificate (PEM, clientAuth)')
  .option('--etcd-key <file>', 'with --store etcds://: its private key (PEM, mode 0600)')
  .option('--insecure-store', 'with --store: accept a plain etcd:// on a non-loopback address')
  .option('--keyring <file>', "with --store: the servers' keyring, to decrypt the Secrets of this host's instances (a joined agent gets them from its server)")
  .option('--secrets-keyring <file>', 'older name of --keyring')
  .option('--state-dir <dir>', 'where containers, images and VMs of this host live', '/var/lib/carapace')
  .option('--host-name <name>', 'name of this host (default: the machine hostname)')
  .option('--label <key=value...>', 'host labels, e.g. zone=a')
  .option('--net-prefix <p>', 'prefix of the kernel network objects (bridges, taps, nft tables) of this host, [a-z][a-z0-9]{0,3} (default c; two agents in one network namespace need two)')
  .option('--advertise-address <ipv4>', "this host's underlay address, where other hosts reach it (default: the source address of the default route)")
  .option('--insecure-registry <host:port...>', 'registries reached over plain HTTP besides loopback ones')
  .option('--warm-cells <n>', 'pre-booted, unassigned cells to keep on this host', '0')
  .option('--cpu-overcommit <ratio>', 'cpu requests this host accepts per core', '4')
  .addOption(new Option('--accel <mode>', 'VM acceleration').choices(['auto', 'kvm', 'tcg']).default('auto'))
  .action(async (o: { insecureRegistry?: string[]; store?: string; keyring?: string; secretsKeyring?: string; join?: string; joinToken?: string; stateDir: string; hostName?: string; label?: string[]; netPrefix?: string; warmCells: string; cpuOvercommit: string; accel: 'auto' | 'kvm' | 'tcg'; advertiseAddress?: string } & StoreFlagOptions) => {
    const { runAgent } = await import('../server/run.js');
    const warmCells = Number(o.warmCells);
    if (!Number.isInteger(warmCells) || warmCells < 0 || warmCells > 64) throw new CliError('CARAPACE_E_BAD_QUERY', `--warm-cells must be a whole number from 0 to 64, got "${o.warmCells}"`);
    const cpuOvercommit = Number(o.cpuOvercommit);
    if (!Number.isFinite(cpuOvercommit) || cpuOvercommit < 1 || cpuOvercommit > 64) throw new CliError('CARAPACE_E_BAD_QUERY', `--cpu-overcommit must be a number from 1 to 64, got "${o.cpuOvercommit}"`);
    checkAdvertiseAddress(o.advertiseAddress);
    if (o.keyring !== undefined && o.secretsKeyring !== undefined) throw new CliError('CARAPACE_E_BAD_KEYRING', 'give the keyring once: --keyring and --secrets-keyring are both set', [{ path: '--secrets-keyring', message: 'with --keyring' }]);
    const keyringFlag = o.keyring !== undefined ? '--keyring' : '--secrets-keyring';
    const keyringFile = o.keyring ?? o.secretsKeyring;
    if (keyringFile !== undefined && !o.store) throw new CliError('CARAPACE_E_BAD_QUERY', `${keyringFlag} is for an agent on the store (--store); a joined agent gets secret values from its server`, [{ path: keyringFlag, message: 'needs --store' }]);
    const flagsWithoutStore = storeFlagsGiven(o);
    if (flagsWithoutStore.length > 0 && !o.store) {
      throw new CliError('CARAPACE_E_STORE_FLAGS', `${flagsWithoutStore.join(', ')} ${flagsWithoutStore.length > 1 ? 'are' : 'is'} for an agent on the store (--store); a joined agent reaches no store`, flagsWithoutStore.map((path) => ({ path, message: 'needs --store' })));
    }
    const labels: Record<string, string> = {};
    for (const l of o.label ?? []) {
      const m = /^([a-z0-9][a-z0-9._/-]{0,62})=([A-Za-z0-9._-]{0,63})$/.exec(l);
      if (!m) throw new CliError('CARAPACE_E_BAD_QUERY', `--label must be key=value, got "${l}"`, [{ path: '--label', message: `"${l}" is not key=value` }]);
      labels[m[1] as string] = m[2] as string; // both groups always match
    }
    await runAgent({
      ...(o.store ? { store: o.store, storeFlags: storeFlags(o) } : {}),
      ...(keyringFile !== undefined ? { keyring: { file: keyringFile, flag: keyringFlag } } : {}),
      ...(o.join ? { join: o.join } : {}),
      ...(o.joinToken ? { token: o.joinToken } : {}),
      stateDir: o.stateDir,
      warmCells,
      cpuOvercommit,
      accel: o.accel,
      labels,
      ...(o.hostName ? { hostName: o.hostName } : {}),
      ...(o.netPrefix ? { netPrefix: o.netPrefix } : {}),
      ...(o.insecureRegistry ? { insecureRegistries: o.insecureRegistry } : {}),
      ...(o.advertiseAddress ? { advertiseAddress: o.advertiseAddress } : {}),
    });
  });

program
  .command('apply')
  .description('Create or update objects from manifest files (multi-document YAML)')
  .requiredOption('-f, --filename <file...>', 'manifest files ("-" for stdin)')
  .option('-w, --wait', 'wait until everything applied is running or has failed, showing progress')
  .option('--timeout <duration>', `how long --wait waits (${DURATION_FORMS})`, '300')
  .action(async (o: { filename: string[]; wait?: boolean; timeout: string }) => {
    const timeoutMs = durationMs(o.timeout, '--timeout');
    const manifests = await readManifests(o.filename);
    const c = client();
    const applied = await applyAll(c, manifests, (s) => console.log(s));
    if (o.wait) {
      const ok = await waitFor(c, applied, timeoutMs, process.stdout);
      if (!ok) process.exitCode = 1;
    }
  });

program
  .command('get')
  .description(`List objects, or read one: ${Object.values(KINDS).map((k) => k.plural).join(', ')}`)
  .argument('<kind>', 'kind to list (below), or KIND/[TENANT/]NAME')
  .argument('[name]', 'one object (TENANT/NAME for per-tenant kinds)')
  .option('-t, --tenant <tenant>', 'only this tenant')
  .addOption(new Option('-o, --output <format>', 'output format (wide: the table with addresses and where things run; name: KIND/[TENANT/]NAME lines)').choices(OUTPUT_FORMATS).default('table'))
  .option('-w, --watch', 'after the list, print a line per change as it happens (tables: an EVENT column), until Ctrl-C')
  .addHelpText('after', kindsHelp())
  .action(async (kindArg: string, nameArg: string | undefined, o: { tenant?: string; output: (typeof OUTPUT_FORMATS)[number]; watch?: boolean }) => {
    const { word, name } = splitRef(kindArg, nameArg);
    const kind = parseKind(word);
    const c = client();
    const print = (text: string): void => {
      if (text !== '') console.log(text); // -o name of nothing prints nothing, not an empty line
    };
    if (o.watch) {
      const scope = name ? resolveName(kind, name, o.tenant) : o.tenant !== undefined ? { tenant: o.tenant } : {};
      // Ctrl-C (or a TERM) ends the watch: a normal end, exit 0.
      const ac = new AbortController();
      const stop = (): void => ac.abort();
      process.once('SIGINT', stop).once('SIGTERM', stop);
      try {
        await watchObjects(c, kind, scope, o.output, (line) => console.log(line), ac.signal);
      } finally {
        process.off('SIGINT', stop).off('SIGTERM', stop);
      }
      return;
    }
    if (name) {
      const obj = await c.call<AnyObject>('GET', itemPath(kind, resolveName(kind, name, o.tenant)));
      print(formatOutput(kind, [obj], o.output, true));
      return;
    }
    const plural = KINDS[kind].plural;
    const path = KINDS[kind].scoped && o.tenant ? `/v1/tenants/${o.tenant}/${plural}` : `/v1/${plural}`;
    const list = await c.call<{ items: AnyObject[] }>('GET', path);
    print(formatOutput(kind, list.items, o.output, false));
  });

program
  .command('describe')
  .description('Show one object in detail, with its instances and their status')
  .argument('<kind>', 'the kind (as `get --help` lists them), or KIND/[TENANT/]NAME')
  .argument('[name]', 'NAME, or TENANT/NAME for per-tenant kinds')
  .option('-t, --tenant <tenant>')
  .action(async (kindArg: string, nameArg: string | undefined, o: { tenant?: string }) => {
    const { word, name } = splitRef(kindArg, nameArg);
    if (name === undefined) throw new CliError('CARAPACE_E_USAGE', 'describe needs KIND NAME (or KIND/NAME)', [{ path: 'name', message: 'missing' }]);
    const kind = parseKind(word);
    const n = resolveName(kind, name, o.tenant);
    const c = client();
    const obj = await c.call<AnyObject>('GET', itemPath(kind, n));
    let instances: Instance[] = [];
    if (kind === 'Service' || kind === 'Job') {
      const list = await c.call<{ items: Instance[] }>('GET', `/v1/tenants/${n.tenant ?? ''}/instances`);
      instances = list.items.filter((i) => i.spec.owner.kind === kind && i.spec.owner.name === n.name);
    } else if (kind === 'Cell') {
      const list = await c.call<{ items: Instance[] }>('GET', '/v1/instances');
      instances = list.items.filter((i) => i.spec.cell === n.name);
    } else if (kind === 'Host') {
      const list = await c.call<{ items: Instance[] }>('GET', '/v1/instances');
      instances = list.items.filter((i) => i.spec.host === n.name);
    }
    console.log(formatDescribe(obj, instances));
  });

program
  .command('delete')
  .description('Delete an object (KIND NAME), or everything in manifest files (-f)')
  .argument('[kind]', 'the kind (as `get --help` lists them), or KIND/[TENANT/]NAME')
  .argument('[name]', 'NAME, or TENANT/NAME for per-tenant kinds')
  .option('-t, --tenant <tenant>')
  .option('-f, --filename <file...>', 'delete the objects these manifests describe')
  .action(async (kindArg: string | undefined, nameArg: string | undefined, o: { tenant?: string; filename?: string[] }) => {
    const { word, name } = kindArg !== undefined ? splitRef(kindArg, nameArg) : { word: undefined, name: nameArg };
    const c = client();
    if (o.filename) {
      const manifests = (await readManifests(o.filename)).sort((a, b) => (a.kind === 'Tenant' ? 1 : 0) - (b.kind === 'Tenant' ? 1 : 0));
      for (const m of manifests) {
        try {
          await c.call('DELETE', manifestPath(m));
          console.log(`${m.kind.toLowerCase()}/${'tenant' in m.metadata ? `${m.metadata.tenant}/` : ''}${m.metadata.name} deleted`);
        } catch (e) {
          if (e instanceof CliError && e.code === 'CARAPACE_E_NOT_FOUND') console.log(`${m.kind.toLowerCase()}/${m.metadata.name} not found`);
          else throw e;
        }
      }
      return;
    }
    if (!word || !name) throw new CliError('CARAPACE_E_USAGE', 'delete needs KIND NAME (or KIND/NAME), or -f FILE');
    const kind = parseKind(word);
    const n = resolveName(kind, name, o.tenant);
    await c.call('DELETE', itemPath(kind, n));
    console.log(`${kind.toLowerCase()}/${n.tenant ? `${n.tenant}/` : ''}${n.name} deleted`);
  });

program
  .command('version')
  .description("Show this client's version, and the server's with the API version it serves (exit 1 when the server cannot be asked)")
  .option('--client', 'only the client version (no server needed)')
  .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
  .action(async (o: { client?: boolean; output: 'text' | 'json' }) => {
    const mine = versionInfo();
    let server: VersionInfo | undefined;
    let failure: unknown;
    if (!o.client) {
      try {
        server = await client().call<VersionInfo>('GET', '/v1/version');
      } catch (e) {
        failure = e;
      }
    }
    if (o.output === 'json') {
      console.log(JSON.stringify({ clientVersion: mine, ...(server ? { serverVersion: server } : {}) }, null, 2));
    } else {
      console.log(`Client Version: ${mine.version}`);
      if (server) {
        console.log(`Server Version: ${server.version}`);
        console.log(`API Version: ${server.apiVersion}${server.apiVersion !== mine.apiVersion ? ` (this client speaks ${mine.apiVersion})` : ''}`);
      } else if (o.client) console.log(`API Version: ${mine.apiVersion}`);
    }
    if (server && server.apiVersion !== mine.apiVersion) console.error(`warning: the server serves ${server.apiVersion}, this client speaks ${mine.apiVersion}: use a client of the server's release`);
    // As kubectl: the client's side is printed, then why the server's is missing, exit 1.
    if (failure !== undefined) throw failure;
  });

program
  .command('login')
  .description('Pin an https server\'s CA (by the fingerprint `carapace server` printed, or --ca-file) and save it with the server and token in the config file')
  .argument('<server>', 'the API address, https://HOST:PORT (https:// is assumed when no scheme is given)')
  .option('--ca-fingerprint <sha256>', "the CA's sha256 fingerprint as `carapace server` printed it (hex; colons and upper case accepted)")
  .action(async (server: string, o: { caFingerprint?: string }) => {
    const { login } = await import('./login.js');
    const g = program.opts<{ token?: string; caFile?: string }>();
    const caFile = g.caFile ?? process.env['CARAPACE_CA_FILE'];
    const token = g.token ?? process.env['CARAPACE_TOKEN'];
    const r = await login({
      server,
      ...(o.caFingerprint !== undefined ? { caFingerprint: o.caFingerprint } : {}),
      ...(caFile !== undefined && caFile !== '' ? { caFile: { file: caFile, source: g.caFile !== undefined ? '--ca-file' : 'CARAPACE_CA_FILE' } } : {}),
      ...(token !== undefined ? { token } : {}),
    });
    const who = r.who ? ` as ${r.who.name} (${r.who.role}${r.who.tenant !== undefined ? ` of ${r.who.tenant}` : ''})` : ' (no token: give --token to save one)';
    console.log(`Logged in to ${r.server}${who}; ${r.caFingerprint !== undefined ? `CA sha256 ${r.caFingerprint} pinned` : 'plain HTTP, nothing pinned'}; saved to ${r.path}`);
  });

program
  .command('completion')
  .description('Print a shell completion script (commands, flags, kinds, and object names from the server): source <(carapace completion bash)')
  .addArgument(new Argument('<shell>', 'bash or zsh').choices(['bash', 'zsh']))
  .addHelpText('after', '\nbash: add `source <(carapace completion bash)` to ~/.bashrc\nzsh:  add `source <(carapace completion zsh)` to ~/.zshrc')
  .action((shell: 'bash' | 'zsh') => {
    const spec = completionSpec(program, Object.values(KINDS).map((k) => k.plural));
    process.stdout.write(shell === 'bash' ? bashCompletion(spec) : zshCompletion(spec));
  });

program
  .command('logs')
  .description("Show an instance's container output (stdout and stderr)")
  .argument('<instance>', 'TENANT/INSTANCE (or machine/TENANT/NAME for a machine console), or INSTANCE with --tenant')
  .option('-t, --tenant <tenant>')
  .option('-f, --follow', 'keep streaming new output')
  .option('--tail <n>', 'only the last N lines')
  .option('--timestamps', 'prefix each line with its time')
  .action(async (name: string, o: { tenant?: string; follow?: boolean; tail?: string; timestamps?: boolean }) => {
    const machine = /^machines?\//.test(name);
    const kind = machine ? 'Machine' : 'Instance';
    const n = resolveName(kind, name.replace(/^(instances?|machines?)\//, ''), o.tenant);
    const c = client();
    const q = new URLSearchParams();
    if (o.follow) q.set('follow', 'true');
    if (o.tail) q.set('tail', o.tail);
    const res = await c.raw('GET', `${itemPath(kind, n)}/logs?${q.toString()}`);
    if (res.statusCode >= 400) {
      const body = (await res.body.json()) as { error?: { code: string; message: string } };
      throw new CliError(body.error?.code ?? 'CARAPACE_E_INTERNAL', body.error?.message ?? `server answered ${res.statusCode}`);
    }
    let buf = '';
    for await (const chunk of res.body) {
      buf += (chunk as Buffer).toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === '') continue;
        const l = JSON.parse(line) as LogLine | { error: { code: string; message: string } };
        if ('error' in l) throw new CliError(l.error.code, l.error.message);
        const text = o.timestamps ? `${l.time} ${l.text}` : l.text;
        if (l.stream === 'stderr') process.stderr.write(`${text}\n`);
        else process.stdout.write(`${text}\n`);
      }
    }
  });

program
  .command('exec')
  .description("Run a command in an instance's container (audited with its command line); exits with the command's exit code")
  .argument('<instance>', 'TENANT/INSTANCE, or INSTANCE with --tenant')
  .argument('<command...>', 'the command and its arguments, after --')
  .option('-i, --stdin', 'pass stdin to the command')
  .option('-t, --tty', 'run it under a terminal (resize, Ctrl-C and job control reach the remote process); needs a terminal on stdin')
  .option('--tenant <tenant>')
  .action(async (name: string, command: string[], o: { stdin?: boolean; tty?: boolean; tenant?: string }) => {
    const { runExec } = await import('./exec.js');
    const n = resolveName('Instance', name.replace(/^instances?\//, ''), o.tenant);
    // As kubectl: -t without a terminal on stdin falls back to plain pipes (output would be mangled otherwise).
    const tty = (o.tty ?? false) && process.stdin.isTTY;
    if (o.tty && !tty) process.stderr.write('warning: -t needs a terminal on stdin; running without one\n');
    const size = tty && process.stdout.columns ? { cols: process.stdout.columns, rows: process.stdout.rows } : {};
    const code = await runExec(client(), itemPath('Instance', n), { command, tty, stdin: o.stdin ?? false, ...size });
    // Exit now, once our output is flushed: a terminal stdin that was read keeps Node alive.
    await Promise.all([process.stdout, process.stderr].map((s) => new Promise<void>((r) => s.write('', () => r()))));
    process.exit(code);
  });

program
  .command('port-forward')
  .description("Reach ports of an instance (or of one ready instance of a service) from local ports, without publishing them; each connection is audited with its port. Runs until Ctrl-C")
  .argument('<target>', 'TENANT/INSTANCE or TENANT/service/NAME (or without TENANT/ with --tenant)')
  .argument('<ports...>', '[LOCAL:]REMOTE, e.g. 8080:80; 80 listens on 80; :80 on any free local port')
  .option('--address <address>', 'local address to listen on', '127.0.0.1')
  .option('--tenant <tenant>')
  .action(async (target: string, ports: string[], o: { address: string; tenant?: string }) => {
    const { parseForwardTarget, parsePortSpecs, runPortForward } = await import('./port-forward.js');
    const specs = parsePortSpecs(ports);
    const t = parseForwardTarget(target, o.tenant);
    const c = client();
    let name = t.name;
    if (t.kind === 'service') {
      // One ready instance of the service, chosen once for the session (as kubectl does).
      const list = await c.call<{ items: Instance[] }>('GET', `/v1/tenants/${t.tenant}/instances`);
      const ready = list.items.filter((i) => i.spec.owner.kind === 'Service' && i.spec.owner.name === t.name && i.status.phase === 'Running' && i.status.ready && !i.metadata.deletionRequestedAt).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
      const pick = ready[0];
      if (!pick) throw new CliError('CARAPACE_E_PORT_FORWARD_UNSUPPORTED', `service ${t.tenant}/${t.name} has no ready instance to forward to`);
      name = pick.metadata.name;
    }
    const n = { tenant: t.tenant, name };
    const path = itemPath('Instance', n);
    // Fails fast on an instance that is not there (or not the token's tenant's) or not running.
    const inst = await c.call<Instance>('GET', path);
    if (inst.status.phase !== 'Running') throw new CliError('CARAPACE_E_INSTANCE_NOT_RUNNING', `instance ${n.tenant}/${name} is not running (phase ${inst.status.phase}); port-forward needs a running container`);
    const ac = new AbortController();
    process.once('SIGINT', () => ac.abort());
    process.once('SIGTERM', () => ac.abort());
    await runPortForward(c, path, specs, o.address, ac.signal, (bound) => {
      for (const b of bound) process.stdout.write(`Forwarding from ${o.address}:${b.local} -> ${n.tenant}/${name}:${b.remote}\n`);
    });
    // Connections still open (a WebSocket in its handshake) must not keep the command alive.
    process.exit(0);
  });

const tokenCmd = program.command('token').description('Manage API tokens (a role can only grant what it has)');
tokenCmd
  .command('create')
  .description('Create a token; its secret is printed once')
  .requiredOption('--name <name>', 'what the token is for')
  .addOption(new Option('--role <role>', 'role').choices(['cluster-admin', 'tenant-admin', 'tenant-viewer']).makeOptionMandatory())
  .option('-t, --tenant <tenant>', 'the tenant of a tenant-admin or tenant-viewer token')
  .action(async (o: { name: string; role: string; tenant?: string }) => {
    const r = await client().call<{ token: string; id: string; role: string; tenant?: string }>('POST', '/v1/tokens', { name: o.name, role: o.role, ...(o.tenant ? { tenant: o.tenant } : {}) });
    console.log(`token ${r.id} (${r.role}${r.tenant ? ` of tenant ${r.tenant}` : ''}) created; its secret is shown only now:`);
    console.log(r.token);
  });
tokenCmd
  .command('list')
  .description('List the tokens you may manage')
  .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'))
  .action(async (o: { output: string }) => {
    const r = await client().call<{ items: { id: string; name: string; role: string; tenant?: string; createdAt: string; revokedAt?: string }[] }>('GET', '/v1/tokens');
    if (o.output === 'json') console.log(JSON.stringify(r, null, 2));
    else console.log(table(['ID', 'NAME', 'ROLE', 'TENANT', 'CREATED', 'REVOKED'], r.items.map((t) => [t.id, t.name, t.role, t.tenant ?? '-', t.createdAt, t.revokedAt ?? '-'])));
  });
tokenCmd
  .command('revoke')
  .description('Revoke a token (it stops working at once); several live tokens with that name are refused: use the id')
  .argument('<token>', 'the token id, or the name it was given')
  .action(async (ref: string) => {
    const r = await client().call<{ revoked: { id: string; name: string; revokedAt?: string } }>('DELETE', `/v1/tokens/${encodeURIComponent(ref)}`);
    console.log(`token ${r.revoked.id} (${r.revoked.name}) revoked${r.revoked.revokedAt ? ` at ${r.revoked.revokedAt}` : ''}`);
  });

const auditCmd = program.command('audit').description('The tamper-evident audit log');
auditCmd
  .command('verify')
  .description('Check the hash chain and the signed checkpoints (cluster-admin); exits 1 if anything was tampered with')
  .option('--against <file...>', 'also check the store against off-store copies of the checkpoints (the servers\' --audit-copy files): catches a tail cut with its checkpoints, or a rewrite re-signed with a key of the writer\'s own')
  .action(async (o: { against?: string[] }) => {
    type Verdict = { ok: boolean; records: number; lastSeq: number; checkpointedSeq: number; problems: { seq: number; kind: string; message: string }[] };
    let r: Verdict;
    let against = '';
    if (o.against) {
      // Each copy is checked on its own first (its line chain and signatures): a damaged copy
      // is refused with its file and line, not silently used.
      const { readAuditCopy } = await import('../server/run.js');
      const copies = await Promise.all(o.against.map((f) => readAuditCopy(f)));
      const checkpoints = copies.flatMap((c) => c.checkpoints);
      const publicKeys = [...new Set(copies.flatMap((c) => c.publicKeys))];
      r = await client().call<Verdict>('POST', '/v1/audit/verify', { checkpoints, publicKeys });
      against = `; against ${checkpoints.length} off-store checkpoint(s) up to seq ${Math.max(0, ...copies.map((c) => c.lastSeq))} in ${o.against.join(', ')}`;
    } else {
      r = await client().call<Verdict>('GET', '/v1/audit/verify');
    }
    if (r.ok) console.log(`audit log OK: ${r.records} records, last seq ${r.lastSeq}, signed checkpoints up to seq ${r.checkpointedSeq}${against}`);
    else {
      console.log(`audit log FAILED verification: ${r.problems.length} problem(s) in ${r.records} records${against}`);
      for (const p of r.problems.slice(0, 50)) console.log(`  seq ${p.seq}: ${p.kind}: ${p.message}`);
      process.exitCode = 1;
    }
  });
auditCmd
  .command('export')
  .description("Print audit records (a tenant token gets only its tenant's records)")
  .option('--since <time>', `from (inclusive): ISO 8601, a duration ago (${DURATION_EXAMPLES}), or now`)
  .option('--until <time>', 'to (exclusive): ISO 8601, a duration ago, or now')
  .option('-t, --tenant <tenant>', 'only this tenant (cluster-admin)')
  .addOption(new Option('--format <format>', 'output format').choices(['jsonl', 'csv']).default('jsonl'))
  .action(async (o: { since?: string; until?: string; tenant?: string; format: string }) => {
    const q = new URLSearchParams({ format: o.format });
    if (o.since) q.set('since', timeArg(o.since, '--since'));
    if (o.until) q.set('until', timeArg(o.until, '--until'));
    if (o.tenant) q.set('tenant', o.tenant);
    const res = await client().raw('GET', `/v1/audit/records?${q.toString()}`);
    const text = await res.body.text();
    if (res.statusCode >= 400) {
      const e = (JSON.parse(text) as { error?: { code: string; message: string } }).error;
      throw new CliError(e?.code ?? 'CARAPACE_E_INTERNAL', e?.message ?? `server answered ${res.statusCode}`);
    }
    process.stdout.write(text);
  });

const reportCmd = program.command('report').description('Reports for the tools above Carapace');
reportCmd
  .command('usage')
  .description('Reserved and measured usage per tenant, group or cell (exact sums; a tenant token gets only its tenant)')
  .option('--since <time>', `window start: ISO 8601, a duration ago (${DURATION_EXAMPLES}), or now`, '24h')
  .option('--until <time>', 'window end (exclusive): ISO 8601, a duration ago, or now', 'now')
  .addOption(new Option('--by <grouping>', 'one row per').choices(['tenant', 'group', 'cell', 'volume']).default('tenant'))
  .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'csv', 'json']).default('table'))
  .option('-t, --tenant <tenant>', 'only this tenant (cluster-admin)')
  .action(async (o: { since: string; until: string; by: string; output: string; tenant?: string }) => {
    const q = new URLSearchParams({ since: timeArg(o.since, '--since'), until: timeArg(o.until, '--until'), by: o.by, format: o.output });
    if (o.tenant) q.set('tenant', o.tenant);
    const res = await client().raw('GET', `/v1/usage?${q.toString()}`);
    const text = await res.body.text();
    if (res.statusCode >= 400) {
      const e = (JSON.parse(text) as { error?: { code: string; message: string; details?: { path: string; message: string }[] } }).error;
      throw new CliError(e?.code ?? 'CARAPACE_E_INTERNAL', e?.message ?? `server answered ${res.statusCode}`, e?.details);
    }
    process.stdout.write(text);
  });

for (const [op, what] of [
  ['cordon', 'stop placing new work on a host (running work stays)'],
  ['uncordon', 'undo cordon and drain'],
  ['drain', "cordon a host and move its instances elsewhere, within each service's maxUnavailable"],
] as const) {
  const cmd = program
    .command(op)
    .description(what)
    .argument('<host>', 'host/NAME or NAME');
  if (op === 'drain') cmd.option('--wait', 'wait until no instance is left on the host').option('--timeout <duration>', `give up waiting after this long (${DURATION_FORMS})`, '600');
  cmd.action(async (host: string, o: { wait?: boolean; timeout?: string }) => {
    const timeoutMs = durationMs(o.timeout ?? '600', '--timeout');
    const name = host.replace(/^hosts?\//, '');
    const c = client();
    await c.call('POST', `/v1/hosts/${encodeURIComponent(name)}/${op}`);
    console.log(`host/${name} ${op === 'drain' ? 'draining' : op === 'cordon' ? 'cordoned' : 'uncordoned'}`);
    if (!o.wait) return;
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const h = await c.call<{ status: { message?: string } }>('GET', `/v1/hosts/${encodeURIComponent(name)}`);
      const msg = h.status.message ?? '';
      if (msg !== last) console.log(`host/${name}: ${msg}`);
      last = msg;
      if (msg.startsWith('drained')) return;
      if (Date.now() > deadline) throw new CliError('CARAPACE_E_TIMEOUT', `host ${name} is not drained after ${timeoutMs / 1000} s: ${msg}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  });
}

/** `keys rotate` and its older name `secrets new-key`: a new primary key in the keyring file. */
async function rotateKeyring(o: { keyring: string }): Promise<void> {
  const { addPrimaryKey } = await import('../server/run.js');
  const id = await addPrimaryKey(o.keyring);
  console.log(`key ${id} added to ${o.keyring} as the primary key. Next:
  1. give this file to every server of the store and restart them (each re-seals its audit signing key);
  2. carapace keys reencrypt   (re-seals the CA key and every secret under ${id});
  3. then remove the older lines from the file and restart the servers again.`);
}

/** `keys reencrypt` and its older name `secrets reencrypt` (without --tenant). */
async function reencryptAll(): Promise<void> {
  const r = await client().call<{ keyId: string; ca: string; secrets: { reencrypted: number; current: number } }>('POST', '/v1/keys/reencrypt', {});
  const ca = { none: 'no cluster CA yet', current: 'the CA key was already under it', sealed: 'the CA key sealed', resealed: 'the CA key re-sealed' }[r.ca] ?? r.ca;
  console.log(`under key ${r.keyId}: ${ca}; ${r.secrets.reencrypted} secret(s) re-encrypted, ${r.secrets.current} already under it`);
  console.log('older keys may leave the keyring once every server has been restarted with this one (each re-seals its audit signing key at start)');
}

const KEYRING_OPTION = ['--keyring <file>', 'the keyring file the servers are given (--keyring)'] as const;
const keysCmd = program.command('keys').description('The cluster keyring: key-encryption keys for the CA key, audit signing keys and secrets (see the README, operations)');
keysCmd
  .command('rotate')
  .description("Add a new key as the keyring's primary (first line), keeping the others; creates the file (0600) when absent. Then restart the servers with it and run `carapace keys reencrypt`")
  .requiredOption(...KEYRING_OPTION)
  .action(rotateKeyring);
keysCmd
  .command('reencrypt')
  .description("Re-seal the cluster CA's key and re-encrypt every secret under the servers' primary key (cluster-admin, audited); afterwards older keys can leave the keyring")
  .action(reencryptAll);

const secretsCmd = program.command('secrets').description('Older names of `carapace keys` (key rotation)');
secretsCmd
  .command('new-key')
  .description('Same as `carapace keys rotate`')
  .requiredOption(...KEYRING_OPTION)
  .action(rotateKeyring);
secretsCmd
  .command('reencrypt')
  .description('Same as `carapace keys reencrypt`; with --tenant, only that tenant\'s secrets (the CA key is left as it is)')
  .option('-t, --tenant <tenant>', "only this tenant's secrets")
  .action(async (o: { tenant?: string }) => {
    if (o.tenant === undefined) return reencryptAll();
    const r = await client().call<{ keyId: string; reencrypted: number; current: number }>('POST', '/v1/secrets/reencrypt', { tenant: o.tenant });
    console.log(`${r.reencrypted} secret(s) re-encrypted under key ${r.keyId}; ${r.current} already under it`);
  });

const joinCmd = program.command('join-token').description('Tokens that let new hosts join (cluster-admin)');
joinCmd
  .command('create')
  .description('Create a join token (shown once): carapace agent --join https://SERVER:7443 --join-token TOKEN')
  .option('--ttl <duration>', `how long it is valid (${DURATION_FORMS}; 1m to 30d)`, '24h')
  .option('--description <text>', 'what it is for')
  .action(async (o: { ttl: string; description?: string }) => {
    const seconds = durationMs(o.ttl, '--ttl') / 1000;
    const q = new URLSearchParams({ ttlSeconds: String(seconds), ...(o.description ? { description: o.description } : {}) });
    const r = await client().call<{ token: string; id: string; expiresAt: string }>('POST', `/v1/join-tokens?${q.toString()}`);
    console.log(r.token);
    console.error(`join token ${r.id}, valid until ${r.expiresAt}; on the new host: carapace agent --join https://SERVER:7443 --join-token <token>`);
  });
joinCmd
  .command('list')
  .description('List join tokens (never their secrets)')
  .action(async () => {
    const r = await client().call<{ items: { id: string; createdAt: string; expiresAt: string; description: string }[] }>('GET', '/v1/join-tokens');
    process.stdout.write(table(['ID', 'EXPIRES', 'DESCRIPTION'], r.items.map((t) => [t.id, t.expiresAt, t.description || '-'])));
  });

const certCmd = program.command('agent-cert').description("Hosts' agent certificates (cluster-admin)");
certCmd
  .command('list')
  .action(async () => {
    const r = await client().call<{ items: { host: string; serial: string; notAfter: string; issuedAt: string; revokedAt?: string }[] }>('GET', '/v1/agent-certs');
    process.stdout.write(table(['HOST', 'SERIAL', 'ISSUED', 'EXPIRES', 'REVOKED'], r.items.map((c) => [c.host, c.serial.slice(0, 16), c.issuedAt, c.notAfter, c.revokedAt ?? '-'])));
  });
certCmd
  .command('revoke')
  .argument('<host>')
  .description("Revoke a host's certificate: its agent is refused at once")
  .action(async (host: string) => {
    await client().call('POST', `/v1/agent-certs/${encodeURIComponent(host.replace(/^hosts?\//, ''))}/revoke`);
    console.log(`agent certificate of host/${host.replace(/^hosts?\//, '')} revoked`);
  });
certCmd
  .command('forget')
  .argument('<host>')
  .description('Forget a revoked host so it may join again with a new token')
  .action(async (host: string) => {
    await client().call('DELETE', `/v1/agent-certs/${encodeURIComponent(host.replace(/^hosts?\//, ''))}`);
    console.log(`agent certificate of host/${host.replace(/^hosts?\//, '')} forgotten`);
  });

const machineCmd = program.command('machine').description('Power a machine on or off, or restart it');
for (const [verb, what] of [
  ['start', 'power a stopped machine on'],
  ['stop', 'shut a machine down (ACPI power button, then power off)'],
  ['restart', 'restart a machine'],
] as const) {
  machineCmd
    .command(verb)
    .description(what)
    .argument('<name>', 'TENANT/NAME, or NAME with --tenant')
    .option('-t, --tenant <tenant>')
    .action(async (name: string, o: { tenant?: string }) => {
      const n = resolveName('Machine', name.replace(/^machines?\//, ''), o.tenant);
      const c = client();
      const path = itemPath('Machine', n);
      // Level-based: change the desired state with compare-and-set; the agent does the rest.
      const m = await c.call<{ apiVersion?: string; kind: 'Machine'; metadata: { name: string; tenant: string; labels: Record<string, string>; resourceVersion: number }; spec: Record<string, unknown> }>('GET', path);
      const spec = { ...m.spec, running: verb !== 'stop', ...(verb === 'restart' ? { restartedAt: new Date().toISOString() } : {}) };
      await c.call('PUT', path, { apiVersion: 'carapace/v1', kind: 'Machine', metadata: { name: m.metadata.name, tenant: m.metadata.tenant, labels: m.metadata.labels, resourceVersion: m.metadata.resourceVersion }, spec });
      console.log(`machine/${n.tenant ?? ''}/${n.name} ${verb === 'stop' ? 'stopping' : verb === 'start' ? 'starting' : 'restarting'}`);
    });
}

const rolloutCmd = program.command('rollout').description("Rolling updates of a service: status, history, undo, restart, pause, resume");
/** The API path of a service's rollout, from TENANT/NAME (or service/TENANT/NAME), or NAME with --tenant. */
function rolloutPath(ref: string, tenant: string | undefined): { path: string; what: string } {
  const n = resolveName('Service', ref.replace(/^services?\//, ''), tenant);
  return { path: `${itemPath('Service', n)}/rollout`, what: `service/${n.tenant ?? ''}/${n.name}` };
}
/** What `rollout status` says of a report: done, failed (with why) or the progress line. */
function judgeRollout(r: RolloutReport): { done: boolean; failed?: string; progress: string } {
  const c = r.condition;
  if (r.observedGeneration !== r.generation || r.revision === undefined) return { done: false, progress: 'waiting for the controller to see the change' };
  const counts = `${r.updatedReplicas} of ${r.replicas} updated, ${r.readyReplicas} ready`;
  if (c?.reason === 'ProgressDeadlineExceeded') return { done: true, failed: c.message, progress: `revision ${r.revision}: ${counts}: deadline exceeded` };
  if (r.complete) return { done: true, ...(c?.reason === 'RolledBack' ? { failed: c.message } : {}), progress: `revision ${r.revision} rolled out (${r.replicas} of ${r.replicas} updated and ready)` };
  if (c?.reason === 'Paused') return { done: true, progress: `revision ${r.revision}: paused (${counts})` };
  // What holds the rollout, when replicas wait for a place (e.g. a surge replica with no room).
  const waits = (r.waiting ?? []).map((w) => `; ${w.name} waits: ${w.reason}: ${w.message}`).join('');
  return { done: false, progress: `revision ${r.revision}: ${counts}${c?.reason === 'RolledBack' ? ' (rolling back)' : ''}${waits}` };
}
rolloutCmd
  .command('status')
  .description('Where the rollout of a service is; --watch follows it until done (exit 1 if it missed its deadline or was rolled back)')
  .argument('<service>', 'TENANT/NAME, or NAME with --tenant')
  .option('-t, --tenant <tenant>')
  .option('-w, --watch', 'follow until the rollout is complete, failed or paused')
  .option('--timeout <duration>', `how long --watch waits (${DURATION_FORMS})`, '600')
  .action(async (ref: string, o: { tenant?: string; watch?: boolean; timeout: string }) => {
    const { path, what } = rolloutPath(ref, o.tenant);
    const c = client();
    const read = (): Promise<RolloutReport> => c.call<RolloutReport>('GET', path);
    if (!o.watch) {
      const j = judgeRollout(await read());
      console.log(`${what}: ${j.progress}`);
      if (j.failed !== undefined) {
        console.error(`${what}: ${j.failed}`);
        process.exitCode = 1;
      }
      return;
    }
    if (!(await pollUntil(read, judgeRollout, what, durationMs(o.timeout, '--timeout')))) process.exitCode = 1;
  });
rolloutCmd
  .command('history')
  .description('The revisions kept (10): what each ran, who made it and when (from the audit log)')
  .argument('<service>', 'TENANT/NAME, or NAME with --tenant')
  .option('-t, --tenant <tenant>')
  .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'))
  .action(async (ref: string, o: { tenant?: string; output: string }) => {
    const r = await client().call<RolloutReport>('GET', rolloutPath(ref, o.tenant).path);
    if (o.output === 'json') {
      console.log(JSON.stringify(r.history, null, 2));
      return;
    }
    const rows = r.history.map((h) => [`${h.revision}${h.current ? '*' : ''}`, h.cause, h.changedBy ?? '-', h.changedAt ?? h.createdAt, h.summary]);
    console.log(table(['REVISION', 'CAUSE', 'CHANGED-BY', 'WHEN', 'TEMPLATE'], rows));
  });
rolloutCmd
  .command('undo')
  .description("Return to an earlier revision's template (default: the one before the current), rolled out in waves as a new revision")
  .argument('<service>', 'TENANT/NAME, or NAME with --tenant')
  .option('-t, --tenant <tenant>')
  .option('--to-revision <n>', 'the revision to return to (`rollout history` lists them)')
  .action(async (ref: string, o: { tenant?: string; toRevision?: string }) => {
    const { path, what } = rolloutPath(ref, o.tenant);
    if (o.toRevision !== undefined && !/^\d{1,9}$/.test(o.toRevision)) throw new CliError('CARAPACE_E_USAGE', `--to-revision must be a revision number, got "${o.toRevision}"`, [{ path: '--to-revision', message: 'not a number' }]);
    await client().call('POST', `${path}/undo${o.toRevision !== undefined ? `?toRevision=${o.toRevision}` : ''}`);
    console.log(`${what} rolling back${o.toRevision !== undefined ? ` to revision ${o.toRevision}'s template` : ''}`);
  });
for (const [op, what, said] of [
  ['restart', 'Replace every replica in waves (a new revision with the same template)', 'restarting'],
  ['pause', 'Stop replacing replicas (scaling still happens)', 'paused'],
  ['resume', 'Go on replacing replicas', 'resumed'],
] as const) {
  rolloutCmd
    .command(op)
    .description(what)
    .argument('<service>', 'TENANT/NAME, or NAME with --tenant')
    .option('-t, --tenant <tenant>')
    .action(async (ref: string, o: { tenant?: string }) => {
      const { path, what: name } = rolloutPath(ref, o.tenant);
      await client().call('POST', `${path}/${op}`);
      console.log(`${name} ${said}`);
    });
}

/**
 * Polls `read` every 500 ms until `done` says finished (true) or failed (a message), printing
 * each new `progress` line; CARAPACE_E_TIMEOUT after `timeoutMs`. Returns false on failure.
 */
async function pollUntil<T>(read: () => Promise<T>, judge: (x: T) => { done: boolean; failed?: string; progress: string }, what: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const j = judge(await read());
    if (j.progress !== last) console.log(`${what}: ${j.progress}`);
    last = j.progress;
    if (j.failed !== undefined) {
      console.error(`${what} failed: ${j.failed}`);
      return false;
    }
    if (j.done) return true;
    if (Date.now() > deadline) throw new CliError('CARAPACE_E_TIMEOUT', `${what} is not done after ${timeoutMs / 1000} s: ${j.progress}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

const volumeCmd = program.command('volume').description('Point-in-time snapshots of volumes, and new volumes restored from them');
volumeCmd
  .command('snapshot')
  .description("Take a point-in-time copy of a volume on its host (creates a VolumeSnapshot; a volume in a running VM is paused for the copy)")
  .argument('<volume>', 'TENANT/VOLUME, or VOLUME with --tenant')
  .option('-t, --tenant <tenant>')
  .option('--name <snapshot>', "the snapshot's name (default: <volume>-<UTC yyyymmddhhmmss>)")
  .option('-w, --wait', 'wait until the copy is taken (exit 1 if it fails)')
  .option('--timeout <duration>', `how long --wait waits (${DURATION_FORMS})`, '300')
  .action(async (ref: string, o: { tenant?: string; name?: string; wait?: boolean; timeout: string }) => {
    const timeoutMs = durationMs(o.timeout, '--timeout');
    const n = resolveName('Volume', ref.replace(/^volumes?\//, ''), o.tenant);
    const tenant = n.tenant ?? '';
    const name = o.name ?? defaultSnapshotName(n.name, new Date());
    const c = client();
    // POST: create only; a snapshot of that name already there is refused, never replaced.
    const created = await c.call<VolumeSnapshot>('POST', `/v1/tenants/${tenant}/volumesnapshots`, { apiVersion: 'carapace/v1', kind: 'VolumeSnapshot', metadata: { name, tenant }, spec: { volume: n.name } });
    const what = `volumesnapshot/${tenant}/${name}`;
    console.log(`${what} created (volume ${n.name}${created.status.host ? ` on host ${created.status.host}` : ''})`);
    const judge = (x: VolumeSnapshot): { done: boolean; failed?: string; progress: string } => {
      const st = x.status;
      if (st.phase === 'Failed') return { done: true, failed: `${st.reason ?? 'Failed'}: ${st.message ?? ''}`, progress: 'failed' };
      if (st.phase === 'Ready') return { done: true, progress: `ready (${st.sizeBytes !== undefined ? formatMemory(Math.ceil(st.sizeBytes / 1048576)) : '?'} taken at ${st.takenAt ?? '?'})` };
      return { done: false, progress: st.message ? `pending: ${st.message}` : 'pending' };
    };
    if (!o.wait) {
      // An unbound volume's snapshot fails at once: say so even without --wait.
      if (created.status.phase === 'Failed') {
        console.error(`${what} failed: ${created.status.reason ?? ''}: ${created.status.message ?? ''}`);
        process.exitCode = 1;
      }
      return;
    }
    if (!(await pollUntil(() => c.call<VolumeSnapshot>('GET', `/v1/tenants/${tenant}/volumesnapshots/${name}`), judge, what, timeoutMs))) process.exitCode = 1;
  });
volumeCmd
  .command('restore')
  .description('Make a new volume from a snapshot, on the snapshot\'s host (the volume it was taken of is left as it is; point a service at the new one through its spec.volumes)')
  .argument('<snapshot>', 'TENANT/SNAPSHOT, or SNAPSHOT with --tenant')
  .requiredOption('--to <volume>', 'the name of the new volume (must not exist)')
  .option('-t, --tenant <tenant>')
  .option('--size <quantity>', "the new volume's size (default: the size of the snapshot's volume; never less)")
  .option('-w, --wait', 'wait until the host has made the volume (exit 1 if it cannot)')
  .option('--timeout <duration>', `how long --wait waits (${DURATION_FORMS})`, '300')
  .action(async (ref: string, o: { to: string; tenant?: string; size?: string; wait?: boolean; timeout: string }) => {
    const timeoutMs = durationMs(o.timeout, '--timeout');
    const n = resolveName('VolumeSnapshot', ref.replace(/^(volumesnapshots?|snapshots?)\//, ''), o.tenant);
    const tenant = n.tenant ?? '';
    const c = client();
    const snap = await c.call<VolumeSnapshot>('GET', `/v1/tenants/${tenant}/volumesnapshots/${n.name}`).catch((e: unknown) => {
      if (e instanceof CliError && e.code === 'CARAPACE_E_NOT_FOUND') return undefined;
      throw e;
    });
    // Without --size: the snapshot's. A snapshot that is missing or not taken yet has none: the
    // smallest size is sent, and the server answers with why the snapshot cannot be restored.
    const size = o.size ?? (snap?.status.sizeBytes !== undefined ? formatMemory(Math.ceil(snap.status.sizeBytes / 1048576)) : formatMemory(MIN_VOLUME_MIB));
    // POST: create only; restoring never overwrites a volume.
    const vol = await c.call<Volume>('POST', `/v1/tenants/${tenant}/volumes`, { apiVersion: 'carapace/v1', kind: 'Volume', metadata: { name: o.to, tenant }, spec: { size, source: { snapshot: n.name } } });
    const what = `volume/${tenant}/${o.to}`;
    console.log(`${what} created from snapshot ${n.name} (${vol.spec.size}, host ${vol.status.host ?? '?'})`);
    if (!o.wait) return;
    const judge = (v: Volume): { done: boolean; failed?: string; progress: string } => {
      // The host's agent reports the used bytes once it made the volume, or why it could not.
      if (v.status.usedBytes !== undefined) return { done: true, progress: `restored (${formatMemory(Math.ceil(v.status.usedBytes / 1048576))} used)` };
      if (v.status.message) return { done: true, failed: v.status.message, progress: 'failed' };
      return { done: false, progress: `being made on host ${v.status.host ?? '?'}` };
    };
    if (!(await pollUntil(() => c.call<Volume>('GET', `/v1/tenants/${tenant}/volumes/${o.to}`), judge, what, timeoutMs))) process.exitCode = 1;
  });

function printError(e: unknown): void {
  if (e instanceof CliError || e instanceof CarapaceError) {
    console.error(`error ${e.code}: ${e.message}`);
    for (const d of e.details.slice(0, 20)) console.error(`  ${d.path}: ${d.message}`);
  } else {
    console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
  }
}

program.parseAsync(process.argv).catch((e: unknown) => {
  printError(e);
  process.exit(1);
});
