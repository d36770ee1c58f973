/**
 * The guest agent's loader in a cell: `/usr/bin/node /opt/carapace/dist/guest/agent.cjs [flags]`
 * (flags in start.ts). scripts/build-guest.mjs bundles the agent into one file beside this one
 * and makes a V8 code cache of it with the same /usr/bin/node the guest runs (the host's, shared
 * over 9p); this loader compiles the bundle with that cache and starts the agent.
 *
 * Why: under software emulation a cell's node spends most of its start compiling JavaScript.
 * Loading ~150 modules over 9p took 2.3 s; the bundle 0.85 s; the bundle with its code cache
 * 0.65 s. Hand-written because Node 20 has no module.enableCompileCache (Node 22.1 added it),
 * and vm.Script's cachedData is the API under it.
 *
 * The bundle and cache names carry the bundle's sha256 (baked into this file by the build), so
 * a cache is only ever offered with the exact bytes it was made from (V8 itself checks only its
 * version, flags and the source's length). V8 rejects a cache made by another node (e.g. one
 * upgraded after the build): the agent then starts uncached, slower, and says so once.
 *
 * With CARAPACE_WRITE_CODE_CACHE=PATH (the build), it runs the bundle's top level (every
 * module's initialisation: the functions that ran are compiled, so they are in the cache),
 * writes the cache to PATH and exits without starting the agent.
 *
 * tsc also emits dist/src/guest/loader.js, which nothing runs: only the build's copy has the
 * names defined.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { bootLine, evaluateBundle, runGuestAgent } from './bundle-boot.js';

/** The bundle's file name, `agent-<sha256 prefix>.cjs`: defined by scripts/build-guest.mjs. */
declare const __CARAPACE_GUEST_BUNDLE__: string;
/** Its code cache's file name, `agent-<sha256 prefix>.cache`: defined by scripts/build-guest.mjs. */
declare const __CARAPACE_GUEST_CACHE__: string;

const say = (level: 30 | 40, msg: string, fields: Record<string, unknown> = {}): void => bootLine(level, 'guest-loader', msg, fields);

function load(): void {
  const t0 = performance.now();
  const writeCache = process.env.CARAPACE_WRITE_CODE_CACHE;
  // process.argv[1] is this file: node was started with it.
  const dir = dirname(process.argv[1] ?? '.');
  const bundlePath = join(dir, __CARAPACE_GUEST_BUNDLE__);
  const cachePath = join(dir, __CARAPACE_GUEST_CACHE__);
  const source = readFileSync(bundlePath, 'utf8');
  const cachedData = writeCache === undefined && existsSync(cachePath) ? readFileSync(cachePath) : undefined;
  // node-pty (external, native, loaded at the first exec session) resolves from the bundle's own
  // directory: the install's node_modules, mounted in the guest with the rest of it.
  const { bundle, script } = evaluateBundle(bundlePath, source, createRequire(bundlePath), cachedData);
  if (writeCache !== undefined) {
    writeFileSync(writeCache, script.createCachedData());
    return;
  }
  const ms = Math.round(performance.now() - t0);
  if (cachedData === undefined) say(40, 'no code cache for the guest agent bundle; starting uncached', { cache: cachePath, loadMs: ms });
  else if (script.cachedDataRejected === true) say(40, 'V8 rejected the guest agent code cache (node changed since the build?); starting uncached', { cache: cachePath, loadMs: ms });
  else say(30, 'guest agent bundle loaded', { loadMs: ms, processMs: Math.round(performance.now()) });
  runGuestAgent(bundle);
}

load();
