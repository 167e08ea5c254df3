"""What each way of offloading does to accuracy, on a labelled face dataset (FER2013 ``public_test``).

Every face takes the path the edge and the cloud give it, with the same
functions: the edge's preparation of the face (``prepare_face`` to the input
size), then per variant

- ``local``: the whole network here (the reference);
- ``split-features``: head, uint8 split tensor (per-face scale), attention, the
  attended map re-quantized to uint8 (per face), tail: the paper's round trip;
- ``split-attention``: head, uint8 split tensor, attention; the spatial map and
  channel weights quantized with the fixed 1/255 scale and applied to the edge's
  full-precision map, tail (the lean split);
- ``split-rest``: head, uint8 split tensor, attention and tail (in the cloud);
- ``cloud-<format>-<size>``: the face crop (the dataset's image) encoded as the
  cloud strategy sends it (:func:`shared_model.offload.encode_face_image`: shrunk
  to ``size`` if larger), decoded by the server's
  :func:`cloud_server.inference.decode_image`, the whole network;
- ``cloud-jpeg-from-224``: the prepared 224x224 face as JPEG (what the cloud
  strategy sent before it sent the crop), and ``cloud-raw-224`` (the paper's
  raw pixels).

Quantization and encoding are per face (as on the wire); the network runs in
batches, which gives the same numbers as one face at a time and is ~10x faster.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from cloud_server.inference import Limits, decode_image
from shared_model import codec
from shared_model.network import FERNet
from shared_model.offload import apply_attention, encode_face_image
from shared_model.preprocessing import pixels_to_tensor, prepare_face
from shared_model.protocol import ATTENTION_SCALE

__all__ = [
    "SPLIT_VARIANTS", "VariantRecord", "OffloadAccuracy", "prepared_faces", "run_offload_accuracy", "format_table",
    "smallest_size_within", "plot", "record_dicts",
]

SPLIT_VARIANTS = ("split-features", "split-attention", "split-rest")


@dataclass
class VariantRecord:
    variant: str
    accuracy: float
    agreement_with_local: float  # share of faces with the same predicted class as ``local``
    payload_bytes_up: float  # mean tensor/image bytes per face (without protocol framing)
    payload_bytes_down: float
    faces: int
    agreement_with_paper_split: float | None = None  # split variants: same class as the paper's round trip (split-features)


def _batches(count: int, size: int) -> Iterable[slice]:
    return (slice(start, min(start + size, count)) for start in range(0, count, size))


def _roundtrip_uint8(x: np.ndarray) -> tuple[np.ndarray, int]:
    encoded = codec.encode(x, codec.UINT8)
    return codec.decode(encoded), len(encoded.data)


def _quantize_attention(values: np.ndarray) -> np.ndarray:
    return codec.dequantize(codec.quantize(values, ATTENTION_SCALE, 0), ATTENTION_SCALE, 0)


class OffloadAccuracy:
    """Runs the variants over prepared faces (uint8 (N, S, S, 3)) with one model."""

    def __init__(self, model: FERNet, faces: np.ndarray, labels: np.ndarray, crops: np.ndarray, batch_size: int = 128, progress: bool = True) -> None:
        self.model = model.eval()
        self.faces = faces
        self.crops = crops
        self.labels = labels
        self.batch_size = batch_size
        self.progress = progress
        self.local_predictions: np.ndarray | None = None

    def _predict(self, run_batch: Callable[[slice], torch.Tensor], desc: str) -> np.ndarray:
        from tqdm import tqdm

        predictions = []
        batches = list(_batches(len(self.faces), self.batch_size))
        with torch.inference_mode():
            for part in tqdm(batches, desc=desc, unit="batch", disable=not self.progress, leave=False, file=sys.stderr):
                predictions.append(run_batch(part).argmax(dim=1).numpy())
        return np.concatenate(predictions)

    def _record(self, variant: str, predictions: np.ndarray, up: list[int], down: list[int]) -> VariantRecord:
        agreement = float((predictions == self.local_predictions).mean()) if self.local_predictions is not None else 1.0
        return VariantRecord(
            variant, float((predictions == self.labels).mean()), agreement,
            statistics.fmean(up) if up else 0.0, statistics.fmean(down) if down else 0.0, len(predictions),
        )

    def local(self) -> VariantRecord:
        predictions = self._predict(lambda part: self.model(pixels_to_tensor(self.faces[part])), "local")
        self.local_predictions = predictions
        return self._record("local", predictions, [], [])

    def splits(self) -> list[VariantRecord]:
        """The three split variants, sharing one pass of the head and of the attention."""
        up: list[int] = []
        down = {v: [] for v in SPLIT_VARIANTS}
        predictions = {v: [] for v in SPLIT_VARIANTS}
        model = self.model
        from tqdm import tqdm

        with torch.inference_mode():
            for part in tqdm(list(_batches(len(self.faces), self.batch_size)), desc="splits", unit="batch", disable=not self.progress, leave=False, file=sys.stderr):
                z = model.head(pixels_to_tensor(self.faces[part])).numpy()
                sent = []
                for zi in z:
                    decoded, size = _roundtrip_uint8(zi[None])
                    sent.append(decoded[0])
                    up.append(size)
                received = torch.from_numpy(np.stack(sent))
                spatial, channel = model.cloud.attention_maps(received)
                attended = (received * spatial * channel[:, :, None, None]).numpy()
                paper = []
                for ai in attended:
                    decoded, size = _roundtrip_uint8(ai[None])
                    paper.append(decoded[0])
                    down["split-features"].append(size)
                lean = apply_attention(z, _quantize_attention(spatial.numpy()), _quantize_attention(channel.numpy()))
                down["split-attention"].extend([spatial[0].numel() + channel[0].numel()] * len(z))
                down["split-rest"].extend([4 * model.config.num_classes] * len(z))
                predictions["split-features"].append(model.tail(torch.from_numpy(np.stack(paper))).argmax(1).numpy())
                predictions["split-attention"].append(model.tail(torch.from_numpy(np.ascontiguousarray(lean, dtype=np.float32))).argmax(1).numpy())
                predictions["split-rest"].append(model.tail(model.cloud(received)).argmax(1).numpy())
        paper = np.concatenate(predictions["split-features"])
        records = []
        for variant in SPLIT_VARIANTS:
            record = self._record(variant, np.concatenate(predictions[variant]), up, down[variant])
            record.agreement_with_paper_split = float((np.concatenate(predictions[variant]) == paper).mean())
            records.append(record)
        return records

    def cloud(self, image_format: str, size: int | None, quality: int = 95, from_crop: bool = True) -> VariantRecord:
        limits, input_size = Limits(), self.model.config.input_size
        up: list[int] = []

        def run(part: slice) -> torch.Tensor:
            received = []
            for pixels, crop in zip(self.faces[part], self.crops[part]):
                payload = encode_face_image(pixels, image_format, size, quality, crop if from_crop else None)
                if isinstance(payload, np.ndarray):
                    up.append(payload.nbytes)
                    received.append(payload)
                else:
                    up.append(len(payload))
                    received.append(decode_image(payload, input_size, limits))
            return self.model(pixels_to_tensor(np.stack(received)))

        name = f"cloud-{image_format}-{size or input_size}" if from_crop else f"cloud-{image_format}-from-{input_size}"
        predictions = self._predict(run, name)
        return self._record(name, predictions, up, [4 * self.model.config.num_classes] * len(predictions))


def prepared_faces(gray: np.ndarray, size: int) -> np.ndarray:
    """Dataset faces (N, h, w) uint8 as the edge prepares a face crop: (N, size, size, 3)."""
    return np.stack([prepare_face(face, size) for face in gray])


def run_offload_accuracy(
    model: FERNet, gray: np.ndarray, labels: np.ndarray, sizes: tuple[int, ...], image_format: str = "jpeg", quality: int = 95, progress: bool = True
) -> list[VariantRecord]:
    faces = prepared_faces(gray, model.config.input_size)
    runner = OffloadAccuracy(model, faces, labels, gray, progress=progress)
    records = [runner.local(), *runner.splits()]
    records += [runner.cloud(image_format, size, quality) for size in sizes]
    records.append(runner.cloud(image_format, model.config.input_size, quality, from_crop=False))
    records.append(runner.cloud("raw", None))
    return records


def format_table(records: list[VariantRecord]) -> str:
    lines = [f"{'variant':<22}{'accuracy %':>11}{'agree %':>9}{'agree paper %':>15}{'up B':>9}{'down B':>9}{'faces':>7}"]
    for r in records:
        paper = "" if r.agreement_with_paper_split is None else f"{100 * r.agreement_with_paper_split:.2f}"
        lines.append(f"{r.variant:<22}{100 * r.accuracy:>11.2f}{100 * r.agreement_with_local:>9.2f}{paper:>15}{r.payload_bytes_up:>9.0f}{r.payload_bytes_down:>9.0f}{r.faces:>7}")
    return "\n".join(lines)


def smallest_size_within(records: list[VariantRecord], tolerance_points: float = 0.3) -> int | None:
    """The smallest crop side whose accuracy is within ``tolerance_points`` of sending the 224x224 face losslessly (raw)."""
    reference = next((r.accuracy for r in records if "-raw-" in r.variant), None)
    sized = {int(r.variant.rsplit("-", 1)[1]): r.accuracy for r in records if r.variant.startswith("cloud-") and "-from-" not in r.variant and "-raw-" not in r.variant}
    if reference is None or not sized:
        return None
    good = [size for size, accuracy in sized.items() if 100 * (reference - accuracy) <= tolerance_points]
    return min(good) if good else None


def plot(records: list[VariantRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cloud = sorted((r.payload_bytes_up, 100 * r.accuracy, r.variant.rsplit("-", 1)[1]) for r in records if r.variant.startswith("cloud-") and "-raw-" not in r.variant and "-from-" not in r.variant)
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    axis.plot([c[0] for c in cloud], [c[1] for c in cloud], marker="o", label="cloud: the crop, by largest side sent")
    for r in records:
        if "-from-" in r.variant or "-raw-" in r.variant:
            axis.scatter([r.payload_bytes_up], [100 * r.accuracy], marker="x", color="C3")
            axis.annotate(r.variant, (r.payload_bytes_up, 100 * r.accuracy), textcoords="offset points", xytext=(-30, 6), fontsize=7)
    for x, y, label in cloud:
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    for r in records:
        if r.variant in ("local", *SPLIT_VARIANTS):
            axis.axhline(100 * r.accuracy, linestyle=":", linewidth=1, color="grey")
            axis.annotate(r.variant, (axis.get_xlim()[1], 100 * r.accuracy), fontsize=7, ha="right", va="bottom")
    axis.set(xscale="log", xlabel="bytes up per face (payload)", ylabel="accuracy on the dataset (%)", title="Accuracy against bytes sent")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def record_dicts(records: list[VariantRecord]) -> list[dict]:
    return [asdict(r) for r in records]
