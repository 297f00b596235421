#!/usr/bin/env bash
# Runs every test of Plaza:
#   1. formatting and lints;
#   2. unit and integration tests (real servers and WebRTC peers on 127.0.0.1);
#   3. the browser client in real headless Chromium (scripts/browser-test.sh);
#   4. the Docker image: build, run, a call through it (scripts/docker-test.sh), when a Docker
#      daemon is reachable; otherwise it says plainly that it was skipped.
#
# Network: everything uses 127.0.0.1 only. When this machine allows it (root, or unprivileged
# user namespaces), steps 2 and 3 run inside a fresh network namespace that has nothing but
# loopback, so no packet can leave the machine. Docker uses host networking on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --release --all-targets --locked -- -D warnings

echo "== unit and integration tests"
# Build everything first (this may download crates); the tests themselves run offline.
cargo test --release --locked --no-run
# One test at a time: each call test is sized to use the whole (2-core) machine.
run_tests=(cargo test --release --locked --offline -- --test-threads=1)
netns=""
if unshare -n true 2>/dev/null; then netns=-n; elif unshare -rn true 2>/dev/null; then netns=-rn; fi
if [ -n "$netns" ]; then
  echo "running the tests in a loopback-only network namespace (unshare $netns)"
  unshare "$netns" sh -c 'ip link set lo up && exec "$@"' sh "${run_tests[@]}"
else
  echo "network namespaces unavailable: running the tests on the host (they use 127.0.0.1 only)"
  "${run_tests[@]}"
fi

echo "== browser tests (headless Chromium)"
scripts/browser-test.sh

echo "== Docker image"
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker
if command -v "$DOCKER" >/dev/null 2>&1 && "$DOCKER" info >/dev/null 2>&1; then
  scripts/docker-test.sh
else
  echo "SKIPPED: the Docker image test needs a running Docker daemon, and none is reachable here."
  echo "         (.ci/run starts one when it can; see ../shared/tools/DOCKER-LOCAL.md)"
fi
echo "all tests passed"
