#!/usr/bin/env python3
"""Writes the load-run table of docs/BENCHMARKS.md from scripts/bench.sh's reports."""
import json, os, platform, subprocess, sys, datetime

out_dir, sizes = sys.argv[1], sys.argv[2:]
doc = "docs/BENCHMARKS.md"

def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
machine = f"{os.cpu_count()} vCPU ({cpu}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, Linux {platform.release()}"
commit = sh("git", "rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if sh("git", "status", "--porcelain", "--untracked-files=no") else "")
rows = []
for size in sizes:
    try:
        r = json.load(open(f"{out_dir}/load-{size}.json"))
        idle = json.load(open(f"{out_dir}/idle-{size}.json"))["idle_rss_kb"] / 1024
    except (OSError, ValueError):
        rows.append(f"| {size} | failed: see {out_dir}/server-{size}.log | | | | | | | |")
        continue
    participants = r["publishers"] + r["subscribers"]
    per_participant = (r["server_rss_mb_after"] - idle) / participants if r["server_rss_mb_after"] else float("nan")
    rows.append(
        f"| {r['publishers']}×{r['subscribers']} | {r['delivery_percent']:.3f} % | "
        f"{r['forwarded_packets_per_second']:.0f} | {r['server_cpu_percent']:.0f} % | "
        f"{r['server_cpu_us_per_forwarded_packet']:.1f} µs | "
        f"{r['latency_ms_p50']:.2f} / {r['latency_ms_p95']:.2f} / {r['latency_ms_p99']:.2f} ms | "
        f"{r['join_ms_p50']:.0f} / {r['join_ms_p95']:.0f} ms"
        + (f" (video {r['join_video_ms_p95']:.0f})" if "join_video_ms_p95" in r else "") + " | "
        f"{r['server_rss_mb_after']:.0f} MB | {per_participant:.2f} MB |")
fanout = []
try:
    for line in open(f"{out_dir}/fanout.txt"):
        if line.startswith("test fanout/"):
            parts = line.split()
            n = int(parts[1].split("/")[1])
            ns = float(parts[4].replace(",", ""))
            fanout.append(f"| {n} | {ns:.0f} ns | {ns / n:.1f} ns |")
except OSError:
    pass

section = f"""## Load runs

Measured {datetime.date.today()} on {machine}; commit {commit}.
Command: `scripts/bench.sh {' '.join(sizes)}` (each size: a fresh `plaza` of the `dist` profile, as shipped, on loopback,
`plaza-load --publishers P --subscribers S --duration {os.environ.get('DURATION', '30')} --audio --server-pid PID`;
video ≈ 800 kbit/s, 30 fps, keyframe every 2 s, packets ≤ 1100 bytes; Opus-sized audio at 50
packets/s). The load tool runs on the same 2 cores as the server, so its own CPU competes with
the server's: latency and CPU figures are upper bounds of what the server alone would cost.

| P×S | delivery | forwarded pkt/s | server CPU | CPU per forwarded packet | latency p50 / p95 / p99 | join p50 / p95 | server RSS | RSS per participant beyond idle |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + """

### Forwarding core (Criterion, `cargo bench --bench fanout`)

One 1100-byte video packet in, fanned out to N subscribers (rewrite and output each):

| subscribers | time per input packet | per output packet |
|---|---|---|
""" + "\n".join(fanout) + "\n"

text = open(doc).read() if os.path.exists(doc) else "# Plaza benchmarks\n\n"
start = text.find("## Load runs")
if start >= 0:
    end = text.find("\n## ", start + 1)
    text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
else:
    text = text.rstrip() + "\n\n" + section
open(doc, "w").write(text)
print(section)
