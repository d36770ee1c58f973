#!/usr/bin/env bash
# Installs what Carapace needs and runs the whole test suite: type check, lint, unit,
# integration (real runc, runsc, conmon, QEMU, registry, SQLite) and end-to-end tests.
# Ends with one plain summary line: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
npm run --silent typecheck   # sources, tests and benches
npm run --silent lint
rc=0
npx vitest run --reporter=default --reporter=json --outputFile=.test-results.json "$@" || rc=$?
node -e '
  const r = JSON.parse(require("node:fs").readFileSync(".test-results.json", "utf8"));
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed`);
' || true
exit "$rc"
