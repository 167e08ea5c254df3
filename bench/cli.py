"""``fer-bench``: benchmarks that write CSV, PNG and JSON under a results folder and print a table."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

from .model import format_table, model_table, plot_table

EXAMPLES = """examples:
  fer-bench model                       # the paper's Table 4 for this machine
  fer-bench model --runs 300 --threads 1 --json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fer-bench", description="Benchmarks of the split FER system.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="parameters, MACs (ptflops) and CPU latency per configuration and stage", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model.add_argument("--runs", type=int, default=100, help="timed runs per configuration (after warm-up)")
    model.add_argument("--warmup", type=int, default=10)
    model.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's default, all cores)")
    model.add_argument("--out", type=Path, default=Path("results/model"), help="folder for model.csv, model.json and model_latency.png")
    model.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")
    for name, purpose in (("network", "latency under throttled bandwidth (issue: not built yet)"), ("server", "server load sweep (issue: not built yet)")):
        commands.add_parser(name, help=purpose, description=f"{purpose}. This benchmark has not landed yet.")
    return parser


def _model(args: argparse.Namespace) -> int:
    records = model_table(args.runs, args.warmup, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict() for r in records]
    (args.out / "model.json").write_text(json.dumps(rows, indent=2))
    with (args.out / "model.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "split_shape": "x".join(map(str, r["split_shape"])), "split_bytes": json.dumps(r["split_bytes"])} for r in rows)
    plot_table(records, args.out / "model_latency.png")
    print(json.dumps(rows, indent=2) if args.json else format_table(records))
    print(f"wrote {args.out}/model.csv, model.json, model_latency.png", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "model":
        return _model(args)
    print(f"fer-bench {args.command}: not built yet (see the project's open issues)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
