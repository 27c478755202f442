"""The engine on timm models (random weights, nothing downloaded): a spread of families, and the ones that broke it."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from helpers import check_contract, random_plan

import autoprune as ap

MODELS = [
    "levit_128s",  # caches its attention biases in a dict: a pruned copy must not keep the stale cache
    "efficientformer_l1",  # the same cache
    "cait_xxs24_224",  # its class token is a module input: FlopCounterMode's tracker failed on it under no_grad
    "vit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "convnext_atto",
    "mobilevit_xxs",
    "ghostnet_100",
]


@pytest.mark.parametrize("name", MODELS)
def test_timm_model(name):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space = ap.PruningSpace(model, x)
    bad = [str(w.message) for w in caught if "autoprune" in str(w.message) and "frozen:" not in str(w.message)]
    assert not bad, bad  # no unknown op, no unvisited layer (a group frozen by verification is allowed)
    assert len(space.groups) >= 5
    plans = [{g.name: 0.5 for g in space.groups}, random_plan(space, seed=len(name))]
    check_contract(model, x, plans=plans, train_batch=(torch.cat([x, x]),), space=space)
