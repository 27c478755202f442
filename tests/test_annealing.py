"""Simulated annealing: a chain replayed from the study, so a killed search resumes mid-chain."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from helpers import kill_mid_trial, run_search
from optuna.trial import TrialState

import autoprune as ap
from autoprune.data import load_digits
from autoprune.evaluators import AccuracyEvaluator
from autoprune.search import Projector, get_strategy
from autoprune.search.strategies.annealing import SimulatedAnnealing
from autoprune.search.strategy import SearchContext


def _complete(url: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in optuna.load_study(study_name="digits", storage=url).trials if t.state == TrialState.COMPLETE]


def test_killed_chain_resumes_exactly_like_an_uninterrupted_one(tmp_path):
    straight = f"sqlite:///{tmp_path / 'straight.db'}"
    run_search(straight, 12, strategy="sa")
    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    kill_mid_trial(killed, 12, 0.7, "sa", completed=8)
    run_search(killed, 12, strategy="sa")

    a, b = _complete(straight), _complete(killed)
    assert len(a) == len(b) == 12
    assert [t.user_attrs["plan"] for t in a] == [t.user_attrs["plan"] for t in b]  # the same chain, step by step
    assert [t.value for t in a] == [t.value for t in b]
    stale = [t for t in optuna.load_study(study_name="digits", storage=killed).trials if t.user_attrs.get("stale")]
    assert len(stale) == 1


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    space = ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))
    evaluator = AccuracyEvaluator(
        load_digits("test"), train_data=load_digits("train"), bn_recalibration_batches=2, recalibration_batch_size=64
    )
    return space, evaluator


def test_start_temperature_is_calibrated_from_the_first_moves(tmp_path, setup):
    space, evaluator = setup
    sa = SimulatedAnnealing(calibration_moves=5, target_acceptance=0.6)
    study = ap.search(
        space,
        evaluator,
        ap.Budget(macs=0.6),
        strategy=sa,
        n_trials=9,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        study_name="s",
    )
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    start, moves = done[0].value, done[1:6]
    drops = [start - t.value for t in moves if t.value < start]

    ctx = SearchContext(space, Projector(space, ap.Budget(macs=0.6)), study, 0, 0.95)
    state = sa.replay(ctx)
    assert drops, "an untrained model's perturbations should score worse sometimes"
    assert math.exp(-(sum(drops) / len(drops)) / state.t0) == pytest.approx(0.6)
    assert state.temperature == pytest.approx(state.t0 * sa.cool_down_rate**3)  # cooled once per chain step
    assert state.step == 8
    for t in done:
        assert t.user_attrs["macs"] <= ap.Budget(macs=0.6).targets(space)["macs"]


def test_nni_schedule_stops_after_sixteen_accepted_moves(tmp_path, setup):
    space, evaluator = setup
    study = ap.search(
        space,
        evaluator,
        ap.Budget(macs=0.6),
        strategy="sa",
        strategy_options={"nni_schedule": True},
        n_trials=60,
        storage=f"sqlite:///{tmp_path / 'n.db'}",
        study_name="n",
    )
    # T0 = 100 against accuracy deltas of ~0.01 accepts every move: 100 * 0.9^16 < 20 after 16 moves.
    assert len(study.trials) == 17


def test_bad_annealing_options_are_refused():
    with pytest.raises(ValueError, match="cool_down_rate"):
        SimulatedAnnealing(cool_down_rate=1.5)
    with pytest.raises(ValueError, match="bad options for strategy 'sa'"):
        get_strategy("sa", temperature=3)
