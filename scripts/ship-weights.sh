#!/usr/bin/env bash
# Make a finished training run's weights the shipped ones, and regenerate what the package derives
# from them.
#
#   bash scripts/ship-weights.sh checkpoints/fer2013_phased/best.pt [../shared/data/fer2013]
#
# 1. Calibrates the candidate (its temperature, fitted on the slice of the training split its run
#    held out).
# 2. Refuses it unless it beats the shipped weights on PublicTest (single crop), holds at most
#    1.30 M parameters and keeps the split tensor's shape: every strategy must go on working.
# 3. Replaces shared_model/weights/fer2013_default.pt, re-exports shared_model/onnx_model/ (ONNX of
#    every partition and fer-cloud's attention.npz), and rewrites the results that depend on the
#    weights: results/training/ (lineage, the run's log and curves), results/accuracy/ and
#    results/peers/.
#
# Run it on a quiet machine (pause a training run). Afterwards: the test suite, then the
# figures that quote these results in README.md, docs/results.md and docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."

candidate=${1:?usage: bash scripts/ship-weights.sh WEIGHTS [DATA]}
data=${2:-../shared/data/fer2013}
[ -f "$candidate" ] || { echo "ship-weights: no checkpoint $candidate" >&2; exit 2; }
[ -d "$data/train" ] && [ -d "$data/public_test" ] || { echo "ship-weights: $data needs train/ and public_test/" >&2; exit 2; }
train=.venv/bin/fer-train
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== calibrating $candidate"
"$train" calibrate --data "$data" --weights "$candidate" --out "$work/calibrated.pt"
echo "== PublicTest: the candidate, then the shipped weights"
"$train" eval --data "$data/public_test" --weights "$work/calibrated.pt" --json > "$work/candidate.json"
"$train" eval --data "$data/public_test" --json > "$work/shipped.json"

.venv/bin/python - "$work" <<'EOF'
import json, sys
from pathlib import Path

from shared_model.checkpoint import default_weights_path, load_checkpoint

work = Path(sys.argv[1])
MAX_PARAMETERS = 1_300_000
new, old = (json.loads((work / f"{name}.json").read_text()) for name in ("candidate", "shipped"))
model = load_checkpoint(work / "calibrated.pt").build_model()
shipped = load_checkpoint(default_weights_path()).build_model()
parameters = sum(p.numel() for p in model.parameters())
problems = []
if parameters > MAX_PARAMETERS:
    problems.append(f"{parameters:,} parameters, more than {MAX_PARAMETERS:,}")
if tuple(model.config.split_shape) != tuple(shipped.config.split_shape):
    problems.append(f"split tensor {tuple(model.config.split_shape)}, not {tuple(shipped.config.split_shape)}")
if new["accuracy"] <= old["accuracy"]:
    problems.append(f"PublicTest accuracy {new['accuracy']:.4f}, not above the shipped {old['accuracy']:.4f}")
for name, report in (("candidate", new), ("shipped", old)):
    low, high = report["accuracy_interval_95"]
    print(f"{name:<10} accuracy {report['accuracy']:.4f} [{low:.4f}, {high:.4f}]  macro-F1 {report['macro_f1']:.3f}  "
          f"weights {report['weights']}  temperature {report['temperature']:.3f}")
print(f"candidate  {parameters:,} parameters; recall " + ", ".join(f"{k} {v:.3f}" for k, v in new["per_class_recall"].items()))
if problems:
    sys.exit("ship-weights: refused: " + "; ".join(problems))
EOF

echo "== shipping"
cp "$work/calibrated.pt" shared_model/weights/fer2013_default.pt
"$train" export --out shared_model/onnx_model --parts head,cloud,tail --formats onnx --no-triton
"$train" info > results/training/lineage.txt
run=$(dirname "$candidate")
for file in log.csv curves.png; do
    [ -f "$run/$file" ] && cp "$run/$file" "results/training/$(basename "$run")_$file" || true
done
"$train" eval --data "$data/public_test" --without-copies-in "$data/train" \
    --plot results/accuracy/fer2013_public_test_confusion.png \
    --reliability results/accuracy/fer2013_public_test_reliability.png > results/accuracy/fer2013_public_test.txt
.venv/bin/fer-bench peers --data "$data/public_test" --without-copies-in "$data/train" --out results/peers
echo "== shipped $(sed -n 1p results/training/lineage.txt)"
echo "next: bash scripts/test.sh; then the figures in README.md, docs/results.md and docs/training.md"
