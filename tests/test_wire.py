"""cloud_server.wire: requests split without copying their tensors, responses built from pieces, malformed bytes refused.

Every expectation is protobuf's own parse of the same bytes.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from cloud_server.wire import MalformedMessage, TrailingTensor, infer_response_bytes, split_infer_request, split_trailing_tensor, stream_response_bytes
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
    else:
        raise ValueError(f"field {number} is not one this helper writes")
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


def test_the_walk_stops_at_a_flood_of_fields() -> None:
    """Too many top-level fields, or more tensors than allowed, are refused before the rest is walked;
    what was read before is kept, so a stream's error can still name the request."""
    head = request_with_tensors(b"abc").SerializeToString()
    with pytest.raises(MalformedMessage, match="more than 1024 fields") as caught:
        split_infer_request(head + b"\xa0\x06\x00" * 100_000)  # an unknown varint field, again and again
    assert caught.value.request is not None and caught.value.request.id == "req-7"
    with pytest.raises(MalformedMessage, match="more than 1 raw_input_contents") as caught:
        split_infer_request(head + b"\x3a\x00" * 100_000, max_raws=1)
    assert caught.value.request is not None and caught.value.request.id == "req-7"
    metadata, raws = split_infer_request(head + b"\xa0\x06\x00" * 100)  # a few unknown fields: kept, as protobuf keeps them
    assert metadata.id == "req-7" and [bytes(view) for view in raws] == [b"abc"]


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint, as its specification writes it."""
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _length_delimited(field: int, contents: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(contents)) + contents


def _second_input(tensor_fields: bytes) -> bytes:
    """A second ``inputs`` entry (field 5), written by hand: protobuf takes seconds to build these."""
    return _length_delimited(5, tensor_fields)


HEAVY = 60_000_000  # bytes: protobuf alone parses this much packed shape in 1-2 s (here, 2026-12-03)
def test_a_tensor_protobuf_would_take_long_to_parse_is_refused_unparsed() -> None:
    head = request_with_tensors(b"abc").SerializeToString()
    padding = _length_delimited(1, b"n" * 300)  # a long name: the tensor is walked
    with pytest.raises(MalformedMessage, match="more than 8 dimensions") as caught:
        split_infer_request(head + _second_input(padding + _length_delimited(3, b"\x01" * 9)))
    assert caught.value.request is not None and caught.value.request.id == "req-7"
    with pytest.raises(MalformedMessage, match="more than 8 dimensions"):
        split_infer_request(head + _second_input(padding + b"\x18\x01" * 9))  # unpacked: one field per dimension
    with pytest.raises(MalformedMessage, match="typed contents hold more than"):
        split_infer_request(head + _second_input(padding + _length_delimited(5, _length_delimited(4, b"\x01" * ((1 << 24) + 1)))))
    with pytest.raises(MalformedMessage, match="more than 1024 fields"):
        split_infer_request(head + _second_input(padding + _length_delimited(5, b"\x42\x00" * 1025)))
    # what a real client sends is kept whole: rank 8, typed contents, a long name
    typed = pb.ModelInferRequest(model_name="fer_classifier")
    typed.inputs.add(name="n" * 300, datatype="UINT8", shape=[1, 1, 1, 1, 1, 1, 2, 300]).contents.uint_contents.extend(range(600))
    typed.inputs[0].contents.bytes_contents.extend([b"x"] * 64)
    parsed, raws = split_infer_request(typed.SerializeToString())
    assert parsed == typed and raws == []


FLOODS = {
    "800k empty raw_input_contents": lambda: b"\x3a\x00" * 800_000,
    "an unknown varint field 800k times": lambda: b"\xa0\x06\x00" * 800_000,
    "a shape of 60M dimensions": lambda: _second_input(_length_delimited(3, b"\x01" * HEAVY)),
    "60M integers of typed contents": lambda: _second_input(_length_delimited(5, _length_delimited(4, b"\x01" * HEAVY))),
    "30M empty bytes_contents": lambda: _second_input(_length_delimited(5, b"\x42\x00" * (HEAVY // 2))),
}


@pytest.mark.parametrize("path", ["server", "inline_server"])
@pytest.mark.parametrize("flood", list(FLOODS))
def test_a_request_that_would_hold_the_event_loop_is_refused_at_once(request, path: str, flood: str) -> None:
    """After a valid request, a megabyte or two of tiny fields, or a second input whose shape or typed
    contents protobuf would parse for seconds: INVALID_ARGUMENT without walking or parsing it all (that
    took 2.5 s on the event loop), unary and in a stream; health and inference answer right after."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running = request.getfixturevalue(path)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    head = _attention_request(np.zeros((1, 8, 28, 28), np.float32), "flood").SerializeToString()
    tail = FLOODS[flood]()
    started = time.perf_counter()
    try:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(head + tail, timeout=20)
    except grpc.RpcError as error:
        refusal: grpc.RpcError | None = error
    else:
        refusal = None
    elapsed = time.perf_counter() - started
    assert refusal is not None, "the flood was accepted"
    assert elapsed < 1.0, f"answered after {elapsed:.2f} s"
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed ModelInferRequest" in refusal.details()
    raw_stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    (reply,) = [pb.ModelStreamInferResponse.FromString(r) for r in raw_stream(iter([head + tail]), timeout=20)]
    assert reply.error_message.startswith("INVALID_ARGUMENT: malformed ModelInferRequest") and reply.infer_response.id == "flood"
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=2)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_attention_request(np.zeros((1, 8, 28, 28), np.float32), "ok"), timeout=10).id == "ok"
    channel.close()


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


