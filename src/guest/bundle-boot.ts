/**
 * What the two ways a cell starts its guest agent share: the loader (loader.ts: the bundle with
 * its code cache) and the startup snapshot's entry (snapshot-entry.ts: the bundle evaluated
 * while the snapshot is built). Both bundled by scripts/build-guest.mjs.
 */
import { dirname } from 'node:path';
import { Script } from 'node:vm';

/** The agent's bundle: its entry is start.ts. */
export interface GuestBundle {
  startGuestAgent(argv: string[]): Promise<void>;
}

type ModuleFunction = (exports: object, require: (id: string) => unknown, module: { exports: object }, filename: string, dirname: string) => void;

/**
 * Compiles `source` (the bundle at `path`, a CommonJS module) in node's CommonJS wrapper, with
 * `cachedData` when given, and runs its top level with `require`. The bundle has no import(): a
 * function deserialised from a code cache cannot run one (no host options survive the cache in
 * Node 20), so the build turns them into require().
 */
export function evaluateBundle(path: string, source: string, require: (id: string) => unknown, cachedData?: Buffer): { bundle: GuestBundle; script: Script } {
  const script = new Script(`(function (exports, require, module, __filename, __dirname) { ${source}\n})`, { filename: path, ...(cachedData ? { cachedData } : {}) });
  const fn = script.runInThisContext() as ModuleFunction; // `as`: the wrapper above evaluates to exactly this function
  const mod = { exports: {} };
  fn.call(mod.exports, mod.exports, require, mod, path, dirname(path));
  return { bundle: mod.exports as GuestBundle, script }; // `as`: the bundle's entry is start.ts
}

/** Starts the agent with this process's arguments; exits 1 if it fails. */
export function runGuestAgent(bundle: GuestBundle): void {
  bundle.startGuestAgent(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`carapace guest agent: ${(err as Error).message}\n`); // `as`: anything thrown here is an Error
    process.exit(1);
  });
}

/** One line on stderr (the VM's console) in the shape of the agent's pino lines, for what runs before its logger exists. */
export function bootLine(level: 30 | 40, component: string, msg: string, fields: Record<string, unknown> = {}): void {
  process.stderr.write(`${JSON.stringify({ level, time: Date.now(), pid: process.pid, component, ...fields, msg })}\n`);
}
