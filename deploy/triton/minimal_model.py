"""The leanest Triton model for the cloud stage's work: the reference engine of ``fer-bench server``.

Triton's Python backend as its examples use it: a batch's FP32 inputs are
concatenated, the ONNX export next to this file (``model.onnx``) runs once on
them with one ONNX Runtime thread, and each request gets its rows of the first
output. The tensor names come from ``config.pbtxt``. No quantization, no
requested outputs, no fingerprint: ``model.py`` is the project's full model.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_name, self.output_name = config["input"][0]["name"], config["output"][0]["name"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider"] if args.get("model_instance_kind") == "GPU" else []
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])
        self.onnx_input = self.session.get_inputs()[0].name

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        output = self.session.run(None, {self.onnx_input: np.concatenate(inputs)})[0]
        rows = np.split(output, np.cumsum([len(x) for x in inputs])[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]) for part in rows]

    def finalize(self) -> None:
        self.session = None
