/**
 * Resource quantities as users write them, and their canonical numbers.
 * CPU is in cores (`0.5`, `"500m"`, `2`); memory is in MiB (`128`, `"128Mi"`, `"1Gi"`,
 * `"512M"`). Canonical forms: cpu as a number of cores rounded to millicores, memory as an
 * integer number of MiB. Pure.
 */

/** Parses a CPU quantity to cores; returns undefined when the text is not a quantity. */
export function parseCpu(value: number | string): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? Math.round(value * 1000) / 1000 : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)(m?)\s*$/.exec(value);
  if (!m || m[1] === undefined) return undefined;
  const n = Number(m[1]);
  const cores = m[2] === 'm' ? n / 1000 : n;
  return Math.round(cores * 1000) / 1000;
}

const MEMORY_UNITS: Record<string, number> = {
  '': 1, // a bare number in a string means MiB, like a bare number
  Ki: 1 / 1024,
  Mi: 1,
  Gi: 1024,
  Ti: 1024 * 1024,
  K: 1000 / (1024 * 1024),
  M: 1_000_000 / (1024 * 1024),
  G: 1_000_000_000 / (1024 * 1024),
};

/** Parses a memory quantity to whole MiB (rounded up); undefined when not a quantity. */
export function parseMemoryMiB(value: number | string): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? Math.ceil(value) : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G)?\s*$/.exec(value);
  if (!m || m[1] === undefined) return undefined;
  const factor = MEMORY_UNITS[m[2] ?? ''];
  if (factor === undefined) return undefined;
  return Math.ceil(Number(m[1]) * factor);
}

/** Formats MiB the way people read it: `512Mi`, `2Gi`. */
export function formatMemory(mib: number): string {
  return mib >= 1024 && mib % 1024 === 0 ? `${mib / 1024}Gi` : `${mib}Mi`;
}
