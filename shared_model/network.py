"""The FER network and its three partitions: edge head, cloud attention, edge tail.

Wu et al., "Edge-AI-Driven Framework with Efficient Mobile Network Design for
Facial Expression Recognition", ACM TECS 22(3), 2023. The backbone is
torchvision's ShuffleNetV2 1.0x; the attention modules (ASP, SFP) sit after
Stage 2. A learned split adapter narrows Stage 2's 116 channels to the 8 that
cross the network and widens them again on the edge::

    head:  image -> conv1 -> maxpool -> stage2 -> adapter-in   ==> C x 28 x 28
    cloud: C x 28 x 28 -> ASP -> SFP                           ==> C x 28 x 28
    tail:  adapter-out -> stage3 -> stage4 -> conv5 -> GAP -> FC ==> scores

``FERNet.forward(x)`` is by construction ``tail(cloud(head(x)))``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import shufflenet_v2_x1_0

from .asp import ArbitraryOrientedSpatialPooling
from .config import ASP, STAGE2_CHANNELS, ModelConfig
from .sfp import ScalableFrequencyPooling

__all__ = ["SplitAdapterIn", "SplitAdapterOut", "EdgeHead", "CloudAttention", "EdgeTail", "FERNet"]


class SplitAdapterIn(nn.Sequential):
    """1x1 conv + BN narrowing Stage 2's output to the wire width (ends the edge head)."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width))


class SplitAdapterOut(nn.Sequential):
    """1x1 conv + BN + ReLU widening the wire tensor back for Stage 3 (begins the edge tail)."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class EdgeHead(nn.Module):
    """Image (N, 3, S, S) -> split tensor (N, C, S/8, S/8)."""

    def __init__(self, backbone: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.conv1 = backbone.conv1
        self.maxpool = backbone.maxpool
        self.stage2 = backbone.stage2
        self.adapter = SplitAdapterIn(STAGE2_CHANNELS, config.adapter_width) if config.uses_adapter else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(self.stage2(self.maxpool(self.conv1(x))))


class CloudAttention(nn.Module):
    """The offloadable stage: the configured attention modules, in order (identity if none)."""

    def __init__(self, config: ModelConfig, wavelet_backend: str = "ptwt") -> None:
        super().__init__()
        channels, *map_size = config.split_shape
        modules = {
            name: (
                ArbitraryOrientedSpatialPooling(channels, config.asp_directions, tuple(map_size))
                if name == ASP
                else ScalableFrequencyPooling(
                    channels, config.sfp_levels, config.sfp_wavelet, wavelet_backend, config.sfp_boundary, tuple(map_size)
                )
            )
            for name in config.attention
        }
        self.attention = nn.ModuleDict(modules)

    def forward(self, x: Tensor) -> Tensor:
        for module in self.attention.values():
            x = module(x)
        return x

    def attention_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The attention alone: spatial map S (N, 1, H, W) and channel weights c (N, C).

        Whatever the order of the modules, ``forward(x)`` equals ``x * S * c`` (up
        to float rounding), so an edge that holds ``x`` in full precision can apply
        attention it receives (792 bytes as uint8) instead of receiving the
        attended map. A missing module contributes ones.
        """
        batch, channels, height, width = x.shape
        spatial = x.new_ones(batch, 1, height, width)
        channel = x.new_ones(batch, channels)
        for name, module in self.attention.items():
            if name == ASP:
                spatial = module.attention(x)
                x = x * spatial
            else:
                channel = module.attention(x)
                x = x * channel[:, :, None, None]
        return spatial, channel


class EdgeTail(nn.Module):
    """Attended split tensor -> class scores (N, num_classes)."""

    def __init__(self, backbone: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.adapter = SplitAdapterOut(config.adapter_width, STAGE2_CHANNELS) if config.uses_adapter else nn.Identity()
        self.stage3 = backbone.stage3
        self.stage4 = backbone.stage4
        self.conv5 = backbone.conv5
        self.fc = backbone.fc
        self.temperature = float(config.temperature)

    def features(self, x: Tensor) -> Tensor:
        """Pooled 1024-d embedding before the classifier."""
        return self.conv5(self.stage4(self.stage3(self.adapter(x)))).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Class scores divided by the calibration temperature (no division at 1.0, the exact old graph)."""
        scores = self.fc(self.features(x))
        return scores if self.temperature == 1.0 else scores / self.temperature

    def set_temperature(self, temperature: float) -> None:
        self.temperature = float(temperature)


class FERNet(nn.Module):
    """ShuffleNetV2 1.0x with ASP/SFP after Stage 2, partitioned for split inference."""

    def __init__(self, config: ModelConfig | None = None, wavelet_backend: str = "ptwt") -> None:
        super().__init__()
        self.config = config or ModelConfig()
        backbone = shufflenet_v2_x1_0(weights=None, num_classes=self.config.num_classes)
        self.head = EdgeHead(backbone, self.config)
        self.cloud = CloudAttention(self.config, wavelet_backend)
        self.tail = EdgeTail(backbone, self.config)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.cloud(self.head(x)))

    def replace_classifier(self, class_names: tuple[str, ...]) -> None:
        """New output layer for another class list (transfer learning), config updated."""
        self.config = self.config.replace(class_names=tuple(class_names), temperature=1.0)
        self.tail.fc = nn.Linear(self.tail.fc.in_features, len(class_names))
        self.tail.set_temperature(1.0)

    def calibrate(self, temperature: float) -> None:
        """Divide the class scores by ``temperature`` from now on (config updated, weights unchanged)."""
        self.config = self.config.replace(temperature=float(temperature))
        self.tail.set_temperature(temperature)
