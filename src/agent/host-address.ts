/**
 * The host's underlay address (`Host.status.address`): where other hosts' VXLAN reaches this
 * one. The operator's `--advertise-address` when given, else the source address the kernel
 * picks for the default route (`ip -j route get 1.1.1.1`: no packet is sent; any public
 * address would do). Undefined when neither is known (no default route): the host then joins
 * no overlay, and says so in its status by having no address.
 */
import { parseIpv4 } from '../model/netaddr.js';
import { run } from '../proc/run.js';

/** The `prefsrc` of `ip -j route get`'s answer, or undefined when it names none (or is not that JSON). */
export function routeSourceAddress(json: string): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    return undefined;
  }
  const first: unknown = Array.isArray(parsed) ? parsed[0] : undefined;
  const src = typeof first === 'object' && first !== null && 'prefsrc' in first ? first.prefsrc : undefined;
  return typeof src === 'string' && parseIpv4(src) !== undefined ? src : undefined;
}

/** The source address of this host's default route, or undefined when there is none. */
export async function defaultRouteAddress(): Promise<string | undefined> {
  const r = await run('ip', ['-j', 'route', 'get', '1.1.1.1'], { timeoutMs: 5_000 }).catch(() => undefined);
  return r?.code === 0 ? routeSourceAddress(r.stdout) : undefined;
}

/** The address to report: `advertised` when given, else the default route's source address. */
export function hostAddressSource(advertised: string | undefined): () => Promise<string | undefined> {
  return advertised !== undefined ? () => Promise.resolve(advertised) : defaultRouteAddress;
}
