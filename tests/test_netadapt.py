"""NetAdapt: iterations of per-group proposals, weights carried over, resumable after a crash."""

from __future__ import annotations

import optuna
import pytest
import torch
from helpers import agreement, kill_mid_trial, run_search

import autoprune as ap
from autoprune.search import Projector
from autoprune.search.strategies.netadapt import NetAdapt
from autoprune.search.strategy import SearchContext


def _space() -> ap.PruningSpace:
    torch.manual_seed(0)
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    return ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))


def _state(url: str) -> tuple:
    study = optuna.load_study(study_name="digits", storage=url)
    space = _space()
    ctx = SearchContext(space, Projector(space, ap.Budget(macs=0.6)), study, 0, 0.95)
    return NetAdapt(initial_reduction=0.1).replay(ctx), study, space


def test_netadapt_walks_down_to_the_budget_and_resumes_after_sigkill(tmp_path):
    straight = f"sqlite:///{tmp_path / 'straight.db'}"
    run_search(straight, 500, strategy="netadapt")
    st, study, space = _state(straight)
    assert st.done and st.resource <= 0.6 * space.macs({})
    iterations = {t.user_attrs["netadapt"]["iteration"] for t in study.trials}
    assert len(st.history) == len(iterations) >= 3
    # Each iteration proposes one plan per group, each meeting that iteration's (falling) target.
    first = [t for t in study.trials if t.user_attrs["netadapt"]["iteration"] == 0]
    assert len(first) == first[0].user_attrs["netadapt"]["of"] and len(
        {t.user_attrs["netadapt"]["group"] for t in first}
    ) == len(first)
    assert all(t.user_attrs["macs"] <= 0.9 * space.macs({}) + 1 for t in first)
    # The picked network's channels stay removed in later iterations (the weights carry over).
    picked = study.trials[st.history[0]]
    later = study.trials[st.history[-1]]
    for name, kept in later.user_attrs["netadapt_keep"].items():
        assert set(kept) <= set(picked.user_attrs["netadapt_keep"][name])

    # Export writes NetAdapt's own network: its channels and its fine-tuned weights.
    best = study.best_trial
    net = ap.trial_network(study, best, space)
    out = ap.export(net.space, net.plan, tmp_path / "best", criterion=net.criterion)
    model = ap.load(out, ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)))
    kept = best.user_attrs["netadapt_keep"]["layer2.1.conv1"]
    indices = net.space.parameter_indices(net.space.keep_indices(net.plan, net.criterion))
    index = indices.get("layer2.1.conv1.weight", {})  # absent when the best network keeps that layer whole
    expected = net.space.model.layer2[1].conv1.weight
    assert index.get(0, torch.arange(expected.shape[0])).tolist() == kept  # its own outputs; inputs: the stage's
    for dim, idx in index.items():
        expected = expected.index_select(dim, idx)
    assert torch.equal(model.layer2[1].conv1.weight, expected)
    assert not torch.equal(net.space.model.layer2[1].conv1.weight, space.model.layer2[1].conv1.weight)  # fine-tuned

    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    kill_mid_trial(killed, 500, 0.3, "netadapt", completed=first[0].user_attrs["netadapt"]["of"] + 2)
    run_search(killed, 500, strategy="netadapt")
    st2, study2, _ = _state(killed)
    assert st2.done
    plans = [study.trials[n].user_attrs["plan"] for n in st.history]
    plans2 = [study2.trials[n].user_attrs["plan"] for n in st2.history]
    assert plans2 == plans  # the same iterations and picks as the uninterrupted run
    assert [study.trials[n].value for n in st.history] == [study2.trials[n].value for n in st2.history]
    assert sum(bool(t.user_attrs.get("stale")) for t in study2.trials) == 1


def test_bad_netadapt_options():
    with pytest.raises(ValueError, match="resource"):
        NetAdapt(resource="flops")
    with pytest.raises(ValueError, match="pick"):
        NetAdapt(pick="best")


def test_a_step_no_group_can_make_alone_is_halved(tmp_path):
    """The paper stops when no single group can meet an iteration's target; this walks on in smaller steps."""
    space = _space()
    study = ap.search(
        space,
        agreement(space, torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))),
        ap.Budget(macs=0.6),
        strategy="netadapt",
        strategy_options={"initial_reduction": 0.9},  # no group holds 90% of the MACs
        n_trials=200,
        storage=f"sqlite:///{tmp_path / 'halve.db'}",
    )
    ctx = SearchContext(space, Projector(space, ap.Budget(macs=0.6)), study, 0, 0.95)
    st = NetAdapt(initial_reduction=0.9).replay(ctx)
    assert st.done and st.resource <= 0.6 * space.macs({})
    first = [t for t in study.trials if t.user_attrs["netadapt"]["iteration"] == 0]
    assert first and all(t.user_attrs["macs"] <= (1 - 0.9 / 2**4) * space.macs({}) for t in first)
