#!/usr/bin/env bash
# Runs every test of Plaza: formatting, lints, unit and integration tests.
#
# The integration tests start real servers and WebRTC peers. They only ever use 127.0.0.1, and
# when this machine allows it (root, or unprivileged user namespaces) they run inside a fresh
# network namespace that has nothing but loopback, so no packet can leave the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --release --all-targets --locked -- -D warnings
# Build everything first (this may download crates); the tests themselves run offline.
cargo test --release --locked --no-run

# One test at a time: each call test is sized to use the whole (2-core) machine.
run_tests=(cargo test --release --locked --offline -- --test-threads=1)
netns=""
if unshare -n true 2>/dev/null; then netns=-n; elif unshare -rn true 2>/dev/null; then netns=-rn; fi
if [ -n "$netns" ]; then
  echo "running the tests in a loopback-only network namespace (unshare $netns)"
  exec unshare "$netns" sh -c 'ip link set lo up && exec "$@"' sh "${run_tests[@]}" "$@"
else
  echo "network namespaces unavailable: running the tests on the host (they use 127.0.0.1 only)"
  exec "${run_tests[@]}" "$@"
fi
