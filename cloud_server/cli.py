"""``fer-cloud``: the cloud attention service (Open Inference Protocol over gRPC)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

try:
    import torch
except ModuleNotFoundError as missing:  # the base install is the torch-free edge
    raise SystemExit("fer-cloud needs PyTorch: pip install 'fer-split[full]'") from missing

from shared_model.checkpoint import CheckpointError, load_model, select_device

from .engine import BatchingSettings, InferenceEngine
from .inference import Limits
from .server import CloudServer, ServerOptions

EXAMPLES = """examples:
  fer-cloud serve                                   # port 8001, shipped weights, GPU if present
  fer-cloud serve --port 0 --ready-file /tmp/port   # any free port, written to the file when ready
  fer-cloud serve --max-batch-size 32 --max-queue-delay-ms 2 --metrics-port 9090
  fer-cloud serve --tls-cert server.crt --tls-key server.key --token "$FER_TOKEN"
  fer-cloud health 127.0.0.1:8001                   # exit 0 when SERVING (container health checks)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fer-cloud", description="Cloud side of split FER inference: serves fer_attention (ASP+SFP on the 8x28x28 split tensor) and fer_classifier (whole network) over the Open Inference Protocol (gRPC).", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service until SIGTERM/SIGINT (which drains gracefully)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("--host", default="0.0.0.0", help="address to bind")
    serve.add_argument("--port", type=int, default=8001, help="gRPC port (0: any free port)")
    serve.add_argument("--ready-file", type=Path, help="write {port, metrics_port, version} as JSON here once serving")
    serve.add_argument("--weights", type=Path, help="checkpoint (default: the shipped weights)")
    serve.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    serve.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for PyTorch")
    serve.add_argument("--max-batch-size", type=int, default=32, help="dynamic batching: items per batch (1 disables batching)")
    serve.add_argument("--max-queue-delay-ms", type=float, default=2.0, help="dynamic batching: longest wait for requests already on their way into the queue (0 disables batching)")
    serve.add_argument("--max-queue-size", type=int, default=512, help="queued requests beyond this get RESOURCE_EXHAUSTED")
    serve.add_argument("--max-concurrent-rpcs", type=int, default=256, help="RPCs beyond this get RESOURCE_EXHAUSTED")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics over HTTP on this port")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--token", default=os.environ.get("FER_CLOUD_TOKEN"), help="require 'authorization: Bearer TOKEN' (default: $FER_CLOUD_TOKEN)")
    serve.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    serve.add_argument("--max-request-batch", type=int, default=64, help="largest batch one request may carry")
    serve.add_argument("--max-image-bytes", type=int, default=4 * 1024 * 1024, help="largest encoded image")
    serve.add_argument("--max-decoded-pixels", type=int, default=16 * 1024 * 1024, help="largest decoded image (width x height)")
    serve.add_argument("--max-connection-age-s", type=float, help="close connections after this long so load balancers rebalance")
    serve.add_argument("--drain-seconds", type=float, default=30.0, help="on SIGTERM: how long in-flight requests may take")
    serve.add_argument("--log-level", default="INFO")
    health = commands.add_parser("health", help="ask a running service's grpc.health.v1 whether it is SERVING (exit 0) or not (exit 1); for container health checks")
    health.add_argument("address", nargs="?", default="127.0.0.1:8001", help="host:port of the service")
    health.add_argument("--timeout-s", type=float, default=3.0)
    return parser


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shared_model.protocol import SERVICE_NAME

    with grpc.insecure_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=args.timeout_s)
        except grpc.RpcError as error:
            print(f"{args.address}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _serve(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    model, checkpoint = load_model(args.weights)
    engine = InferenceEngine(
        model,
        select_device(args.device),
        BatchingSettings(args.max_batch_size, args.max_queue_delay_ms, args.max_queue_size),
        Limits(args.max_request_batch, args.max_image_bytes, args.max_decoded_pixels, args.max_message_bytes),
    )
    server = CloudServer(engine, ServerOptions(
        host=args.host, port=args.port, max_concurrent_rpcs=args.max_concurrent_rpcs, max_message_bytes=args.max_message_bytes,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, token=args.token,
        max_connection_age_s=args.max_connection_age_s, metrics_port=args.metrics_port,
    ))
    port = server.start()

    def on_signal(signum: int, frame: object) -> None:
        logging.info("signal %s: draining (up to %.0f s)", signal.Signals(signum).name, args.drain_seconds)
        threading.Thread(target=server.drain, args=(args.drain_seconds,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = {"port": port, "metrics_port": server.metrics_port, "version": engine.fingerprint, "device": str(engine.device)}
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.replace(args.ready_file)
    print(json.dumps({"event": "serving", **ready}), flush=True)
    server.wait()
    print(json.dumps({"event": "stopped"}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "WARNING").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "health":
        return _health(args)
    try:
        return _serve(args)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"fer-cloud: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
