"""Reference models for pruning experiments on CIFAR-style and Fashion-MNIST inputs.

Every model takes `num_classes` and `in_channels`, exposes its widths as
constructor arguments, and reports its real widths through `widths()`, so a
pruned model can be rebuilt densely with `type(model)(..., **model.widths())`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..utils import unknown_name
from .mobilenetv2 import InvertedResidual, MobileNetV2, mobilenet_v2
from .pretrained import PRETRAINED, pretrained
from .resnet import BasicBlock, ResNetCIFAR, resnet20, resnet32, resnet44, resnet56, resnet110
from .vgg import VGG, vgg16_bn

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg16_bn": vgg16_bn,
    "mobilenet_v2": mobilenet_v2,
}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model `name`, passing `kwargs` to its builder."""
    if name not in MODELS:
        raise ValueError(unknown_name(name, MODELS, "model"))
    return MODELS[name](**kwargs)


__all__ = [
    "PRETRAINED",
    "pretrained",
    "MODELS",
    "VGG",
    "BasicBlock",
    "InvertedResidual",
    "MobileNetV2",
    "ResNetCIFAR",
    "create_model",
    "mobilenet_v2",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg16_bn",
]
