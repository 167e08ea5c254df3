"""``ModelInfer`` on the wire: tensor bytes never pass through protobuf on the server's hot path.

gRPC hands the server each request as bytes and sends whatever bytes the
handler returns. Parsing a request with protobuf copies every
``raw_input_contents`` buffer twice (into protobuf's arena, then into a Python
``bytes`` when read), and serializing a response copies every
``raw_output_contents`` buffer twice more: four copies of each split tensor
per request, as costly on one core as the attention itself.
Following the protobuf encoding (a published specification):

- :func:`split_infer_request` walks a request's top-level fields (tags and
  lengths, never their contents) and keeps ``raw_input_contents`` (field 7) as
  zero-copy :class:`memoryview` slices of the bytes gRPC handed over; every other
  field (names, shapes, parameters: a few hundred bytes) is parsed by protobuf as
  usual. The walk is a Python loop, so it stops at :data:`MAX_FIELDS` fields or
  ``max_raws`` tensors: a megabyte of two-byte fields would otherwise hold the
  event loop for seconds. An input tensor larger than a plain one is walked
  too, for the same reason: protobuf parses a packed ``shape`` of tens of
  megabytes for seconds, so a shape of more than :data:`MAX_RANK`
  dimensions, typed ``contents`` of more than :data:`MAX_CONTENT_ELEMENTS`
  integers, or a tensor of more than :data:`MAX_FIELDS` fields is refused
  unparsed;
- :func:`split_trailing_tensor` is the same split, checked in a few steps, for
  the layout every client writes: a few small fields, then one tensor of a
  known size, last. Parsing a message's first bytes and then its last field
  is parsing the message (a parser merges fields however a message is cut),
  so only the small part is parsed, by protobuf, and nothing is walked;
- :func:`infer_response_bytes` serializes a response's metadata with protobuf
  and appends one length-delimited field 6 per output buffer. A parser merges
  the fields of a message however they are split, so the result is the same
  ``ModelInferResponse``, built with one copy of each tensor.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from shared_model.protocol import pb

__all__ = ["MAX_FIELDS", "MAX_RAWS", "MAX_RANK", "MAX_CONTENT_ELEMENTS", "MalformedMessage", "split_infer_request", "TrailingTensor", "split_trailing_tensor", "infer_response_bytes", "stream_response_bytes"]

_INPUTS = 5  # ModelInferRequest.inputs
_RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents
_SHAPE, _CONTENTS = 3, 5  # InferInputTensor.shape, .contents
_PACKED_VARINT_CONTENTS = range(1, 6)  # InferTensorContents bool, int, int64, uint, uint64: a varint per element
_RAW_OUTPUT_CONTENTS = 6  # ModelInferResponse.raw_output_contents
_INFER_RESPONSE = 2  # ModelStreamInferResponse.infer_response
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5  # wire types; 3 and 4 (groups) are not used by this protocol
_MAX_VARINT_BYTES = 10
MAX_FIELDS = 1024  # top-level fields of one request; a real one has a dozen
MAX_RAWS = 64  # raw_input_contents buffers of one request, unless the caller allows fewer
MAX_RANK = 8  # dimensions of an input's shape; every served model takes rank 1 to 4
MAX_CONTENT_ELEMENTS = 1 << 24  # integers in an input's typed contents (64 raw 224x224x3 images are 9.6 M)
_PLAIN_TENSOR_BYTES = 256  # an input tensor this small (raw contents: name, datatype, shape, parameters) is not walked


class MalformedMessage(ValueError):
    """Bytes that are not a well-formed protobuf message, or hold more fields than this server walks.

    ``request``: when the walk stopped at a limit, the fields read until then
    (so that an answer can still name the request's id); otherwise None.
    """

    def __init__(self, message: str, request: pb.ModelInferRequest | None = None) -> None:
        super().__init__(message)
        self.request = request


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    value = shift = 0
    end = min(len(data), position + _MAX_VARINT_BYTES)
    while position < end:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise MalformedMessage("truncated or overlong varint")


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


_RAW_OUTPUT_TAG = _tag(_RAW_OUTPUT_CONTENTS, _LEN)
_INFER_RESPONSE_TAG = _tag(_INFER_RESPONSE, _LEN)


def _parse_metadata(metadata: list[memoryview]) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(b"".join(metadata))
    except Exception as error:  # protobuf's DecodeError, without depending on its module layout
        raise MalformedMessage(f"not a ModelInferRequest: {error}") from None


def _over_limit(message: str, metadata: list[memoryview]) -> MalformedMessage:
    """The refusal of a request whose walk stopped at a limit, with what was read before."""
    try:
        request = _parse_metadata(metadata)
    except MalformedMessage:
        request = None
    return MalformedMessage(message, request)


def split_infer_request(data: bytes, max_raws: int = MAX_RAWS) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    """A serialized ``ModelInferRequest``: its fields but ``raw_input_contents``, parsed; those, as views of ``data``.

    Raises :class:`MalformedMessage` when ``data`` is not a well-formed message,
    or holds more than :data:`MAX_FIELDS` top-level fields or ``max_raws``
    ``raw_input_contents`` (then without walking the rest).
    """
    view = memoryview(data)
    span = end = 0  # span: where the run of other fields since the last tensor began; end: of the last field read
    metadata: list[memoryview] = []
    raws: list[memoryview] = []
    try:
        for field, wire_type, start, value, end in _fields(data, 0, len(data)):
            if wire_type != _LEN:
                continue
            if field == _INPUTS and end - value > _PLAIN_TENSOR_BYTES:
                try:
                    _check_tensor(data, value, end)
                except MalformedMessage as error:
                    raise _over_limit(str(error), metadata + [view[span:start]]) from None
            elif field == _RAW_INPUT_CONTENTS:
                if len(raws) == max_raws:
                    raise _over_limit(f"more than {max_raws} raw_input_contents buffers", metadata + [view[span:start]])
                if span < start:
                    metadata.append(view[span:start])
                raws.append(view[value:end])
                span = end
    except _TooManyFields as error:  # the fields read until then still name the request
        raise _over_limit(str(error), metadata + [view[span:end]]) from None
    if span < len(data):
        metadata.append(view[span:])
    return _parse_metadata(metadata), raws


class _TooManyFields(MalformedMessage):
    pass


def _fields(data: bytes, position: int, end: int, what: str = "") -> Iterator[tuple[int, int, int, int, int]]:
    """The fields of the message in ``data[position:end]``: (field, wire type, its start, its value's start, its end).

    A length-delimited field's value is its contents; any other's, its bytes
    after the tag. Stops with :class:`MalformedMessage` at bytes that are not a
    field, or after :data:`MAX_FIELDS` fields (``what``: the message, in errors).
    """
    of = f" of {what}" if what else ""
    count = 0
    while position < end:
        count += 1
        if count > MAX_FIELDS:
            raise _TooManyFields(f"{what or 'the request'} holds more than {MAX_FIELDS} fields")
        start = position
        key, value = _read_varint(data, position)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise MalformedMessage(f"field number 0{of}")
        if wire_type == _LEN:
            length, value = _read_varint(data, value)
            if value + length > end:
                raise MalformedMessage(f"field {field}{of} claims {length} bytes, {end - value} remain")
            position = value + length
        elif wire_type == _VARINT:
            _, position = _read_varint(data, value)
        elif wire_type in (_I64, _I32):
            position = value + (8 if wire_type == _I64 else 4)
            if position > end:
                raise MalformedMessage(f"field {field}{of} is truncated")
        else:
            raise MalformedMessage(f"field {field}{of} has wire type {wire_type}, which this protocol does not use")
        yield field, wire_type, start, value, position


def _check_tensor(data: bytes, position: int, end: int) -> None:
    """Refuse an ``InferInputTensor`` that protobuf would take long to parse: a huge shape or typed contents."""
    dimensions = 0
    for field, wire_type, _, start, stop in _fields(data, position, end, "an input tensor"):
        if field == _SHAPE:
            dimensions += _varint_count(data, start, stop) if wire_type == _LEN else 1
            if dimensions > MAX_RANK:
                raise MalformedMessage(f"an input's shape has more than {MAX_RANK} dimensions")
        elif field == _CONTENTS and wire_type == _LEN:
            _check_contents(data, start, stop)


def _check_contents(data: bytes, position: int, end: int) -> None:
    elements = 0
    for field, wire_type, _, start, stop in _fields(data, position, end, "an input's contents"):
        if field in _PACKED_VARINT_CONTENTS:
            elements += _varint_count(data, start, stop) if wire_type == _LEN else 1
            if elements > MAX_CONTENT_ELEMENTS:
                raise MalformedMessage(f"an input's typed contents hold more than {MAX_CONTENT_ELEMENTS} integers")


def _varint_count(data: bytes, start: int, stop: int) -> int:
    """How many varints ``data[start:stop]`` packs: each ends at a byte below 0x80."""
    return int(np.count_nonzero(np.frombuffer(data, np.uint8, stop - start, start) < 0x80))


class TrailingTensor:
    """How a request ends whose last field is one ``raw_input_contents`` of ``size`` bytes."""

    __slots__ = ("size", "tail")

    MAX_HEAD = 512  # bytes before the tensor: a plain request has about 60; protobuf parses this many in microseconds

    def __init__(self, size: int) -> None:
        self.size = size
        self.tail = _tag(_RAW_INPUT_CONTENTS, _LEN) + _varint(size)


def split_trailing_tensor(data: bytes, layout: TrailingTensor) -> tuple[pb.ModelInferRequest, list[memoryview]] | None:
    """:func:`split_infer_request` for a request laid out as ``layout`` says, or None for any other.

    None also for a head that does not parse alone (e.g. those bytes sat inside a
    longer field) or that holds a tensor too; :func:`split_infer_request` then
    walks the request as usual, so nothing is refused here.
    """
    head = len(data) - layout.size - len(layout.tail)
    if not 0 <= head <= TrailingTensor.MAX_HEAD or data[head : head + len(layout.tail)] != layout.tail:
        return None
    try:
        request = pb.ModelInferRequest.FromString(data[:head])
    except Exception:  # protobuf's DecodeError: not this layout
        return None
    if request.raw_input_contents:
        return None
    return request, [memoryview(data)[head + len(layout.tail) :]]


def infer_response_bytes(metadata: pb.ModelInferResponse, contents: Sequence[bytes | memoryview], prefix: bytes = b"") -> bytes:
    """A serialized ``ModelInferResponse``: ``metadata`` with ``contents`` as its ``raw_output_contents``, in order.

    Each buffer must be C-contiguous (a NumPy array's memoryview will do); it is copied once.
    ``prefix``: fields serialized beforehand (e.g. those every answer of a kind shares), merged in.
    """
    parts: list[bytes | memoryview] = [prefix, metadata.SerializeToString()]
    for buffer in contents:
        parts += (_RAW_OUTPUT_TAG, _varint(memoryview(buffer).nbytes), buffer)
    return b"".join(parts)


def stream_response_bytes(infer_response: bytes) -> bytes:
    """A serialized ``ModelStreamInferResponse`` carrying a serialized ``ModelInferResponse``."""
    return b"".join((_INFER_RESPONSE_TAG, _varint(len(infer_response)), infer_response))
