"""Helpers for tests: real gRPC servers on loopback, clients, certificates."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cloud_server.engine import BatchingSettings, InferenceEngine
from cloud_server.inference import Limits
from cloud_server.server import CloudServer, ServerOptions
from shared_model.network import FERNet


def start_server(
    model: FERNet, port: int = 0, batching: BatchingSettings | None = None, limits: Limits | None = None, runtime: str = "torch", **options
) -> CloudServer:
    engine = InferenceEngine(model, "cpu", batching or BatchingSettings(max_batch_size=8, max_queue_delay_ms=1.0), limits, runtime=runtime)
    server = CloudServer(engine, ServerOptions(host="127.0.0.1", port=port, **options))
    server.start()
    return server


def attention_off_the_loop(model: FERNet):
    """The PyTorch runtime with fer_attention computed by PyTorch on its batcher thread, as a stage the
    matrices cannot express is served (by default it runs inline, on the event loop)."""
    from dataclasses import replace

    from cloud_server.runtimes import attention_function, torch_runtime

    served = torch_runtime(model)
    return replace(served, functions={**served.functions, "fer_attention": attention_function(model)}, inline=frozenset(), checks_finite=frozenset())


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, made with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=fer-test-ca")
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        extra = ["-extfile", "server.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", *extra)
    return {n: folder / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def still_video(path: Path, frames: int, fps: float = 10) -> Path:
    """An MJPG video of ``frames`` copies of the bundled sample photo, written to ``path``."""
    import cv2

    from edge_client.samples import sample_image

    image = cv2.imread(str(sample_image()))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (image.shape[1], image.shape[0]))
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path
