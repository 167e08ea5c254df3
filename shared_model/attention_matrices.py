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

    python -m shared_model.attention_matrices --out shared_model/onnx_model           # the shipped weights
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
    """``fer_attention``'s batch function from an ``attention.npz``: (N, C, H, W) -> packed ``[x*S*c | S | c]`` rows.

    ``fused``: compute each face in one compiled pass (:mod:`numba`, where
    installed: the default) instead of a dozen NumPy calls per batch.
    """

    def __init__(self, arrays: dict[str, np.ndarray], fused: bool | None = None) -> None:
        self.order = tuple(json.loads(str(arrays["order"])))
        self.a = {key: np.ascontiguousarray(value) for key, value in arrays.items() if key != "order"}
        if "sfp_weights" in self.a:  # (C, H*W) -> (C, H*W, 1): one matmul gives each channel's weighted sum
            self.a["sfp_weights"] = np.ascontiguousarray(self.a["sfp_weights"][:, :, None])
        self._fused: _FusedAttention | None = None
        if fused is not False:
            kernel = _fused_kernel()
            if kernel is None and fused:
                raise ImportError("the fused attention needs numba: pip install numba")
            if kernel is not None:
                try:
                    self._fused = _FusedAttention(self.order, self.a, kernel)
                except ValueError:
                    if fused:
                        raise

    @property
    def fused(self) -> bool:
        """Whether batches run through the compiled kernel."""
        return self._fused is not None

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

    def __call__(self, x: np.ndarray, finite_flags: bool = False) -> np.ndarray:
        """Packed rows; with ``finite_flags``, one more column: 1 where the face's input is finite, else 0
        (checked in the same pass, so a server need not read each request's tensor once more)."""
        if self._fused is not None:
            return self._fused(x, finite_flags)
        if not finite_flags:
            return self._numpy(x)
        with np.errstate(all="ignore"):  # a face holding NaN or infinity is flagged, not warned about
            packed = self._numpy(x)
        finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        return np.concatenate([packed, finite[:, None].astype(np.float32)], axis=1)

    def _numpy(self, x: np.ndarray) -> np.ndarray:
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


# The fused kernel's modules: its first and second steps are each one of these.
_NO_MODULE, _ASP_MODULE, _SFP_MODULE = range(3)
# ASP's line families as the fused kernel walks them (shared_model.asp.line_index numbers their lines).
_ROWS, _COLUMNS, _FORWARD, _BACKWARD = range(4)
_KERNEL: Any = None  # the compiled kernel, once built (False: numba is not installed)


def _fused_kernel() -> Any:
    """The attention stage as one numba-compiled pass per face (None without numba); compiled once, cached on disk."""
    global _KERNEL
    if _KERNEL is None:
        try:
            import numba
        except ImportError:
            _KERNEL = False
        else:
            # Reassociating sums lets the compiler vectorize them; NaN and infinity keep their IEEE meaning.
            _KERNEL = numba.njit(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, error_model="numpy")(_attend)
    return _KERNEL or None


