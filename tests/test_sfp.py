"""SFP: torch.chunk grouping, LL bands against PyWavelets, the pooled values."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from shared_model.checkpoint import default_weights_path, fingerprint, load_checkpoint
from shared_model.config import ConfigError, ModelConfig
from shared_model.network import FERNet
from shared_model.sfp import FrequencyGroupPool, ScalableFrequencyPooling, chunk_sizes
from shared_model.wavelets import (
    BACKEND_MODES,
    BOUNDARY_MODE,
    departure_from_uniform,
    lowpass_cascade,
    lowpass_mean_weights,
    supported_wavelets,
)


@pytest.fixture
def float64_default():
    """Modules built inside keep their derived pooling weights in float64 (exact comparisons)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


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
def test_group_pool_is_mean_of_pywavelets_ll_band(levels: tuple[int, ...], float64_default: None) -> None:
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


def test_unknown_backend_and_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        FrequencyGroupPool(8, (1, 2), backend="fft")
    with pytest.raises(ValueError, match="levels"):
        FrequencyGroupPool(8, (1, 5))


# --- boundary modes -----------------------------------------------------------------


def _pywt_mean_weights(wavelet: str, level: int, mode: str, size: int = 28) -> np.ndarray:
    """LL-band mean of every pixel basis image, straight from PyWavelets (independent of ptwt)."""
    basis = np.eye(size * size).reshape(size * size, size, size)
    return pywt.wavedec2(basis, wavelet, mode=mode, level=level)[0].mean(axis=(1, 2))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_zero_mode_pools_a_constant_times_the_global_average(level: int) -> None:
    """Every supported wavelet: with zero padding the LL-band mean weighs all pixels alike."""
    for wavelet in supported_wavelets():
        weights = lowpass_mean_weights(wavelet, level, 28, 28, mode="zero").numpy()
        assert np.ptp(weights) <= 1e-9 * weights.mean(), (wavelet, level)
        x = np.random.default_rng(level).normal(size=(28, 28))
        pooled = pywt.wavedec2(x, wavelet, mode="zero", level=level)[0].mean()
        assert pooled == pytest.approx(weights[0] * x.size * x.mean(), rel=1e-9, abs=1e-12), (wavelet, level)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", [m for m in BACKEND_MODES["ptwt"] if m != "zero"])
@pytest.mark.parametrize("wavelet", ["haar", "db2", "db4", "sym3"])
def test_other_modes_match_pywavelets_and_depart_from_uniform(mode: str, wavelet: str) -> None:
    departures = []
    for level in range(1, 5):
        weights = lowpass_mean_weights(wavelet, level, 28, 28, mode=mode).numpy()
        np.testing.assert_allclose(weights, _pywt_mean_weights(wavelet, level, mode), rtol=1e-9, atol=1e-12)
        departures.append(departure_from_uniform(torch.from_numpy(weights)))
    # 28 -> 14 -> 7: an odd band needs padding from level 3 on, even for Haar.
    assert max(departures) > 0.05, departures
    if wavelet != "haar":
        assert all(d > 1e-3 for d in departures), departures


def test_departure_measures_distance_from_uniform() -> None:
    assert departure_from_uniform(torch.full((9,), 0.3, dtype=torch.float64)) == pytest.approx(0.0)
    assert departure_from_uniform(torch.tensor([1.0, 1.0, 2.0, 0.0])) == pytest.approx(1.0)


def test_boundary_mode_is_a_config_field_left_out_when_default() -> None:
    assert "sfp_boundary" not in ModelConfig().to_dict()
    symmetric = ModelConfig(sfp_boundary="symmetric")
    assert symmetric.to_dict()["sfp_boundary"] == "symmetric"
    assert ModelConfig.from_json(symmetric.to_json()) == symmetric
    assert ModelConfig.from_json(ModelConfig().to_json()).sfp_boundary == "zero"
    with pytest.raises(ConfigError, match="sfp_boundary"):
        ModelConfig(sfp_boundary="smooth")


def test_shipped_weights_keep_their_fingerprint() -> None:
    checkpoint = load_checkpoint(default_weights_path())
    assert checkpoint.config.sfp_boundary == "zero"
    model = checkpoint.build_model()
    assert fingerprint(model.config, model.state_dict()) == checkpoint.fingerprint
    other = fingerprint(model.config.replace(sfp_boundary="symmetric"), model.state_dict())
    assert other != checkpoint.fingerprint


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_network_uses_the_configured_boundary_mode(float64_default: None) -> None:
    config = ModelConfig(sfp_boundary="reflect", sfp_wavelet="db2", sfp_levels=(1, 2, 3))
    pool = FERNet(config).cloud.attention["sfp"].pool
    assert pool.mode == "reflect"
    x = torch.randn(2, 8, 28, 28, dtype=torch.float64)
    expected = [
        pywt.wavedec2(chunk.numpy(), "db2", mode="reflect", level=level)[0].mean(axis=(2, 3))
        for chunk, level in zip(x.chunk(3, dim=1), (1, 2, 3))
    ]
    np.testing.assert_allclose(pool(x).detach().numpy(), np.concatenate(expected, axis=1), rtol=1e-9, atol=1e-12)


def test_periodization_needs_the_pytorch_wavelets_backend() -> None:
    with pytest.raises(ValueError, match="no boundary mode 'periodization'"):
        FrequencyGroupPool(8, (1, 2), mode="periodization")


def test_pooling_weights_are_non_persistent_buffers_for_the_map_size(float64_default: None) -> None:
    pool = FrequencyGroupPool(8, (1, 2, 3), "db2", map_size=(28, 28))
    assert "weights" in dict(pool.named_buffers()) and "weights" not in pool.state_dict()
    x = torch.randn(2, 8, 13, 20, dtype=torch.float64)  # another size: derived on the fly
    expected = [
        pywt.wavedec2(chunk.numpy(), "db2", mode=BOUNDARY_MODE, level=level)[0].mean(axis=(2, 3))
        for chunk, level in zip(x.chunk(3, dim=1), (1, 2, 3))
    ]
    np.testing.assert_allclose(pool(x).numpy(), np.concatenate(expected, axis=1), rtol=1e-9, atol=1e-12)
