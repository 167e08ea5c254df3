"""The GPU path, where CUDA is present: fer-cloud on CUDA, batching on the GPU, Triton's Python backend on the GPU.

Marked ``gpu``; everywhere without a CUDA device they skip with the reason.
``scripts/gpu-check.sh`` runs them (``pytest -m gpu``) with the server benchmark
on a GPU machine and keeps what they print.

Tolerances: PyTorch computes convolutions on Ampere and later GPUs in TF32 by
default (cuDNN), about three decimal digits, so GPU and CPU agree to that and
not to float32's seven; the batched and the lone answer on the GPU may come from
different cuDNN algorithms, so they are held to the same bounds. Quantized
outputs may differ by a rounding step or two.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from edge_client.transport import CloudClient
from shared_model import codec
from shared_model.preprocessing import pixels_to_tensor
from shared_model.protocol import (
    ATTENTION_MODEL,
    CHANNEL_ATTENTION,
    CLASSIFIER_MODEL,
    FEATURES,
    REST_MODEL,
    SCALE,
    SPATIAL_ATTENTION,
    ZERO_POINT,
    pb,
    pb_grpc,
    read_parameters,
    set_parameters,
)

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False); scripts/gpu-check.sh runs these on a GPU machine"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]

PROBABILITY_ATOL = 1e-2  # TF32 convolutions: see the module docstring
ATTENTION_STEPS = 2  # uint8 outputs: rounding steps of difference allowed
CLIENTS = 32


def _close_uint8(a: np.ndarray, b: np.ndarray, step: float) -> None:
    """Two dequantized uint8 tensors agree to ATTENTION_STEPS rounding steps of ``step``."""
    assert a.shape == b.shape
    worst = float(np.abs(a - b).max())
    assert worst <= ATTENTION_STEPS * step + 1e-6, f"largest difference {worst:.5f}, {worst / step:.2f} steps of {step:.5f}"


def _close_probabilities(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=PROBABILITY_ATOL)
    assert (a.argmax(axis=1) == b.argmax(axis=1)).all(), "a different class won"


# --- servers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces(bundled_faces) -> np.ndarray:
    """The bundled faces as network pixels, uint8 (N, 224, 224, 3)."""
    return np.stack(bundled_faces)


@pytest.fixture(scope="module")
def features(trained_model, faces) -> np.ndarray:
    """What the edge head sends for those faces: float32 (N, 8, 28, 28), computed on the CPU."""
    with torch.no_grad():
        return trained_model.head(pixels_to_tensor(faces)).numpy()


@pytest.fixture(scope="module")
def cpu_server(trained_model):
    from fer_bench.loopback import start_server

    server = start_server(trained_model)
    yield server
    server.stop_now()


@pytest.fixture(scope="module")
def cuda_server():
    """``fer-cloud serve --device cuda`` as a process, batching on (the command line a GPU machine runs)."""
    from fer_bench.processes import cloud_command, stop_process, wait_ready

    with tempfile.TemporaryDirectory() as folder:
        ready = Path(folder) / "ready.json"
        command = cloud_command("127.0.0.1", ready, 2, None) + ["--device", "cuda", "--max-batch-size", str(CLIENTS), "--max-queue-delay-ms", "20"]
        process = subprocess.Popen(command, cwd=ROOT)
        try:
            port = wait_ready(process, ready)
            announced = json.loads(ready.read_text())
            assert announced["device"].startswith("cuda"), f"fer-cloud --device cuda runs on {announced['device']}"
            yield f"127.0.0.1:{port}", announced["version"]
        finally:
            stop_process(process)


def _client(target: str, version: str) -> CloudClient:
    return CloudClient(target, version, timeout_s=60)


# --- fer-cloud on CUDA answers as on the CPU -----------------------------------------------------------


@pytest.mark.parametrize("model", [ATTENTION_MODEL, REST_MODEL, CLASSIFIER_MODEL])
def test_fer_cloud_on_cuda_answers_as_the_cpu_does(model: str, cpu_server, cuda_server, features, faces) -> None:
    target, version = cuda_server
    assert version == cpu_server.engine.fingerprint, "the CUDA server holds other weights"
    cpu, gpu = _client(f"127.0.0.1:{cpu_server.port}", version), _client(target, version)
    try:
        if model == ATTENTION_MODEL:
            outputs = (FEATURES, SPATIAL_ATTENTION, CHANNEL_ATTENTION)
            on_cpu = cpu.infer(cpu.attention_request(features, outputs=outputs)).outputs
            on_gpu = gpu.infer(gpu.attention_request(features, outputs=outputs)).outputs
            step = float(on_cpu[FEATURES].max() - on_cpu[FEATURES].min()) / 255
            _close_uint8(on_gpu[FEATURES], on_cpu[FEATURES], step)
            _close_uint8(on_gpu[SPATIAL_ATTENTION], on_cpu[SPATIAL_ATTENTION], 1 / 255)
            _close_uint8(on_gpu[CHANNEL_ATTENTION], on_cpu[CHANNEL_ATTENTION], 1 / 255)
        elif model == REST_MODEL:
            on_cpu = cpu.infer(cpu.features_request(REST_MODEL, features)).output
            on_gpu = gpu.infer(gpu.features_request(REST_MODEL, features)).output
            _close_probabilities(on_gpu, on_cpu)
        else:
            on_cpu = np.concatenate([cpu.infer(cpu.image_request(face)).output for face in faces])
            on_gpu = np.concatenate([gpu.infer(gpu.image_request(face)).output for face in faces])
            _close_probabilities(on_gpu, on_cpu)
    finally:
        cpu.close()
        gpu.close()


# --- batching on the GPU ---------------------------------------------------------------------------------


def _request(model: str, rows: np.ndarray) -> pb.ModelInferRequest:
    """A uint8 split-tensor request with scale and zero point on the tensor and on the request (Triton reads the latter)."""
    encoded = codec.encode(rows, codec.UINT8)
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=FEATURES, datatype="UINT8", shape=list(encoded.shape))
    quantization = {SCALE: float(encoded.scale), ZERO_POINT: int(encoded.zero_point)}
    set_parameters(tensor.parameters, quantization)
    set_parameters(request.parameters, quantization)
    request.raw_input_contents.append(encoded.data)
    return request


def _first_output(request: pb.ModelInferRequest, response: pb.ModelInferResponse) -> np.ndarray:
    """The response's first output as float32: uint8 dequantized with its own parameters, or the request's where it has none (Triton)."""
    out, raw = response.outputs[0], response.raw_output_contents[0]
    encoding = codec.ENCODING_OF_DATATYPE[out.datatype]
    params = read_parameters(out.parameters) or read_parameters(request.parameters)
    if out.name in (SPATIAL_ATTENTION, CHANNEL_ATTENTION):
        params = {SCALE: 1 / 255, ZERO_POINT: 0}
    return codec.decode_bytes(raw, list(out.shape), encoding, params.get(SCALE), params.get(ZERO_POINT))


def _distinct_inputs(features: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` different one-row split tensors near the real ones, so a row answered to the wrong request shows."""
    rng = np.random.default_rng(0)
    rows = [features[i % len(features)] * rng.uniform(0.8, 1.2) + rng.normal(0, 0.05, features.shape[1:]) for i in range(count)]
    return [row[None].astype(np.float32) for row in rows]


