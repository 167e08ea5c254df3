"""``fer-cloud``: the cloud attention service (Open Inference Protocol over gRPC)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

# gRPC's core reads GRPC_EXPERIMENTS once, when the grpc module loads (just below): its legacy TCP
# listener and endpoints cost fewer thread hand-offs per call than the EventEngine ones. The
# environment's own value wins (GRPC_EXPERIMENTS= for gRPC's defaults).
GRPC_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"
os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)

# No PyTorch here: served by ONNX Runtime (the default on a CPU), fer-cloud never imports it.
from shared_model.cli_help import DefaultsHelpFormatter  # noqa: E402
from shared_model.runtimes import RUNTIMES  # noqa: E402

from .engine import BatchingSettings, InferenceEngine  # noqa: E402 (after GRPC_EXPERIMENTS)
from .inference import Limits  # noqa: E402
from .runtimes import load_runtime  # noqa: E402
from .server import CloudServer, ServerOptions, check_tls_options, is_loopback  # noqa: E402

__all__ = ["GRPC_EXPERIMENTS", "TOKEN_ENV", "build_parser", "read_token", "server_options", "main"]

TOKEN_ENV = "FER_CLOUD_TOKEN"
EXAMPLES = """examples:
  fer-cloud serve                                   # port 8001, shipped weights, GPU if present
  fer-cloud serve --port 0 --ready-file /tmp/port   # any free port, written to the file when ready
  fer-cloud serve --max-batch-size 32 --max-queue-delay-ms 6 --metrics-port 9090
  FER_CLOUD_TOKEN=... fer-cloud serve --tls-cert server.crt --tls-key server.key
  fer-cloud health 127.0.0.1:8001                   # exit 0 when SERVING (container health checks)
  fer-cloud health localhost:8001 --tls-ca ca.crt   # the same against a TLS service
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fer-cloud", description="Cloud side of split FER inference: serves fer_attention (ASP+SFP on the 8x28x28\n"
        "split tensor) and fer_classifier (whole network) over the Open Inference Protocol (gRPC).", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service until SIGTERM/SIGINT (which drains gracefully)", formatter_class=DefaultsHelpFormatter)
    serve.add_argument("--host", default="0.0.0.0", help="address to bind")
    serve.add_argument("--port", type=int, default=8001, help="gRPC port (0: any free port)")
    serve.add_argument("--ready-file", type=Path, help="write {port, metrics_port, version} as JSON here once serving")
    serve.add_argument("--weights", type=Path, help="checkpoint (default: the shipped weights)")
    serve.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]: where fer_rest and fer_classifier compute. fer_attention (microseconds of work) runs on the CPU, on the event loop, where its matrices reproduce the model; where they do not (a warning says so), PyTorch computes it: on this device under --runtime torch, on the CPU under onnx")
    serve.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of the runtime")
    serve.add_argument("--runtime", choices=RUNTIMES, default="auto", help="what computes the models: onnx (ONNX Runtime, CPU only; several times faster than PyTorch there, and the process never loads PyTorch), torch, or auto (torch on CUDA or for --weights without --onnx-dir, else onnx where installed)")
    serve.add_argument("--onnx-dir", type=Path, help="with the onnx runtime: the export of --weights from `fer-train export` (which writes attention.npz too) (default: the shipped export of the shipped weights)")
    serve.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="the gRPC server's event loop: uvloop (less CPU per request) where installed, else asyncio's")
    serve.add_argument("--max-batch-size", type=int, default=32, help="dynamic batching: items per batch (1 disables batching)")
    serve.add_argument("--max-queue-delay-ms", type=float, default=6.0, help="dynamic batching: longest wait for more requests to join a batch, and only while others are waiting (on a model's worker thread) or until as many have come as in the last batch (fer_attention on the event loop, the CPU default); a lone request never waits (0 disables batching)")
    serve.add_argument("--max-queue-size", type=int, default=512, help="per model: requests waiting for the model beyond this are refused at once with RESOURCE_EXHAUSTED (the edge answers them locally)")
    serve.add_argument("--max-concurrent-rpcs", type=int, default=4096, help="open calls (a stream counts as one, health checks too) beyond this are refused with RESOURCE_EXHAUSTED")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics over HTTP on this port")
    serve.add_argument("--metrics-host", help="address the metrics bind (default: --host's); 127.0.0.1 keeps them on this machine")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS; needs --tls-cert and --tls-key)")
    # The token's default is read from the environment after parsing, so that --help never prints it.
    serve.add_argument("--token", default=argparse.SUPPRESS, help=f"require 'authorization: Bearer TOKEN' on every call but health checks (default: ${TOKEN_ENV}; prefer the variable: arguments show in ps)")
    serve.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024, help="largest gRPC message received or sent; larger ones are refused with RESOURCE_EXHAUSTED")
    serve.add_argument("--max-request-batch", type=int, default=64, help="largest batch (first dimension) one request may carry; larger is INVALID_ARGUMENT")
    serve.add_argument("--max-image-bytes", type=int, default=4 * 1024 * 1024, help="largest encoded image (fer_classifier); larger is INVALID_ARGUMENT")
    serve.add_argument("--max-decoded-pixels", type=int, default=16 * 1024 * 1024, help="largest image (width x height) decoded, checked before decoding; larger is INVALID_ARGUMENT")
    serve.add_argument("--max-connection-age-s", type=float, help="close connections after this long so load balancers rebalance")
    serve.add_argument("--drain-seconds", type=float, default=30.0, help="on SIGTERM: how long in-flight requests may take")
    serve.add_argument("--log-level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO")
    health = commands.add_parser("health", help="ask a running service's grpc.health.v1 whether it is SERVING (exit 0) or not (exit 1); for container health checks")
    health.add_argument("address", nargs="?", default="127.0.0.1:8001", help="host:port of the service")
    health.add_argument("--timeout-s", type=float, default=3.0)
    health.add_argument("--tls", action="store_true", help="speak TLS, verifying the service against the system's roots (any --tls-* option means TLS too)")
    health.add_argument("--tls-ca", type=Path, help="CA certificate of the service (means TLS)")
    health.add_argument("--tls-cert", type=Path, help="client certificate, for a service that requires mutual TLS (needs --tls-key)")
    health.add_argument("--tls-key", type=Path, help="client key, for a service that requires mutual TLS (needs --tls-cert)")
    health.add_argument("--tls-server-name", help="name to verify in the server certificate (default: the address's host; means TLS)")
    health.add_argument("--token", default=argparse.SUPPRESS, help=f"bearer token to send (default: ${TOKEN_ENV}; health checks are exempt from the token, so this is needed only behind proxies that check it); never sent in plaintext beyond this machine")
    return parser


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token``, else the environment (read here, never as an argparse default)."""
    return getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None


if TYPE_CHECKING:
    import grpc


def _health_uses_tls(args: argparse.Namespace) -> bool:
    """As on the edge: any TLS option means TLS; plaintext only with none."""
    return bool(args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name)


def _address_host(address: str) -> str:
    """The host of ``host:port`` or ``[v6]:port`` (the whole text when it has no port)."""
    host, colon, port = address.rpartition(":")
    return host if colon and port.isdigit() and host else address


def _health_channel(args: argparse.Namespace) -> "grpc.Channel":
    import grpc

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("mutual TLS needs both a client certificate (--tls-cert) and its key (--tls-key)")
    if not _health_uses_tls(args):
        return grpc.insecure_channel(args.address)
    roots = args.tls_ca.read_bytes() if args.tls_ca else None
    key = args.tls_key.read_bytes() if args.tls_key else None
    chain = args.tls_cert.read_bytes() if args.tls_cert else None
    credentials = grpc.ssl_channel_credentials(roots, key, chain)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.address, credentials, options)


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shared_model.protocol import SERVICE_NAME, bearer_metadata

    token = read_token(args)
    if token and not _health_uses_tls(args) and not is_loopback(_address_host(args.address)):
        # health checks need no token (the server exempts them): better none than a secret in plaintext on a network
        print(f"fer-cloud health: not sending the token to {args.address} in plaintext (use --tls or --tls-ca)", file=sys.stderr)
        token = None
    metadata = bearer_metadata(token)
    try:
        channel = _health_channel(args)
    except (OSError, ValueError) as error:
        print(f"fer-cloud health: error: {error}", file=sys.stderr)
        return 2
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=args.timeout_s, metadata=metadata)
        except grpc.RpcError as error:
            print(f"{args.address}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The server's options from ``fer-cloud serve``'s arguments (the metrics bind where gRPC does unless told)."""
    return ServerOptions(
        host=args.host, port=args.port, max_concurrent_rpcs=args.max_concurrent_rpcs, max_message_bytes=args.max_message_bytes,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, token=read_token(args),
        max_connection_age_s=args.max_connection_age_s, metrics_port=args.metrics_port, metrics_host=args.metrics_host or args.host,
    )


def _serve(args: argparse.Namespace) -> int:
    options = server_options(args)
    check_tls_options(options)  # before the model loads: a TLS mistake is a quick, clear error
    # a checkpoint of its own has no shipped export: auto means PyTorch then, unless its export is given
    served = load_runtime(None, args.device, args.runtime, args.onnx_dir, args.threads, args.weights)
    engine = InferenceEngine(
        served,
        batching=BatchingSettings(args.max_batch_size, args.max_queue_delay_ms, args.max_queue_size),
        limits=Limits(args.max_request_batch, args.max_image_bytes, args.max_decoded_pixels, args.max_message_bytes),
    )
    server = CloudServer(engine, options, event_loop=args.event_loop)
    port = server.start()
    # What start-up made (the model, the libraries' objects) lives as long as the process: out of the cyclic
    # collector's sight, its full collections stop pausing the event loop (a lower p99).
    gc.freeze()

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
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        print(f"fer-cloud: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
