/**
 * Converts a seccomp profile in the Docker / containers-common format (the one shipped as
 * /usr/share/containers/seccomp.json) into the OCI runtime-spec `linux.seccomp` object that
 * runc and runsc read. Pure: the caller reads the file and says which architecture and
 * capabilities the container has, because rules are included or excluded by both.
 *
 * Semantics follow containers/common `pkg/seccomp` (what Podman does):
 *  - `archMap`: only the entry of the native architecture is kept, with its sub-architectures;
 *  - a rule with `includes.arches` applies only when the native (Go) arch is listed, one with
 *    `excludes.arches` only when it is not;
 *  - `includes.caps` needs every listed capability, `excludes.caps` drops the rule when any
 *    listed capability is held;
 *  - `includes.minKernel` drops the rule when the kernel is older (if a kernel version is given);
 *  - `defaultErrnoRet` and per-rule `errnoRet` carry over.
 */

/** One argument comparison in a seccomp rule (same shape in both formats). */
export interface SeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: string;
}

/** The OCI runtime-spec `linux.seccomp` object. */
export interface OciSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures: string[];
  syscalls: OciSeccompRule[];
}

/** One OCI seccomp rule. */
export interface OciSeccompRule {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: SeccompArg[];
}

interface Filter {
  arches?: string[] | null;
  caps?: string[] | null;
  minKernel?: string | null;
}

/** The Docker / containers-common profile shape (fields this converter understands). */
export interface DockerSeccompProfile {
  defaultAction: string;
  defaultErrnoRet?: number | null;
  architectures?: string[] | null;
  archMap?: { architecture: string; subArchitectures?: string[] | null }[] | null;
  syscalls?: {
    names?: string[] | null;
    /** Old single-name form. */
    name?: string | null;
    action: string;
    errnoRet?: number | null;
    args?: SeccompArg[] | null;
    includes?: Filter | null;
    excludes?: Filter | null;
  }[] | null;
}

/** What decides which rules apply: the native architecture and the container's capabilities. */
export interface SeccompConvertOptions {
  /** Go architecture name (`amd64`, `arm64`, …), as the profile's includes/excludes use. */
  goArch: string;
  /** Capabilities the container holds (bounding set), `CAP_*` names. */
  capabilities: readonly string[];
  /** Host kernel version (`6.1.0`); when absent `minKernel` filters are ignored. */
  kernelVersion?: string;
}

/** Go arch name -> libseccomp architecture name, to pick the native `archMap` entry. */
const GO_TO_SCMP: Record<string, string> = {
  amd64: 'SCMP_ARCH_X86_64',
  '386': 'SCMP_ARCH_X86',
  x86: 'SCMP_ARCH_X86',
  x32: 'SCMP_ARCH_X32',
  arm64: 'SCMP_ARCH_AARCH64',
  arm: 'SCMP_ARCH_ARM',
  ppc64le: 'SCMP_ARCH_PPC64LE',
  s390x: 'SCMP_ARCH_S390X',
  riscv64: 'SCMP_ARCH_RISCV64',
  mips64: 'SCMP_ARCH_MIPS64',
};

/** Node's `process.arch` -> Go arch name (the names seccomp.json filters use). */
export function goArchOf(nodeArch: string): string {
  const map: Record<string, string> = { x64: 'amd64', ia32: '386', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return map[nodeArch] ?? nodeArch;
}

/** Compares dotted kernel versions numerically; negative when a < b. */
function compareKernel(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((p) => parseInt(p, 10));
  const pb = b.split(/[.-]/).map((p) => parseInt(p, 10));
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = Number.isFinite(pa[i]) ? (pa[i] as number) : 0; // `as`: checked finite just before
    const y = Number.isFinite(pb[i]) ? (pb[i] as number) : 0; // `as`: same
    if (x !== y) return x - y;
  }
  return 0;
}

/**
 * Converts `profile` to OCI form for a container on `opts.goArch` holding `opts.capabilities`.
 * Throws when the profile lists no architecture for the native one and has no `architectures`.
 */
export function convertSeccompProfile(profile: DockerSeccompProfile, opts: SeccompConvertOptions): OciSeccomp {
  const caps = new Set(opts.capabilities);
  const native = GO_TO_SCMP[opts.goArch];
  let architectures: string[] = [];
  const archMap = profile.archMap ?? [];
  if (archMap.length > 0) {
    const entry = archMap.find((a) => a.architecture === native);
    if (entry) architectures = [entry.architecture, ...(entry.subArchitectures ?? [])];
  } else if (profile.architectures) {
    architectures = [...profile.architectures];
  }

  const syscalls: OciSeccompRule[] = [];
  for (const rule of profile.syscalls ?? []) {
    const inc = rule.includes ?? {};
    const exc = rule.excludes ?? {};
    if (inc.arches && inc.arches.length > 0 && !inc.arches.includes(opts.goArch)) continue;
    if (exc.arches && exc.arches.includes(opts.goArch)) continue;
    if (inc.caps && inc.caps.length > 0 && !inc.caps.every((c) => caps.has(c))) continue;
    if (exc.caps && exc.caps.some((c) => caps.has(c))) continue;
    if (opts.kernelVersion !== undefined) {
      if (inc.minKernel && compareKernel(opts.kernelVersion, inc.minKernel) < 0) continue;
      if (exc.minKernel && compareKernel(opts.kernelVersion, exc.minKernel) >= 0) continue;
    }
    const names = rule.names && rule.names.length > 0 ? [...rule.names] : rule.name ? [rule.name] : [];
    if (names.length === 0) continue;
    const out: OciSeccompRule = { names, action: rule.action };
    if (rule.errnoRet !== undefined && rule.errnoRet !== null) out.errnoRet = rule.errnoRet;
    if (rule.args && rule.args.length > 0) {
      out.args = rule.args.map((a) => ({ index: a.index, value: a.value, valueTwo: a.valueTwo ?? 0, op: a.op }));
    }
    syscalls.push(out);
  }

  const result: OciSeccomp = { defaultAction: profile.defaultAction, architectures, syscalls };
  if (profile.defaultErrnoRet !== undefined && profile.defaultErrnoRet !== null) result.defaultErrnoRet = profile.defaultErrnoRet;
  return result;
}
