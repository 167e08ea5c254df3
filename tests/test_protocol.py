"""The wire contract: generated code is fresh, parameters and BYTES tensors encode as specified."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from shared_model.protocol import (
    pack_bytes_elements,
    parameter,
    parameter_value,
    unpack_bytes_elements,
)

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_matches_the_proto() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    from shared_model.protocol.generate import stale_files

    stale = stale_files()
    assert not stale, f"regenerate with `python -m shared_model.protocol.generate`: {stale}"


def test_the_freshness_check_ignores_only_the_generators_version_stamps() -> None:
    from shared_model.protocol.generate import PACKAGE_DIR, without_stamps

    stub = (PACKAGE_DIR / "inference_pb2_grpc.py").read_text()
    newer_tool = re.sub(r"GRPC_GENERATED_VERSION = '[0-9.]+'", "GRPC_GENERATED_VERSION = '9.99.9'", stub)
    assert newer_tool != stub and without_stamps(newer_tool) == without_stamps(stub)
    renamed = stub.replace("/inference.GRPCInferenceService/ModelInfer'", "/inference.GRPCInferenceService/ModelInferX'")
    assert renamed != stub and without_stamps(renamed) != without_stamps(stub)
    messages = (PACKAGE_DIR / "inference_pb2.py").read_text()
    newer_protoc = messages.replace("_runtime_version.Domain.PUBLIC,\n    7,", "_runtime_version.Domain.PUBLIC,\n    8,")
    assert newer_protoc != messages and without_stamps(newer_protoc) == without_stamps(messages)


def _floor(requirement: str) -> tuple[int, ...]:
    return tuple(int(part) for part in requirement.split(">=")[1].split(",")[0].split("."))


def test_the_generated_code_imports_under_the_oldest_grpcio_and_protobuf_the_project_allows() -> None:
    """The stamps in the committed stubs are the oldest runtimes they import under; pyproject's floors must
    not be older, or a fresh install at a floor fails at import ("regenerate with grpcio-tools at the floor")."""
    from shared_model.protocol.generate import generator_stamps

    with (ROOT / "pyproject.toml").open("rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    floors = {name: _floor(next(d for d in dependencies if re.match(rf"{name}>=", d))) for name in ("grpcio", "protobuf")}
    stamps = generator_stamps()
    assert set(stamps) == {"grpcio", "protobuf"}
    for name, stamp in stamps.items():
        assert stamp <= floors[name] + (0,) * (len(stamp) - len(floors[name])), f"{name}: stubs need {stamp}, pyproject allows {floors[name]}"


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


def test_stream_errors_carry_the_status_code_name() -> None:
    from shared_model.protocol import parse_stream_error, stream_error_message

    text = stream_error_message("INVALID_ARGUMENT", "input 'features' needs 6272 bytes: got 10")
    assert text == "INVALID_ARGUMENT: input 'features' needs 6272 bytes: got 10"
    assert parse_stream_error(text) == ("INVALID_ARGUMENT", "input 'features' needs 6272 bytes: got 10")
    # Triton's in-band errors name no code; a message with a colon in it is not taken for one.
    triton = "in ensemble 'x': unexpected shape for input 'features'"
    assert parse_stream_error(triton) == ("UNKNOWN", triton)
    assert parse_stream_error("Request for unknown model: 'fer_x' is not found")[0] == "UNKNOWN"


def test_codec_names_the_protocol_datatypes() -> None:
    from shared_model import codec
    from shared_model.protocol import DATATYPE_FP16, DATATYPE_FP32, DATATYPE_UINT8

    assert codec.PROTOCOL_DATATYPES == {codec.FP32: DATATYPE_FP32, codec.FP16: DATATYPE_FP16, codec.UINT8: DATATYPE_UINT8}


# Wire names that mean nothing but the wire: a string literal equal to one of
# them outside shared_model.protocol is a bare copy of a constant. (Generic
# words such as "features", "image", "scale" or "fingerprint" also name other
# things, e.g. checkpoint keys and CLI values, so they are not searched for.)
GUARDED_WIRE_NAMES = (
    "SERVICE_NAME", "ATTENTION_MODEL", "REST_MODEL", "CLASSIFIER_MODEL", "SPATIAL_ATTENTION", "CHANNEL_ATTENTION",
    "ZERO_POINT", "QUEUE_US", "COMPUTE_US", "SERVER_US", "BATCH_SIZE", "AUTHORIZATION",
    "DATATYPE_FP32", "DATATYPE_FP16", "DATATYPE_UINT8", "DATATYPE_BYTES",
)
# Names distinctive enough to be searched for inside longer strings too, in quotes
# (a Triton config.pbtxt template writing name: "fer_attention").
QUOTED_WIRE_NAMES = ("SERVICE_NAME", "ATTENTION_MODEL", "REST_MODEL", "CLASSIFIER_MODEL", "SPATIAL_ATTENTION", "CHANNEL_ATTENTION")
# codec maps its encodings to the datatype names (checked against the constants above).
ALLOWED = {("shared_model/codec.py", "DATATYPE_FP32"), ("shared_model/codec.py", "DATATYPE_FP16"), ("shared_model/codec.py", "DATATYPE_UINT8")}


def bare_wire_names(root, packages=("shared_model", "edge_client", "cloud_server", "fer_bench")) -> list[str]:
    """``path:line: 'name' (CONSTANT)`` for each string literal that copies a guarded wire name."""
    import ast

    import shared_model.protocol as protocol

    guarded = {getattr(protocol, name): name for name in GUARDED_WIRE_NAMES}
    quoted = {getattr(protocol, name): name for name in QUOTED_WIRE_NAMES}
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith("shared_model/protocol/"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), relative)):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                    continue
                constant = guarded.get(node.value)
                if constant and (relative, constant) not in ALLOWED:
                    found.append(f"{relative}:{node.lineno}: {node.value!r} (shared_model.protocol.{constant})")
                for value, name in quoted.items():
                    if value != node.value and (f'"{value}"' in node.value or f"'{value}'" in node.value):
                        found.append(f"{relative}:{node.lineno}: {value!r} in a string (shared_model.protocol.{name})")
    return found


def test_wire_names_are_constants_of_the_protocol_module() -> None:
    from pathlib import Path

    found = bare_wire_names(Path(__file__).resolve().parents[1])
    assert not found, "use the constants of shared_model.protocol:\n" + "\n".join(found)


def test_the_wire_name_search_finds_a_bare_name(tmp_path) -> None:
    package = tmp_path / "edge_client"
    package.mkdir()
    (package / "bad.py").write_text(
        'MODEL = "fer_attention"\n'
        'TIMING = {"server_us": 1}\n'
        'PBTXT = f"name: \\"fer_rest\\"\\nmax_batch_size: {8}"\n'
        'DOC = "fer_attention, in prose, is fine"\n'
    )
    found = bare_wire_names(tmp_path, packages=("edge_client",))
    assert [line.split(":")[1] for line in found] == ["1", "2", "3"], found


def test_the_edge_reads_the_code_of_an_in_band_stream_error(server, trained_model) -> None:
    import numpy as np

    from edge_client.transport import CloudClient, RemoteError
    from shared_model.checkpoint import model_fingerprint

    client = CloudClient(f"127.0.0.1:{server.port}", model_fingerprint(trained_model), timeout_s=10)
    try:
        good = client.attention_request(np.zeros((1, *trained_model.config.split_shape), dtype=np.float32))
        bad = client.attention_request(np.zeros((1, *trained_model.config.split_shape), dtype=np.float32))
        del bad.raw_input_contents[:]
        bad.raw_input_contents.append(bytes(3))
        with pytest.raises(RemoteError) as refused:
            client.infer(bad, use_stream=True)
        assert refused.value.reason == "rejected" and refused.value.detail.startswith("INVALID_ARGUMENT: ")
        assert client.infer(good, use_stream=True).outputs  # the stream carries on
    finally:
        client.close()
