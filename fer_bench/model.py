"""The model table (the paper's Table 4): parameters, MACs, CPU latency per configuration and stage.

MACs are counted with ptflops, the tool the paper used: ``macs`` with its
module-hook backend (as the paper counted), ``macs_aten`` with its ATen backend,
which also sees the matrix products inside ASP and SFP. Latency is batch 1 on
the CPU, measured round-robin across configurations (one forward of each in
turn) so that machine noise hits every configuration alike; medians reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from shared_model import codec
from shared_model.config import STAGE2_CHANNELS, config_for
from shared_model.network import FERNet

__all__ = [
    "CONFIGURATIONS", "STAGES", "ModelRecord", "count_macs", "measure_latencies", "model_table", "format_table",
    "plot_table",
]

CONFIGURATIONS: tuple[tuple[str, int], ...] = (
    ("backbone", STAGE2_CHANNELS),  # torchvision ShuffleNetV2 1.0x as is: the paper's baseline
    ("backbone", 8),
    ("backbone+asp", 8),
    ("backbone+sfp", 8),
    ("backbone+asp+sfp", 8),
    ("backbone+sfp+asp", 8),
)
STAGES = ("whole", "head", "cloud", "tail")


@dataclass
class ModelRecord:
    config: str
    adapter_width: int
    params: int
    macs: int
    macs_aten: int
    latency_ms: float  # whole network, median
    head_ms: float
    cloud_ms: float
    tail_ms: float
    split_shape: list[int]
    split_bytes: dict[str, int]
    threads: int
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...], backend: str) -> int:
    from ptflops import get_model_complexity_info

    macs, _ = get_model_complexity_info(model, input_shape, as_strings=False, print_per_layer_stat=False, backend=backend)
    return int(macs or 0)


def _stage_functions(model: FERNet, image: Tensor) -> dict[str, Callable[[], Tensor]]:
    with torch.inference_mode():
        split = model.head(image)
        attended = model.cloud(split)
    return {
        "whole": lambda: model(image),
        "head": lambda: model.head(image),
        "cloud": lambda: model.cloud(split),
        "tail": lambda: model.tail(attended),
    }


def measure_latencies(models: Sequence[FERNet], input_size: int, runs: int, warmup: int) -> list[dict[str, float]]:
    """Median milliseconds per stage for each model, timed round-robin."""
    image = torch.randn(1, 3, input_size, input_size)
    functions = [_stage_functions(m, image) for m in models]
    samples: list[dict[str, list[float]]] = [{s: [] for s in STAGES} for _ in models]
    with torch.inference_mode():
        for iteration in range(warmup + runs):
            for stages, record in zip(functions, samples):
                for stage, run in stages.items():
                    started = time.perf_counter()
                    run()
                    elapsed = time.perf_counter() - started
                    if iteration >= warmup:
                        record[stage].append(elapsed * 1000)
    return [{s: statistics.median(v) for s, v in record.items()} for record in samples]


def model_table(runs: int = 100, warmup: int = 10, threads: int | None = None, progress: bool = True) -> list[ModelRecord]:
    if threads:
        torch.set_num_threads(threads)
    models = [FERNet(config_for(name, adapter_width=width)).eval() for name, width in CONFIGURATIONS]
    latencies = measure_latencies(models, models[0].config.input_size, runs, warmup)
    records = []
    for model, latency in zip(models, latencies):
        size = model.config.input_size
        shape = list(model.config.split_shape)
        records.append(
            ModelRecord(
                config=model.config.name,
                adapter_width=model.config.adapter_width,
                params=sum(p.numel() for p in model.parameters()),
                macs=count_macs(model, (3, size, size), "pytorch"),
                macs_aten=count_macs(model, (3, size, size), "aten"),
                latency_ms=latency["whole"],
                head_ms=latency["head"],
                cloud_ms=latency["cloud"],
                tail_ms=latency["tail"],
                split_shape=shape,
                split_bytes={e: codec.expected_nbytes(shape, e) for e in codec.ENCODINGS},
                threads=torch.get_num_threads(),
                runs=runs,
            )
        )
    return records


def format_table(records: list[ModelRecord]) -> str:
    baseline = records[0].latency_ms
    lines = [
        f"{'configuration':<22}{'adapter':>8}{'params (M)':>12}{'MACs (G)':>10}{'latency ms':>12}{'x base':>8}{'head':>8}{'cloud':>8}{'tail':>8}{'split bytes u8/f16/f32':>26}",
    ]
    for r in records:
        split = "/".join(str(r.split_bytes[e]) for e in (codec.UINT8, codec.FP16, codec.FP32))
        lines.append(
            f"{r.config:<22}{r.adapter_width:>8}{r.params / 1e6:>12.3f}{r.macs / 1e9:>10.3f}{r.latency_ms:>12.2f}{r.latency_ms / baseline:>8.3f}"
            f"{r.head_ms:>8.2f}{r.cloud_ms:>8.3f}{r.tail_ms:>8.2f}{split:>26}"
        )
    lines.append(f"batch 1, {records[0].threads} CPU threads, median of {records[0].runs} round-robin runs; 'x base' is relative to the first row")
    return "\n".join(lines)


def plot_table(records: list[ModelRecord], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.config}\n(adapter {r.adapter_width})" for r in records]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    bottom = [0.0] * len(records)
    for stage, colour in (("head_ms", "#4C72B0"), ("cloud_ms", "#DD8452"), ("tail_ms", "#55A868")):
        values = [getattr(r, stage) for r in records]
        axis.bar(labels, values, bottom=bottom, label=stage.replace("_ms", ""), color=colour)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.plot(labels, [r.latency_ms for r in records], "k_", markersize=30, label="whole network")
    axis.set(ylabel="CPU latency, batch 1 (ms, median)", title=f"Latency per stage ({records[0].threads} threads)")
    axis.legend()
    plt.setp(axis.get_xticklabels(), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
