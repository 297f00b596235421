#!/usr/bin/env bash
# Runs Plaza's browser tests: the browser client in static/ driven in real headless Chromium
# (Debian's /usr/bin/chromium through playwright-core, fake camera and microphone) against a
# real target/release/plaza that the tests start and stop themselves.
#
# The tests only use 127.0.0.1. When this machine allows it they run inside a fresh network
# namespace that has nothing but loopback, so neither Chromium nor the server can reach out.
#
# Usage: scripts/browser-test.sh [extra node --test arguments, e.g. --test-name-pattern=chat]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "Chromium not found at ${CHROMIUM:-/usr/bin/chromium}: apt-get install -y chromium" >&2
  exit 1
fi

cargo build --release --locked
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

mkdir -p test-artifacts
cd tests/browser
run_tests=(node --test --test-concurrency=1 --test-reporter=tap "$@" ./*.test.js)
started=$(date +%s)
status=0
if unshare -n true 2>/dev/null; then
  echo "running the browser tests in a loopback-only network namespace (unshare -n)"
  unshare -n sh -c 'ip link set lo up && exec "$@"' sh "${run_tests[@]}" || status=$?
else
  echo "network namespaces unavailable (unshare -n failed): running the browser tests on the host (they use 127.0.0.1 only)"
  "${run_tests[@]}" || status=$?
fi
echo "browser tests finished in $(( $(date +%s) - started )) s; screenshots and logs in test-artifacts/"
exit "$status"
