#!/usr/bin/env bash
# The measurements behind docs/network.md: the edge's runtimes per device profile,
# every strategy across 200..1000 KB/s (both shapers, three profiles), the paper's
# bandwidth trace (camera profile), the trace with the cloud killed for 20 s, and a
# wider trace (20..1000 KB/s) that crosses from edge to cloud and back.
# Needs root (network namespaces, tc, cgroup CPU quotas) and a quiet machine:
# nothing else running. About 30 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=.venv/bin/fer-bench
out=${1:-docs/network}
mkdir -p "$out/runtimes" "$out/trace_camera" "$out/trace_kill" "$out/trace_wide"
$bench edge-runtimes --out "$out/runtimes" | tee "$out/runtimes/table.txt"
$bench trace --profile camera --dwell-s 6 --kill-at 30 --restart-after 20 --out "$out/trace_kill" | tee "$out/trace_kill/table.txt"
$bench trace --profile camera --dwell-s 6 --steps 20,50,100,200,500,1000,500,200,100,50,20 \
    --strategies edge,cloud-jpeg,split-rest,auto --out "$out/trace_wide" | tee "$out/trace_wide/table.txt"
$bench trace --profile camera --dwell-s 6 --out "$out/trace_camera" | tee "$out/trace_camera/table.txt"
$bench network --requests 20 --out "$out" | tee "$out/network_table.txt"
