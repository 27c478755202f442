"""CIFAR VGG-16 with batch norm, with explicit per-layer widths for pruning experiments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .resnet import check_width, check_widths

VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER = frozenset({1, 3, 6, 9, 12})  # zero-based conv indices followed by a 2x2 max pool


class VGG(nn.Module):
    """13 conv3x3-BN-ReLU layers with five max pools, then an MLP classifier.

    The pools use `ceil_mode=True`, so 28x28 inputs shrink 28-14-7-4-2-1
    instead of vanishing, and 32x32 inputs shrink 32-16-8-4-2-1. The final
    adaptive average pool makes larger inputs work too. The classifier is
    Linear(last width, hidden)-BN1d-ReLU-Linear(hidden, num_classes), so
    train-mode forward passes need a batch of at least 2.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = VGG16_WIDTHS,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        widths = check_widths("widths", widths, len(VGG16_WIDTHS))
        hidden = check_width("hidden", hidden)

        layers: list[nn.Module] = []
        in_width = in_channels
        for index, width in enumerate(widths):
            layers += [
                nn.Conv2d(in_width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            if index in POOL_AFTER:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            in_width = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(in_width, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(out, 1))

    def widths(self) -> dict[str, Any]:
        """Widths read from the weights, so they stay true after physical pruning.

        `VGG(**model.widths())` rebuilds a dense model of exactly this architecture.
        """
        convs = [module for module in self.features if isinstance(module, nn.Conv2d)]
        return {
            "widths": [conv.weight.shape[0] for conv in convs],
            "hidden": self.classifier[0].weight.shape[0],
        }


def vgg16_bn(**kwargs: Any) -> VGG:
    """VGG-16 with batch norm, CIFAR variant."""
    return VGG(**kwargs)
