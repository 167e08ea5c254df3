"""Tensor codec: round trips and refusals."""

from __future__ import annotations

import math

import pytest
import torch

from shared_model.codec import CodecError, EncodedTensor, decode, decode_bytes, encode


@pytest.mark.parametrize("encoding, tolerance", [("fp32", 0.0), ("fp16", 2e-3)])
def test_float_round_trip(encoding: str, tolerance: float) -> None:
    x = torch.randn(2, 8, 28, 28)
    decoded = torch.from_numpy(decode(encode(x, encoding)))
    assert decoded.dtype == torch.float32 and decoded.shape == x.shape
    assert (decoded - x).abs().max().item() <= tolerance * x.abs().max().item()


@pytest.mark.parametrize("low, high", [(-3.0, 5.0), (0.0, 1.0), (2.0, 9.0), (-7.0, -1.0)])
def test_uint8_round_trip_errs_at_most_one_quantization_step(low: float, high: float) -> None:
    x = torch.rand(1, 8, 28, 28) * (high - low) + low
    encoded = encode(x, "uint8")
    assert encoded.nbytes == 8 * 28 * 28 == 6272
    assert (torch.from_numpy(decode(encoded)) - x).abs().max().item() <= encoded.scale + 1e-7


def test_constant_tensor_round_trips() -> None:
    x = torch.zeros(1, 8, 4, 4)
    assert torch.equal(torch.from_numpy(decode(encode(x, "uint8"))), x)


def test_wrong_byte_count_is_refused_with_the_numbers() -> None:
    good = encode(torch.randn(1, 8, 28, 28), "uint8")
    with pytest.raises(CodecError, match="needs 6272 bytes, got 6271"):
        decode_bytes(good.data[:-1], good.shape, "uint8", good.scale, good.zero_point)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": None}, "scale"),
        ({"zero_point": None}, "zero_point"),
        ({"scale": -1.0}, "scale"),
        ({"scale": math.nan}, "scale"),
        ({"zero_point": 256}, "zero_point"),
    ],
)
def test_bad_quantization_parameters_are_refused(kwargs: dict, message: str) -> None:
    params = {"scale": 0.1, "zero_point": 3, **kwargs}
    with pytest.raises(CodecError, match=message):
        decode_bytes(bytes(16), (1, 16), "uint8", **params)


def test_unknown_encoding_negative_shape_and_non_float_are_refused() -> None:
    with pytest.raises(CodecError, match="unknown encoding"):
        encode(torch.zeros(2), "int4")
    with pytest.raises(CodecError, match="non-negative"):
        decode_bytes(b"", (-1, 4), "fp32")
    with pytest.raises(CodecError, match="floating-point"):
        encode(torch.zeros(2, dtype=torch.int64), "fp32")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_both_ways(bad: float) -> None:
    x = torch.zeros(4)
    x[1] = bad
    with pytest.raises(CodecError, match="NaN or infinite"):
        encode(x, "uint8")
    with pytest.raises(CodecError, match="NaN or infinite"):
        decode(EncodedTensor(x.numpy().tobytes(), (4,), "fp32"))


def test_numpy_arrays_encode_like_tensors() -> None:
    x = torch.randn(1, 8, 4, 4)
    assert encode(x.numpy(), "uint8") == encode(x, "uint8")
    with pytest.raises(CodecError, match="floating-point"):
        encode(x.numpy().astype("int32"), "fp32")


def test_fp16_overflow_is_refused() -> None:
    with pytest.raises(CodecError, match="float16 range"):
        encode(torch.tensor([1e6]), "fp16")
