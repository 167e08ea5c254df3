"""A standard client works unchanged: tritonclient[grpc] against fer-cloud.

tritonclient needs protobuf below 7 and registers the same protobuf names, so it
runs in its own virtual environment (made by .ci/run; its python is named by
FER_TRITON_PYTHON) as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = r'''
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

url = sys.argv[1]
client = grpcclient.InferenceServerClient(url=url)
meta = client.get_model_metadata("fer_attention")
features = np.random.default_rng(0).integers(0, 256, size=(2, 8, 28, 28), dtype=np.uint8)
tensor = grpcclient.InferInput("features", list(features.shape), "UINT8")
tensor.set_data_from_numpy(features)
result = client.infer("fer_attention", [tensor], parameters={"scale": 0.05, "zero_point": 128})
output = result.as_numpy("features")
response = result.get_response()
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("fer_attention"),
    "metadata_name": meta.name,
    "metadata_versions": list(meta.versions),
    "input_shape": list(meta.inputs[0].shape),
    "output_shape": list(output.shape),
    "output_dtype": str(output.dtype),
    "output_params": sorted(response.outputs[0].parameters.keys()),
}))
'''


def test_tritonclient_calls_live_ready_metadata_and_infer(server, tmp_path: Path) -> None:
    python = os.environ.get("FER_TRITON_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("FER_TRITON_PYTHON is not set: .ci/run makes a tritonclient[grpc] virtual environment and sets it")
    script = tmp_path / "triton_check.py"
    script.write_text(SCRIPT)
    done = subprocess.run([python, str(script), f"127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["metadata_name"] == "fer_attention"
    assert report["metadata_versions"] == [server.engine.fingerprint]
    assert report["input_shape"] == [-1, 8, 28, 28]
    assert report["output_shape"] == [2, 8, 28, 28] and report["output_dtype"] == "uint8"
    assert report["output_params"] == ["scale", "zero_point"]
