"""cloud_server.wire: requests split without copying their tensors, responses built from pieces, malformed bytes refused.

Every expectation is protobuf's own parse of the same bytes.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cloud_server.wire import MalformedMessage, infer_response_bytes, split_infer_request, stream_response_bytes
from shared_model.protocol import pb, pb_grpc, set_parameters


def request_with_tensors(*tensors: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fer_attention", model_version="v1", id="req-7")
    set_parameters(request.parameters, {"scale": 0.5, "zero_point": 3})
    for i, data in enumerate(tensors):
        request.inputs.add(name=f"input{i}", datatype="UINT8", shape=[1, len(data)])
        request.raw_input_contents.append(data)
    request.outputs.add(name="features")
    return request


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, encoded by protobuf (as the only field of a message that has it)."""
    message = pb.ModelInferRequest()
    if number == 7:
        message.raw_input_contents.append(payload)
    elif number == 1:
        message.model_name = payload.decode()
    elif number == 3:
        message.id = payload.decode()
    return message.SerializeToString()


def test_split_returns_the_same_request_and_views_of_its_tensors() -> None:
    tensors = (bytes(range(256)) * 30, b"\x01\x02\x03", b"")
    original = request_with_tensors(*tensors)
    data = original.SerializeToString()
    metadata, raws = split_infer_request(data)
    expected = pb.ModelInferRequest()
    expected.CopyFrom(original)
    del expected.raw_input_contents[:]
    assert metadata == expected
    assert [bytes(view) for view in raws] == list(tensors)
    assert all(view.obj is data for view in raws)  # views of the received bytes: not copied


def test_split_accepts_fields_in_any_order() -> None:
    data = field(7, b"first") + field(1, "fer_rest".encode()) + field(7, b"second") + field(3, b"abc")
    metadata, raws = split_infer_request(data)
    parsed = pb.ModelInferRequest.FromString(data)
    assert (metadata.model_name, metadata.id) == (parsed.model_name, parsed.id) == ("fer_rest", "abc")
    assert [bytes(view) for view in raws] == list(parsed.raw_input_contents) == [b"first", b"second"]


def test_empty_bytes_are_an_empty_request() -> None:
    metadata, raws = split_infer_request(b"")
    assert metadata == pb.ModelInferRequest() and raws == []


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"\x0a", "varint"),  # a tag, then nothing
        (b"\x0a\xff\xff", "varint"),  # a length whose varint never ends
        (b"\x3a\x10abc", "claims 16 bytes"),  # raw_input_contents longer than the message
        (b"\x0a\x05ab", "claims 5 bytes"),
        (b"\x0b", "wire type 3"),  # a group: not used by this protocol
        (b"\x02\x00", "field number 0"),
        (b"\x09\x01\x02", "truncated"),  # fixed64 cut short
        (b"\x0a\x02\xff\xfe", "not a ModelInferRequest"),  # model_name that is not UTF-8
        (b"\x08" + b"\xff" * 11, "varint"),  # overlong varint
    ],
)
def test_malformed_bytes_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        split_infer_request(data)
    with pytest.raises(Exception):  # protobuf agrees that these are not messages
        pb.ModelInferRequest.FromString(data)


def test_response_bytes_parse_as_the_message_protobuf_would_build() -> None:
    features = np.arange(2 * 8 * 28 * 28, dtype=np.float32).reshape(2, 8, 28, 28)
    attention = np.arange(784, dtype=np.uint8)
    metadata = pb.ModelInferResponse(model_name="fer_attention", model_version="v1", id="req-7")
    metadata.outputs.add(name="features", datatype="FP32", shape=features.shape)
    metadata.outputs.add(name="spatial_attention", datatype="UINT8", shape=[1, 1, 28, 28])
    metadata.parameters["queue_us"].int64_param = 12
    data = infer_response_bytes(metadata, [features[1:2].data, attention.data])
    expected = pb.ModelInferResponse()
    expected.CopyFrom(metadata)
    expected.raw_output_contents.extend([features[1:2].tobytes(), attention.tobytes()])
    assert pb.ModelInferResponse.FromString(data) == expected
    streamed = pb.ModelStreamInferResponse.FromString(stream_response_bytes(data))
    assert streamed == pb.ModelStreamInferResponse(infer_response=expected)


def test_bytes_that_are_not_a_request_get_invalid_argument_and_the_server_serves_on(server) -> None:
    """Over a real server: the raw ModelInfer handler refuses garbage as the protocol says, unary and in a stream."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    raw_unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as caught:
        raw_unary(b"\x3a\x10abc", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest" in caught.value.details()

    good = pb.ModelInferRequest(model_name="fer_attention", id="ok")
    good.inputs.add(name="features", datatype="FP32", shape=[1, 8, 28, 28])
    good.raw_input_contents.append(np.zeros((1, 8, 28, 28), np.float32).tobytes())
    raw_stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    replies = [pb.ModelStreamInferResponse.FromString(r) for r in raw_stream(iter([b"\x0b", good.SerializeToString()]), timeout=20)]
    assert replies[0].error_message.startswith("INVALID_ARGUMENT: malformed ModelInferRequest")
    assert not replies[1].error_message and replies[1].infer_response.id == "ok"
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ModelInfer(good, timeout=10).id == "ok"
    channel.close()
