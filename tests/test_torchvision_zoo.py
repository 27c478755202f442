"""The contract on every torchvision classification, segmentation and video model (random weights, small inputs)."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import check_contract, random_plan

import autoprune as ap

torchvision = pytest.importorskip("torchvision")

MODELS = torchvision.models.list_models(module=torchvision.models)
SEGMENTATION = torchvision.models.list_models(module=torchvision.models.segmentation)
VIDEO = torchvision.models.list_models(module=torchvision.models.video)


def _build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    size = 64
    kwargs = {}
    if name == "inception_v3":
        size = 299  # its auxiliary head (train mode) needs the full size
    elif name.startswith("vit_"):
        size = 28 if name == "vit_h_14" else 32
        kwargs["image_size"] = size
    elif name == "maxvit_t":
        size = 224  # fixed partition sizes
    shape: tuple[int, ...] = (1, 3, size, size)
    if name in SEGMENTATION:
        kwargs["weights_backbone"] = None  # its default downloads ImageNet weights
        if not name.startswith("lraspp"):
            kwargs["aux_loss"] = True  # a second head on layer3: one more consumer of its channels
    elif name in VIDEO:
        shape = (1, 3, 4, 32, 32)  # (batch, channels, frames, height, width)
        if name == "s3d":
            shape = (1, 3, 16, 224, 224)  # its final pooling window is (2, 7, 7)
        elif name.startswith("mvit"):
            shape = (1, 3, 16, 224, 224)  # fixed temporal and spatial sizes
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **kwargs).eval()
    return model, torch.randn(shape)


def test_all_classification_segmentation_and_video_models_are_covered():
    assert len(MODELS) >= 80 and len(SEGMENTATION) >= 6 and len(VIDEO) >= 9


@pytest.mark.parametrize("name", MODELS + SEGMENTATION + VIDEO)
def test_torchvision_model(name):
    torch.set_num_threads(1)
    model, x = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown op, no unvisited layer, no failed train-mode trace...
        warnings.filterwarnings("ignore", message=".*breaks the model's own code.*")  # ...but a frozen group is fine
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*enable_nested_tensor.*")
        space = ap.PruningSpace(model, x)
    assert len(space.groups) >= 3
    plans = [{g.name: 0.5 for g in space.groups}, random_plan(space, seed=sum(map(ord, name)))]
    check_contract(model, x, plans=plans, train_batch=(torch.cat([x, x]),), space=space)
