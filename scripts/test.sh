#!/usr/bin/env bash
# Installs what Carapace needs and runs the whole test suite: type check, lint, unit,
# integration (real runc, runsc, conmon, registry, SQLite) and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
npm run --silent lint
npx vitest run "$@"
