"""CIFAR ResNet (He et al., 2016) with per-block widths, for pruning experiments.

Every width is an explicit constructor argument so that a pruned model's
architecture can be rebuilt densely (and trained from scratch) by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _is_width(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_width(name: str, width: int) -> int:
    """Return `width`, or raise ValueError naming the argument if it is not a positive int."""
    if not _is_width(width):
        raise ValueError(f"{name} must be a positive integer, got {width!r}")
    return width


def check_widths(name: str, widths: Sequence[int], expected_length: int) -> list[int]:
    """Return `widths` as a list, or raise ValueError naming the argument.

    Shared by all zoo models so that a bad width is reported up front rather
    than as an opaque shape mismatch deep inside a forward pass.
    """
    values = list(widths)
    if len(values) != expected_length or not all(_is_width(value) for value in values):
        raise ValueError(
            f"{name} must be a sequence of {expected_length} positive integers, got {len(values)} values: {values}"
        )
    return values


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, ReLU after the addition.

    The shortcut is a 1x1 conv + BN projection (option B) when the block
    downsamples or changes the channel count, and the identity otherwise.
    """

    def __init__(self, in_width: int, inner_width: int, out_width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, inner_width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner_width)
        self.conv2 = nn.Conv2d(inner_width, out_width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_width)
        if stride != 1 or in_width != out_width:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_width, out_width, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_width),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """CIFAR ResNet of depth 6n+2 with three stages of n BasicBlocks each.

    `stage_widths` are the residual-stream widths of the three stages (the stem
    outputs `stage_widths[0]`); `block_widths` holds one inner width (conv1
    output channels) per block, 3n in total, defaulting to the stage width.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        stage_widths: Sequence[int] = (16, 32, 64),
        block_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 for some n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        self.depth = depth
        blocks_per_stage = (depth - 2) // 6
        stage_widths = check_widths("stage_widths", stage_widths, 3)
        if block_widths is None:
            block_widths = [width for width in stage_widths for _ in range(blocks_per_stage)]
        block_widths = check_widths("block_widths", block_widths, 3 * blocks_per_stage)

        self.conv1 = nn.Conv2d(in_channels, stage_widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_widths[0])
        in_width = stage_widths[0]
        stages = []
        for stage, out_width in enumerate(stage_widths):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                inner_width = block_widths[stage * blocks_per_stage + index]
                blocks.append(BasicBlock(in_width, inner_width, out_width, stride))
                in_width = out_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_width, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.avgpool(out), 1))

    def widths(self) -> dict[str, list[int]]:
        """Widths read from the weights, so they stay true after physical pruning.

        `ResNetCIFAR(model.depth, **model.widths())` rebuilds a dense model of
        exactly this architecture.
        """
        stages = (self.layer1, self.layer2, self.layer3)
        return {
            "stage_widths": [stage[-1].conv2.weight.shape[0] for stage in stages],
            "block_widths": [block.conv1.weight.shape[0] for stage in stages for block in stage],
        }


def resnet20(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-20 (3 blocks per stage)."""
    return ResNetCIFAR(20, **kwargs)


def resnet32(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-32 (5 blocks per stage)."""
    return ResNetCIFAR(32, **kwargs)


def resnet44(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-44 (7 blocks per stage)."""
    return ResNetCIFAR(44, **kwargs)


def resnet56(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-56 (9 blocks per stage)."""
    return ResNetCIFAR(56, **kwargs)


def resnet110(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-110 (18 blocks per stage)."""
    return ResNetCIFAR(110, **kwargs)
