#!/usr/bin/env bash
# install.sh: the console tests' npm packages (playwright-core, axe-core),
# at the versions of package-lock.json, into tests/console/node_modules.
# Skips npm when the installed tree already matches the lock file (npm ci
# would wipe and refetch it). Called by tests/console/run.sh and
# scripts/test.sh; needs npm's registry the first time only.
set -euo pipefail
cd "$(dirname "$0")"
if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ] &&
   node -e "require.resolve('playwright-core'); require.resolve('axe-core')" 2>/dev/null; then
  echo "console tests: node_modules is up to date"
  exit 0
fi
echo "console tests: npm ci in tests/console (playwright-core, axe-core)"
npm ci --no-audit --no-fund
