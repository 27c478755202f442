"""The contract on every torchvision classification model (random weights, small inputs)."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import check_contract, random_plan

import autoprune as ap

torchvision = pytest.importorskip("torchvision")

MODELS = torchvision.models.list_models(module=torchvision.models)


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
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, **kwargs).eval()
    return model, torch.randn(1, 3, size, size)


def test_all_classification_models_are_covered():
    assert len(MODELS) >= 80


@pytest.mark.parametrize("name", MODELS)
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
