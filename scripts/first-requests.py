"""The server time of the first requests to a fresh ``fer-cloud serve``, per model.

A first request can pay one-off costs (a library loaded, a thread started) that the
next do not; the server warms each model up before it reports SERVING so that no
client's first face pays them (``InferenceEngine.warm_up``). This starts a cloud
process on loopback, sends ``--requests`` requests to each model back to back and
prints each one's server time (``server_us``) and network time:

    .venv/bin/python scripts/first-requests.py --requests 4
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from edge_client.transport import CloudClient
from fer_bench.processes import CloudProcess
from shared_model.protocol import ATTENTION_MODEL, REST_MODEL
from shared_model.runtimes import load_backend


def _face_jpeg(size: int = 48) -> bytes:
    pixels = (np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4, help="requests per model, back to back")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the cloud process")
    args = parser.parse_args()
    fingerprint = load_backend("onnx").fingerprint
    split = np.random.default_rng(0).random((1, 8, 28, 28)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        cloud = CloudProcess(lambda command: subprocess.Popen(command, stdout=subprocess.DEVNULL), "127.0.0.1", Path(folder), args.threads, None)
        port = cloud.start()
        client = CloudClient(f"127.0.0.1:{port}", fingerprint)
        try:
            client.round_trip(5.0)  # the connection opened, as an edge's discovery opens it before any face
            jpeg = _face_jpeg()
            requests = {
                "fer_classifier (cloud)": lambda: client.image_request(jpeg),
                f"{REST_MODEL} (split-rest)": lambda: client.features_request(REST_MODEL, split),
                f"{ATTENTION_MODEL} (split)": lambda: client.features_request(ATTENTION_MODEL, split),
            }
            print(f"{'model':<26}{'request':>8}{'server ms':>11}{'network ms':>12}")
            for name, make in requests.items():
                for index in range(args.requests):
                    call = client.infer(make(), 5.0)
                    print(f"{name:<26}{index + 1:>8}{call.server_s * 1000:>11.2f}{call.network_s * 1000:>12.2f}")
        finally:
            client.close()
            cloud.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
