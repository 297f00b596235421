#!/usr/bin/env bash
# Measures Plaza under load: for each size (publishers x subscribers) it starts a fresh
# server on loopback, built with the `dist` profile (what the Docker image ships), runs
# plaza-load against it for DURATION seconds (video at ~800 kbit/s and 30 fps with a keyframe
# every 2 s, plus Opus-sized audio), and collects the reports. Then it runs the forwarding core's Criterion benchmark, and writes everything into
# docs/BENCHMARKS.md (section "Load runs", replaced each time) with the machine and the commit.
#
# Usage: scripts/bench.sh [sizes...]      e.g. scripts/bench.sh 1x5 8x8
#        DURATION=10 scripts/bench.sh     shorter runs
# Runs inside a loopback-only network namespace when it can.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${BENCH_IN_NETNS:-}" ] && unshare -n true 2>/dev/null; then
  cargo build --profile dist --locked --bins
  cargo bench --locked --no-run >/dev/null 2>&1 || true
  export BENCH_IN_NETNS=1
  exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$0" "$@"
fi
cargo build --profile dist --locked --bins --offline

DURATION=${DURATION:-30}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1x5 2x10 4x8 4x16 8x8)
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
HTTP=127.0.0.1:18090

for size in "${SIZES[@]}"; do
  p=${size%x*}; s=${size#*x}
  echo "== $p publishers x $s subscribers, ${DURATION} s"
  PLAZA_RTC__UDP_BIND=127.0.0.1 PLAZA_LOG__LEVEL=warn \
    target/dist/plaza --listen "$HTTP" --udp-port 18590 --advertise-ip 127.0.0.1 \
      >"$OUT/server-$size.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://$HTTP/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  idle_rss=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  target/dist/plaza-load --url "ws://$HTTP/ws" --room "bench-$size" \
    --publishers "$p" --subscribers "$s" --duration "$DURATION" --audio \
    --server-pid "$server" --json "$OUT/load-$size.json" | grep -v '^[{} ]' || true
  echo "{\"idle_rss_kb\": $idle_rss}" >"$OUT/idle-$size.json"
  kill -TERM "$server"; wait "$server" || true
done

echo "== forwarding core (criterion)"
cargo bench --locked --offline --bench fanout -- --warm-up-time 1 --measurement-time 3 \
  --output-format bencher 2>/dev/null | tee "$OUT/fanout.txt" | grep '^test' || true

python3 scripts/bench_report.py "$OUT" "${SIZES[@]}"
