"""The wire contract: generated code is fresh, parameters and BYTES tensors encode as specified."""

from __future__ import annotations

import pytest

from shared_model.protocol import (
    pack_bytes_elements,
    parameter,
    parameter_value,
    unpack_bytes_elements,
)


def test_generated_code_matches_the_proto() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    from shared_model.protocol.generate import stale_files

    stale = stale_files()
    assert not stale, f"regenerate with `python -m shared_model.protocol.generate`: {stale}"


@pytest.mark.parametrize("value", [True, 7, -3, 0.125, "text"])
def test_parameters_round_trip(value) -> None:
    assert parameter_value(parameter(value)) == value
    assert type(parameter_value(parameter(value))) is type(value)


def test_floats_travel_as_doubles_like_tritonclient_sends_them() -> None:
    assert parameter(0.5).WhichOneof("parameter_choice") == "double_param"


def test_bytes_elements_round_trip_with_length_prefixes() -> None:
    elements = [b"", b"a", bytes(range(256))]
    raw = pack_bytes_elements(elements)
    assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:8] == b"\x01\x00\x00\x00"
    assert unpack_bytes_elements(raw) == elements


@pytest.mark.parametrize("raw, message", [(b"\x01\x00", "length prefix"), (b"\x05\x00\x00\x00abc", "declares 5 bytes")])
def test_truncated_bytes_tensors_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        unpack_bytes_elements(raw)
