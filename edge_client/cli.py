"""``fer-edge``: the edge daemon (``run``) and the loopback demonstration (``demo``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from shared_model.cli_help import DefaultsHelpFormatter
from shared_model.offload import DEFAULT_IMAGE_SIZE, DEFAULT_JPEG_QUALITY, FACE_IMAGE_FORMATS, SPLIT_RETURNS
from shared_model.preprocessing import prepare_face
from shared_model.runtimes import RUNTIMES, Backend, as_backend, load_backend

from .breaker import CircuitBreaker
from .daemon import DEFAULT_IN_FLIGHT, AnnotatedWriter, run_source, unreadable
from .faces import AUTO_DETECTOR, DETECTORS, FaceDetector, make_detector
from .outputs import AnalysisOutputs, format_summary
from .samples import sample_image
from .smoothing import DEFAULT_TIME_CONSTANT_S
from .runner import EdgeRunner
from .sources import Source, SourceError, open_source
from .strategies import AUTO, EDGE, STRATEGIES
from .transport import ClientSecurity, CloudClient, RemoteError
from .wire_options import WireOptions

__all__ = ["Token", "build_parser", "make_runner", "loopback_cloud", "main"]

EXAMPLES = """examples:
  fer-edge run photo.jpg                                  # everything on this device
  fer-edge run photo.jpg --cloud 10.0.0.5:8001 --json     # auto: the fastest strategy per face
  fer-edge run clip.mp4 --cloud 10.0.0.5:8001 --private   # auto, but the face image never leaves
  fer-edge run photo.jpg --cloud 10.0.0.5:8001 --strategy split --split-returns features
  fer-edge run clip.mp4 --cloud localhost:8001 --strategy cloud --annotate out.mp4
  fer-edge run clip.mp4 --csv faces.csv --summary --plot expressions.png  # for analysis
  fer-edge run faces/ --whole-image --json                # a folder of pre-cropped faces
  fer-edge run 0 --cloud localhost:8001 --strategy split  # camera 0
  fer-edge demo                               # cloud service + every strategy on loopback

