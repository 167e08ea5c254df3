"""The optional pytorch_wavelets backend gives ptwt's (and PyWavelets') numbers.

pytorch_wavelets imports ``pkg_resources`` and so needs setuptools below 81;
``scripts/test.sh`` installs it with the project into a venv of its own and
exports its interpreter as ``FER_PYTORCH_WAVELETS_PYTHON``. The values under test
are computed there, in a subprocess; the references are computed here with ptwt
and PyWavelets.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import pywt
import torch

from shared_model.checkpoint import load_model
from shared_model.sfp import FrequencyGroupPool
from shared_model.wavelets import BACKEND_MODES, lowpass_cascade

ROOT = Path(__file__).resolve().parents[1]
WAVELETS = ("haar", "db2", "sym3", "db4")
MODES = BACKEND_MODES["pytorch_wavelets"]
LEVELS = (1, 2, 3)

# Runs in the pytorch_wavelets venv: writes its LL bands, SFP pooling and network outputs.
WORKER = r"""
import sys, warnings
import numpy as np, torch
warnings.simplefilter("ignore")
import pytorch_wavelets  # noqa: F401  (fails loudly if the backend is missing)
from shared_model.checkpoint import load_model
from shared_model.sfp import FrequencyGroupPool
from shared_model.wavelets import lowpass_cascade
WAVELETS, MODES, LEVELS = {wavelets!r}, {modes!r}, {levels!r}
data = dict(np.load(sys.argv[1]))
x, images = torch.from_numpy(data["x"]), torch.from_numpy(data["images"])
out = {{}}
with torch.no_grad():
    for w in WAVELETS:
        for m in MODES:
            for level in range(1, 5):
                try:
                    out[f"ll/{{w}}/{{m}}/{{level}}"] = lowpass_cascade(x, w, level, "pytorch_wavelets", m)[-1].numpy()
                except ValueError:  # refused: a band shorter than the filter in periodization mode
                    pass
            out[f"pool/{{w}}/{{m}}"] = FrequencyGroupPool(8, LEVELS, w, "pytorch_wavelets", m)(x.float()).numpy()
    model, _ = load_model(wavelet_backend="pytorch_wavelets")
    out["logits"] = model(images).numpy()
    out["split"] = model.cloud(model.head(images)).numpy()
np.savez(sys.argv[2], **out)
"""


@pytest.fixture(scope="module")
def pytorch_wavelets_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    python = os.environ.get("FER_PYTORCH_WAVELETS_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("FER_PYTORCH_WAVELETS_PYTHON is not set: scripts/test.sh makes the pytorch_wavelets venv (setuptools<81)")
    folder = tmp_path_factory.mktemp("pytorch_wavelets")
    rng = np.random.default_rng(14)
    inputs = {"x": rng.normal(size=(2, 8, 28, 28)), "images": rng.normal(size=(2, 3, 224, 224)).astype(np.float32)}
    np.savez(folder / "in.npz", **inputs)
    script = WORKER.format(wavelets=WAVELETS, modes=MODES, levels=LEVELS)
    done = subprocess.run([python, "-c", script, str(folder / "in.npz"), str(folder / "out.npz")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**inputs, **dict(np.load(folder / "out.npz"))}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_ll_bands_equal_ptwt_and_pywavelets(pytorch_wavelets_results: dict[str, np.ndarray], wavelet: str, mode: str) -> None:
    x = pytorch_wavelets_results["x"]
    for level in range(1, 5):
        key = f"ll/{wavelet}/{mode}/{level}"
        if key not in pytorch_wavelets_results:  # refused, which it must be only where it would differ
            band = pywt.wavedec2(x, wavelet, mode=mode, level=level - 1)[0] if level > 1 else x
            side = min(band.shape[-2:])
            assert mode == "periodization" and side + side % 2 < pywt.Wavelet(wavelet).dec_len, key
            continue
        got = pytorch_wavelets_results[key]
        expected = pywt.wavedec2(x, wavelet, mode=mode, level=level)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        if mode in BACKEND_MODES["ptwt"]:
            ptwt_band = lowpass_cascade(torch.from_numpy(x), wavelet, level, "ptwt", mode)[-1].numpy()
            np.testing.assert_allclose(got, ptwt_band, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_sfp_pooling_equals_ptwt(pytorch_wavelets_results: dict[str, np.ndarray], wavelet: str, mode: str) -> None:
    x = pytorch_wavelets_results["x"]
    if mode in BACKEND_MODES["ptwt"]:
        expected = FrequencyGroupPool(8, LEVELS, wavelet, "ptwt", mode)(torch.from_numpy(x).float()).numpy()
    else:  # ptwt has no periodization: PyWavelets is the reference
        chunks = np.array_split(x, len(LEVELS), axis=1)
        expected = np.concatenate([pywt.wavedec2(c, wavelet, mode=mode, level=lv)[0].mean(axis=(2, 3)) for c, lv in zip(chunks, LEVELS)], axis=1)
    np.testing.assert_allclose(pytorch_wavelets_results[f"pool/{wavelet}/{mode}"], expected, rtol=1e-5, atol=1e-6)


def test_whole_network_gives_the_same_outputs_with_either_backend(pytorch_wavelets_results: dict[str, np.ndarray]) -> None:
    model, _ = load_model(wavelet_backend="ptwt")
    images = torch.from_numpy(pytorch_wavelets_results["images"])
    with torch.no_grad():
        logits = model(images).numpy()
        split = model.cloud(model.head(images)).numpy()
    np.testing.assert_allclose(pytorch_wavelets_results["split"], split, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pytorch_wavelets_results["logits"], logits, rtol=1e-5, atol=1e-5)
    assert (pytorch_wavelets_results["logits"].argmax(1) == logits.argmax(1)).all()
