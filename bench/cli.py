"""``fer-bench``: benchmarks that write CSV, PNG and JSON under a results folder and print a table."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

EXAMPLES = """examples:
  fer-bench model                                    # the paper's Table 4 on this machine
  fer-bench network                                  # Figure 8: every strategy, 200..1000 KB/s, both shapers, both profiles
  fer-bench network --shapers proxy --profiles laptop --bandwidths 200,500,1000 --requests 5
  fer-bench network --rtt-ms 40 --loss 0.5 --strategies split-uint8,split-fp16,cloud-jpeg
  fer-bench server --concurrency 1,4,16,64 --seconds 3
"""


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    from .network import DEFAULT_STRATEGIES, PROFILES, SHAPERS, STRATEGIES

    parser = argparse.ArgumentParser(prog="fer-bench", description="Benchmarks of the split FER system; each writes CSV, JSON and PNG to --out and prints a table.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    model = commands.add_parser("model", help="parameters, MACs (ptflops) and CPU latency per configuration and stage", formatter_class=defaults)
    model.add_argument("--runs", type=int, default=100, help="timed runs per configuration (after warm-up)")
    model.add_argument("--warmup", type=int, default=10)
    model.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's default, all cores)")
    model.add_argument("--out", type=Path, default=Path("results/model"))
    model.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")

    network = commands.add_parser("network", help="end-to-end latency of each strategy under throttled bandwidth (the paper's Figure 8)", formatter_class=defaults)
    network.add_argument("--bandwidths", type=_floats, default=",".join(str(v) for v in range(200, 1001, 100)), help="KB/s per direction (KB = 1000 bytes), comma-separated")
    network.add_argument("--strategies", type=_names, default=",".join(DEFAULT_STRATEGIES), help=f"comma-separated, from {', '.join(STRATEGIES)}")
    network.add_argument("--shapers", type=_names, default=",".join(SHAPERS), help="netns (tc in a network namespace; root) and/or proxy (userspace token bucket)")
    network.add_argument("--profiles", type=_names, default=",".join(PROFILES), help="laptop (all cores) and/or phone (1 thread, cgroup quota of half a core)")
    network.add_argument("--requests", type=int, default=10, help="timed requests per strategy and bandwidth (after 2 warm-up)")
    network.add_argument("--rtt-ms", type=float, default=0.0, help="added round-trip time")
    network.add_argument("--loss", type=float, default=0.0, help="packet loss in percent, each direction (netns shaper only)")
    network.add_argument("--cloud-threads", type=int, default=1, help="CPU threads of the cloud process")
    network.add_argument("--weights", help="checkpoint for edge and cloud; the shipped weights when omitted")
    network.add_argument("--out", type=Path, default=Path("results/network"))
    network.add_argument("--json", action="store_true")

    server = commands.add_parser("server", help="throughput and latency of fer_attention across concurrency, batching on and off", formatter_class=defaults)
    server.add_argument("--concurrency", type=_ints, default="1,2,4,8,16,32,64", help="closed-loop clients, comma-separated")
    server.add_argument("--seconds", type=float, default=3.0, help="measurement window per point")
    server.add_argument("--max-batch-size", type=int, default=32)
    server.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    server.add_argument("--server-threads", type=int, default=1, help="CPU threads of the server process")
    server.add_argument("--weights")
    server.add_argument("--out", type=Path, default=Path("results/server"))
    server.add_argument("--json", action="store_true")
    return parser


def _write(out: Path, stem: str, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=2))
    with (out / f"{stem}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows)


def _model(args: argparse.Namespace) -> int:
    from .model import format_table, model_table, plot_table

    records = model_table(args.runs, args.warmup, args.threads)
    rows = [r.to_dict() for r in records]
    _write(args.out, "model", rows)
    plot_table(records, args.out / "model_latency.png")
    print(json.dumps(rows, indent=2) if args.json else format_table(records))
    print(f"wrote {args.out}/model.csv, model.json, model_latency.png", file=sys.stderr)
    return 0


def _network(args: argparse.Namespace) -> int:
    from .network import (
        PROFILES,
        SHAPERS,
        STRATEGIES,
        NetworkSettings,
        format_table,
        plot,
        record_dicts,
        run_network_benchmark,
    )
    from .shaping import ShaperError

    unknown = [n for n in (*args.strategies, *args.shapers, *args.profiles) if n not in {*STRATEGIES, *SHAPERS, *PROFILES}]
    if unknown:
        raise ValueError(f"unknown strategy, shaper or profile: {', '.join(unknown)}")
    if args.loss and "proxy" in args.shapers:
        raise ShaperError("--loss needs the netns shaper: the userspace proxy sits above TCP and cannot drop packets")
    settings = NetworkSettings(args.bandwidths, args.strategies, args.shapers, args.profiles, args.requests, args.rtt_ms, args.loss, args.cloud_threads, weights=args.weights)
    records, compute = run_network_benchmark(settings)
    rows = record_dicts(records)
    _write(args.out, "network", rows)
    (args.out / "network_compute.json").write_text(json.dumps(compute, indent=2))
    plot(records, args.out / "network.png")
    if args.json:
        print(json.dumps({"points": rows, "compute_ms": compute}, indent=2))
    else:
        print(format_table(records))
        for profile, times in compute.items():
            print(f"{profile} compute: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))
    print(f"wrote {args.out}/network.csv, network.json, network_compute.json, network.png", file=sys.stderr)
    return 0


def _server(args: argparse.Namespace) -> int:
    from .server_load import format_table, plot, record_dicts, server_sweep

    records = server_sweep(args.concurrency, args.seconds, args.max_batch_size, args.max_queue_delay_ms, args.server_threads, args.weights)
    rows = record_dicts(records)
    _write(args.out, "server", rows)
    plot(records, args.out / "server.png")
    print(json.dumps(rows, indent=2) if args.json else format_table(records))
    print(f"wrote {args.out}/server.csv, server.json, server.png", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .shaping import ShaperError

    args = build_parser().parse_args(argv)
    try:
        return {"model": _model, "network": _network, "server": _server}[args.command](args)
    except (ShaperError, RuntimeError, ValueError) as error:
        print(f"fer-bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
