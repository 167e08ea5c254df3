#!/usr/bin/env bash
# First command: install everything, then run the main job on loopback:
# a fer-cloud service and the fer-edge daemon classifying the bundled sample
# photo with every strategy, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/fer-edge run edge_client/assets/astronaut.png
.venv/bin/fer-edge demo "$@"
