"""Regenerate the Python gRPC code for ``protos/inference.proto`` (needs grpcio-tools).

``python -m shared_model.protocol.generate`` writes next to this file; the test
suite regenerates into a temporary folder and fails when the committed files differ
in anything but the generator's version stamps. Those stamps are the oldest grpcio
and protobuf that can import the files, so the test also holds them to the floors
pyproject.toml declares: regenerate with grpcio-tools at the grpcio floor (a newer
one stamps its own version, and a fresh install at the floor could not import it).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

__all__ = ["PACKAGE_DIR", "PROTO", "GENERATED", "GENERATOR_STAMPS", "generate", "without_stamps", "generator_stamps", "stale_files", "main"]

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO = PACKAGE_DIR.parents[1] / "protos" / "inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")
# What the generator writes of its own version (not of the proto), by what it sets the oldest runtime of.
GENERATOR_STAMPS = {
    "grpcio": re.compile(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", re.M),
    "protobuf": re.compile(r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n\s*_runtime_version\.Domain\.PUBLIC,\n\s*(\d+),\n\s*(\d+),\n\s*(\d+),", re.M),
}
_PROTOBUF_COMMENT = re.compile(r"^# Protobuf Python Version: (.*)$", re.M)  # the same, as a comment


def generate(out_root: Path) -> Path:
    """Compile the proto so its modules import as ``shared_model.protocol.*``; returns their folder."""
    from grpc_tools import protoc

    virtual = "shared_model/protocol"
    args = [
        "protoc",
        f"-I{virtual}={PROTO.parent}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"{virtual}/{PROTO.name}",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return out_root / virtual


def without_stamps(text: str) -> str:
    """Generated code with the generator's version stamps blanked: what the proto alone decides."""
    for pattern in (*GENERATOR_STAMPS.values(), _PROTOBUF_COMMENT):
        text = pattern.sub(_blank_groups, text)
    return text


def _blank_groups(match: re.Match[str]) -> str:
    """The match with each of its groups replaced by ``-``."""
    whole, start = match.group(0), match.start()
    for group in reversed(range(1, len(match.groups()) + 1)):
        begin, end = match.span(group)
        whole = whole[: begin - start] + "-" + whole[end - start :]
    return whole


def generator_stamps(folder: Path = PACKAGE_DIR) -> dict[str, tuple[int, ...]]:
    """The oldest grpcio and protobuf the generated files in ``folder`` import under, as version tuples."""
    stamps: dict[str, tuple[int, ...]] = {}
    for name in GENERATED:
        text = (folder / name).read_text()
        for runtime, pattern in GENERATOR_STAMPS.items():
            if (match := pattern.search(text)) is not None:
                parts = match.group(1).split(".") if runtime == "grpcio" else match.groups()
                stamps[runtime] = tuple(int(p) for p in parts)
    return stamps


def stale_files() -> list[str]:
    """Generated files that differ from what the proto produces now (the generator's version stamps aside)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        missing = [n for n in GENERATED if not (PACKAGE_DIR / n).exists()]
        differ = [
            n for n in GENERATED
            if n not in missing and without_stamps((fresh / n).read_text()) != without_stamps((PACKAGE_DIR / n).read_text())
        ]
        return differ + missing


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        for name in GENERATED:
            (PACKAGE_DIR / name).write_bytes((fresh / name).read_bytes())
    print(f"wrote {', '.join(GENERATED)} to {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
