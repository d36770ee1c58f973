/**
 * The network's errors with stable codes (all in model/errors.ts's catalogue), shared by the
 * container network (network-manager.ts) and the tenant data plane (tenant-networking.ts).
 */

/** Stable reasons a network operation fails. */
export type NetworkErrorCode =
  | 'CARAPACE_E_PORT_IN_USE'
  | 'CARAPACE_E_ADDRESS_POOL_EXHAUSTED'
  | 'CARAPACE_E_NETWORK_CONFLICT'
  | 'CARAPACE_E_NETWORK_FAILED';

/** A network operation failed for a reason a caller can act on; `code` is stable. */
export class NetworkError extends Error {
  constructor(
    readonly code: NetworkErrorCode,
    message: string,
    /** The host port concerned, for CARAPACE_E_PORT_IN_USE. */
    readonly port?: { hostPort: number; protocol: 'tcp' | 'udp' },
  ) {
    super(message);
    this.name = 'NetworkError';
  }
}
