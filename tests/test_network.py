"""The network: parameter count, partitions, split equals whole, gradients."""

from __future__ import annotations

import pytest
import torch

from shared_model.config import STANDARD_CONFIGS, ConfigError, ModelConfig, config_for
from shared_model.network import FERNet


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_backbone_alone_has_the_papers_1_26_million_parameters() -> None:
    model = FERNet(config_for("backbone", adapter_width=116))
    assert round(parameter_count(model) / 1e6, 2) == 1.26


def test_head_emits_the_8x28x28_split_tensor() -> None:
    model = FERNet().eval()
    with torch.no_grad():
        z = model.head(torch.randn(2, 3, 224, 224))
    assert tuple(z.shape) == (2, 8, 28, 28) == (2, *model.config.split_shape)


@pytest.mark.parametrize("name", STANDARD_CONFIGS)
@pytest.mark.parametrize("width", [8, 116])
def test_split_equals_whole_for_every_configuration(name: str, width: int) -> None:
    model = FERNet(config_for(name, adapter_width=width)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        split = model.tail(model.cloud(model.head(x)))
    assert torch.equal(whole, split)


def test_partitions_rebuilt_from_one_state_dict_agree() -> None:
    """Edge and cloud each build their own model from the same weights, as in deployment."""
    edge = FERNet().eval()
    cloud = FERNet().eval()
    cloud.load_state_dict(edge.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(edge.tail(cloud.cloud(edge.head(x))), edge(x))


def test_gradients_reach_every_parameter() -> None:
    model = FERNet(config_for("backbone+asp+sfp")).train()
    loss = model(torch.randn(4, 3, 64, 64)).logsumexp(dim=1).sum()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_attention_modules_run_in_configured_order() -> None:
    assert list(FERNet(config_for("backbone+sfp+asp")).cloud.attention) == ["sfp", "asp"]
    assert list(FERNet(config_for("backbone")).cloud.attention) == []


def test_config_round_trips_through_json() -> None:
    config = ModelConfig(attention=("sfp",), asp_directions=("vertical",), sfp_wavelet="sym4", sfp_levels=(4, 2), adapter_width=16)
    assert ModelConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"attention": ("asp", "asp")}, "attention"),
        ({"asp_directions": ()}, "asp_directions"),
        ({"sfp_wavelet": "coif1"}, "sfp_wavelet"),
        ({"sfp_levels": (1, 5)}, "sfp_levels"),
        ({"adapter_width": 0}, "adapter_width"),
        ({"input_size": 100}, "input_size"),
    ],
)
def test_invalid_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_model_used_in_inference_mode_still_trains() -> None:
    """Cached pooling tensors built under inference_mode must not poison later autograd."""
    model = FERNet()
    with torch.inference_mode():
        model.eval()(torch.randn(1, 3, 48, 48))
    model.train()(torch.randn(2, 3, 48, 48)).sum().backward()
    assert model.cloud.attention["sfp"].fc.weight.grad is not None
