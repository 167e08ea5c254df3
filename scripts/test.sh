#!/usr/bin/env bash
# Second command: install (if needed) and run the whole test suite.
# tritonclient[grpc] needs protobuf below 7, so the standard-client test runs it
# from a virtual environment of its own, made here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x .venv-tritonclient/bin/python ]; then
    "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv .venv-tritonclient
fi
.venv-tritonclient/bin/python -m pip install --quiet 'tritonclient[grpc]>=2.40' 'numpy<3'
export FER_TRITON_PYTHON="$PWD/.venv-tritonclient/bin/python"
exec .venv/bin/python -m pytest "$@"
