/**
 * The guest agent's startup snapshot, for cells under software emulation (TCG).
 * scripts/build-guest.mjs bundles this file and runs it as
 *   qemu-x86_64 -cpu <TCG_CPU> /usr/bin/node --snapshot-blob dist/guest/agent-tcg.blob --build-snapshot <it>
 * It evaluates the agent's bundle (every module's top level: zod's and the protocol's schemas,
 * pino...) into the heap node then saves. A cell starts
 *   /usr/bin/node --snapshot-blob <install>/dist/guest/agent-tcg.blob <install>/dist/guest/agent.cjs ARGS
 * and node, instead of its own built-in startup snapshot, deserialises this one and runs the
 * function below, which starts the agent (agent.cjs is not run; it names the install).
 *
 * Why: under emulation the bundle's top level took 0.55-0.7 s of a cell's boot after node's own
 * start, even from a code cache (loader.ts); deserialising it is a copy. Measured in a cell's
 * VM: node to the agent's first line 2.6 s cold / 1.1-1.2 s warm with the loader, 1.8-2.3 s /
 * 0.35-0.6 s from this snapshot.
 *
 * Why under qemu-x86_64: V8 takes a snapshot only on the CPU features it was made on (node exits
 * with status 14 otherwise). The guest's CPU under TCG is TCG_CPU, not the host's; the user-mode
 * emulator with the same model gives node the same features. Under KVM the guest has the host's
 * CPU and node's own start is short: cells there keep the loader.
 *
 * What a snapshot cannot hold: node refuses to save the state of some built-in modules (http's
 * parser, for one) and has not verified others. The bundle gets those (LAZY) through stand-ins
 * whose members load the real module at first use, after deserialisation; using one while the
 * snapshot is built fails the build, loudly. Values read at the bundle's top level are those
 * of the build (pino's default pid and hostname: start.ts gives its logger the real ones).
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { startupSnapshot } from 'node:v8';
import { bootLine, evaluateBundle, runGuestAgent } from './bundle-boot.js';

/** The bundle's file name, `agent-<sha256 prefix>.cjs`: defined by scripts/build-guest.mjs. */
declare const __CARAPACE_GUEST_BUNDLE__: string;
/**
 * The members of each LAZY built-in, read by scripts/build-guest.mjs from the same node:
 * 'f' a function, 'o' another object (read through a getter), or a primitive value (copied).
 */
declare const __CARAPACE_LAZY_BUILTINS__: Record<string, Record<string, 'f' | 'o' | { v: string | number | boolean | null }>>;

/** After deserialisation: a require resolving from the install's bundle (node-pty, built-ins). */
let runtimeRequire: NodeJS.Require | undefined;

/** A stand-in for the built-in `id`: each member loads the real module at its first use. */
function lazyBuiltin(id: string, members: Record<string, 'f' | 'o' | { v: string | number | boolean | null }>): object {
  let real: Record<string, unknown> | undefined;
  const load = (member: string): Record<string, unknown> => {
    if (runtimeRequire === undefined) {
      throw new Error(`the guest agent bundle uses ${id}.${member} at load time; the startup snapshot cannot hold ${id} (src/guest/snapshot-entry.ts)`);
    }
    // `as`: a built-in module's exports are an object of members
    real ??= runtimeRequire(id) as Record<string, unknown>;
    return real;
  };
  const stand: Record<string, unknown> = {};
  for (const [k, kind] of Object.entries(members)) {
    if (kind === 'f') {
      // Called or constructed (`new Worker(...)`) later, through the real member.
      stand[k] = function (this: unknown, ...args: unknown[]): unknown {
        const f = load(k)[k] as (...a: unknown[]) => unknown; // `as`: the build saw a function here
        return new.target ? Reflect.construct(f, args, new.target) : f.apply(this, args);
      };
    } else if (kind === 'o') {
      Object.defineProperty(stand, k, { enumerable: true, get: () => load(k)[k] });
    } else {
      stand[k] = kind.v;
    }
  }
  return stand;
}

function build(): void {
  const bundlePath = process.env.CARAPACE_GUEST_BUNDLE_PATH;
  if (bundlePath === undefined) throw new Error('CARAPACE_GUEST_BUNDLE_PATH is not set (scripts/build-guest.mjs sets it)');
  const lazy = new Map<string, object>();
  const requireForBundle = (id: string): unknown => {
    if (runtimeRequire !== undefined) return runtimeRequire(id);
    const name = id.replace(/^node:/, '');
    const members = __CARAPACE_LAZY_BUILTINS__[name];
    // The snapshot builder's own require (built-ins only): there is no import() while a snapshot is built.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    if (members === undefined) return require(id);
    let s = lazy.get(name);
    if (s === undefined) lazy.set(name, (s = lazyBuiltin(name, members)));
    return s;
  };
  const source = readFileSync(bundlePath, 'utf8');
  const { bundle } = evaluateBundle(bundlePath, source, requireForBundle);
  startupSnapshot.setDeserializeMainFunction(() => {
    // process.argv[1]: the loader, named on node's command line for this: the install's dist/guest.
    runtimeRequire = createRequire(join(dirname(process.argv[1] ?? '.'), __CARAPACE_GUEST_BUNDLE__));
    if (process.env.CARAPACE_SNAPSHOT_CHECK === '1') {
      // The build's check that the snapshot deserialises and gets here.
      process.stdout.write('carapace guest agent snapshot: ok\n');
      return;
    }
    bootLine(30, 'guest-snapshot', 'guest agent started from its startup snapshot', { processMs: Math.round(performance.now()) });
    runGuestAgent(bundle);
  });
}

build();