def _attend(x, out, height, width, group_weights, families, offsets, direction_group, line_scale, line_bias, sfp_weights, fc, fc_bias, first, second):  # pragma: no cover (compiled)
    """Per face: the attention of ``x[n]`` (C, P) written to ``out[n]`` as ``[x*S*c | S | c | finite]``,
    ``finite`` 1 where ``x[n]`` holds no NaN or infinity (else 0). ``out`` is C-contiguous, so that its
    rows are too and the compiler vectorizes the stores.

    ASP: the group-weighted channel sum of each direction's group (``direction_group``), summed along
    that direction's lines (``families``: rows, columns, forward or backward diagonals, the lines
    numbered from ``offsets``, as :func:`shared_model.asp.line_index` numbers them), each line's mean
    (``line_scale``: one over its length) plus its bias through a sigmoid, the spatial map the product
    over directions. The lines are walked by their geometry, not gathered through an index: rows are
    contiguous sums and the other families contiguous vector additions. SFP: the weighted pixel sum of
    each channel (``sfp_weights``), one C x C layer and a sigmoid. ``first``, ``second``: the module of
    each step.
    """
    items, channels, pixels_per_map = x.shape
    groups = group_weights.shape[0]
    lines = line_bias.shape[0]
    directions = families.shape[0]
    weighted = np.zeros((max(groups, 1), pixels_per_map), np.float32)
    line_sum = np.zeros(max(lines, 1), np.float32)
    line_attention = np.empty(max(lines, 1), np.float32)
    spatial = np.ones(pixels_per_map, np.float32)
    channel = np.ones(channels, np.float32)
    pooled = np.zeros(channels, np.float32)
    one = np.float32(1.0)
    for n in range(items):
        xn = x[n]
        poison = np.float32(0.0)  # stays 0 unless an element is NaN or infinite (inf * 0 is NaN)
        for c in range(channels):
            for p in range(pixels_per_map):
                poison += xn[c, p] * np.float32(0.0)
        spatial[:] = one
        channel[:] = one
        for step in range(2):
            module = first if step == 0 else second
            if module == _ASP_MODULE:  # on x * channel (channel: ones unless SFP ran first)
                weighted[:] = 0.0
                for c in range(channels):
                    for g in range(groups):
                        scale = group_weights[g, c] * channel[c]
                        for p in range(pixels_per_map):
                            weighted[g, p] += scale * xn[c, p]
                line_sum[:] = 0.0
                for k in range(directions):
                    family, offset, row = families[k], offsets[k], weighted[direction_group[k]]
                    for i in range(height):
                        base = i * width
                        if family == _ROWS:
                            total = np.float32(0.0)
                            for j in range(width):
                                total += row[base + j]
                            line_sum[offset + i] += total
                        elif family == _COLUMNS:
                            for j in range(width):
                                line_sum[offset + j] += row[base + j]
                        elif family == _FORWARD:  # i + j
                            for j in range(width):
                                line_sum[offset + i + j] += row[base + j]
                        else:  # backward: i - j + width - 1
                            for j in range(width):
                                line_sum[offset + i + width - 1 - j] += row[base + j]
                for line in range(lines):
                    line_attention[line] = one / (one + np.exp(-(line_bias[line] + line_scale[line] * line_sum[line])))
                spatial[:] = one
                for k in range(directions):
                    family, offset = families[k], offsets[k]
                    for i in range(height):
                        base = i * width
                        if family == _ROWS:
                            value = line_attention[offset + i]
                            for j in range(width):
                                spatial[base + j] *= value
                        elif family == _COLUMNS:
                            for j in range(width):
                                spatial[base + j] *= line_attention[offset + j]
                        elif family == _FORWARD:
                            for j in range(width):
                                spatial[base + j] *= line_attention[offset + i + j]
                        else:
                            for j in range(width):
                                spatial[base + j] *= line_attention[offset + i + width - 1 - j]
            elif module == _SFP_MODULE:  # on x * spatial (spatial: ones unless ASP ran first)
                for c in range(channels):
                    total = np.float32(0.0)
                    for p in range(pixels_per_map):
                        total += xn[c, p] * spatial[p] * sfp_weights[c, p]
                    pooled[c] = total
                for c in range(channels):
                    total = fc_bias[c]
                    for d in range(channels):
                        total += fc[c, d] * pooled[d]
                    channel[c] = one / (one + np.exp(-total))
        row_out = out[n]
        for c in range(channels):
            scale = channel[c]
            base = c * pixels_per_map
            for p in range(pixels_per_map):
                row_out[base + p] = xn[c, p] * spatial[p] * scale
        mapped = channels * pixels_per_map
        for p in range(pixels_per_map):
            row_out[mapped + p] = spatial[p]
        for c in range(channels):
            row_out[mapped + pixels_per_map + c] = channel[c]
        row_out[mapped + pixels_per_map + channels] = one if poison == 0.0 else np.float32(0.0)