exit status of run: 0 when every input was read (with faces or not); 1 when some
input could not be read (each has its error line and the run went on); 2 when
the run could not start (a bad option, a missing source, an unreachable setup)
"""


class Token(str):
    """A bearer token: the text itself on the wire, masked in every ``repr`` (of the parsed arguments too)."""

    def __repr__(self) -> str:
        return "'***'"


def _token_or_environment(text: str) -> str | None:
    """``--token``'s value; its default, the text ``$FER_CLOUD_TOKEN``, reads that variable.

    Surrounding whitespace is dropped (a secret mounted as a variable often ends in a newline);
    characters no gRPC header can carry are refused when the client is made (``check_token``).
    """
    value = os.environ.get("FER_CLOUD_TOKEN", "") if text == "$FER_CLOUD_TOKEN" else text
    return Token(value.strip()) if value.strip() else None


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, help="checkpoint (default: the shipped weights); must match the cloud's")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="what runs the edge's partitions: onnx (ONNX Runtime, no torch needed; several times faster on a CPU), torch, or auto (onnx where installed, unless --weights names a checkpoint without --onnx-dir)")
    parser.add_argument("--onnx-dir", type=Path, help="with the onnx runtime: a folder from `fer-train export` (default: the shipped export of the shipped weights)")
    parser.add_argument("--encoding", choices=("uint8", "fp16", "fp32"), default="uint8", help="split tensor encoding on the wire")
    parser.add_argument("--image-format", choices=FACE_IMAGE_FORMATS, default="jpeg", help="what the cloud strategy sends: JPEG, PNG or raw 224x224x3 pixels (the paper's 150.5 KB)")
    parser.add_argument("--image-size", type=_positive_int, default=DEFAULT_IMAGE_SIZE, help="the cloud strategy sends the face crop as found, shrunk to at most this side (the cloud resizes it to the input size); the default kept FER2013 accuracy within 0.3 points of sending 224x224")
    parser.add_argument("--jpeg-quality", type=int, choices=range(1, 101), metavar="1..100", default=DEFAULT_JPEG_QUALITY, help="JPEG quality of the face the cloud strategy sends")
    parser.add_argument("--split-returns", choices=SPLIT_RETURNS, default="attention", help="what the split strategy gets back: the attention alone (1x28x28 map + 8 weights, 792 bytes), applied here to the full-precision map; or the attended map (the paper's round trip, 6,272 bytes)")
    parser.add_argument(
        "--no-background-measuring", dest="background_measuring", action="store_false",
        help="while auto answers on the edge, it re-measures the remote strategies with calls beside local answers "
        "(two or three back to back; every 10 faces while the link holds them far behind), so that a link that came back shows without a face waiting for it; "
        "with this flag it tries them on faces of their own instead, less often (fewer bytes on a metered link)",
    )
    parser.add_argument("--private", action="store_true", help="the face image never leaves this device: auto chooses among edge, split and split-rest only; --strategy cloud is refused")
    parser.add_argument("--timeout-ms", type=_positive_float, default=1000.0, help="deadline of every remote call; late answers are computed locally")
    parser.add_argument("--failures-to-open", type=int, default=3, help="consecutive failures that open the circuit breaker")
    parser.add_argument("--probe-after-s", type=float, default=2.0, help="how long an open circuit waits before probing the health service")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate of the cloud; any --tls-* option means TLS, verified against the system's roots without this one (plaintext only with none)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS; needs --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="client key (mutual TLS; needs --tls-cert)")
    parser.add_argument("--tls-server-name", help="name to verify in the server certificate (means TLS)")
    # The default is the variable's name, resolved by `type` after parsing, so --help never shows the secret.
    parser.add_argument("--token", default="$FER_CLOUD_TOKEN", type=_token_or_environment, help="bearer token (prefer the variable: arguments show in ps)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of the edge's runtime")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fer-edge", description="Edge side of split FER inference: find faces, classify each into seven expressions,\n"
        "locally or with the cloud.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="classify the faces of an image, folder, video, camera or stream", formatter_class=DefaultsHelpFormatter)
    run.add_argument("source", help="image file, folder of images, video file, camera index (0) or stream URL")
    run.add_argument("--cloud", help="cloud address host:port, several replicas as ip:port,ip:port (round robin), or dns:///name:port; without it everything runs locally")
    run.add_argument("--strategy", choices=STRATEGIES, default=None, help="edge, cloud, split, split-rest, or auto (the fastest per face, from what this edge measures); default: auto with --cloud, else edge")
    run.add_argument("--whole-image", action="store_true", help="treat each image as one pre-cropped face (no detection)")
    run.add_argument(
        "--detector", choices=DETECTORS, default=AUTO_DETECTOR,
        help="face detector: auto (the default) is MediaPipe's BlazeFace where ai-edge-litert is installed "
        "(pip install 'fer-split[blazeface]'), since it is faster with fewer false faces (docs/faces.md), "
        "else OpenCV's Haar cascade, which needs nothing more; blazeface-full finds faces further away",
    )
    run.add_argument("--json", action="store_true", help="one JSON object per face on stdout (with --summary, the summary last)")
    run.add_argument("--csv", type=Path, metavar="FILE", help="also write the records to this CSV file: one row per face per frame, the same values as --json")
    run.add_argument("--summary", action="store_true", help="at the end, per track: first and last time seen, faces, dominant expression, share of each expression")
    run.add_argument("--plot", type=Path, metavar="FILE.png", help="at the end, plot expressions over time, one panel per track (needs a video, camera or stream, and matplotlib)")
    run.add_argument(
        "--smooth-s", type=_seconds, default=DEFAULT_TIME_CONSTANT_S, metavar="SECONDS",
        help="time constant of each track's smoothing of probabilities in video (an exponential average, so a "
        "face between two expressions keeps a steady label; label and probabilities are smoothed, raw_label "
        "and raw_probabilities are kept); 0 turns it off; stills are never smoothed",
    )
    run.add_argument("--annotate", type=Path, help="write frames with boxes and labels to this video (.mp4, .m4v, .mov, .avi, .mkv; every frame scaled to the first one's size) or image (.png, .jpg, ...: only for a source of one frame; refused for a video or several images); checked before anything runs")
    run.add_argument("--max-frames", type=_positive_int, help="stop after this many frames (any source: video, camera, stream, folder)")
    run.add_argument("--in-flight", type=_positive_int, default=DEFAULT_IN_FLIGHT, help="frames classified at once: while one frame is classified (on the wire or on this CPU) the next is read and detected; records stay in frame order, one per face, and at most this many frames are held; 1 classifies each frame before reading the next (docs/network.md)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_connection_arguments(run)
    demo = commands.add_parser("demo", help="start a cloud service on loopback and compare every strategy on the sample photo", formatter_class=DefaultsHelpFormatter)
    demo.add_argument("--image", type=Path, default=None, help="photo to classify (default: the bundled sample)")
    demo.add_argument("--repeats", type=int, default=20, help="timed runs per strategy (median reported)")
    demo.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _add_connection_arguments(demo)
    return parser


def make_runner(args: argparse.Namespace, strategy: str, cloud: str | None, model: Any = None, use_stream: bool = False) -> EdgeRunner:
    remote = bool(cloud and strategy != EDGE)
    security = ClientSecurity(args.tls_ca, args.tls_cert, args.tls_key, args.token, args.tls_server_name) if remote else None  # checked first
    backend: Backend = as_backend(model) if model is not None else load_backend(args.runtime, args.weights, args.onnx_dir, args.threads)
    client = CloudClient(cloud, backend.fingerprint, security, args.timeout_ms / 1000) if remote else None
    probe_timeout = min(0.25, args.timeout_ms / 1000)  # a probe delays one locally answered face at most this long
    breaker = CircuitBreaker(args.failures_to_open, args.probe_after_s, probe=(lambda: client.healthy(probe_timeout)) if client else None)
    wire = WireOptions(args.encoding, args.image_format, args.image_size, args.jpeg_quality, args.split_returns)
    return EdgeRunner(
        backend, strategy, client, breaker, wire, timeout_s=args.timeout_ms / 1000, use_stream=use_stream, private=args.private,
        background_measuring=args.background_measuring,
    )


def _human(record: dict[str, Any]) -> str:
    when = "" if record.get("time_s") is None else f" at {record['time_s']:.2f} s"
    where = f"{record['source']} frame {record['frame']}{when}"
    if record.get("error"):
        return f"{where}: {record['error']}"
    face = f"track {record['track_id']}" if record.get("track_id") is not None else f"face {record['face']}"
    line = f"{where} {face} {record['box']}: {record['label']} {record['probabilities'][record['label']]:.2f} via {record['strategy']} in {record['latency']['total']:.1f} ms"
    return line + (f" (fallback: {record['fallback_reason']})" if record["fallback"] else "")


def _run(args: argparse.Namespace) -> int:
    strategy = args.strategy or (AUTO if args.cloud else EDGE)
    if strategy not in (EDGE, AUTO) and not args.cloud:
        raise ValueError(f"--strategy {strategy} needs --cloud HOST:PORT")
    source = open_source(args.source, args.max_frames)
    if args.plot and not source.is_video:
        raise ValueError(f"--plot draws expressions over time, which needs a video, camera or stream; {args.source} is {'a folder' if Path(args.source).is_dir() else 'an image'}")
    writer = _annotated_writer(args.annotate, source) if args.annotate else None  # refused before anything runs
    detector = make_detector(args.detector, args.whole_image)
    runner = make_runner(args, strategy, args.cloud, use_stream=source.is_video)
    try:
        outputs = AnalysisOutputs(runner.class_names, args.csv, args.summary, args.plot)  # a path it cannot write: refused now
    except (ValueError, ImportError):
        runner.close()
        raise
    frames_bar = tqdm(total=source.length, unit="frame", file=sys.stderr, disable=args.no_progress or (source.length or 0) <= 1)
    unread, interrupted = 0, False
    try:
        for record in run_source(source, detector, runner, writer, in_flight=args.in_flight, smoothing_s=args.smooth_s):
            print(json.dumps(record) if args.json else _human(record), flush=True)
            outputs.add(record)
            frames_bar.update(1 if record.get("face") in (0, None) else 0)
            unread += unreadable(record)
    except KeyboardInterrupt:  # Ctrl-C ends a camera run: what was seen is still written and summarized
        interrupted = True
    finally:
        frames_bar.close()
        runner.close()
        summary = outputs.close(_plot_title(args, source))
    if summary is not None:
        print(json.dumps({"summary": summary}) if args.json else format_summary(summary), flush=True)
    if unread:
        print(f"fer-edge: {unread} input(s) could not be read (their error lines above say why)", file=sys.stderr)
    return 130 if interrupted else 1 if unread else 0


def _plot_title(args: argparse.Namespace, source: Source) -> str:
    smoothing = f"smoothed over {args.smooth_s:g} s" if args.smooth_s else "not smoothed"
    return f"{Path(source.description).name}: expression probabilities per track ({smoothing})"


def _annotated_writer(path: Path, source: Source) -> AnnotatedWriter:
    """The writer of ``--annotate``; an output it cannot write is a ValueError naming the option."""
    try:
        return AnnotatedWriter.for_source(path, source)
    except ValueError as error:
        raise ValueError(f"--annotate {path}: {error}") from None


@contextmanager
def loopback_cloud(weights: Path | None, threads: int) -> Iterator[str]:
    """A ``fer-cloud serve`` subprocess on 127.0.0.1 (any free port) for the demo; drained on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        command = [sys.executable, "-m", "cloud_server.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready), "--threads", str(threads), "--log-level", "WARNING"]
        if weights:
            command += ["--weights", str(weights)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            while not ready.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the cloud service did not start (exit code {process.poll()})")
                time.sleep(0.1)
            yield f"127.0.0.1:{json.loads(ready.read_text())['port']}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _demo_variants(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """The rows of the demo: every strategy, with --encoding and --image-format where they apply."""
    image = {"jpeg": f"cloud (JPEG, crop <= {args.image_size} px)", "png": f"cloud (PNG, crop <= {args.image_size} px)", "raw": "cloud (raw pixels, the paper)"}
    rows = [("edge", "edge", {}), (image[args.image_format], "cloud", {})]
    if args.image_format != "raw":
        rows.append((image["raw"], "cloud", {"image_format": "raw"}))
    if args.private:  # the face image stays here: no cloud rows
        rows = rows[:1]
    return rows + [
        (f"split ({args.encoding}, attention back)", "split", {"split_returns": "attention"}),
        (f"split ({args.encoding}, map back: paper)", "split", {"split_returns": "features"}),
        (f"split-rest ({args.encoding})", "split-rest", {}),
        ("auto", "auto", {}),
    ]


def _demo(args: argparse.Namespace) -> int:
    from collections import Counter

    image_path = args.image or sample_image()
    frame = next(open_source(str(image_path)).frames)
    if frame.image is None:
        raise SourceError(frame.error or f"cannot read {image_path}")
    detector = FaceDetector()
    boxes = detector.detect(frame.image) or FaceDetector(whole_image=True).detect(frame.image)
    backend = load_backend(args.runtime, args.weights, args.onnx_dir, args.threads)  # shared by every strategy's runner
    runtime = type(backend).__name__.removesuffix("Backend").lower()
    crop = FaceDetector.crop(frame.image, boxes[0])
    pixels = prepare_face(crop, backend.config.input_size)
    rows = []
    with loopback_cloud(args.weights, args.threads) as address:
        for title, strategy, overrides in _demo_variants(args):
            runner = make_runner(argparse.Namespace(**{**vars(args), **overrides}), strategy, address, backend)
            runner.classify(pixels, crop)  # warm-up: connection, caches
            results = [runner.classify(pixels, crop) for _ in range(args.repeats)]
            last = results[-1]
            rows.append({
                "strategy": title, "label": last.label, "confidence": last.probabilities[last.label],
                "answered_by": Counter(r.strategy for r in results).most_common(1)[0][0],
                "median_ms": statistics.median(r.latency.total for r in results),
                "bytes_up": last.bytes_up, "bytes_down": last.bytes_down,
                "fallbacks": sum(r.fallback for r in results), "fallback_reason": last.fallback_reason,
            })
            runner.close()
    summary = {"image": str(image_path), "box": boxes[0].to_list(), "model_version": backend.fingerprint, "edge_runtime": runtime, "strategies": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{image_path.name}: face at {boxes[0].to_list()}, model {backend.fingerprint}, edge runtime {runtime}, cloud on {address} (loopback)")
    print(f"{'strategy':<34}{'label':<10}{'conf':>6}{'answered by':>13}{'median ms':>11}{'bytes up':>10}{'bytes down':>12}{'fallbacks':>11}")
    for r in rows:
        print(f"{r['strategy']:<34}{r['label']:<10}{r['confidence']:>6.2f}{r['answered_by']:>13}{r['median_ms']:>11.1f}{r['bytes_up']:>10}{r['bytes_down']:>12}{r['fallbacks']:>11}")
    print(f"({args.repeats} runs each on loopback: no bandwidth limit; see `fer-bench network` for throttled links)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": _run, "demo": _demo}[args.command](args)
    except (SourceError, RemoteError, ValueError, RuntimeError, FileNotFoundError, ImportError) as error:
        print(f"fer-edge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C on a camera: what was printed stands; no traceback
        return 130
    except BrokenPipeError:  # `fer-edge run ... | head`: the reader has what it wanted
        sys.stderr.close()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
