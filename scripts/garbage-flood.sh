#!/usr/bin/env bash
# Plaza's memory under a flood of garbage datagrams at its media port, during a call and after
# it (issue 11, point 5). Runs the release binaries in a network namespace of its own with
# only loopback (127.0.0.1-200), so nothing leaves the machine:
#
#   sudo unshare -n scripts/garbage-flood.sh [TOTAL=5000000] [SOURCES=2000]
#
# Prints the server's RSS before, during and after, and its rejected-datagram counters.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-5000000}
sources=${2:-2000}
ip link set lo up
for i in $(seq 2 200); do ip addr add "127.0.0.$i/8" dev lo 2>/dev/null || true; done
target/release/plaza --listen 127.0.0.1:18080 --udp-port 51000 --advertise-ip 127.0.0.1 \
    >/tmp/garbage-flood-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -sf 127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$server/status"; }
echo "idle: $(rss)"
target/release/plaza-load --url ws://127.0.0.1:18080/ws --publishers 2 --subscribers 2 \
    --duration 25 --audio >/tmp/garbage-flood-load.log 2>&1 &
load=$!
for _ in $(seq 1 50); do
    [ "$(curl -s 127.0.0.1:18080/metrics | awk '/^plaza_peer_connections / {print $2}')" = 4 ] && break
    sleep 0.1
done
echo "in a call (2 publishers, 2 subscribers): $(rss)"
python3 scripts/garbage_flood.py 51000 "$total" "$sources"
echo "after the flood, call still on: $(rss)"
wait $load
echo "after the call: $(rss)"
curl -s 127.0.0.1:18080/metrics | grep -E '^plaza_rejected_datagrams_total'
grep -iE 'deliver|loss' /tmp/garbage-flood-load.log | head -3 || true
