"""SFP: torch.chunk grouping, LL bands against PyWavelets, the pooled values."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from shared_model.sfp import FrequencyGroupPool, ScalableFrequencyPooling, chunk_sizes
from shared_model.wavelets import BOUNDARY_MODE, lowpass_cascade


def test_groups_follow_torch_chunk() -> None:
    assert chunk_sizes(8, 3) == [3, 3, 2]
    assert chunk_sizes(8, 4) == [2, 2, 2, 2]
    assert chunk_sizes(116, 3) == [39, 39, 38]


def test_a_split_torch_chunk_cannot_make_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot split 6 channels into 4 groups"):
        chunk_sizes(6, 4)


@pytest.mark.filterwarnings("ignore:Level value of:UserWarning")
@pytest.mark.parametrize("wavelet", ["haar", "db2", "db4", "sym3"])
@pytest.mark.parametrize("shape", [(28, 28), (13, 20)])
def test_lowpass_bands_match_pywavelets_at_every_level(wavelet: str, shape: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    bands = lowpass_cascade(x, wavelet, 4)
    for level, band in enumerate(bands, start=1):
        expected = pywt.wavedec2(x.numpy(), wavelet, mode=BOUNDARY_MODE, level=level)[0]
        np.testing.assert_allclose(band.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("levels", [(1, 2, 3), (3, 1, 2), (4,), (2, 2, 4, 1)])
def test_group_pool_is_mean_of_pywavelets_ll_band(levels: tuple[int, ...]) -> None:
    x = torch.randn(2, 8, 28, 28, dtype=torch.float64)
    pooled = FrequencyGroupPool(8, levels, "db2")(x)
    expected = []
    for chunk, level in zip(x.chunk(len(levels), dim=1), levels):
        ll = pywt.wavedec2(chunk.numpy(), "db2", mode=BOUNDARY_MODE, level=level)[0]
        expected.append(ll.mean(axis=(2, 3)))
    np.testing.assert_allclose(pooled.numpy(), np.concatenate(expected, axis=1), rtol=1e-9, atol=1e-12)


def test_sfp_scales_channels_by_fc_of_pooled_values() -> None:
    sfp = ScalableFrequencyPooling(8, (1, 2, 3), "haar")
    x = torch.randn(3, 8, 12, 12)
    weights = torch.sigmoid(sfp.fc(sfp.pool(x)))
    torch.testing.assert_close(sfp(x), x * weights[:, :, None, None])
    assert [tuple(p.shape) for p in sfp.parameters()] == [(8, 8), (8,)]


def test_pytorch_wavelets_backend_gives_the_same_numbers() -> None:
    pytest.importorskip("pytorch_wavelets", reason="optional backend: pip install 'fer-split[pytorch-wavelets]'")
    x = torch.randn(2, 8, 28, 28)
    reference = FrequencyGroupPool(8, (1, 2, 3), "db2", "ptwt")(x)
    torch.testing.assert_close(FrequencyGroupPool(8, (1, 2, 3), "db2", "pytorch_wavelets")(x), reference)


def test_unknown_backend_and_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        FrequencyGroupPool(8, (1, 2), backend="fft")
    with pytest.raises(ValueError, match="levels"):
        FrequencyGroupPool(8, (1, 5))
