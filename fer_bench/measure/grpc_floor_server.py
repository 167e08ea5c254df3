"""The floor of a Python gRPC server: ``ModelInfer`` answers a prebuilt ``fer_attention`` response. Not a test.

What any Python front end for fer-cloud costs before inference: grpc.aio (fer-cloud's) by
default, or ``--sync``, grpcio's thread-pool server, the cheaper of the two per call.
``fer-bench server`` runs both as targets (``grpc-floor-aio``, ``grpc-floor-sync``).

Started as ``fer-cloud serve`` is (``--host``, ``--port``, ``--ready-file``; other
options are accepted and ignored; ``--raw``: bytes in and out, as fer-cloud
registers ``ModelInfer``), on the same event loop (uvloop where installed) and
with the same ``GRPC_EXPERIMENTS`` as fer-cloud, so that the server CPU per
request it measures is what Python's gRPC costs before any inference work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cloud_server.cli import GRPC_EXPERIMENTS  # (sets it before grpc loads, as fer-cloud does)

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from shared_model.protocol import ATTENTION_MODEL, DATATYPE_FP32, FEATURES, SERVICE_NAME, pb, pb_grpc  # noqa: E402

__all__ = ["prebuilt_response", "FloorServicer", "serve", "serve_sync", "main"]

SYNC_WORKERS = 128  # threads of the sync server: more than the clients of any sweep, so that none waits for a thread


def prebuilt_response() -> pb.ModelInferResponse:
    """What fer-cloud answers for one FP32 [1, 8, 28, 28] request: the attended map, FP32."""
    response = pb.ModelInferResponse(model_name=ATTENTION_MODEL)
    response.outputs.add(name=FEATURES, datatype=DATATYPE_FP32, shape=[1, 8, 28, 28])
    response.raw_output_contents.append(np.zeros((1, 8, 28, 28), np.float32).tobytes())
    return response


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.response = prebuilt_response()

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return self.response


async def serve(host: str, port: int, ready: Path, raw: bool = False) -> None:
    server = grpc.aio.server()
    if raw:  # as fer-cloud registers ModelInfer: bytes in, bytes out, no protobuf (de)serializers
        answer = prebuilt_response().SerializeToString()

        async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return answer

        handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    else:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    _announce(ready, bound)
    await server.wait_for_termination()


def serve_sync(host: str, port: int, ready: Path) -> None:
    """grpcio's thread-pool server answering serialized messages, as ``serve(raw=True)`` does on grpc.aio."""
    answer = prebuilt_response().SerializeToString()

    def infer(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    server = grpc.server(ThreadPoolExecutor(max_workers=SYNC_WORKERS))
    handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    _announce(ready, bound)
    server.wait_for_termination()


def _announce(ready: Path, port: int) -> None:
    """The port in ``ready``, written whole (a reader never sees half a file)."""
    partial = ready.with_name(ready.name + ".partial")
    partial.write_text(json.dumps({"port": port, "grpc_experiments": os.environ.get("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)}))
    partial.replace(ready)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--raw", action="store_true", help="serve ModelInfer on serialized messages (as fer-cloud does), not through protobuf")
    parser.add_argument("--sync", action="store_true", help="grpcio's thread-pool server (serialized messages), not grpc.aio")
    args, _ = parser.parse_known_args()
    if args.sync:
        serve_sync(args.host, args.port, args.ready_file)
        return 0
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.ready_file, args.raw))
    else:
        uvloop.run(serve(args.host, args.port, args.ready_file, args.raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
