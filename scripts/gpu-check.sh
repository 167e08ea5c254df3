#!/usr/bin/env bash
# GPU readiness in one go, on a GPU machine: the gpu-marked tests (fer-cloud on CUDA against the
# CPU, batching on the GPU, Triton's Python backend on the GPU) and `fer-bench server` for fer_attention
# and fer_rest with the server on the GPU and on one CPU core; results into a folder. A few minutes.
#
#   bash scripts/gpu-check.sh [RESULTS]   results into RESULTS (default: $OUT, else results/gpu-check)
#   bash scripts/gpu-check.sh --fetch-wheels
#       where PyPI is reachable: download into .whl/ the wheels a GPU machine without this project's
#       environment lacks (for Python $FER_GPU_PYTHON_VERSION, default 3.12), to copy along with the tree.
#
# It needs no network: it runs with $PYTHON, else .venv/bin/python where that works, else python3
# (the project from this folder on PYTHONPATH, not installed), plus any wheels in .whl/. Only if
# something is still missing does it try PyPI, and says so. Without a CUDA device it says so and
# exits with 2.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
# What a machine with only PyTorch and the common packages lacks (pinned to the versions tested here).
NEEDED=(grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2 ptwt==1.0.1 PyWavelets==1.9.0)
# fer-bench server's load client is tritonclient, which needs protobuf below 7: a site of its own.
CLIENT=(tritonclient==2.73.0 protobuf==6.33.6 python-rapidjson==1.25)
IMPORTS="import grpc, grpc_health.v1.health, grpc_reflection.v1alpha.reflection, google.protobuf, ptwt, pywt, prometheus_client, cv2, PIL, tqdm, matplotlib; import cloud_server.cli, fer_bench.cli, edge_client.transport"

if [ "${1:-}" = "--fetch-wheels" ]; then
    version="${FER_GPU_PYTHON_VERSION:-3.12}"
    mkdir -p .whl
    platforms=()
    for n in 2_17 2_27 2_28 2_31 2_34; do platforms+=(--platform "manylinux_${n}_x86_64"); done
    for set in project client; do
        if [ "$set" = project ]; then names=("${NEEDED[@]}"); dest=.whl; else names=("${CLIENT[@]}"); dest=.whl/client; fi
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
            "${platforms[@]}" --platform manylinux2014_x86_64 -d "$dest" "${names[@]}" || exit 1
    done
    echo "gpu-check: wheels for Python $version in .whl/ ($(du -sh .whl | cut -f1)); copy .whl/ along with the tree" >&2
    exit 0
fi

RESULTS="${1:-${OUT:-results/gpu-check}}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
echo "gpu-check: Python $PY" >&2

# 1. A CUDA device, seen by the driver and by PyTorch.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi is missing or fails): nothing to check" | tee "$RESULTS/no-gpu.txt" >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu-check: $PY has no PyTorch that sees CUDA (torch.cuda.is_available() is False): nothing to check" | tee "$RESULTS/no-gpu.txt" >&2
    exit 2
fi

# 2. What the project imports: this folder, the carried wheels, PyPI only as the last resort.
SITE="${TMPDIR:-/tmp}/fer-gpu-check-site"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 3
    export PYTHONPATH="$SITE:$PYTHONPATH"
    echo "gpu-check: installed the carried wheels from .whl/ into $SITE" >&2
fi
if ! "$PY" -c "$IMPORTS" 2>"$RESULTS/imports.txt"; then
    echo "gpu-check: missing packages ($(tail -1 "$RESULTS/imports.txt")); trying PyPI" >&2
    if timeout 300 "$PY" -m pip install --quiet --no-deps --target "$SITE" "${NEEDED[@]}"; then
        export PYTHONPATH="$SITE:$PYTHONPATH"
        echo "gpu-check: installed ${NEEDED[*]} from PyPI into $SITE" | tee -a "$RESULTS/environment.txt" >&2
    fi
    if ! "$PY" -c "$IMPORTS" 2>"$RESULTS/imports.txt"; then
        echo "gpu-check: still missing: $(tail -1 "$RESULTS/imports.txt"). Where PyPI is reachable run 'bash scripts/gpu-check.sh --fetch-wheels' and bring .whl/ along" >&2
        exit 3
    fi
