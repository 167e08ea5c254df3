#!/usr/bin/env bash
# The runs behind docs/network.md, each into its own folder under results/ (or under the folder
# given): the edge's compute per device profile and runtime (results/edge_runtimes), every
# strategy across 200..1000 KB/s with both shapers and three profiles (results/network), and the
# paper's bandwidth trace on the camera profile (results/trace).
# Needs root (network namespaces, tc, cgroup CPU quotas) and a quiet machine: nothing else running
# (pause a training run with SIGSTOP while it measures).
set -euo pipefail
cd "$(dirname "$0")/.."
bench=.venv/bin/fer-bench
out=${1:-results}
$bench edge-runtimes --out "$out/edge_runtimes"
$bench network --strategies edge,cloud-jpeg,split,split-rest,auto --requests 100 --out "$out/network"
$bench trace --profile camera --dwell-s 6 --strategies edge,cloud-jpeg,split,split-rest,auto --out "$out/trace"
