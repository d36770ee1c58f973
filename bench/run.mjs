#!/usr/bin/env node
// `npm run bench -- NAME [args…]`: runs the compiled benchmark dist/bench/NAME.js (build first
// with `npm run build`). Each benchmark prints its figures and ends with one JSON line.
// It runs holding the machine-wide lock the integration test files take turns on
// (src/proc/host-tests-lock.ts): a benchmark beside a test file would skew its figures and
// have its bridges and VMs taken for the file's leaks. The kernel drops the lock at exit.
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const name = process.argv[2];
const dir = join(root, 'dist', 'bench');
if (!name) {
  const names = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.js')).map((f) => f.slice(0, -3)) : [];
  console.error(`usage: npm run bench -- NAME   (available: ${names.join(', ') || 'none; run npm run build'})`);
  process.exit(2);
}
const file = join(dir, `${name}.js`);
if (!existsSync(file)) {
  console.error(`no benchmark named ${name} (looked for ${file}; run npm run build first)`);
  process.exit(2);
}
process.argv.splice(2, 1);
const { acquireHostTestsLock, HOST_TESTS_LOCK } = await import(pathToFileURL(join(root, 'dist', 'src', 'proc', 'host-tests-lock.js')).href);
// Kept referenced for the whole run: a lock's file handle collected as garbage would be closed.
globalThis.carapaceBenchLock = await acquireHostTestsLock(0).catch(async (e) => {
  if (e?.name !== 'FileLockTimeoutError') throw e;
  console.error(`waiting for ${HOST_TESTS_LOCK}: an integration test file or another benchmark holds it${e.holder ? ` (last taken by pid ${e.holder})` : ''}`);
  return acquireHostTestsLock(6 * 3600_000);
});
await import(pathToFileURL(file).href);
