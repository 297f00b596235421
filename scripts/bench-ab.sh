#!/usr/bin/env bash
# Compares Plaza server binaries under the same load, interleaved so that drift of the machine
# (other tenants, thermal state) hits every binary alike: ROUNDS rounds, each running every
# binary once at SIZE for DURATION seconds with the current plaza-load. Run-to-run noise of the
# CPU figures at 8x8 on a 2-vCPU machine is about ±10 %; compare means over rounds.
#
# Usage: scripts/bench-ab.sh BIN... e.g.
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release --bin plaza)
#   scripts/bench-ab.sh /tmp/before/target/release/plaza target/release/plaza
# Env: SIZE (default 8x8), DURATION (20), ROUNDS (2), OUT (target/bench-ab).
# Runs inside a loopback-only network namespace when it can.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 SERVER_BINARY..." >&2; exit 2; }

if [ -z "${BENCH_IN_NETNS:-}" ] && unshare -n true 2>/dev/null; then
  cargo build --release --locked --bin plaza-load
  export BENCH_IN_NETNS=1
  exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$0" "$@"
fi

SIZE=${SIZE:-8x8}; DURATION=${DURATION:-20}; ROUNDS=${ROUNDS:-2}; OUT=${OUT:-target/bench-ab}
p=${SIZE%x*}; s=${SIZE#*x}
HTTP=127.0.0.1:18092
mkdir -p "$OUT"
printf '%-40s %5s %12s %8s %20s %10s %8s\n' binary round "µs/packet" "CPU %" "latency p50/p99 ms" "join p95" "RSS MB"
for round in $(seq 1 "$ROUNDS"); do
  i=0
  for bin in "$@"; do
    i=$((i + 1))
    json="$OUT/$i-$round.json"
    PLAZA_RTC__UDP_BIND=127.0.0.1 PLAZA_LOG__LEVEL=warn \
      "$bin" --listen "$HTTP" --udp-port 18592 --advertise-ip 127.0.0.1 >"$OUT/server-$i-$round.log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
      curl -fsS "http://$HTTP/healthz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    target/release/plaza-load --url "ws://$HTTP/ws" --room ab --publishers "$p" --subscribers "$s" \
      --duration "$DURATION" --audio --server-pid "$server" --json "$json" >/dev/null || true
    kill -TERM "$server"; wait "$server" || true
    python3 - "$json" "$bin" "$round" <<'EOF'
import json, sys
path, binary, rnd = sys.argv[1:]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    print(f"{binary[-40:]:<40} {rnd:>5} failed: see the server log next to {path}")
    sys.exit()
print(f"{binary[-40:]:<40} {rnd:>5} {r['server_cpu_us_per_forwarded_packet']:>12.1f} "
      f"{r['server_cpu_percent']:>8.1f} {r['latency_ms_p50']:>9.2f} / {r['latency_ms_p99']:<8.2f} "
      f"{r['join_ms_p95']:>10.0f} {r['server_rss_mb_after']:>8.1f}   delivery {r['delivery_percent']:.3f} %")
EOF
  done
done
