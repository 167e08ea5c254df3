#!/usr/bin/env bash
# Second command: install (if needed) and run the whole test suite.
# tritonclient[grpc] needs protobuf below 7, so the standard-client test runs it
# from a virtual environment of its own, made here; likewise the torch-free edge.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x .venv-tritonclient/bin/python ]; then
    "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv .venv-tritonclient
fi
.venv-tritonclient/bin/python -m pip install --quiet 'tritonclient[grpc]>=2.40' 'numpy<3'
export FER_TRITON_PYTHON="$PWD/.venv-tritonclient/bin/python"
# The torch-free edge (edge-lite extra only), to prove it runs without PyTorch.
if [ ! -x .venv-edge-lite/bin/python ]; then
    "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv .venv-edge-lite
fi
.venv-edge-lite/bin/python -m pip install --quiet -e '.[edge-lite]'
export FER_LITE_PYTHON="$PWD/.venv-edge-lite/bin/python"
# pytorch_wavelets (the optional DWT backend) imports pkg_resources, so it needs
# setuptools below 81, while torch brings a newer one into .venv. Its venv holds only
# pytorch_wavelets and the older setuptools, and reads everything else (torch above all:
# 5.5 GB, not to be installed twice) from .venv's site-packages, which a .pth file adds
# after its own.
if [ ! -x .venv-pytorch-wavelets/bin/python ]; then
    "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv .venv-pytorch-wavelets
fi
MAIN_SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
PW_SITE="$(.venv-pytorch-wavelets/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
echo "import site; site.addsitedir('$MAIN_SITE')" > "$PW_SITE/fer-main-venv.pth"
.venv-pytorch-wavelets/bin/python -m pip install --quiet 'pytorch_wavelets>=1.3' 'setuptools<81'
export FER_PYTORCH_WAVELETS_PYTHON="$PWD/.venv-pytorch-wavelets/bin/python"
# The KServe SDK's API models (the schema check of deploy/kserve): only its wheel is read, never
# installed (its dependencies pin protobuf below 7).
if ! ls .cache/kserve/kserve-0.21.0-*.whl >/dev/null 2>&1; then
    .venv/bin/python -m pip download --quiet --no-deps --dest .cache/kserve 'kserve==0.21.0'
fi
export FER_KSERVE_WHEEL="$(ls .cache/kserve/kserve-0.21.0-*.whl)"
# Triton Inference Server for tests/test_triton_engine.py and `fer-bench server`: the nvidia-pytriton
# wheel ships a tritonserver binary with its Python backend (its own Python dependencies are not
# needed: --no-deps). The models run in this venv's Python, so it holds what they import: the project
# (torch-free modules), onnxruntime, OpenCV, Pillow, and NumPy below 2 (the wheel's backend stub was
# built against NumPy 1: under NumPy 2 every output reaches the client empty). Only where the wheel
# exists (Linux x86_64/aarch64) and the interpreter has a shared libpython (the stub embeds it).
TRITON_PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [[ "$(uname -s)-$(uname -m)" =~ ^Linux-(x86_64|aarch64)$ ]] && [ "$("$TRITON_PY" -c 'import sysconfig; print(sysconfig.get_config_var("Py_ENABLE_SHARED"))')" = 1 ]; then
    if [ ! -x .venv-triton/bin/python ]; then
        "$TRITON_PY" -m venv .venv-triton
    fi
    .venv-triton/bin/python -m pip install --quiet --no-deps 'nvidia-pytriton==0.7.0'
    .venv-triton/bin/python -m pip install --quiet 'numpy>=1.26,<2' 'onnxruntime>=1.18' 'opencv-python-headless>=4.8,<5' 'Pillow>=10' 'protobuf>=7.35.1,<8' 'grpcio>=1.85.1'
    .venv-triton/bin/python -m pip install --quiet --no-deps -e .
    TRITONSERVER=$(ls .venv-triton/lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver 2>/dev/null | head -n 1)
    if [ -n "$TRITONSERVER" ]; then
        export FER_TRITON_SERVER="$PWD/$TRITONSERVER"
    fi
else
    echo "no Triton Inference Server here (needs Linux x86_64/aarch64 and a Python with a shared libpython); its tests skip" >&2
fi
exec .venv/bin/python -m pytest "$@"
