#!/usr/bin/env bash
# Builds the Docker image, runs it with host networking on loopback ports, waits for /healthz,
# runs a real two-participant call through the container, reads /metrics, and removes the
# container. Needs a running Docker daemon and the base images (see .ci/run, and
# ../shared/tools/DOCKER-LOCAL.md on machines without a registry).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker
IMAGE=plaza:test
NAME=plaza-docker-test
HTTP=127.0.0.1:18080
UDP_PORT=18500

cleanup() { "$DOCKER" rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== docker build"
DOCKER_BUILDKIT=1 "$DOCKER" build --network host -t "$IMAGE" .

echo "== docker run"
cleanup
"$DOCKER" run -d --init --network host --name "$NAME" \
  -e PLAZA_HTTP__LISTEN="$HTTP" \
  -e PLAZA_RTC__UDP_BIND=127.0.0.1 \
  -e PLAZA_RTC__UDP_PORT="$UDP_PORT" \
  "$IMAGE" --advertise-ip 127.0.0.1 >/dev/null

echo "== waiting for /healthz (at most 30 s)"
for _ in $(seq 1 300); do
  if curl -fsS "http://$HTTP/healthz" >/dev/null 2>&1; then break; fi
  if ! "$DOCKER" ps -q --filter "name=^$NAME$" | grep -q .; then
    "$DOCKER" logs "$NAME"; echo "the container exited"; exit 1
  fi
  sleep 0.1
done
curl -fsS "http://$HTTP/healthz" >/dev/null || { "$DOCKER" logs "$NAME"; echo "no /healthz after 30 s"; exit 1; }
page=$(curl -fsS "http://$HTTP/")
grep -qi "<html" <<<"$page" || { echo "the browser client is not served"; exit 1; }
user=$("$DOCKER" exec "$NAME" id -u)
[ "$user" != 0 ] || { echo "the container runs as root"; exit 1; }

echo "== a two-participant call through the container"
PLAZA_EXTERNAL="$HTTP" cargo test --release --locked --test external -- --ignored --nocapture

echo "== /metrics"
metrics=$(curl -fsS "http://$HTTP/metrics")
out=$(printf '%s\n' "$metrics" | awk '/^plaza_rtp_packets_total\{direction="out",kind="video"\}/ {print $2}')
joins=$(printf '%s\n' "$metrics" | awk '/^plaza_signal_messages_total\{type="join"\}/ {print $2}')
echo "forwarded video packets: ${out:-0}; joins: ${joins:-0}"
[ "${out:-0}" -gt 100 ] && [ "${joins:-0}" -ge 2 ] || { echo "metrics do not show the call"; exit 1; }

echo "== docker stop (SIGTERM, graceful)"
start=$(date +%s%N)
"$DOCKER" stop -t 15 "$NAME" >/dev/null
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$NAME")
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "stopped in ${ms} ms with exit code $code"
[ "$code" = 0 ] || { "$DOCKER" logs "$NAME" | tail -20; exit 1; }
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
echo "image size: $((size / 1000000)) MB"
echo "docker test: passed"
