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
# setuptools below 81: a venv of its own, with the project's torch, for its test.
if [ ! -x .venv-pytorch-wavelets/bin/python ]; then
    "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv .venv-pytorch-wavelets
fi
.venv-pytorch-wavelets/bin/python -m pip install --quiet -e '.[full,pytorch-wavelets]'
export FER_PYTORCH_WAVELETS_PYTHON="$PWD/.venv-pytorch-wavelets/bin/python"
exec .venv/bin/python -m pytest "$@"
