#!/usr/bin/env node
// `npm run bench -- NAME [args…]`: runs the compiled benchmark dist/bench/NAME.js (build first
// with `npm run build`). Each benchmark prints its figures and ends with one JSON line.
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
await import(pathToFileURL(file).href);
