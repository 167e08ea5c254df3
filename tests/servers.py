"""Helpers for tests: certificates, videos and faces (servers on loopback: :mod:`fer_bench.loopback`)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, made with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=fer-test-ca")
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        extra = ["-extfile", "server.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", *extra)
    return {n: folder / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def still_video(path: Path, frames: int, fps: float = 10) -> Path:
    """An MJPG video of ``frames`` copies of the bundled sample photo, written to ``path``."""
    import cv2

    from edge_client.samples import sample_image

    image = cv2.imread(str(sample_image()))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (image.shape[1], image.shape[0]))
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path


SAMPLE_FACE = Path(__file__).parent / "data" / "faces" / "astronaut.png"
# Where the flipped band of a distorted face starts, as a share of its height: from the upper lip
# (mouth and chin upside down) to below the mouth (the chin only).
MOUTH_BANDS = (0.55, 0.6, 0.65, 0.7, 0.75)


def distorted_faces() -> list:
    """The sample face (happy to any useful model) with its mouth flipped at each of ``MOUTH_BANDS``.

    What the model calls each one depends on the weights shipped, so a test that needs a second
    expression chooses among these by what the model says, never by a class assumed here.
    """
    import cv2

    from edge_client.faces import Box
    from fer_bench.video import frown

    face = cv2.imread(str(SAMPLE_FACE))
    whole = Box(0, 0, face.shape[1], face.shape[0])
    return [frown(face, whole, top) for top in MOUTH_BANDS]
