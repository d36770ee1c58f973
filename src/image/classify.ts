/**
 * Turns a failed skopeo run into an {@link ImagePullError} with a stable reason and a
 * one-line message naming the reference. skopeo's stderr is a logrus line such as
 * `time=… level=fatal msg="Error parsing image name \"docker://…\": reading manifest 1 in …:
 * manifest unknown: manifest unknown"`; we keep only the useful tail. Pure: no I/O.
 */
import { ImagePullError, type PullFailureReason } from './image-store.js';

const NOT_FOUND = [
  /manifest unknown/i,
  /name unknown/i,
  /repository name not known/i,
  /requested access to the resource is denied/i,
  /\bnot found\b/i,
  /\b404\b/,
];
const UNREACHABLE = [
  /connection refused/i,
  /no such host/i,
  /i\/o timeout/i,
  /context deadline exceeded/i,
  /network is unreachable/i,
  /no route to host/i,
  /handshake timeout/i,
  /connection reset/i,
  /server misbehaving/i,
  /temporary failure in name resolution/i,
  /timeout awaiting response headers/i,
  /\bEOF\b/,
];
const INVALID = [
  /invalid reference format/i,
  /unsupported/i,
  /unknown media ?type/i,
  /invalid (manifest|media ?type|checksum|digest)/i,
  /digest did not match/i,
  /parsing (image )?(manifest|configuration)/i,
];

/**
 * The message logrus put in `msg="…"` (unescaped), with skopeo's redundant prefixes removed,
 * on one line and at most 240 characters. Falls back to the last stderr line.
 */
export function skopeoErrorDetail(stderr: string): string {
  const matches = [...stderr.matchAll(/msg="((?:[^"\\]|\\.)*)"/g)];
  let detail = matches.length > 0 ? (matches[matches.length - 1]?.[1] ?? '') : '';
  detail = detail.replace(/\\(.)/g, '$1');
  if (detail.length === 0) {
    const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
    detail = lines[lines.length - 1] ?? 'no error output';
  }
  detail = detail
    .replace(/^Error parsing image name "[^"]*": /, '')
    .replace(/^initializing source [^:]+:\/\/\S+: /, '')
    .replace(/^(Error: )?(copying system image from manifest list|trying to reuse blob[^:]*|writing blob): /i, '')
    .replace(/\s+/g, ' ')
    .trim();
  return detail.length > 240 ? `${detail.slice(0, 240)}…` : detail;
}

/** Picks the stable reason for a skopeo error detail. */
export function classifySkopeoDetail(detail: string): PullFailureReason {
  if (NOT_FOUND.some((re) => re.test(detail))) return 'ImageNotFound';
  if (UNREACHABLE.some((re) => re.test(detail))) return 'RegistryUnreachable';
  if (INVALID.some((re) => re.test(detail))) return 'ImageInvalid';
  return 'ImagePullFailed';
}

/** The one-line user message for a reason; always names the reference. */
export function pullErrorMessage(reason: PullFailureReason, reference: string, registry: string, detail: string): string {
  switch (reason) {
    case 'ImageNotFound':
      return `image "${reference}" not found: ${detail}`;
    case 'RegistryUnreachable':
      return `registry ${registry} unreachable while pulling "${reference}": ${detail}`;
    case 'ImageInvalid':
      return `image "${reference}" is invalid: ${detail}`;
    case 'ImagePullFailed':
      return `pulling "${reference}" failed: ${detail}`;
  }
}

/**
 * Builds the error for a failed skopeo run. `timedOut` means our own backstop deadline fired
 * (skopeo's `--command-timeout` normally fires first and says "context deadline exceeded").
 */
export function skopeoFailure(reference: string, registry: string, stderr: string, timedOut: boolean): ImagePullError {
  const detail = timedOut ? 'no answer before the deadline' : skopeoErrorDetail(stderr);
  const reason = timedOut ? 'RegistryUnreachable' : classifySkopeoDetail(detail);
  return new ImagePullError(reason, pullErrorMessage(reason, reference, registry, detail));
}
