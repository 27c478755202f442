"""What is kept is right: removing channels equals masking them in the original model."""

from __future__ import annotations

import copy

import torch
from torch import nn

import autoprune as ap


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
    bn = model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return model.eval()


def test_l1_keeps_the_highest_l1_filters():
    model = _chain()
    space = ap.PruningSpace(model, torch.randn(1, 3, 8, 8))
    (group,) = space.groups
    pruned = space.apply({group.name: 0.5}, criterion="l1")
    l1 = model[0].weight.abs().sum((1, 2, 3))
    expected = torch.sort(torch.topk(l1, 8).indices).values
    kept = [int(torch.nonzero((model[0].weight == w).all(dim=(1, 2, 3)))[0]) for w in pruned[0].weight]
    assert kept == expected.tolist()
    assert torch.equal(pruned[1].running_mean, model[1].running_mean[expected])
    assert torch.equal(pruned[3].weight, model[3].weight[:, expected])


def test_removal_equals_masking_the_removed_channels():
    model = _chain()
    x = torch.randn(4, 3, 8, 8)
    space = ap.PruningSpace(model, x)
    (group,) = space.groups
    for criterion in ("l1", "l2", "fpgm", "bn_scale", "random"):
        pruned = space.apply({group.name: 0.625}, criterion=criterion)
        kept = [int(torch.nonzero((model[0].weight == w).all(dim=(1, 2, 3)))[0]) for w in pruned[0].weight]
        removed = sorted(set(range(16)) - set(kept))
        assert len(kept) == 6
        # Masking: zero the removed channels where they leave the ReLU (BN's shift included),
        # i.e. the next conv never sees them.
        masked = copy.deepcopy(model)
        with torch.no_grad():
            masked[3].weight[:, removed] = 0
            torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-5)


def test_scores_rank_channels_and_criteria_are_registered():
    model = _chain()
    space = ap.PruningSpace(model, torch.randn(1, 3, 8, 8))
    assert {"l1", "l2", "fpgm", "bn_scale", "taylor", "apoz", "mean_activation", "random"} <= set(ap.CRITERIA)
    (group,) = space.groups
    bn = space.scores("bn_scale")[group.name]
    assert torch.equal(torch.argsort(bn), torch.argsort(model[1].weight.detach().abs().double()))