class _FusedAttention:
    """The arrays of an ``attention.npz`` laid out for :func:`_attend`."""

    def __init__(self, order: tuple[str, ...], a: dict[str, np.ndarray], kernel: Any) -> None:
        self.kernel = kernel
        modules = [{ASP: _ASP_MODULE, SFP: _SFP_MODULE}[name] for name in order]
        self.first, self.second = (modules + [_NO_MODULE, _NO_MODULE])[:2]
        groups = [(a[f"asp_{g}_weight"], a[f"asp_{g}_matrix"], a[f"asp_{g}_bias"]) for g in ("axis", "diagonal") if f"asp_{g}_weight" in a]
        channels = len(a["sfp_fc_bias"]) if "sfp_fc_bias" in a else (len(groups[0][0]) if groups else 1)
        self.group_weights = np.ascontiguousarray(np.stack([w for w, _, _ in groups]) if groups else np.zeros((0, channels)), dtype=np.float32)
        line_group = np.concatenate([np.full(m.shape[1], g) for g, (_, m, _) in enumerate(groups)]) if groups else np.zeros(0, np.int64)
        matrix = np.hstack([m for _, m, _ in groups]) if groups else np.zeros((0, 0))  # (H*W, lines), every line's mean
        self.height, self.width, families, offsets = _line_families(a.get("asp_broadcast_index", np.zeros((0, 0), np.int64)), matrix)
        self.line_scale = np.ascontiguousarray(matrix.max(axis=0) if matrix.size else np.zeros(0), dtype=np.float32)  # one over each line's length
        self.line_bias = np.asarray([float(groups[g][2][0]) for g in line_group], np.float32)
        self.families = np.asarray(families, np.int32)
        self.offsets = np.asarray(offsets, np.int32)
        self.direction_group = np.asarray([line_group[offset] for offset in offsets], np.int32)
        self.sfp_weights = np.ascontiguousarray(a["sfp_weights"][:, :, 0] if "sfp_weights" in a else np.zeros((channels, 1)), dtype=np.float32)
        self.fc = np.ascontiguousarray(a.get("sfp_fc_weight", np.zeros((channels, channels))), dtype=np.float32)
        self.fc_bias = np.ascontiguousarray(a.get("sfp_fc_bias", np.zeros(channels)), dtype=np.float32)

    def __call__(self, x: np.ndarray, finite_flags: bool = False) -> np.ndarray:
        batch, channels, height, width = x.shape
        pixels = height * width
        width_out = channels * pixels + pixels + channels
        out = np.empty((batch, width_out + 1), np.float32)  # the last column: the finite flags
        if self.families.size and (height, width) != (self.height, self.width):
            raise ValueError(f"the attention holds lines of a {self.height}x{self.width} map, the input is {height}x{width}")
        self.kernel(
            np.ascontiguousarray(x, dtype=np.float32).reshape(batch, channels, pixels), out, height, width, self.group_weights, self.families,
            self.offsets, self.direction_group, self.line_scale, self.line_bias, self.sfp_weights, self.fc, self.fc_bias, self.first, self.second,
        )
        return out if finite_flags else out[:, :width_out]


def _family_lines(family: int, height: int, width: int) -> tuple[np.ndarray, int]:
    """Each pixel's line in ``family`` on a height x width map, and the number of lines (as shared_model.asp numbers them)."""
    i, j = np.divmod(np.arange(height * width), width)
    return [(i, height), (j, width), (i + j, height + width - 1), (i - j + width - 1, height + width - 1)][family]


def _line_families(index: np.ndarray, matrix: np.ndarray) -> tuple[int, int, list[int], list[int]]:
    """The map size, each direction's line family and its first line, read off ``index`` (directions, H*W) and
    checked against the averaging ``matrix`` (H*W, lines); ValueError where they are not ASP's four families."""
    if index.size == 0:
        return 0, 0, [], []
    pixels = index.shape[1]
    for height in (h for h in range(1, pixels + 1) if pixels % h == 0):
        width = pixels // height
        families, offsets = [], []
        for row in index:
            offset = int(row.min())
            found = [f for f in range(4) if np.array_equal(row - offset, _family_lines(f, height, width)[0])]
            if not found:
                break
            families.append(found[0])
            offsets.append(offset)
        else:
            expected = np.zeros_like(matrix)
            for family, offset in zip(families, offsets):
                lines, count = _family_lines(family, height, width)
                expected[np.arange(pixels), offset + lines] = 1.0
                expected[:, offset : offset + count] /= expected[:, offset : offset + count].sum(axis=0, keepdims=True)
            if np.allclose(expected, matrix, rtol=1e-6, atol=1e-7):
                return height, width, families, offsets
    raise ValueError("the ASP lines are not rows, columns and diagonals of one map: the fused kernel cannot walk them")


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
