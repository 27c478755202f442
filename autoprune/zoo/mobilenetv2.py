"""CIFAR MobileNetV2 (Sandler et al., 2018) with explicit widths for pruning experiments.

The CIFAR variant keeps a stride-1 stem and a stride-1 second stage, so a
32x32 input reaches the last conv at 4x4 (and a 28x28 input at 4x4 too).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import check_width, check_widths

# (expansion t, output width c, blocks n, stride of the first block s) per stage.
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_WIDTH = 32
LAST_WIDTH = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round `value` to a multiple of `divisor`, never more than 10% down (as torchvision does)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """Expand 1x1 conv-BN-ReLU6, depthwise 3x3 conv-BN-ReLU6, project 1x1 conv-BN.

    Without `expand` there is no expand conv and the depthwise conv runs on
    the input directly, so `hidden_width` must equal `in_width`.
    """

    def __init__(
        self,
        in_width: int,
        hidden_width: int,
        out_width: int,
        stride: int,
        expand: bool,
        use_residual: bool,
    ) -> None:
        super().__init__()
        self.use_residual = use_residual
        self.expand_conv: nn.Conv2d | None = None
        self.expand_bn: nn.BatchNorm2d | None = None
        if expand:
            self.expand_conv = nn.Conv2d(in_width, hidden_width, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden_width)
        self.depthwise_conv = nn.Conv2d(
            hidden_width, hidden_width, 3, stride=stride, padding=1, groups=hidden_width, bias=False
        )
        self.depthwise_bn = nn.BatchNorm2d(hidden_width)
        self.project_conv = nn.Conv2d(hidden_width, out_width, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand_conv is not None:
            out = F.relu6(self.expand_bn(self.expand_conv(out)))
        out = F.relu6(self.depthwise_bn(self.depthwise_conv(out)))
        out = self.project_bn(self.project_conv(out))
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small (28x28 or 32x32) inputs.

    Widths default to the paper's config scaled by `width_mult` (rounded to
    multiples of 8; `last` is never scaled below 1280) and each block's hidden
    width to its input width times its expansion. `stem`, `hidden_widths` (one
    expanded width per block, 17 in all), `stage_widths` (one output width per
    stage, 7 in all) and `last` override them individually. The first block has expansion 1 and thus no
    expand conv: its hidden width is its input width, so `hidden_widths[0]`
    must equal `stem`; it is kept in the list so that every block has an entry.

    A block has a residual connection exactly when it is not the first of its
    stage, as in the reference network. This depends on position only, not on
    widths, so rebuilding a pruned model never adds or drops a residual.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        stem: int | None = None,
        hidden_widths: Sequence[int] | None = None,
        stage_widths: Sequence[int] | None = None,
        last: int | None = None,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if stem is None:
            stem = make_divisible(STEM_WIDTH * width_mult)
        if stage_widths is None:
            stage_widths = [make_divisible(width * width_mult) for _, width, _, _ in STAGES]
        if last is None:
            last = make_divisible(LAST_WIDTH * max(1.0, width_mult))
        stem = check_width("stem", stem)
        last = check_width("last", last)
        stage_widths = check_widths("stage_widths", stage_widths, len(STAGES))

        block_count = sum(blocks for _, _, blocks, _ in STAGES)
        if hidden_widths is None:
            hidden_widths = []
            in_width = stem
            for (expansion, _, blocks, _), out_width in zip(STAGES, stage_widths):
                for _ in range(blocks):
                    hidden_widths.append(in_width * expansion)
                    in_width = out_width
        hidden_widths = check_widths("hidden_widths", hidden_widths, block_count)
        if hidden_widths[0] != stem:
            raise ValueError(
                f"hidden_widths[0] must equal stem ({stem}): the first block has no expand conv, "
                f"so its hidden width is its input width; got {hidden_widths[0]}"
            )

        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks = []
        in_width = stem
        hidden = iter(hidden_widths)
        for (expansion, _, depth, stride), out_width in zip(STAGES, stage_widths):
            for index in range(depth):
                blocks.append(
                    InvertedResidual(
                        in_width,
                        next(hidden),
                        out_width,
                        stride=stride if index == 0 else 1,
                        expand=expansion != 1,
                        use_residual=index > 0,
                    )
                )
                in_width = out_width
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_width, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(last, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu6(self.bn2(self.conv2(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(self.dropout(out))

    def widths(self) -> dict[str, Any]:
        """Widths read from the weights, so they stay true after physical pruning.

        `MobileNetV2(**model.widths())` rebuilds a dense model of exactly this architecture.
        """
        stage_ends = [end - 1 for end in accumulate(blocks for _, _, blocks, _ in STAGES)]
        return {
            "stem": self.conv1.weight.shape[0],
            "hidden_widths": [block.depthwise_conv.weight.shape[0] for block in self.layers],
            "stage_widths": [self.layers[index].project_conv.weight.shape[0] for index in stage_ends],
            "last": self.conv2.weight.shape[0],
        }


def mobilenet_v2(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2, CIFAR variant."""
    return MobileNetV2(**kwargs)
