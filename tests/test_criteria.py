"""Every criterion runs on real models; the data-driven ones use calibration batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autoprune as ap
from autoprune import zoo


@pytest.fixture(scope="module")
def space_and_data():
    torch.manual_seed(0)
    model = zoo.resnet20(in_channels=1).eval()
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    return ap.PruningSpace(model, x[:1]), [(x[:8], y[:8]), (x[8:], y[8:])]


@pytest.mark.parametrize("criterion", sorted(ap.CRITERIA))
def test_criterion_prunes_a_working_model(space_and_data, criterion):
    space, batches = space_and_data
    plan = {g.name: 0.4 for g in space.groups}
    calibration = batches if ap.CRITERIA[criterion].needs_data else None
    pruned = space.apply(plan, criterion=criterion, calibration=calibration)
    assert pruned(batches[0][0]).shape == (8, 10)
    scores = space.scores(criterion, calibration)
    assert set(scores) == {g.name for g in space.groups}
    assert all(s.shape == (g.channels,) and torch.isfinite(s).all() for g, s in zip(space.groups, scores.values()))


def test_data_criteria_demand_calibration(space_and_data):
    space, _ = space_and_data
    with pytest.raises(ValueError, match="calibration"):
        space.apply({space.groups[0].name: 0.5}, criterion="taylor")


def test_taylor_leaves_the_model_untouched(space_and_data):
    space, batches = space_and_data
    before = {k: v.clone() for k, v in space.model.state_dict().items()}
    space.scores("taylor", batches)
    assert all(torch.equal(before[k], v) for k, v in space.model.state_dict().items())
    assert all(p.grad is None for p in space.model.parameters())


def test_apoz_ranks_dead_channels_last():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with torch.no_grad():
        model[0].bias[:4] = -100.0  # channels 0-3 never fire
    space = ap.PruningSpace(model, torch.randn(1, 1, 6, 6))
    (g,) = space.groups
    data = [torch.randn(4, 1, 6, 6) for _ in range(2)]
    for criterion in ("apoz", "mean_activation"):
        s = space.scores(criterion, data)[g.name]
        assert s[:4].max() < s[4:].min(), criterion


def test_precomputed_scores_are_accepted(space_and_data):
    space, _ = space_and_data
    g = space.groups[0]
    scores = {x.name: torch.arange(x.channels, dtype=torch.float64) for x in space.groups}
    pruned = space.apply({g.name: 0.5}, criterion=scores)
    assert pruned is not space.model


def test_unknown_criterion_lists_the_known_ones(space_and_data):
    space, _ = space_and_data
    with pytest.raises(ValueError, match="Available: .*l1"):
        space.apply({space.groups[0].name: 0.5}, criterion="l3")


def test_taylor_uses_a_custom_loss(space_and_data):
    space, batches = space_and_data
    crit = ap.engine.criteria.Taylor(loss=lambda out, y: F.nll_loss(out.log_softmax(1), y))
    s = space.scores(crit, batches)
    assert len(s) == len(space.groups)