def _attention_request(values: np.ndarray, request_id: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fer_attention", id=request_id)
    request.inputs.add(name="features", datatype="FP32", shape=list(values.shape))
    request.raw_input_contents.append(values.astype("<f4").tobytes())
    return request


def test_a_bad_request_in_an_inline_batch_is_refused_alone(inline_server) -> None:
    """Sixteen requests at once, one of them holding NaN: that one INVALID_ARGUMENT, the others their own answers."""
    channel = grpc.insecure_channel(f"127.0.0.1:{inline_server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1, 8, 28, 28)).astype(np.float32) for _ in range(16)]
    inputs[5][0, 2, 3, 4] = np.nan
    calls = [stub.ModelInfer.future(_attention_request(x, str(i)), timeout=20) for i, x in enumerate(inputs)]
    alone = stub.ModelInfer(_attention_request(inputs[0], "alone"), timeout=20)
    for i, call in enumerate(calls):
        if i == 5:
            with pytest.raises(grpc.RpcError) as caught:
                call.result()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in caught.value.details()
            continue
        response = call.result()
        assert response.id == str(i)
        answer = np.frombuffer(response.raw_output_contents[0], "<f4")
        assert answer.shape == (8 * 28 * 28,) and np.isfinite(answer).all()
        if i == 0:
            np.testing.assert_array_equal(answer, np.frombuffer(alone.raw_output_contents[0], "<f4"))
    channel.close()


def test_requests_are_answered_as_they_say_whatever_their_field_order(inline_server) -> None:
    """Field order is free in protobuf, and the last model_name counts: each request is answered as it says.
    The common request's answer (its fixed part serialized once) is the message the full validation's path builds."""
    channel = grpc.insecure_channel(f"127.0.0.1:{inline_server.port}")
    raw_unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    values = np.random.default_rng(4).standard_normal((1, 8, 28, 28)).astype(np.float32)
    request = _attention_request(values, "x")
    usual = pb.ModelInferResponse.FromString(raw_unary(request.SerializeToString(), timeout=20))
    tensors_first = field(7, values.tobytes()) + request.SerializeToString().replace(field(7, values.tobytes()), b"")
    assert not tensors_first.startswith(b"\x0a")
    named = _attention_request(values, "x")
    named.outputs.add(name="features")  # not the common request: the full validation and response
    for other in (tensors_first, named.SerializeToString()):
        answer = pb.ModelInferResponse.FromString(raw_unary(other, timeout=20))
        assert answer.raw_output_contents[0] == usual.raw_output_contents[0]
        assert (usual.model_name, usual.model_version, usual.id, list(usual.outputs)) == (answer.model_name, answer.model_version, answer.id, list(answer.outputs))
        assert set(usual.parameters) == set(answer.parameters) == {"queue_us", "compute_us", "batch_size", "server_us"}
    renamed = request.SerializeToString() + field(1, b"fer_rest")  # begins as fer_attention, names fer_rest last
    rest = pb.ModelInferResponse.FromString(raw_unary(renamed, timeout=20))
    assert rest.model_name == "fer_rest" and rest.outputs[0].name == "probabilities"
    channel.close()


def _face_request(tensor: bytes, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fer_attention", **fields)
    request.inputs.add(name="features", datatype="UINT8", shape=[1, len(tensor)])
    request.raw_input_contents.append(tensor)
    return request


def test_a_request_ending_in_its_tensor_splits_as_protobuf_parses_it() -> None:
    tensor = bytes(range(256)) * 24 + b"\x01" * 128  # 6,272 bytes: one UINT8 face
    layout = TrailingTensor(len(tensor))
    for fields in ({}, {"id": "req-9", "model_version": "v1"}, {"id": "x" * 300}):
        data = _face_request(tensor, **fields).SerializeToString()
        split = split_trailing_tensor(data, layout)
        assert split is not None
        metadata, raws = split
        whole = pb.ModelInferRequest.FromString(data)
        assert [bytes(view) for view in raws] == list(whole.raw_input_contents) == [tensor]
        del whole.raw_input_contents[:]
        assert metadata == whole


def test_other_layouts_are_left_to_the_walk() -> None:
    tensor = b"\x07" * 6272
    layout = TrailingTensor(len(tensor))
    assert split_trailing_tensor(_face_request(b"\x07" * 6271).SerializeToString(), layout) is None  # another size
    assert split_trailing_tensor(_face_request(tensor, id="x" * 600).SerializeToString(), layout) is None  # a long head
    two = _face_request(tensor)
    two.raw_input_contents.insert(0, b"ab")  # a second tensor, before: the walk refuses it
    assert split_trailing_tensor(two.SerializeToString(), layout) is None
    # the bytes of the tail inside a longer field: the head does not parse alone
    inside = pb.ModelInferRequest(model_name="fer_attention").SerializeToString() + _length_delimited(20, b"i" * 10 + layout.tail + tensor)
    assert inside.endswith(layout.tail + tensor) and split_trailing_tensor(inside, layout) is None
    assert split_infer_request(inside)[1] == []  # the walk agrees: there is no tensor, only an unknown field
    assert split_trailing_tensor(b"", layout) is None and split_trailing_tensor(layout.tail + tensor, layout) is not None
