/**
 * The image contract used by the agent: resolve a reference to a digest, fetch it into a
 * content-addressed local cache once, and hand out the unpacked root filesystem (read-only
 * for everyone; each instance adds its own writable layer in the runtime).
 */
import type { ImageConfig } from '../runtime/driver.js';

export interface PulledImage {
  /** The reference as written by the user. */
  reference: string;
  /** `sha256:…` of the image manifest: what actually runs. */
  digest: string;
  /** Unpacked root filesystem; never modified after unpacking. */
  rootfs: string;
  config: ImageConfig;
}

/** Why a pull failed, as a stable reason an instance status can show. */
export type PullFailureReason = 'ImageNotFound' | 'RegistryUnreachable' | 'ImageInvalid' | 'ImagePullFailed';

export class ImagePullError extends Error {
  constructor(readonly reason: PullFailureReason, message: string) {
    super(message);
    this.name = 'ImagePullError';
  }
}

/**
 * A step of a pull, for "Pulling…" status and logs. Only emitted for work that actually
 * happens: a fully cached `ensure` emits nothing. Additive to the original contract.
 */
export interface PullProgress {
  phase: 'resolving' | 'downloading' | 'unpacking';
  reference: string;
  /** Known from 'downloading' on. */
  digest?: string;
}

/** Options of {@link ImageStore.ensure}. */
export interface EnsureOptions {
  /**
   * Gives up waiting (the promise rejects with the signal's reason). A pull shared with other
   * callers keeps running until every caller has given up.
   */
  signal?: AbortSignal;
  /** Called synchronously for each step of the pull this call waits on (must not throw). */
  onProgress?: (event: PullProgress) => void;
}

export interface ImageStore {
  /**
   * Makes the image available locally and returns it. Concurrent calls for the same
   * reference share one pull. A reference already cached by digest needs no network;
   * a tag is re-resolved at most once per `tagTtlMs` (default: cached tags are trusted).
   */
  ensure(reference: string, opts?: EnsureOptions): Promise<PulledImage>;
  /** Cached images, for `carapace get images` and garbage collection. */
  list(): Promise<PulledImage[]>;
}
