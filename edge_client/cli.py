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
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from shared_model.preprocessing import prepare_face

from .backends import RUNTIMES, Backend, as_backend, load_backend
from .breaker import CircuitBreaker
from .daemon import AnnotatedWriter, run_source
from .faces import FaceDetector
from .runner import EDGE, IMAGE_FORMATS, STRATEGIES, EdgeRunner
from .sources import SourceError, open_source
from .transport import ClientSecurity, CloudClient, RemoteError

EXAMPLES = """examples:
  fer-edge run photo.jpg                                  # everything on this device
  fer-edge run photo.jpg --cloud 10.0.0.5:8001 --strategy split --json
  fer-edge run clip.mp4 --cloud localhost:8001 --strategy cloud --annotate out.mp4
  fer-edge run faces/ --whole-image --json                # a folder of pre-cropped faces
  fer-edge run 0 --cloud localhost:8001 --strategy split  # camera 0
  fer-edge demo                                           # cloud service + every strategy on loopback
"""


def sample_image() -> Path:
    """The bundled public-domain sample photo (astronaut Eileen Collins, NASA)."""
    return Path(str(resources.files("edge_client") / "assets" / "astronaut.png"))


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, help="checkpoint (default: the shipped weights); must match the cloud's")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch", help="run the edge partitions with PyTorch, or with ONNX Runtime (no torch needed)")
    parser.add_argument("--onnx-dir", type=Path, help="with --runtime onnx: a folder from `fer-train export` (default: the shipped export of the default weights)")
    parser.add_argument("--encoding", choices=("uint8", "fp16", "fp32"), default="uint8", help="split tensor encoding on the wire")
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpeg", help="what the cloud strategy sends: JPEG, PNG or raw 224x224x3 pixels (the paper's 150.5 KB)")
    parser.add_argument("--timeout-ms", type=float, default=1000.0, help="deadline of every remote call; late answers are computed locally")
    parser.add_argument("--failures-to-open", type=int, default=3, help="consecutive failures that open the circuit breaker")
    parser.add_argument("--probe-after-s", type=float, default=2.0, help="how long an open circuit waits before probing the health service")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate of the cloud (enables TLS)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    parser.add_argument("--tls-server-name", help="name to verify in the server certificate")
    parser.add_argument("--token", default=os.environ.get("FER_CLOUD_TOKEN"), help="bearer token (default: $FER_CLOUD_TOKEN)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for PyTorch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fer-edge", description="Edge side of split FER inference: find faces, classify each into seven expressions, locally or with the cloud.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="classify the faces of an image, folder, video, camera or stream", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("source", help="image file, folder of images, video file, camera index (0) or stream URL")
    run.add_argument("--cloud", help="cloud address host:port, several replicas as ip:port,ip:port (round robin), or dns:///name:port; without it everything runs locally")
    run.add_argument("--strategy", choices=STRATEGIES, default=None, help="edge, cloud or split (default: split with --cloud, else edge)")
    run.add_argument("--whole-image", action="store_true", help="treat each image as one pre-cropped face (no detection)")
    run.add_argument("--json", action="store_true", help="one JSON object per face on stdout")
    run.add_argument("--annotate", type=Path, help="write frames with boxes and labels to this video or image file")
    run.add_argument("--max-frames", type=int, help="stop after this many frames (cameras and streams)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_connection_arguments(run)
    demo = commands.add_parser("demo", help="start a cloud service on loopback and compare every strategy on the sample photo", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--image", type=Path, default=None, help="photo to classify (default: the bundled sample)")
    demo.add_argument("--repeats", type=int, default=20, help="timed runs per strategy (median reported)")
    demo.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _add_connection_arguments(demo)
    return parser


def make_runner(args: argparse.Namespace, strategy: str, cloud: str | None, model: Any = None, use_stream: bool = False) -> EdgeRunner:
    backend: Backend = as_backend(model) if model is not None else load_backend(args.runtime, args.weights, args.onnx_dir, args.threads)
    client = None
    if cloud and strategy != EDGE:
        security = ClientSecurity(args.tls_ca, args.tls_cert, args.tls_key, args.token, args.tls_server_name)
        client = CloudClient(cloud, backend.fingerprint, security, args.timeout_ms / 1000)
    probe_timeout = min(0.25, args.timeout_ms / 1000)  # a probe delays one locally answered face at most this long
    breaker = CircuitBreaker(args.failures_to_open, args.probe_after_s, probe=(lambda: client.healthy(probe_timeout)) if client else None)
    return EdgeRunner(backend, strategy, client, breaker, args.encoding, args.image_format, timeout_s=args.timeout_ms / 1000, use_stream=use_stream)


def _human(record: dict[str, Any]) -> str:
    where = f"{record['source']} frame {record['frame']}"
    if record.get("error"):
        return f"{where}: {record['error']}"
    line = f"{where} face {record['face']} {record['box']}: {record['label']} {record['probabilities'][record['label']]:.2f} via {record['strategy']} in {record['latency']['total']:.1f} ms"
    return line + (f" (fallback: {record['fallback_reason']})" if record["fallback"] else "")


def _run(args: argparse.Namespace) -> int:
    strategy = args.strategy or ("split" if args.cloud else EDGE)
    if strategy != EDGE and not args.cloud:
        raise ValueError(f"--strategy {strategy} needs --cloud HOST:PORT")
    source = open_source(args.source, args.max_frames)
    runner = make_runner(args, strategy, args.cloud, use_stream=source.is_video)
    writer = AnnotatedWriter(args.annotate, source.fps) if args.annotate else None
    frames_bar = tqdm(total=source.length, unit="face", file=sys.stderr, disable=args.no_progress or (source.length or 0) <= 1)
    try:
        for record in run_source(source, FaceDetector(args.whole_image), runner, writer):
            print(json.dumps(record) if args.json else _human(record), flush=True)
            frames_bar.update(1 if record.get("face") in (0, None) else 0)
    finally:
        frames_bar.close()
        if runner.client:
            runner.client.close()
    return 0


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


DEMO_VARIANTS = (("edge", "edge", {}), ("cloud (JPEG)", "cloud", {"image_format": "jpeg"}), ("cloud (raw pixels)", "cloud", {"image_format": "raw"}), ("split (uint8)", "split", {"encoding": "uint8"}))


def _demo(args: argparse.Namespace) -> int:
    import torch

    from shared_model.checkpoint import load_model

    torch.set_num_threads(args.threads)
    image_path = args.image or sample_image()
    frame = next(open_source(str(image_path)).frames)
    if frame.image is None:
        raise SourceError(frame.error or f"cannot read {image_path}")
    detector = FaceDetector()
    boxes = detector.detect(frame.image) or FaceDetector(whole_image=True).detect(frame.image)
    model, checkpoint = load_model(args.weights)
    backend = as_backend(model)  # fingerprinted once, shared by every strategy's runner
    pixels = prepare_face(FaceDetector.crop(frame.image, boxes[0]), backend.config.input_size)
    rows = []
    with loopback_cloud(args.weights, args.threads) as address:
        for title, strategy, overrides in DEMO_VARIANTS:
            runner = make_runner(argparse.Namespace(**{**vars(args), **overrides}), strategy, address, backend)
            runner.classify(pixels)  # warm-up: connection, caches
            results = [runner.classify(pixels) for _ in range(args.repeats)]
            last = results[-1]
            rows.append({
                "strategy": title, "label": last.label, "confidence": last.probabilities[last.label],
                "median_ms": statistics.median(r.latency.total for r in results),
                "bytes_up": last.bytes_up, "bytes_down": last.bytes_down,
                "fallbacks": sum(r.fallback for r in results), "fallback_reason": last.fallback_reason,
            })
            if runner.client:
                runner.client.close()
    summary = {"image": str(image_path), "box": boxes[0].to_list(), "model_version": checkpoint.fingerprint, "validation_accuracy": checkpoint.provenance.get("validation_accuracy"), "strategies": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{image_path.name}: face at {boxes[0].to_list()}, model {checkpoint.fingerprint}, cloud on {address} (loopback)")
    print(f"{'strategy':<20}{'label':<10}{'conf':>6}{'median ms':>11}{'bytes up':>10}{'bytes down':>12}{'fallbacks':>11}")
    for r in rows:
        print(f"{r['strategy']:<20}{r['label']:<10}{r['confidence']:>6.2f}{r['median_ms']:>11.1f}{r['bytes_up']:>10}{r['bytes_down']:>12}{r['fallbacks']:>11}")
    print(f"({args.repeats} runs each on loopback: no bandwidth limit; see `fer-bench network` for throttled links)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": _run, "demo": _demo}[args.command](args)
    except (SourceError, RemoteError, ValueError, RuntimeError, FileNotFoundError, ImportError) as error:
        print(f"fer-edge: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
