"""The training recipe's parts: learning-rate curve, weight averaging, batched augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shared_model.training.augmentation import Augmentation, augment
from shared_model.training.fit import TrainSettings, learning_rate_factor
from shared_model.training.weight_average import WeightAverage


def test_each_phase_warms_up_then_decays_along_a_cosine() -> None:
    settings = TrainSettings(schedule="112:20,224:10", warmup_fraction=0.1, later_phase_lr=0.3)
    steps = 10  # per epoch: phase one is 200 steps (warm-up 20), phase two 100 (warm-up 10)
    factors = [learning_rate_factor(settings, steps, s) for s in range(300)]
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == pytest.approx(1.0)
    assert factors[20 + 90] == pytest.approx(0.5)  # half-way through the cosine
    assert factors[199] < 0.001  # the first phase ends near zero
    assert factors[200] == pytest.approx(0.3 / 10) and factors[209] == pytest.approx(0.3)
    assert factors[210 + 45] == pytest.approx(0.15)
    assert all(a >= b for a, b in zip(factors[20:200], factors[21:200]))  # decays monotonically
    assert learning_rate_factor(settings, steps, 10_000) == factors[299]  # past the end: the last value


def test_the_paper_recipe_divides_by_ten_every_thirty_epochs() -> None:
    settings = TrainSettings.paper()
    assert settings.ema_decay == 0.0 and settings.schedule == "224:100"
    assert learning_rate_factor(settings, 5, 149) == 1.0
    assert learning_rate_factor(settings, 5, 150) == pytest.approx(0.1)
    assert learning_rate_factor(settings, 5, 300) == pytest.approx(0.01)


def test_the_weight_average_follows_its_formula() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    expected = 0.0
    for update in range(1, 30):
        with torch.no_grad():
            model.weight.fill_(float(update))
        average.update(model)
        decay = min(0.9, (1 + update) / (10 + update))
        expected = decay * expected + (1 - decay) * update
    assert average.module.weight.item() == pytest.approx(expected)
    average.restart(model)
    assert average.module.weight.item() == 29.0 and average.updates == 0
    assert not average.module.weight.requires_grad


def test_the_weight_average_averages_batchnorm_statistics_and_copies_counts() -> None:
    model = nn.BatchNorm1d(2)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.running_mean.fill_(4.0)
        model.num_batches_tracked.fill_(7)
    average.update(model)  # first update: decay min(0.5, 2/11)
    assert average.module.running_mean.tolist() == pytest.approx([4.0 * (1 - 2 / 11)] * 2)
    assert int(average.module.num_batches_tracked) == 7


def test_augmentation_makes_normalized_batches_of_the_asked_size() -> None:
    generator = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (16, 48, 48), dtype=torch.uint8)
    x = augment(gray, 64, generator)
    assert x.shape == (16, 3, 64, 64) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    again = augment(gray, 64, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, again)  # the generator alone decides


def test_without_random_transforms_augmentation_is_a_resize() -> None:
    still = Augmentation(zoom=(1.0, 1.0), rotation_degrees=0.0, translation=0.0, contrast=(1.0, 1.0), brightness=0.0, erase_probability=0.0)
    gray = torch.full((64, 48, 48), 128, dtype=torch.uint8)
    x = augment(gray, 48, torch.Generator().manual_seed(1), still)
    # A uniform face stays uniform whether mirrored or not.
    assert torch.allclose(x, x[0, 0, 0, 0].expand_as(x))


def test_random_erasing_replaces_one_rectangle_with_noise() -> None:
    erase_all = Augmentation(zoom=(1.0, 1.0), rotation_degrees=0.0, translation=0.0, contrast=(1.0, 1.0), brightness=0.0,
                             erase_probability=1.0, erase_area=(0.1, 0.1))
    gray = torch.full((32, 40, 40), 128, dtype=torch.uint8)
    x = augment(gray, 40, torch.Generator().manual_seed(2), erase_all)
    changed = (x - x[:, :, :1, :1]).abs().sum(dim=1) > 1e-6  # pixels no longer the uniform value
    for mask in changed:
        rows, cols = mask.nonzero(as_tuple=True)
        assert rows.numel() > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == pytest.approx(0.1 * 40 * 40, rel=0.6)  # one rectangle of about a tenth of the face
        assert mask.sum() <= box  # nothing outside it
