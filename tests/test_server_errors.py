"""Malformed and hostile requests get the right status and a clear message; the server keeps serving."""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from shared_model.checkpoint import model_fingerprint
from shared_model.protocol import pack_bytes_elements, pb, pb_grpc, set_parameters


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(params=["worker thread", "inline"])
def hostile_stub(request):
    """A stub on each request path: the batcher's worker thread (PyTorch) and inline batches on the loop."""
    running = request.getfixturevalue("server" if request.param == "worker thread" else "inline_server")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def features_request(shape=(1, 8, 28, 28), datatype="UINT8", data: bytes | None = None, params=None, model="fer_attention") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="features", datatype=datatype, shape=list(shape))
    set_parameters(tensor.parameters, {"scale": 0.05, "zero_point": 128} if params is None else params)
    size = {"UINT8": 1, "FP16": 2, "FP32": 4}.get(datatype, 1)
    request.raw_input_contents.append(data if data is not None else bytes(8 * 28 * 28 * size))
    return request


def image_request(data: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fer_classifier")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(pack_bytes_elements([data]))
    return request


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def broken_png() -> bytes:
    """An 8x8 gray PNG whose image data is interrupted by a chunk of type 0: it opens, then fails to load."""
    rows = zlib.compress(bytes(9 * 8))  # 8 rows: a filter byte and 8 pixels each
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
    body = _chunk(b"IDAT", rows[:4]) + _chunk(b"\x00\x00\x00\x00", b"") + _chunk(b"IDAT", rows[4:])
    return b"\x89PNG\r\n\x1a\n" + header + body + _chunk(b"IEND", b"")


def encoded(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format=image_format)
    return buffer.getvalue()


def _refusal(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    return caught.value


CASES = {
    "wrong shape": (lambda: features_request(shape=(1, 8, 27, 28), data=bytes(8 * 27 * 28)), grpc.StatusCode.INVALID_ARGUMENT, "must be [N, 8, 28, 28]"),
    "wrong byte count": (lambda: features_request(data=bytes(100)), grpc.StatusCode.INVALID_ARGUMENT, "needs 6272 bytes, got 100"),
    "wrong dtype": (lambda: features_request(datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT, "datatype must be UINT8, FP16 or FP32"),
    "huge declared batch": (lambda: features_request(shape=(2**40, 8, 28, 28)), grpc.StatusCode.INVALID_ARGUMENT, "batch size"),
    "huge declared side": (lambda: features_request(shape=(1, 8, 28, 2**40)), grpc.StatusCode.INVALID_ARGUMENT, "must be [N, 8, 28, 28]"),
    "negative dimension": (lambda: features_request(shape=(1, 8, -28, 28)), grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    "missing quantization": (lambda: features_request(params={}), grpc.StatusCode.INVALID_ARGUMENT, "'scale' and 'zero_point'"),
    "bad scale": (lambda: features_request(params={"scale": -1.0, "zero_point": 3}), grpc.StatusCode.INVALID_ARGUMENT, "scale"),
    "overflowing scale": (lambda: features_request(data=bytes([255]) * 6272, params={"scale": 1e308, "zero_point": 0}), grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
    "scale beyond float32": (lambda: features_request(data=bytes([255]) * 6272, params={"scale": 1e39, "zero_point": 0}), grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
    "nan in fp32": (lambda: features_request(datatype="FP32", data=np.full(8 * 28 * 28, np.nan, "<f4").tobytes(), params={}), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    "infinity in fp32": (lambda: features_request(datatype="FP32", data=np.r_[np.inf, np.zeros(8 * 28 * 28 - 1)].astype("<f4").tobytes(), params={}), grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
    "fp32 of the wrong size": (lambda: features_request(datatype="FP32", data=bytes(4 * 8 * 28 * 28 - 4), params={}), grpc.StatusCode.INVALID_ARGUMENT, "needs 25088 bytes"),
    "wrong input name": (lambda: _renamed(features_request(), "pixels"), grpc.StatusCode.INVALID_ARGUMENT, "exactly one input named 'features'"),
    "unknown model": (lambda: features_request(model="resnet50"), grpc.StatusCode.NOT_FOUND, "unknown model 'resnet50'"),
    "corrupt image": (lambda: image_request(b"\xff\xd8\xff\xe0 this is not a jpeg"), grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded"),
    "oversized image bytes": (lambda: image_request(bytes(5 * 1024 * 1024)), grpc.StatusCode.INVALID_ARGUMENT, "exceeds the limit"),
    "too many pixels": (lambda: image_request(png(5000, 4000)), grpc.StatusCode.INVALID_ARGUMENT, "pixels exceeds the limit"),
    "truncated BYTES element": (lambda: _raw_bytes_request(struct.pack("<I", 1000) + b"abc"), grpc.StatusCode.INVALID_ARGUMENT, "declares 1000 bytes"),
    "PNG broken after its header": (lambda: image_request(broken_png()), grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded"),
    "TIFF image": (lambda: image_request(encoded("TIFF")), grpc.StatusCode.INVALID_ARGUMENT, "JPEG or PNG"),
    "BMP image": (lambda: image_request(encoded("BMP")), grpc.StatusCode.INVALID_ARGUMENT, "JPEG or PNG"),
}


def _renamed(request: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest:
    request.inputs[0].name = name
    return request


def _raw_bytes_request(raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fer_classifier")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_refused_and_server_keeps_serving(hostile_stub, case: str) -> None:
    build, code, message = CASES[case]
    error = _refusal(hostile_stub, build())
    assert error.code() == code
    assert message in error.details()
    assert hostile_stub.ModelInfer(features_request(), timeout=10).outputs[0].name == "features"


def _versioned(request: pb.ModelInferRequest, version: str) -> pb.ModelInferRequest:
    request.model_version = version
    return request


def _asking(request: pb.ModelInferRequest, outputs: list[str]) -> pb.ModelInferRequest:
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _typed(request: pb.ModelInferRequest, datatype: str) -> pb.ModelInferRequest:
    request.inputs[0].datatype = datatype
    return request


# Client strings far longer than gRPC's ~8 KB of trailers: the message must still fit, and say what was wrong.
LONG_ECHO_CASES = {
    "long model name": (lambda: features_request(model="x" * 20000), grpc.StatusCode.NOT_FOUND, "unknown model 'xxxx"),
    "long version": (lambda: _versioned(features_request(), "v" * 20000), grpc.StatusCode.NOT_FOUND, "version 'vvvv"),
    "long input name": (lambda: _renamed(features_request(), "n" * 20000), grpc.StatusCode.INVALID_ARGUMENT, "got ['nnnn"),
    "long datatype": (lambda: features_request(datatype="D" * 20000), grpc.StatusCode.INVALID_ARGUMENT, "got 'DDDD"),
    "long image datatype": (lambda: _typed(image_request(b""), "D" * 20000), grpc.StatusCode.INVALID_ARGUMENT, "got 'DDDD"),
    "shape of absurd rank": (lambda: features_request(shape=[1] * 5000), grpc.StatusCode.INVALID_ARGUMENT, "shape has more than 8 dimensions"),
    "many unknown outputs": (lambda: _asking(features_request(), [f"unknown_output_{i:04d}" for i in range(1000)]), grpc.StatusCode.INVALID_ARGUMENT, "no output ['unknown_output_0000', "),
    "one output named many times": (lambda: _asking(features_request(), ["features"] * 1000), grpc.StatusCode.INVALID_ARGUMENT, "the same output twice"),
    "long string scale": (lambda: features_request(params={"scale": "s" * 20000, "zero_point": 3}), grpc.StatusCode.INVALID_ARGUMENT, "'scale' must be a number, got 'ssss"),
}


@pytest.mark.parametrize("case", list(LONG_ECHO_CASES))
def test_long_client_values_are_echoed_short(hostile_stub, case: str) -> None:
    """Unary and in a stream: the right code, a message under 1 KB that still shows the offending value."""
    build, code, shown = LONG_ECHO_CASES[case]
    error = _refusal(hostile_stub, build())
    assert error.code() == code, error.details()
    assert len(error.details()) < 1000 and shown in error.details()
    request = build()
    request.id = "long"
    (reply,) = hostile_stub.ModelStreamInfer(iter([request]), timeout=20)
    assert reply.error_message.startswith(code.name) and len(reply.error_message) < 1000 and shown in reply.error_message
    assert reply.infer_response.id == "long"
    assert hostile_stub.ModelInfer(features_request(), timeout=10).outputs[0].name == "features"


def test_long_names_in_model_metadata_are_echoed_short(stub) -> None:
    for asked in (pb.ModelMetadataRequest(name="x" * 20000), pb.ModelMetadataRequest(name="fer_attention", version="v" * 20000)):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelMetadata(asked, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        assert len(caught.value.details()) < 1000 and ("'xxxx" in caught.value.details() or "version 'vvvv" in caught.value.details())


def test_a_stream_error_for_a_long_model_name_fits_the_send_limit(trained_model) -> None:
    """The answer to a request that fits the message limit fits it too (the unknown name is not echoed whole, twice)."""
    from fer_bench.loopback import start_server

    running = start_server(trained_model, max_message_bytes=32 * 1024)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        long, good = features_request(model="x" * 20000), features_request()
        long.id, good.id = "long", "good"
        replies = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([long, good]), timeout=20))
        assert [r.infer_response.id for r in replies] == ["long", "good"]
        assert replies[0].error_message.startswith("NOT_FOUND: unknown model 'xxxx") and not replies[1].error_message
    finally:
        channel.close()
        running.stop_now()


@pytest.mark.parametrize("model", ["fer_attention", "fer_rest"])
@pytest.mark.parametrize(
    "parameter, value", [("zero_point", float("nan")), ("zero_point", float("inf")), ("zero_point", -float("inf")), ("scale", float("nan")), ("scale", float("inf")), ("scale", 0.0), ("scale", -0.5)]
)
def test_non_finite_or_non_positive_quantization_is_invalid_argument(hostile_stub, model: str, parameter: str, value: float) -> None:
    """Sent as doubles (as tritonclient sends Python floats), unary and in a stream."""
    params = {"scale": 0.05, "zero_point": 128.0, parameter: value}
    error = _refusal(hostile_stub, features_request(model=model, params=params))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"'{parameter}' must be" in error.details()
    request = features_request(model=model, params=params)
    request.id = "q"
    (reply,) = hostile_stub.ModelStreamInfer(iter([request]), timeout=20)
    assert reply.error_message.startswith("INVALID_ARGUMENT") and f"'{parameter}' must be" in reply.error_message
    assert hostile_stub.ModelInfer(features_request(model=model), timeout=10).outputs


def test_unknown_version_is_not_found_with_both_versions(stub, server) -> None:
    request = features_request()
    request.model_version = "deadbeefdeadbeef"
    error = _refusal(stub, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "deadbeefdeadbeef" in error.details() and server.engine.fingerprint in error.details()


def test_request_level_quantization_parameters_are_accepted(stub) -> None:
    request = features_request(params={})
    set_parameters(request.parameters, {"scale": 0.05, "zero_point": 128})
    response = stub.ModelInfer(request, timeout=10)
    assert set(response.outputs[0].parameters) == {"scale", "zero_point"}


def test_int64_scale_and_typed_contents_are_accepted(stub) -> None:
    request = pb.ModelInferRequest(model_name="fer_attention")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 8, 28, 28])
    tensor.contents.fp32_contents.extend([0.5] * (8 * 28 * 28))
    response = stub.ModelInfer(request, timeout=10)
    assert response.outputs[0].datatype == "FP32" and len(response.raw_output_contents[0]) == 8 * 28 * 28 * 4


def test_stream_reports_errors_in_band_and_continues(stub) -> None:
    requests = [features_request(), features_request(data=bytes(3)), features_request()]
    for i, r in enumerate(requests):
        r.id = str(i)
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=20))
    assert [r.infer_response.id for r in replies] == ["0", "1", "2"]
    assert [bool(r.error_message) for r in replies] == [False, True, False]
    assert replies[1].error_message.startswith("INVALID_ARGUMENT") and "needs 6272 bytes" in replies[1].error_message


def test_stream_survives_garbage_mid_stream(hostile_stub) -> None:
    garbage = [
        pb.ModelInferRequest(),  # empty
        features_request(model="nope"),
        features_request(datatype="FP32", data=b"\x00" * 17, params={}),
        features_request(params={"scale": 1e308, "zero_point": 0}, data=bytes([255]) * 6272),
        image_request(b"GIF89a garbage"),
    ]
    requests = [features_request(), *garbage, features_request()]
    for i, r in enumerate(requests):
        r.id = str(i)
    replies = list(hostile_stub.ModelStreamInfer(iter(requests), timeout=20))
    assert [r.infer_response.id for r in replies] == [str(i) for i in range(len(requests))]
    assert [bool(r.error_message) for r in replies] == [False] + [True] * len(garbage) + [False]
    codes = [r.error_message.split(":", 1)[0] for r in replies[1:-1]]
    assert codes == ["NOT_FOUND", "NOT_FOUND", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT"]


def test_health_metadata_and_readiness(stub, server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="fer_attention", version=server.engine.fingerprint)).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="fer_attention", version="other")).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="fer_attention"))
    assert meta.versions == [model_fingerprint(server.engine.model)]
    assert list(meta.inputs[0].shape) == [-1, 8, 28, 28] and meta.inputs[0].datatype == "UINT8"
    assert meta.parameters["class_names"].string_param.split(",")[:2] == ["angry", "disgust"]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


def test_reflection_lists_the_services(server) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    channel.close()