@pytest.mark.parametrize("model", [ATTENTION_MODEL, REST_MODEL])
def test_concurrent_requests_on_a_cuda_server_form_batches_and_get_their_lone_answers(model: str, cuda_server, features) -> None:
    target, _ = cuda_server
    requests = [_request(model, rows) for rows in _distinct_inputs(features, CLIENTS)]
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        alone = []
        for request in requests:  # one at a time: each its own batch
            response = stub.ModelInfer(request, timeout=60)
            assert response.parameters["batch_size"].int64_param == 1
            alone.append(_first_output(request, response))
        start = threading.Barrier(CLIENTS)

        def call(request: pb.ModelInferRequest) -> tuple[int, np.ndarray]:
            start.wait(timeout=60)
            response = stub.ModelInfer(request, timeout=60)
            return response.parameters["batch_size"].int64_param, _first_output(request, response)

        with ThreadPoolExecutor(CLIENTS) as pool:
            together = list(pool.map(call, requests))
    finally:
        channel.close()
    sizes = [size for size, _ in together]
    if model == REST_MODEL:  # fer_attention computes on the CPU, on the event loop, in microseconds: requests seldom meet
        assert max(sizes) > 1, f"no batch formed: {sizes}"
    for request, lone, (_, batched) in zip(requests, alone, together):
        if model == ATTENTION_MODEL:
            _close_uint8(batched, lone, read_parameters(request.parameters)[SCALE])
        else:
            _close_probabilities(batched, lone)


