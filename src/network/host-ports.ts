/**
 * Ports bound by host processes, from the text of /proc/net/{tcp,tcp6,udp,udp6}: a published
 * port on one of them would shadow the process (DNAT of `fib daddr type local` takes every
 * address), so it is refused. Pure: the caller reads the files in the right network namespace.
 */

/** The /proc/net files read, with their protocol and whether only listening sockets count. */
export const PROC_NET_FILES = [
  { file: 'tcp', protocol: 'tcp', listenOnly: true },
  { file: 'tcp6', protocol: 'tcp', listenOnly: true },
  { file: 'udp', protocol: 'udp', listenOnly: false },
  { file: 'udp6', protocol: 'udp', listenOnly: false },
] as const;

/** Bound ports per protocol. */
export interface BoundPorts {
  tcp: Set<number>;
  udp: Set<number>;
}

/**
 * Adds the ports of one /proc/net file's text to `into`: listening TCP sockets (state 0A) and,
 * for UDP, every bound socket.
 */
export function addBoundPorts(into: BoundPorts, protocol: 'tcp' | 'udp', listenOnly: boolean, text: string): void {
  for (const line of text.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    const local = cols[1];
    const st = cols[3];
    if (!local || !st) continue;
    if (listenOnly && st !== '0A') continue; // 0A = TCP_LISTEN
    const port = parseInt(local.slice(local.lastIndexOf(':') + 1), 16);
    if (port > 0) into[protocol].add(port);
  }
}
