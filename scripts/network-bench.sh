#!/usr/bin/env bash
# The measurements behind docs/network.md: the edge's runtimes per device profile,
# every strategy across 200..1000 KB/s (both shapers, three profiles), the paper's
# bandwidth trace on two profiles, and the trace with the cloud killed for 20 s.
# Needs root (network namespaces, tc, cgroup CPU quotas) and a quiet machine:
# nothing else running. About 40 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=.venv/bin/fer-bench
out=${1:-docs/network}
mkdir -p "$out/runtimes" "$out/trace_camera" "$out/trace_phone" "$out/trace_kill"
$bench edge-runtimes --out "$out/runtimes" | tee "$out/runtimes/table.txt"
$bench network --requests 15 --out "$out" | tee "$out/network_table.txt"
for profile in camera phone; do
    $bench trace --profile "$profile" --dwell-s 6 --out "$out/trace_$profile" | tee "$out/trace_$profile/table.txt"
done
$bench trace --profile camera --dwell-s 6 --kill-at 30 --restart-after 20 --out "$out/trace_kill" | tee "$out/trace_kill/table.txt"
