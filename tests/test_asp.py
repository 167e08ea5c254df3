"""ASP: the paper's 3x3 worked example, non-square maps against a direct loop reference."""

from __future__ import annotations

import itertools

import pytest
import torch

from shared_model.asp import ArbitraryOrientedSpatialPooling, directional_means
from shared_model.config import ASP_DIRECTIONS

# x[i, j] = 3 i + j + 1: the 3x3 map 1..9 used to check equations 2-9 by hand.
WORKED = torch.arange(1.0, 10.0).view(1, 1, 3, 3)


@pytest.mark.parametrize(
    "direction, expected",
    [
        ("horizontal", [2.0, 5.0, 8.0]),  # row means (1+2+3)/3, (4+5+6)/3, (7+8+9)/3
        ("vertical", [4.0, 5.0, 6.0]),  # column means
        ("forward_diagonal", [1.0, 3.0, 5.0, 7.0, 9.0]),  # i+j = 0..4: x00, (x01+x10)/2, (x02+x11+x20)/3, ...
        ("backward_diagonal", [3.0, 4.0, 5.0, 6.0, 7.0]),  # i-j = -2..2: x02, (x01+x12)/2, (x00+x11+x22)/3, ...
    ],
)
def test_pooling_reproduces_worked_example(direction: str, expected: list[float]) -> None:
    assert directional_means(WORKED, direction).flatten().tolist() == pytest.approx(expected)


def _unit_asp(channels: int = 1) -> ArbitraryOrientedSpatialPooling:
    asp = ArbitraryOrientedSpatialPooling(channels)
    for conv in (asp.axis_conv, asp.diagonal_conv):
        torch.nn.init.ones_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    return asp


def test_attention_broadcasts_each_line_value_to_its_pixels() -> None:
    sig = torch.sigmoid
    rows, cols = [2.0, 5.0, 8.0], [4.0, 5.0, 6.0]
    forward, backward = [1.0, 3.0, 5.0, 7.0, 9.0], [3.0, 4.0, 5.0, 6.0, 7.0]
    attention = _unit_asp().attention(WORKED)[0, 0]
    for i, j in itertools.product(range(3), range(3)):
        expected = sig(torch.tensor(rows[i])) * sig(torch.tensor(cols[j])) * sig(torch.tensor(forward[i + j])) * sig(torch.tensor(backward[i - j + 2]))
        assert attention[i, j].item() == pytest.approx(expected.item(), rel=1e-6)


def reference_asp(asp: ArbitraryOrientedSpatialPooling, x: torch.Tensor) -> torch.Tensor:
    """Direct, loop-by-line implementation of the paper's definition (for testing only)."""
    n, c, h, w = x.shape
    lines = {
        "horizontal": lambda i, j: i,
        "vertical": lambda i, j: j,
        "forward_diagonal": lambda i, j: i + j,
        "backward_diagonal": lambda i, j: i - j,
    }
    pooled = {}
    for name in asp.directions:
        key = lines[name]
        groups: dict[int, list[tuple[int, int]]] = {}
        for i, j in itertools.product(range(h), range(w)):
            groups.setdefault(key(i, j), []).append((i, j))
        pooled[name] = {k: torch.stack([x[:, :, i, j] for i, j in px]).mean(0) for k, px in sorted(groups.items())}

    def conv(module: torch.nn.Conv2d, values: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((values * module.weight.view(1, c)).sum(1) + module.bias)

    attention = torch.ones(n, h, w)
    for name in asp.directions:
        module = asp.axis_conv if name in ("horizontal", "vertical") else asp.diagonal_conv
        key = lines[name]
        for i, j in itertools.product(range(h), range(w)):
            attention[:, i, j] *= conv(module, pooled[name][key(i, j)])
    return x * attention.unsqueeze(1)


@pytest.mark.parametrize("size", [(5, 7), (7, 5), (1, 4), (6, 6)])
def test_non_square_maps_match_direct_reference(size: tuple[int, int]) -> None:
    asp = ArbitraryOrientedSpatialPooling(4)
    x = torch.randn(2, 4, *size)
    torch.testing.assert_close(asp(x), reference_asp(asp, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "directions", [subset for r in range(1, 5) for subset in itertools.combinations(ASP_DIRECTIONS, r)]
)
def test_every_direction_subset_runs_and_matches_reference(directions: tuple[str, ...]) -> None:
    asp = ArbitraryOrientedSpatialPooling(3, directions)
    x = torch.randn(2, 3, 4, 6, requires_grad=True)
    out = asp(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference_asp(asp, x), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in asp.parameters())


def test_one_conv_per_direction_family() -> None:
    asp = ArbitraryOrientedSpatialPooling(8)
    assert [tuple(p.shape) for p in asp.parameters()] == [(1, 8, 1, 1), (1,), (1, 8, 1, 1), (1,)]
    assert ArbitraryOrientedSpatialPooling(8, ["horizontal"]).diagonal_conv is None


@pytest.mark.parametrize("bad", [[], ["north"], ["horizontal", "horizontal"]])
def test_invalid_directions_are_refused(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="directions"):
        ArbitraryOrientedSpatialPooling(8, bad)


@pytest.mark.parametrize("size", [(5, 7), (6, 6)])
def test_plan_for_the_configured_size_is_non_persistent_buffers_and_matches_reference(size: tuple[int, int]) -> None:
    asp = ArbitraryOrientedSpatialPooling(4, map_size=size)
    buffers = dict(asp.named_buffers())
    assert {"mean_matrix", "broadcast_index"} <= set(buffers) and not {"mean_matrix", "broadcast_index"} & set(asp.state_dict())
    assert buffers["mean_matrix"].shape == (size[0] * size[1], size[0] + size[1] + 2 * (size[0] + size[1] - 1))
    x = torch.randn(2, 4, *size)
    torch.testing.assert_close(asp(x), reference_asp(asp, x), rtol=1e-5, atol=1e-6)
    asp = asp.double()  # the buffers follow the module's dtype
    assert asp.mean_matrix.dtype == torch.float64 and asp.broadcast_index.dtype == torch.int64
    torch.testing.assert_close(asp(x.double()), reference_asp(asp, x.double()))


def test_the_network_keeps_its_state_dict_keys() -> None:
    from shared_model.checkpoint import default_weights_path, load_checkpoint
    from shared_model.network import FERNet

    checkpoint = load_checkpoint(default_weights_path())
    assert set(FERNet(checkpoint.config).state_dict()) == set(checkpoint.state_dict)
