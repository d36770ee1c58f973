/**
 * The guest agent's command line: `startGuestAgent(argv)` parses the flags, builds the agent
 * and serves until shutdown. Two entry points call it: in a cell, the bundle's loader
 * (`dist/guest/agent.cjs`, see scripts/build-guest.mjs and loader.ts), started by the
 * initramfs /init with CARAPACE_PORT=/dev/vportNpM and CARAPACE_INIT_DONE; on a host (tests,
 * development), `dist/src/guest/main.js`. Flags:
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
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { hostname } from 'node:os';
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

/**
 * Resolves once `path` exists: /init writes it when what it does after starting the agent
 * (the modules for the network, disks, overlay and the power button; eth0's address; acpid)
 * is done. Polled: a tmpfs file appears once, within a second or two of the agent's start.
 */
function waitForFile(path: string, logger: pino.Logger): Promise<void> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let warned = false;
    const check = (): boolean => {
      if (existsSync(path)) {
        const waitedMs = Math.round(performance.now() - t0);
        void uptimeMs().then((u) => logger.info({ uptimeMs: u, waitedMs }, 'init done'));
        return true;
      }
      if (!warned && performance.now() - t0 > 10_000) {
        warned = true;
        logger.warn({ path }, 'init has not finished after 10 s; containers, volumes and the network wait for it');
      }
      return false;
    };
    if (check()) return resolve();
    const timer = setInterval(() => {
      if (!check()) return;
      clearInterval(timer);
      resolve();
    }, 20);
    timer.unref(); // the link keeps the agent alive; this wait alone must not
  });
}

/** Seconds since the guest kernel booted, in ms, for the console's timeline (0 where unreadable). */
async function uptimeMs(): Promise<number> {
  const up = await readFile('/proc/uptime', 'utf8').catch(() => '0');
  return Math.round(Number(up.split(' ')[0]) * 1000) || 0;
}

/**
 * A cell's VM has no time zone of its own (no /etc/localtime, no TZ). Without one, ICU looks
 * for the system's zone by comparing every file under /usr/share/zoneinfo (the host's /usr,
 * over 9p) with /etc/localtime the first time a date is broken down: measured in a cell under
 * emulation, the first `Date#toISOString()` blocked the agent's event loop for 2.5-3.5 s (36 ms
 * with TZ=UTC), in the middle of the cell's first container start. The guest's clock is UTC;
 * a TZ given to the agent is kept. Node applies a change of process.env.TZ at once.
 */
export function useUtcWithoutZone(env: NodeJS.ProcessEnv): void {
  if (env.TZ === undefined || env.TZ === '') process.env.TZ = 'UTC';
}

/**
 * Runs the guest agent with these flags (see above) until a `shutdown` request, SIGTERM or
 * SIGINT. `env.CARAPACE_INIT_DONE`, when set, is the file /init writes once the rest of the
 * VM is set up (see init-script.ts): until it exists the agent answers hello and pings but
 * holds work that needs the rest (containers, volumes, the network). Call once per process.
 */
export async function startGuestAgent(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  useUtcWithoutZone(env);
  // pid and hostname given, not pino's defaults: those are read when pino loads, which for a
  // cell started from the startup snapshot was at the build (snapshot-entry.ts).
  const logger = pino({ level: env.CARAPACE_LOG_LEVEL ?? 'info', base: { pid: process.pid, hostname: hostname() } }, pino.destination(2));
  const { link, values } = linkFromArgs(argv, env);
  const initDone = env.CARAPACE_INIT_DONE;
  let initWait: Promise<void> | undefined;
  const np = values['no-pivot'] ?? 'auto';
  const agent = new GuestAgent({
    link,
    logger,
    stateDir: values['state-dir'] ?? '/run/carapace',
    imagesRoot: values.images ?? env.CARAPACE_IMAGES ?? '/carapace/images',
    cgroupParent: values['cgroup-parent'] ?? '/carapace',
    runcPath: values.runc ?? (existsSync('/usr/bin/crun') ? '/usr/bin/crun' : '/usr/sbin/runc'),
    seccompProfilePath: values.seccomp === 'none' ? false : (values.seccomp ?? '/usr/share/containers/seccomp.json'),
    noPivot: np === 'auto' ? 'auto' : np === 'yes',
    logTailLines: 1000,
    configureNetwork: configureEth0,
    ...(initDone ? { initDone: () => (initWait ??= waitForFile(initDone, logger)) } : {}),
  });
  const ac = new AbortController();
  process.once('SIGTERM', () => ac.abort());
  process.once('SIGINT', () => ac.abort());
  logger.info({ uptimeMs: await uptimeMs(), processMs: Math.round(performance.now()) }, 'guest agent starting');
  await agent.start(ac.signal);
  logger.info('guest agent stopped');
}
