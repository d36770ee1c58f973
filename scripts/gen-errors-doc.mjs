#!/usr/bin/env node
// Regenerates docs/errors.md from the error catalogue (run after `npm run build`);
// src/model/errors.test.ts fails when the two drift apart.
import { writeFileSync } from 'node:fs';
import { ERROR_CATALOGUE } from '../dist/src/model/errors.js';

let s = '# Error codes\n\nEvery error Carapace reports has a stable code, never reused. The API answers with `{"error": {"code", "message", "details": [{"path", "message"}]}}` and the HTTP status below; the CLI prints `error CODE: message` and the field paths, and exits 1. Failures found by an agent while running an instance (image pulls, networks, starts) or taking a volume snapshot show in the status of that object (`reason`, `message`) instead. This table is checked against the code by `src/model/errors.test.ts`; regenerate it with `node scripts/gen-errors-doc.mjs`.\n\n| code | HTTP status | meaning |\n|---|---|---|\n';
for (const [code, e] of Object.entries(ERROR_CATALOGUE)) s += `| \`${code}\` | ${e.status || 'CLI'} | ${e.description} |\n`;
writeFileSync(new URL('../docs/errors.md', import.meta.url), s);
