/**
 * Parsing of image references (`[registry[:port]/]repository[:tag][@sha256:…]`) with the
 * grammar of distribution/reference, so a bad reference is rejected here with a clear reason
 * instead of as a skopeo stack dump. Pure: no I/O.
 */

/** A parsed, normalised image reference. */
export interface ImageReference {
  /** The text as the user wrote it. */
  original: string;
  /** Registry host[:port]; `docker.io` when omitted. */
  registry: string;
  /** Repository path inside the registry, e.g. `library/busybox`. */
  repository: string;
  /** Tag, when the reference has one (`latest` is implied when it has neither tag nor digest). */
  tag?: string;
  /** `sha256:…` when the reference pins a digest. */
  digest?: string;
  /**
   * Fully-qualified name skopeo is given after `docker://`. When both a tag and a digest are
   * present the digest wins (containers/image refuses references carrying both).
   */
  canonical: string;
}

/** Thrown by {@link parseReference}; the store maps it to `ImageInvalid`. */
export class InvalidReferenceError extends Error {
  constructor(readonly reference: string, readonly why: string) {
    super(`invalid image reference "${reference}": ${why}`);
    this.name = 'InvalidReferenceError';
  }
}

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const HOST_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN_RE = new RegExp(`^(?:${HOST_COMPONENT}(?:\\.${HOST_COMPONENT})*|\\[[0-9a-fA-F:.]+\\])(?::[0-9]{1,5})?$`);

/**
 * Parses and normalises a reference; throws {@link InvalidReferenceError} with the reason
 * when it is not a valid reference. Safe to call anywhere (pure).
 */
export function parseReference(reference: string): ImageReference {
  const fail = (why: string): never => {
    throw new InvalidReferenceError(reference, why);
  };
  if (reference.length === 0) fail('empty');
  if (reference.length > 1024) fail('longer than 1024 characters');
  if (/\s/.test(reference)) fail('contains whitespace');
  if (reference.includes('://')) fail('must not contain a transport or scheme (write registry/repository:tag)');

  let rest = reference;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest)) fail('digest must be sha256: followed by 64 lowercase hex digits');
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) fail(`tag "${tag}" is not valid (letters, digits, _ . -; at most 128)`);
  }
  if (rest.length === 0) fail('missing repository name');

  const parts = rest.split('/');
  let registry = 'docker.io';
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    registry = first;
    parts.shift();
    if (!DOMAIN_RE.test(registry)) fail(`registry "${registry}" is not a valid host[:port]`);
  }
  if (registry === 'docker.io' && parts.length === 1) parts.unshift('library');
  for (const p of parts) {
    if (!PATH_COMPONENT_RE.test(p)) {
      fail(p.length === 0 ? 'empty path component' : `repository component "${p}" must be lowercase letters, digits and separators`);
    }
  }
  const repository = parts.join('/');
  if (repository.length + registry.length + 1 > 255) fail('repository name longer than 255 characters');
  if (tag === undefined && digest === undefined) tag = 'latest';
  const canonical = digest !== undefined ? `${registry}/${repository}@${digest}` : `${registry}/${repository}:${tag ?? 'latest'}`;
  return { original: reference, registry, repository, tag, digest, canonical };
}

/** The host part of `host[:port]` or `[v6]:port`, lowercased, without brackets. */
export function registryHost(registry: string): string {
  if (registry.startsWith('[')) {
    const end = registry.indexOf(']');
    return registry.slice(1, end < 0 ? undefined : end).toLowerCase();
  }
  const colon = registry.lastIndexOf(':');
  return (colon >= 0 ? registry.slice(0, colon) : registry).toLowerCase();
}

/**
 * True when the registry is on this machine's loopback (127.0.0.0/8, localhost, ::1): such a
 * registry is spoken to over plain HTTP / without certificate checks, like Docker does.
 */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registryHost(registry);
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