# --- Triton's Python backend on the GPU -----------------------------------------------------------------


def _model_python_providers(python: str) -> list[str]:
    """ONNX Runtime's execution providers in the Python that runs the Triton models."""
    done = subprocess.run([python, "-c", "import onnxruntime; print(','.join(onnxruntime.get_available_providers()))"], capture_output=True, text=True, timeout=120)
    return done.stdout.strip().split(",") if done.returncode == 0 else []


def _gpu_pids() -> set[int] | None:
    """Processes nvidia-smi sees on the GPU, or None where it does not see this one (a container can hide them)."""
    torch.zeros(1, device="cuda")  # this process holds a CUDA context from here on
    listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
    pids = {int(line) for line in listed.stdout.split() if line.strip().isdigit()}
    return pids if os.getpid() in pids else None


def test_triton_python_backend_models_on_the_gpu_answer_the_edge_as_fer_cloud_does(trained_model, cpu_server, bundled_faces, tmp_path: Path) -> None:
    """The edge's split, split-rest and cloud strategies (fer_attention, fer_rest, fer_classifier) against Triton on the GPU and fer-cloud on the CPU."""
    from edge_client.runner import EdgeRunner
    from fer_bench.triton_server import TritonServer, TritonUnavailable
    from shared_model.checkpoint import model_fingerprint
    from shared_model.training.export import TritonSettings, triton_repository

    repository = tmp_path / "repository"
    try:
        server = TritonServer(repository)  # the launcher of tests/test_triton_engine.py
    except TritonUnavailable as reason:
        pytest.skip(f"Triton Inference Server is not installed: {reason}")
    try:
        providers = _model_python_providers(server.python)
        if "CUDAExecutionProvider" not in providers:
            pytest.skip(f"the models' Python ({server.python}) has ONNX Runtime without a CUDA provider ({providers}): the Python backend needs onnxruntime-gpu there")
        fingerprint = model_fingerprint(trained_model)
        triton_repository(trained_model, repository, fingerprint, TritonSettings(device="gpu"))
        for config in repository.glob("*/config.pbtxt"):
            assert "KIND_GPU" in config.read_text(), f"{config} asks for no GPU instance"
        server.start(timeout_s=300, models=(ATTENTION_MODEL, REST_MODEL, CLASSIFIER_MODEL))
        for strategy in ("split", "split-rest", "cloud"):
            answers = []
            for target in (server.target, f"127.0.0.1:{cpu_server.port}"):
                runner = EdgeRunner(trained_model, strategy, CloudClient(target, fingerprint, timeout_s=30.0), timeout_s=30.0)
                answers.append([runner.classify(face) for face in bundled_faces])
                runner.close()
            for on_triton, on_cloud in zip(*answers):
                assert on_triton.strategy == on_cloud.strategy == strategy and not on_triton.fallback and not on_cloud.fallback, (strategy, on_triton.fallback_reason)
            classes = list(answers[1][0].probabilities)
            table = [np.array([[r.probabilities[c] for c in classes] for r in rows]) for rows in answers]
            _close_probabilities(*table)
        on_gpu_now = _gpu_pids()
        if on_gpu_now is not None:  # else nvidia-smi cannot see processes here, and the instance kind is what was checked
            assert set(server.pids()) & on_gpu_now, f"no Triton process on the GPU (nvidia-smi lists {sorted(on_gpu_now)}, Triton runs {server.pids()})"
    finally:
        server.close()
