/**
 * Entry point of the guest agent inside a cell VM: `node <carapace>/dist/src/guest/main.js`,
 * started by the initramfs /init with CARAPACE_PORT=/dev/vportNpM. Flags for tests and
 * development:
 *   --port PATH           the virtio-serial port device (default $CARAPACE_PORT)
 *   --socket PATH         connect to a unix socket instead (reconnecting)
 *   --listen PATH         listen on a unix socket in place of QEMU's chardev server
 *   --state-dir DIR       tmpfs dir for bundles and runc state (default /run/carapace)
 *   --images DIR          where the images share is mounted (default $CARAPACE_IMAGES or /carapace/images)
 *   --cgroup-parent P     cgroup parent of the containers (default /carapace)
 *   --runc PATH           the OCI runtime (default /usr/bin/crun when the shared /usr has it, else
 *                         /usr/sbin/runc: same CLI, same bundle; crun starts a container in ~0.7 s
 *                         under emulation where runc's Go runtime and seccomp compile took ~3 s)
 *   --seccomp PATH|none   seccomp profile (default /usr/share/containers/seccomp.json)
 *   --no-pivot auto|yes|no  runc --no-pivot (default auto: yes when / is the initramfs)
 * Exits 0 after a `shutdown` request or SIGTERM, having stopped every container.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { GuestAgent } from './agent.js';
import { PortLink, SocketConnectLink, SocketListenLink, type Link } from './link.js';
import type { WireNetwork } from './protocol.js';
import { runOrThrow } from '../proc/run.js';

/** eth0 on the tenant network (busybox `ip` in the VM's initramfs), and the resolver for containers started after. */
async function configureEth0(cfg: WireNetwork): Promise<void> {
  const ip = (...args: string[]): Promise<unknown> => runOrThrow('ip', args);
  await ip('addr', 'flush', 'dev', 'eth0');
  if (cfg.mac !== undefined) {
    await ip('link', 'set', 'eth0', 'down');
    await ip('link', 'set', 'eth0', 'address', cfg.mac);
  }
  if (cfg.mtu !== undefined) await ip('link', 'set', 'eth0', 'mtu', String(cfg.mtu));
  await ip('addr', 'add', cfg.address, 'dev', 'eth0');
  await ip('link', 'set', 'eth0', 'up');
  await ip('route', 'replace', 'default', 'via', cfg.gateway);
  const search = cfg.search && cfg.search.length > 0 ? `search ${cfg.search.join(' ')}\n` : '';
  await writeFile('/etc/resolv.conf', `${search}${cfg.dns.map((d) => `nameserver ${d}\n`).join('')}options ndots:1\n`);
}

/** Parses argv and env into the link and flag values; throws a usage error. */
function linkFromArgs(argv: string[], env: NodeJS.ProcessEnv): { link: Link; values: Record<string, string | undefined> } {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string' },
      socket: { type: 'string' },
      listen: { type: 'string' },
      'state-dir': { type: 'string' },
      images: { type: 'string' },
      'cgroup-parent': { type: 'string' },
      runc: { type: 'string' },
      seccomp: { type: 'string' },
      'no-pivot': { type: 'string' },
    },
    strict: true,
  });
  let link: Link;
  if (values.listen !== undefined) link = new SocketListenLink(values.listen);
  else if (values.socket !== undefined) link = new SocketConnectLink(values.socket);
  else {
    const port = values.port ?? env.CARAPACE_PORT;
    if (port === undefined || port === '') throw new Error('no channel: set CARAPACE_PORT or pass --port, --socket or --listen');
    link = new PortLink(port);
  }
  return { link, values };
}

async function main(): Promise<void> {
  const logger = pino({ level: process.env.CARAPACE_LOG_LEVEL ?? 'info' }, pino.destination(2));
  const { link, values } = linkFromArgs(process.argv.slice(2), process.env);
  const np = values['no-pivot'] ?? 'auto';
  const agent = new GuestAgent({
    link,
    logger,
    stateDir: values['state-dir'] ?? '/run/carapace',
    imagesRoot: values.images ?? process.env.CARAPACE_IMAGES ?? '/carapace/images',
    cgroupParent: values['cgroup-parent'] ?? '/carapace',
    runcPath: values.runc ?? (existsSync('/usr/bin/crun') ? '/usr/bin/crun' : '/usr/sbin/runc'),
    seccompProfilePath: values.seccomp === 'none' ? false : (values.seccomp ?? '/usr/share/containers/seccomp.json'),
    noPivot: np === 'auto' ? 'auto' : np === 'yes',
    logTailLines: 1000,
    configureNetwork: configureEth0,
    prewarmAfterMs: 2_000,
  });
  const ac = new AbortController();
  process.once('SIGTERM', () => ac.abort());
  process.once('SIGINT', () => ac.abort());
  await agent.start(ac.signal);
  logger.info('guest agent stopped');
}

main().catch((err: unknown) => {
  process.stderr.write(`carapace guest agent: ${(err as Error).message}\n`); // `as`: anything thrown here is an Error
  process.exit(1);
});
