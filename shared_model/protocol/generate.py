"""Regenerate the Python gRPC code for ``protos/inference.proto`` (needs grpcio-tools).

``python -m shared_model.protocol.generate`` writes next to this file; the test
suite regenerates into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

__all__ = ["PACKAGE_DIR", "PROTO", "GENERATED", "generate", "stale_files", "main"]

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO = PACKAGE_DIR.parents[1] / "protos" / "inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


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


def stale_files() -> list[str]:
    """Generated files that differ from what the proto produces now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [n for n in GENERATED if (fresh / n).read_bytes() != (PACKAGE_DIR / n).read_bytes() if (PACKAGE_DIR / n).exists()] + [
            n for n in GENERATED if not (PACKAGE_DIR / n).exists()
        ]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        for name in GENERATED:
            (PACKAGE_DIR / name).write_bytes((fresh / name).read_bytes())
    print(f"wrote {', '.join(GENERATED)} to {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
