"""A fer-cloud server in this process, on loopback: what the tests and the measuring scripts call.

Real gRPC on a free port (port 0) with a real :class:`~cloud_server.engine.InferenceEngine`;
nothing on the wire is mocked.
"""

from __future__ import annotations

from dataclasses import replace

from cloud_server.engine import BatchingSettings, InferenceEngine
from cloud_server.inference import Limits
from cloud_server.runtimes import Runtime, attention_function, torch_runtime
from cloud_server.server import CloudServer, ServerOptions
from shared_model.network import FERNet
from shared_model.protocol import ATTENTION_MODEL

__all__ = ["start_server", "attention_off_the_loop"]


def start_server(
    model: FERNet | Runtime, port: int = 0, batching: BatchingSettings | None = None, limits: Limits | None = None, runtime: str = "torch", **options
) -> CloudServer:
    """A started server for ``model`` (a FERNet, or a ready runtime) on 127.0.0.1; ``options`` go to :class:`ServerOptions`."""
    engine = InferenceEngine(model, "cpu", batching or BatchingSettings(max_batch_size=8, max_queue_delay_ms=1.0), limits, runtime=runtime)
    server = CloudServer(engine, ServerOptions(host="127.0.0.1", port=port, **options))
    server.start()
    return server


def attention_off_the_loop(model: FERNet) -> Runtime:
    """The PyTorch runtime with fer_attention computed by PyTorch on its batcher thread, as a stage the
    matrices cannot express is served (by default it runs inline, on the event loop)."""
    served = torch_runtime(model)
    return replace(served, functions={**served.functions, ATTENTION_MODEL: attention_function(model)}, inline=frozenset(), checks_finite=frozenset())
