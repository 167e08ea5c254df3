"""``attention.npz``: the attention stage as a few matrices, so the cloud serves ``fer_attention`` without PyTorch.

The cloud answers ``fer_attention`` with the attended map and the attention
itself (``spatial_attention``, ``channel_attention``); ``cloud.onnx`` from
``fer-train export`` gives only the attended map. Both attention modules are
linear maps followed by a sigmoid (Wu et al., ACM TECS 22(3), 2023):

- ASP: the line means are ``x @ M`` (``M``: the one-hot averaging matrix of the
  selected directions), each 1x1 conv to one channel is a weighted sum over
  channels, so the logits are ``(w @ x) @ M + b``; the spatial map is the
  product, per pixel, of the sigmoid of its lines' logits;
- SFP: the mean of each channel's LL band is a fixed weighting of its pixels
  (``W``), then one C x C fully connected layer and a sigmoid.

This module writes those matrices (the modules' own buffers and weights) and
:class:`NumpyAttention` runs them with NumPy: per request a handful of NumPy
calls, about 35 us at batch 1 and 17 us per item at batch 8 on this host, where
ONNX Runtime takes 48 us and 34 us for the same graph (every op a kernel
launch); the module order is kept, so any Table 2/Table 3 configuration works.
The export is checked against PyTorch before it is written.

    python -m shared_model.attention_matrices --out edge_client/onnx_model            # the shipped weights
    python -m shared_model.attention_matrices --weights ckpt.pt --out exported/        # beside `fer-train export --out exported/`

PyTorch is needed here, at export time only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ATTENTION_FILE", "NumpyAttention", "attention_arrays", "packed_attention", "write_attention", "export_attention", "main"]

ATTENTION_FILE = "attention.npz"
ASP, SFP = "asp", "sfp"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class NumpyAttention:
    """``fer_attention``'s batch function from an ``attention.npz``: (N, C, H, W) -> packed ``[x*S*c | S | c]`` rows."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.order = tuple(json.loads(str(arrays["order"])))
        self.a = {key: np.ascontiguousarray(value) for key, value in arrays.items() if key != "order"}
        if "sfp_weights" in self.a:  # (C, H*W) -> (C, H*W, 1): one matmul gives each channel's weighted sum
            self.a["sfp_weights"] = np.ascontiguousarray(self.a["sfp_weights"][:, :, None])

    @classmethod
    def load(cls, path: Path) -> "NumpyAttention":
        with np.load(path, allow_pickle=False) as data:
            return cls({key: data[key] for key in data.files})

    def _spatial(self, y: np.ndarray) -> np.ndarray:
        a = self.a
        logits = []
        if "asp_axis_weight" in a:  # rows and columns: one 1x1 conv to one channel
            logits.append((a["asp_axis_weight"] @ y) @ a["asp_axis_matrix"] + a["asp_axis_bias"])
        if "asp_diagonal_weight" in a:
            logits.append((a["asp_diagonal_weight"] @ y) @ a["asp_diagonal_matrix"] + a["asp_diagonal_bias"])
        lines = _sigmoid(np.concatenate(logits, axis=1) if len(logits) > 1 else logits[0])  # (N, lines)
        return lines[:, a["asp_broadcast_index"]].prod(axis=1)  # (N, H*W): the product over directions

    def _channel(self, y: np.ndarray) -> np.ndarray:
        a = self.a
        pooled = np.matmul(y[:, :, None, :], a["sfp_weights"])[:, :, 0, 0]  # the LL-band mean of each channel
        return _sigmoid(pooled @ a["sfp_fc_weight"].T + a["sfp_fc_bias"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        batch, channels, height, width = x.shape
        y = x.reshape(batch, channels, height * width)
        spatial = channel = None  # a module left out contributes ones
        for name in self.order:
            if name == ASP:
                spatial = self._spatial(y)
                y = y * spatial[:, None, :]
            else:
                channel = self._channel(y)
                y = y * channel[:, :, None]
        if spatial is None:
            spatial = np.ones((batch, height * width), np.float32)
        if channel is None:
            channel = np.ones((batch, channels), np.float32)
        return np.concatenate([y.reshape(batch, -1), spatial, channel], axis=1, dtype=np.float32)


def attention_arrays(model: Any) -> dict[str, np.ndarray]:
    """The matrices of ``model.cloud`` (a FERNet's attention stage), as NumPy arrays."""
    arrays: dict[str, np.ndarray] = {"order": np.asarray(json.dumps(list(model.cloud.attention.keys())))}

    def array(tensor: Any) -> np.ndarray:
        return tensor.detach().cpu().float().numpy()

    for name, module in model.cloud.attention.items():
        if name == ASP:
            matrix = array(module.mean_matrix)
            axis = module.axis_lines
            arrays["asp_broadcast_index"] = module.broadcast_index.cpu().numpy().astype(np.int64)
            if module.axis_conv is not None:
                arrays["asp_axis_matrix"] = matrix[:, :axis]
                arrays["asp_axis_weight"] = array(module.axis_conv.weight).reshape(-1)
                arrays["asp_axis_bias"] = array(module.axis_conv.bias)
            if module.diagonal_conv is not None:
                arrays["asp_diagonal_matrix"] = matrix[:, axis:]
                arrays["asp_diagonal_weight"] = array(module.diagonal_conv.weight).reshape(-1)
                arrays["asp_diagonal_bias"] = array(module.diagonal_conv.bias)
        elif name == SFP:
            arrays["sfp_weights"] = array(module.pool.weights)
            arrays["sfp_fc_weight"] = array(module.fc.weight)
            arrays["sfp_fc_bias"] = array(module.fc.bias)
        else:
            raise ValueError(f"unknown attention module {name!r}")
    return arrays


def packed_attention(model: Any, x: Any) -> Any:
    """PyTorch's packed ``[x*S*c | S | c]`` rows for a (N, C, H, W) tensor (the reference)."""
    import torch

    with torch.inference_mode():
        spatial, channel = model.cloud.attention_maps(x)
        attended = x * spatial * channel[:, :, None, None]
        return torch.cat([attended.flatten(1), spatial.flatten(1), channel], dim=1)


def write_attention(model: Any, path: Path, tolerance: float = 1e-5) -> float:
    """Write the attention matrices to ``path`` once they match PyTorch; returns the largest error.

    Refused (ValueError) when the NumPy attention differs from PyTorch's by more
    than ``tolerance`` on a random batch.
    """
    import torch

    arrays = attention_arrays(model.eval())
    batch = torch.randn(3, *model.config.split_shape)
    error = float(np.abs(NumpyAttention(arrays)(batch.numpy()) - packed_attention(model, batch).numpy()).max())
    if not error <= tolerance:
        raise ValueError(f"the NumPy attention differs from PyTorch by {error:.3g} (> {tolerance})")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return error


def export_attention(model: Any, folder: Path, fingerprint: str, tolerance: float = 1e-5) -> float:
    """Add ``attention.npz`` to an existing export folder and record it in its ``model.json``; returns its error.

    Refused (ValueError) when ``model.json`` names other weights (see :func:`write_attention` for the check).
    """
    manifest_path = folder / "model.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"fingerprint": fingerprint, "config": model.config.to_dict(), "files": []}
    if manifest["fingerprint"] != fingerprint:
        raise ValueError(f"{folder} holds an export of weights {manifest['fingerprint']}, not {fingerprint}")
    error = write_attention(model, folder / ATTENTION_FILE, tolerance)
    files = [f for f in manifest.get("files", []) if f.get("part") != "attention"]
    manifest["files"] = [*files, {"part": "attention", "format": "npz", "file": ATTENTION_FILE, "max_abs_error": error}]
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="checkpoint (default: the shipped weights)")
    parser.add_argument("--out", type=Path, required=True, help="the export folder (fer-train export --out)")
    args = parser.parse_args(argv)
    from shared_model.checkpoint import load_model

    model, checkpoint = load_model(args.weights)
    error = export_attention(model, args.out, checkpoint.fingerprint)
    print(f"wrote {args.out / ATTENTION_FILE} (max abs error {error:.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