fi
rm -f "$RESULTS/imports.txt"

# 3. The machine (one file: a device machine hands back at most 8).
nvidia-smi >>"$RESULTS/environment.txt" 2>&1
"$PY" - >>"$RESULTS/environment.txt" 2>&1 <<'EOF'
import platform, sys, torch, grpc, google.protobuf
import onnxruntime
print(f"python {sys.version.split()[0]} ({sys.executable}), {platform.platform()}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, device {torch.cuda.get_device_name(0)}")
print(f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}, onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}")
EOF
tail -3 "$RESULTS/environment.txt" >&2

# 4. The gpu tests.
export PYTHONUNBUFFERED=1
timeout 420 "$PY" -m pytest tests/test_gpu.py -m gpu -rA -p no:cacheprovider 2>&1 | tee "$RESULTS/pytest.txt"
tests=${PIPESTATUS[0]}
if [ "$tests" -eq 0 ] && ! grep -q " passed" "$RESULTS/pytest.txt"; then
    echo "gpu-check: no gpu test passed (all skipped?): see $RESULTS/pytest.txt" >&2
    tests=1
fi

# 5. Server load, fer-cloud on the GPU and then on the CPU (batching on), from fer-bench's tritonclient load
# client: $FER_TRITON_PYTHON, .venv-tritonclient, or the carried client wheels (a site of its own).
if [ -z "${FER_TRITON_PYTHON:-}" ] && [ ! -x .venv-tritonclient/bin/python ]; then
    CLIENT_SITE="${TMPDIR:-/tmp}/fer-gpu-check-client"
    if ls .whl/client/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$CLIENT_SITE" .whl/client/*.whl
    elif ! "$PY" -c "import tritonclient.grpc" 2>/dev/null; then
        timeout 300 "$PY" -m pip install --quiet --no-deps --target "$CLIENT_SITE" "${CLIENT[@]}" \
            && echo "gpu-check: installed ${CLIENT[*]} from PyPI into $CLIENT_SITE" | tee -a "$RESULTS/environment.txt" >&2
    fi
    printf '#!/bin/sh\nPYTHONPATH=%s exec %s "$@"\n' "$CLIENT_SITE" "$PY" >"${TMPDIR:-/tmp}/fer-gpu-check-client-python"
    chmod +x "${TMPDIR:-/tmp}/fer-gpu-check-client-python"
    export FER_TRITON_PYTHON="${TMPDIR:-/tmp}/fer-gpu-check-client-python"
fi
device=()
if "$PY" -m fer_bench.cli server --help 2>/dev/null | grep -q -- "--device"; then
    device=(--device cuda)
else
    echo "note: fer-bench server has no --device option; the fer-cloud it starts runs with --device auto, which is CUDA on this machine" >"$RESULTS/bench.txt"
fi
# Each model that takes the split tensor on the GPU, then on this machine's CPU, right after: what the GPU buys.
bench=0
for model in fer_attention fer_rest; do
    for where in cuda cpu; do
        if [ "$where" = cuda ]; then flags=("${device[@]}"); else flags=(--device cpu); fi
        echo "== $model, fer-cloud on $where ==" | tee -a "$RESULTS/bench.txt"
        timeout 300 "$PY" -m fer_bench.cli server "${flags[@]}" --model "$model" --batching on --concurrency 1,4,16,64 --seconds 2 --warmup-seconds 1 \
            --out "$RESULTS/bench-$model-$where" 2>&1 | grep -v "server load:" | tee -a "$RESULTS/bench.txt"
        [ "${PIPESTATUS[0]}" -eq 0 ] || bench=1
    done
done

echo "gpu-check: tests exit $tests, bench exit $bench; results in $RESULTS" >&2
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
